"""Generations: a compile in another process switches readers atomically; several processes share one index."""

import multiprocessing as mp
import time

import authz

POLICIES_PER_GENERATION = 300
COMPILES = 12


def write_generation(src, k):
    # Every policy of generation k applies to the probe request, so a reader sees all of them or none.
    text = "".join(
        f'@id("g{k}-{i}")\npermit(principal == User::"probe", action == Action::"call", resource) '
        f'when {{ context.n >= {i % 7} }};\n'
        for i in range(POLICIES_PER_GENERATION)
    )
    (src / "policies.cedar").write_text(text)


def reader(db, ready, done, results):
    engine = authz.Engine(db, poll_interval_s=0.001)
    seen, bad, checks = set(), 0, 0
    deadline = time.monotonic() + 60
    while checks == 0 or (not done.is_set() and time.monotonic() < deadline and checks < 2_000_000):
        d = engine.check('User::"probe"', 'Action::"call"', 'Tool::"t"', {"n": 10})
        checks += 1
        if checks == 1:
            ready.put(1)  # deciding: the compiles may start
        prefixes = {pid.split("-")[0] for pid in d.policies}
        if len(d.policies) != POLICIES_PER_GENERATION or len(prefixes) != 1 or not d.allowed:
            bad += 1
        seen |= prefixes
    results.put((len(seen), bad, checks))


def writer(src, db, start):
    for k in range(start, start + COMPILES):
        write_generation(src, k)
        authz.compile([str(src)], db=db)


def test_readers_in_two_processes_see_only_whole_generations(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    db = str(tmp_path / "db")
    write_generation(src, 0)
    authz.compile([str(src)], db=db)
    ctx = mp.get_context("spawn")
    ready, done, results = ctx.Queue(), ctx.Event(), ctx.Queue()
    readers = [ctx.Process(target=reader, args=(db, ready, done, results)) for _ in range(2)]
    for p in readers:
        p.start()
    for _ in readers:  # both readers are deciding before the first compile (spawned processes start slowly)
        ready.get(timeout=120)
    compiler = ctx.Process(target=writer, args=(src, db, 1))
    compiler.start()
    compiler.join(120)
    assert compiler.exitcode == 0
    done.set()
    outcomes = [results.get(timeout=90) for _ in readers]
    for p in readers:
        p.join(30)
    for generations_seen, bad, checks in outcomes:
        assert bad == 0, f"{bad} of {checks} decisions mixed or missed generations"
        assert checks > 0
    # The switch is visible to readers without reopening: at least one reader saw several generations.
    assert max(g for g, _, _ in outcomes) >= 2


def test_engine_notices_a_new_generation_without_reopening(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    db = str(tmp_path / "db")
    write_generation(src, 0)
    authz.compile([str(src)], db=db)
    engine = authz.Engine(db, poll_interval_s=0.0)
    assert engine.check('User::"probe"', 'Action::"call"', 'Tool::"t"', {"n": 10}).policies[0].startswith("g0-")
    ctx = mp.get_context("spawn")
    p = ctx.Process(target=writer, args=(src, db, 5))
    p.start()
    p.join(120)
    d = engine.check('User::"probe"', 'Action::"call"', 'Tool::"t"', {"n": 10})
    assert d.policies[0].startswith(f"g{5 + COMPILES - 1}-")
    assert engine.generation == 1 + COMPILES
