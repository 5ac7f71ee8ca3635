"""A damaged generation is refused at load, or decides: never a crash, a hang or a stray exception.

Two guards stand between the bytes in LMDB and a decision, and both are driven here through the real
load path (authz.Engine over a real LMDB index), never by building an evaluator Generation by hand:

- the CRC-32 stored beside each generation (`crc/N`): authz.Engine refuses a generation whose bytes do
  not match it, and an engine that is serving keeps its previous generation;
- the evaluator's structural checks (bounds, counts, table sizes, tags, opcodes): IndexFormatError at
  load (the engine then refuses the generation the same way) or when a decision reads the damaged part.

The damages come from fixed seeds, the same every run. They run in a child process that announces each
step before taking it, so a crash or a hang is reported with the damage and the request that caused it
instead of killing or stalling pytest.
"""

import json
import multiprocessing as mp
import random
import resource
import struct
import subprocess
import sys
import zlib

import pytest

import authz
from authz.engine import _evaluator
from authz.compiler import layout
from authz.engine.index import CURRENT_KEY, crc_key, generation_key, open_env, release_env
from authz.errors import IndexUnavailableError

POLICIES = '''@id("readers")
permit(principal in Group::"readers", action in [Action::"read", Action::"list"], resource is Doc in Folder::"f")
when { context.level > 2 && principal.tags.contains("x") && resource.owner == principal };
@id("secret")
forbid(principal, action, resource) when { resource.hasTag("secret") || context.s like "a*b" };
@id("owner-net")
permit(principal == User::"u", action == Action::"write", resource)
when { ip("10.0.0.1").isInRange(ip("10.0.0.0/8")) && context.n + 1 <= 10 };
@id("records")
permit(principal is User, action == Action::"list", resource == Doc::"e")
unless { context.r.k == {"a": [1, -2], "b": "c"}.b || !(context has r) };
@id("errors")
permit(principal, action == Action::"read", resource == Doc::"e") when { principal.missing == 1 };
@id("time")
forbid(principal, action == Action::"delete", resource)
when { if context.n > 0 then datetime("2024-01-01").offset(duration("1h")) > datetime("2024-01-01")
       else decimal("1.5").lessThan(decimal("2.0")) };
'''
ENTITIES = [
    {"uid": {"type": "User", "id": "u"}, "attrs": {"tags": ["x", "y"]},
     "parents": [{"type": "Group", "id": "readers"}]},
    {"uid": {"type": "User", "id": "w"}, "attrs": {"tags": []}, "parents": []},
    {"uid": {"type": "Group", "id": "readers"}, "attrs": {}, "parents": []},
    {"uid": {"type": "Folder", "id": "f"}, "attrs": {}, "parents": []},
    {"uid": {"type": "Doc", "id": "d"}, "attrs": {"owner": {"__entity": {"type": "User", "id": "u"}}},
     "parents": [{"type": "Folder", "id": "f"}], "tags": {"secret": False}},
    {"uid": {"type": "Doc", "id": "e"}, "attrs": {"owner": {"__entity": {"type": "User", "id": "u"}}},
     "parents": [{"type": "Folder", "id": "f"}]},
]


def request(principal, action, resource, **context):
    return {"principal": principal, "action": action, "resource": resource, "context": context}


# The fixed request set: every policy decides or errs on at least one of them.
REQUESTS = [
    request('User::"u"', 'Action::"read"', 'Doc::"e"', level=3, s="zz", n=1),
    request('User::"u"', 'Action::"read"', 'Doc::"d"', level=3, s="zz", n=1),
    request('User::"u"', 'Action::"list"', 'Doc::"e"', level=1, s="axb", n=1),
    request('User::"u"', 'Action::"write"', 'Doc::"e"', level=1, s="q", n=9),
    request('User::"u"', 'Action::"write"', 'Doc::"e"', level=1, s="q", n=10),
    request('User::"w"', 'Action::"list"', 'Doc::"e"', level=5, s="q", n=0, r={"k": "z"}),
    request('User::"w"', 'Action::"read"', 'Doc::"e"', level=5, s="q", n=0),
    request('User::"u"', 'Action::"delete"', 'Doc::"e"', level=5, s="q", n=2),
    request('User::"nobody"', 'Action::"read"', 'Folder::"f"', n=2),
]
EXPECTED = [
    ("allow", ["readers"], ["errors"]),
    ("deny", ["secret"], []),
    ("deny", ["secret"], ["records"]),
    ("allow", ["owner-net"], []),
    ("deny", [], []),
    ("allow", ["records"], []),
    ("deny", [], ["errors"]),
    ("deny", ["time"], []),
    ("deny", [], ["secret"]),
]

HANG_BOUND_S = 30  # one load or decision takes well under a millisecond here; this long is a hang


# -- the index and its damages ----------------------------------------------------------------------

def compile_index(folder):
    """Compiles POLICIES and ENTITIES into folder/db; returns (db, the generation's blob)."""
    src = folder / "src"
    src.mkdir()
    (src / "p.cedar").write_text(POLICIES)
    (src / "entities.json").write_text(json.dumps(ENTITIES))
    db = str(folder / "db")
    authz.compile([str(src)], db=db)
    return db, current_blob(db)


def current_blob(db):
    env = open_env(db, create=False)
    try:
        with env.begin() as txn:
            return txn.get(generation_key(struct.unpack("<Q", txn.get(CURRENT_KEY))[0]))
    finally:
        release_env(env)


def write_generation(db, blob, crc):
    """Makes `blob` the current generation with `crc` stored beside it, as the compiler publishes one."""
    env = open_env(db, create=False)
    try:
        with env.begin(write=True) as txn:
            number = struct.unpack("<Q", txn.get(CURRENT_KEY))[0] + 1
            txn.put(generation_key(number), blob)
            txn.put(crc_key(number), struct.pack("<I", crc))
            txn.put(CURRENT_KEY, struct.pack("<Q", number))
    finally:
        release_env(env)


KINDS = ("bytes", "bits", "word", "cut", "insert", "delete")


def damage(blob, seed):
    """Damage number `seed`: (what was done, the damaged bytes), never equal to `blob`. The kinds take
    turns; `word` writes a u32 that offsets, counts and sizes are likely to trip over."""
    rng = random.Random(seed)
    kind = KINDS[seed % len(KINDS)]
    data = bytearray(blob)
    if kind == "bytes":
        changes = []
        for _ in range(rng.randint(1, 4)):
            at = rng.randrange(len(data))
            data[at] ^= rng.randint(1, 255)
            changes.append(f"[{at}]={data[at]:#04x}")
        what = " ".join(changes)
    elif kind == "bits":
        at = rng.randrange(len(data))
        bit = rng.randrange(8)
        data[at] ^= 1 << bit
        what = f"bit {bit} of [{at}]"
    elif kind == "word":
        at = rng.randrange(len(data) - 3)
        old = struct.unpack_from("<I", data, at)[0]
        new = rng.choice([0, 1, 0x7FFFFFFF, 0x80000000, 0xFFFFFFFF, len(blob), len(blob) - 1,
                          old + 1, old - 1, old + 4, old - 4, old + 0x10000]) & 0xFFFFFFFF
        new = new if new != old else old ^ 1
        struct.pack_into("<I", data, at, new)
        what = f"u32 [{at}]={new:#x} (was {old:#x})"
    elif kind == "cut":
        at = rng.randrange(len(data))
        del data[at:]
        what = f"cut to {at} bytes"
    elif kind == "insert":
        at = rng.randrange(len(data) + 1)
        data[at:at] = rng.randbytes(rng.randint(1, 4))
        what = f"{len(data) - len(blob)} bytes inserted at {at}"
    else:
        at = rng.randrange(len(data))
        n = rng.randint(1, 4)
        del data[at:at + n]
        what = f"{len(blob) - len(data)} bytes deleted at {at}"
    assert bytes(data) != blob
    return f"damage {seed} ({kind}: {what})", bytes(data)


# -- the child that loads and decides damaged generations ---------------------------------------------

def outcome_of(call):
    """("decision", its dict) or ("raised", exception type name, message)."""
    try:
        result = call()
    except Exception as err:  # reported to the parent, which judges every type
        return ("raised", type(err).__name__, str(err)[:200])
    if isinstance(result, list):
        return ("decisions", [d.to_dict() for d in result])
    return ("decision", result.to_dict())


def damage_worker(conn, db, blob, first, count, keep_crc):
    """Publishes damages first..first+count-1 one after another; for each, sends ("at", seed, step)
    before each step (-1: load) and then ("done", seed, report). `keep_crc`: store the undamaged blob's
    CRC beside the damage (what an accidental damage looks like), else the damage's own."""
    good_crc = zlib.crc32(blob)
    # Opened on the undamaged generation and refreshed only when told: it must keep deciding as before.
    serving = authz.Engine(db, poll_interval_s=3600)
    for seed in range(first, first + count):
        _, damaged = damage(blob, seed)
        write_generation(db, damaged, good_crc if keep_crc else zlib.crc32(damaged))
        conn.send(("at", seed, -1))
        report = {}
        try:
            engine = authz.Engine(db, poll_interval_s=3600)
        except Exception as err:  # judged by the parent
            report["load"] = ("raised", type(err).__name__, str(err)[:200])
            report["serving"] = serving_after_refusal(serving)
            conn.send(("done", seed, report))
            continue
        report["load"] = ("loaded",)
        decisions = []
        for step, request in enumerate(REQUESTS):
            conn.send(("at", seed, step))
            decisions.append(outcome_of(lambda: engine.check(**request)))
        conn.send(("at", seed, len(REQUESTS)))
        report["decisions"] = decisions
        report["again"] = [outcome_of(lambda: engine.check(**request)) for request in REQUESTS]
        report["batch"] = outcome_of(lambda: engine.check_batch(REQUESTS))
        engine.close()
        conn.send(("done", seed, report))
    serving.close()
    conn.send(("end",))


def serving_after_refusal(serving):
    """What the engine that was serving the undamaged generation does when it looks for the new one."""
    refresh = outcome_of(serving.refresh)
    return refresh, [outcome_of(lambda: serving.check(**request)) for request in REQUESTS]


def run_damages(db, blob, first, count, keep_crc):
    """Runs the damages in a child; returns {seed: report}. A crash or a hang fails the test, naming
    the damage and the request (or the load) it happened at."""
    ctx = mp.get_context("spawn")
    receiver, sender = ctx.Pipe(duplex=False)
    child = ctx.Process(target=damage_worker, args=(sender, db, blob, first, count, keep_crc))
    child.start()
    sender.close()
    reports, at = {}, None
    try:
        for _ in range(count * (len(REQUESTS) + 3) + 1):  # every message the child sends, at most
            if not receiver.poll(HANG_BOUND_S):
                pytest.fail(f"{where(blob, at)} did not finish within {HANG_BOUND_S} s (a hang)")
            try:
                message = receiver.recv()
            except EOFError:  # the child is gone
                message = None
            if message is None:
                child.join(HANG_BOUND_S)
                pytest.fail(f"{where(blob, at)} killed the process (exit code {child.exitcode})")
            if message[0] == "end":
                break
            if message[0] == "at":
                at = message[1:]
            else:
                reports[message[1]] = message[2]
    finally:
        if child.is_alive():
            child.kill()
        child.join(HANG_BOUND_S)
    assert sorted(reports) == list(range(first, first + count))
    return reports


def where(blob, at):
    if at is None:
        return "the child, before its first damage,"
    seed, step = at
    what = damage(blob, seed)[0]
    if step < 0:
        return f"loading {what}"
    if step == len(REQUESTS):
        return f"deciding again and as a batch on {what}"
    return f"deciding request {step} {json.dumps(REQUESTS[step])} on {what}"


@pytest.fixture
def index(tmp_path):
    """A compiled index of its own, its generation's blob, and what that generation decides."""
    db, blob = compile_index(tmp_path)
    with authz.Engine(db) as engine:
        baseline = [outcome_of(lambda: engine.check(**request)) for request in REQUESTS]
    return db, blob, baseline


def test_the_undamaged_generation_decides_the_request_set(index):
    _, _, baseline = index
    assert [(d["decision"], d["policies"], [e["policy"] for e in d["errors"]]) for _, d in baseline] == EXPECTED


def test_every_damage_kind_changes_the_blob_and_is_reproducible(index):
    _, blob, _ = index
    seen = set()
    for seed in range(60):
        what, damaged = damage(blob, seed)
        assert damage(blob, seed) == (what, damaged)
        seen.add(what.split("(")[1].split(":")[0])
    assert seen == set(KINDS)


# -- damage the CRC catches --------------------------------------------------------------------------

STORED_CRC_DAMAGES = 400


def test_damage_under_the_stored_crc_is_refused_and_the_serving_generation_keeps_deciding(index):
    """An accidental damage leaves the CRC that was written with the blob: the engine refuses the
    generation before the evaluator sees a byte of it, and an engine that was serving keeps deciding
    exactly as before. CRC-32 catches every damage of a burst up to 32 bits and misses any other with
    a chance of 1 in 2^32, so here every one of the damages must be refused.

    (This is why the damages that changed decisions in the old version of this test, 12 of them
    deny -> allow, do not reach a decision in production: that test built the evaluator's Generation
    from the damaged bytes directly, around the CRC check.)"""
    db, blob, baseline = index
    reports = run_damages(db, blob, 0, STORED_CRC_DAMAGES, keep_crc=True)
    failures = []
    for seed, report in reports.items():
        what = damage(blob, seed)[0]
        load = report["load"]
        if load[:2] != ("raised", "IndexUnavailableError") or "is corrupted" not in load[2]:
            failures.append(f"{what}: loaded as {load}, not refused by the CRC check")
            continue
        refresh, decisions = report["serving"]
        if refresh[:2] != ("raised", "IndexUnavailableError") or decisions != baseline:
            failures.append(f"{what}: the serving engine's refresh gave {refresh}; it decided {decisions}")
    assert not failures, "\n".join(failures[:20])


# -- damage that reaches the evaluator ----------------------------------------------------------------

CONSISTENT_CRC_DAMAGES = 1000


def test_damage_with_a_consistent_crc_is_refused_or_decides(index):
    """Each damage is published with its own CRC, as if the CRC had been rewritten, so that it reaches
    the evaluator's structural checks. What must hold:

    - loading it either refuses it (IndexUnavailableError saying it is unreadable: the evaluator raised
      IndexFormatError), and an engine that was serving keeps deciding as before; or loads it;
    - every request on a loaded one is either decided (a well-formed decision) or raises
      IndexFormatError; never a crash, a hang, or any other exception;
    - the same request decides the same way twice, and check_batch agrees with check: the answer is a
      function of the bytes and the request (no read of memory outside the blob, no state a damage
      can leave behind).

    A decision may change, allow to deny or deny to allow, and that is the property rather than a gap
    in it. A damage that keeps the CRC consistent is, to the evaluator, another well-formed
    generation: an effect byte (permit or forbid), a literal, a scope's uid index, an entry of an
    index list is as valid one way as the other, and the format carries no redundancy beyond the CRC
    to tell them apart. The CRC is what stands for the integrity of the policies against accidental
    damage (above); against deliberate change it is no guard, and needs none here, because whoever
    can rewrite the CRC can write the index and publish any policies. What the evaluator owes bytes
    it cannot vouch for is memory safety and an answer in bounded time."""
    db, blob, baseline = index
    reports = run_damages(db, blob, 0, CONSISTENT_CRC_DAMAGES, keep_crc=False)
    counts = {"refused": 0, "decided all": 0, "decided some": 0, "changed a decision": 0,
              "index format error in a decision": 0}
    failures = []
    for seed, report in reports.items():
        what = damage(blob, seed)[0]
        load = report["load"]
        if load[0] == "raised":
            if load[1] != "IndexUnavailableError" or "is unreadable" not in load[2]:
                failures.append(f"{what}: loading raised {load}")
                continue
            counts["refused"] += 1
            refresh, decisions = report["serving"]
            if refresh[:2] != ("raised", "IndexUnavailableError") or decisions != baseline:
                failures.append(f"{what}: the serving engine's refresh gave {refresh}; it decided {decisions}")
            continue
        decisions = report["decisions"]
        for step, outcome in enumerate(decisions):
            if outcome[0] == "decision":
                problem = malformed(outcome[1])
            elif outcome[1] == "IndexFormatError":
                counts["index format error in a decision"] += 1
                problem = None
            else:
                problem = f"raised {outcome}"
            if problem:
                failures.append(f"{what}: request {step}: {problem}")
        if report["again"] != decisions:
            failures.append(f"{what}: deciding again gave {report['again']}, first {decisions}")
        batch = report["batch"]
        raised = [o for o in decisions if o[0] == "raised"]
        if raised and batch[0] != "raised" or not raised and batch != ("decisions", [o[1] for o in decisions]):
            failures.append(f"{what}: check_batch gave {batch}, check {decisions}")
        decided = len(decisions) - len(raised)
        if decided == len(decisions):
            counts["decided all"] += 1
        elif decided:
            counts["decided some"] += 1
        if any(o[0] == "decision" and o != b for o, b in zip(decisions, baseline)):
            counts["changed a decision"] += 1
    assert not failures, "\n".join(failures[:20])
    # Both guards were exercised, and decisions on damaged generations were made: a harness that
    # never got a damage past the CRC, or a load that refused everything, fails here.
    n = CONSISTENT_CRC_DAMAGES
    assert counts["refused"] >= n // 5, counts
    assert counts["decided all"] >= n // 5, counts
    assert counts["decided some"] >= n // 20, counts
    assert counts["changed a decision"] >= n // 50, counts
    assert counts["index format error in a decision"] >= n // 20, counts


def malformed(decision):
    """What is wrong with a decision's dict, or None."""
    if set(decision) != {"decision", "policies", "errors"} or decision["decision"] not in ("allow", "deny"):
        return f"malformed decision {decision}"
    if not all(isinstance(p, str) for p in decision["policies"]):
        return f"policy ids that are not strings: {decision}"
    if decision["decision"] == "allow" and not decision["policies"]:
        return f"an allow that names no policy: {decision}"
    if not all(set(e) == {"policy", "message"} and isinstance(e["policy"], str) and isinstance(e["message"], str)
               for e in decision["errors"]):
        return f"malformed errors: {decision}"
    return None


# -- reported: damage with a consistent CRC that is not refused or decided ------------------------------

def header(blob):
    return dict(zip(layout.HEADER_FIELDS, struct.unpack_from(f"<{len(layout.HEADER_FIELDS)}I", blob, 12)))


def first_str(blob, table_off):
    """(offset, bytes) of the str that entry 0 of the offset table at `table_off` names."""
    at = struct.unpack_from("<I", blob, table_off)[0]
    return at + 4, blob[at + 4:at + 4 + struct.unpack_from("<I", blob, at)[0]]


@pytest.mark.parametrize("table, name", [("types_off", b"Group"), ("policy_ids_off", b"readers")],
                         ids=["type name (read at load)", "policy id (read by a decision)"])
def test_a_name_that_is_not_utf8_is_refused_like_other_damage(index, table, name):
    """A type name is read when the generation loads, a policy id when a decision names the policy.
    Either way the damage must be refused as other damage is: IndexUnavailableError at load (and the
    serving engine keeps deciding), or IndexFormatError from the decision. (It once escaped as
    UnicodeDecodeError, and the serving engine stopped serving the generation it had.)"""
    db, blob, baseline = index
    serving = authz.Engine(db, poll_interval_s=3600)
    at, found = first_str(blob, header(blob)[table])
    assert found == name
    damaged = blob[:at] + b"\xff" + blob[at + 1:]
    write_generation(db, damaged, zlib.crc32(damaged))
    try:
        serving.refresh()
    except IndexUnavailableError:
        assert [outcome_of(lambda: serving.check(**request)) for request in REQUESTS] == baseline
        with pytest.raises(IndexUnavailableError, match="is unreadable"):
            authz.Engine(db)
    else:
        with pytest.raises(_evaluator.IndexFormatError):
            serving.check(**REQUESTS[0])  # allowed by "readers", whose id is damaged
    finally:
        serving.close()


DEEP_NOTS = 500_000


def test_a_condition_nested_beyond_what_the_compiler_writes_is_refused_or_decided(tmp_path):
    """The compiler refuses expressions nested deeper than layout.MAX_EXPR_DEPTH; a generation can
    still hold one (its CRC rewritten). A condition of DEEP_NOTS `!` around `true` must be refused
    (IndexFormatError) or be that policy's evaluation error, never a crash. (The decision once overflowed
    an 8 MiB stack, SIGSEGV, near 100,000 levels.)"""
    src = tmp_path / "src"
    src.mkdir()
    # A long string literal makes room in the blob: the chain is written over the condition and on
    # over the string's bytes, which nothing reads at load.
    (src / "p.cedar").write_text('@id("deep")\npermit(principal, action, resource) when { context.s == "'
                                 + "a" * (DEEP_NOTS + 10) + '" };\n')
    (src / "entities.json").write_text("[]")
    db = str(tmp_path / "db")
    authz.compile([str(src)], db=db)
    blob = current_blob(db)
    condition = bytes([layout.OP_EQ, layout.OP_GETATTR, layout.OP_VAR, layout.VAR_CONTEXT])
    at = blob.index(condition)
    assert blob.find(condition, at + 1) == -1 and blob.find(b"a" * DEEP_NOTS) > at
    chain = bytes([layout.OP_NOT]) * DEEP_NOTS + bytes([layout.OP_LIT, layout.V_TRUE])
    damaged = blob[:at] + chain + blob[at + len(chain):]
    write_generation(db, damaged, zlib.crc32(damaged))
    decide = ("import sys, authz\n"
              "from authz.engine import _evaluator\n"
              "engine = authz.Engine(sys.argv[1])\n"
              "try:\n"
              "    print(engine.check('User::\"u\"', 'Action::\"a\"', 'Doc::\"d\"', {}).to_dict())\n"
              "except _evaluator.IndexFormatError as err:\n"
              "    print('refused:', err)\n")
    stack = 8 << 20
    hard = resource.getrlimit(resource.RLIMIT_STACK)[1]
    limit = (stack if hard == resource.RLIM_INFINITY else min(stack, hard), hard)
    done = subprocess.run([sys.executable, "-c", decide, db], capture_output=True, text=True,
                          timeout=HANG_BOUND_S, preexec_fn=lambda: resource.setrlimit(resource.RLIMIT_STACK, limit))
    assert done.returncode == 0, f"exit code {done.returncode}: {done.stderr[-2000:]}"
