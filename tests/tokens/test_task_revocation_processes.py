"""Revocation written by one process is honoured by another on its very next verification (one LMDB env, two processes)."""
import multiprocessing

import pytest
from tokenkit import Kit, make_index


def _verifier_process(data_dir, db, conn):
    """A separate process with its own key store, revocation reader and verifier cache."""
    import time

    from authz.tokens.config import TokenConfig
    from authz.tokens.keys import KeyStore
    from authz.tokens.revocation import RevocationStore
    from authz.tokens.verify import TokenError, Verifier

    verifier = Verifier(TokenConfig(), KeyStore(data_dir), RevocationStore(db), time.time)
    while True:
        cmd = conn.recv()
        if cmd[0] == "stop":
            return
        if cmd[0] == "verify":
            try:
                verifier.verify(cmd[1])
                conn.send(("ok", verifier.hits))
            except TokenError as e:
                conn.send((e.code, verifier.hits))
        elif cmd[0] == "revoke":
            verifier.revocations.revoke(cmd[1], cmd[2], 0, 1000)
            conn.send(("revoked", 0))


@pytest.fixture
def processes(tmp_path, clock):
    kit = Kit(tmp_path / "data", make_index(tmp_path), clock)
    ctx = multiprocessing.get_context("spawn")
    procs = []
    for _ in range(2):
        parent, child = ctx.Pipe()
        p = ctx.Process(target=_verifier_process, args=(kit.data_dir, kit.db, child), daemon=True)
        p.start()
        procs.append((p, parent))
    yield kit, [c for _, c in procs]
    for p, c in procs:
        c.send(("stop",))
        p.join(10)
        if p.is_alive():
            p.kill()
    kit.revocations.close()


def _ask(conn, *cmd):
    conn.send(cmd)
    assert conn.poll(30), "the verifier process did not answer"
    return conn.recv()


def test_revocation_seen_by_another_process_on_its_next_decision(processes):
    kit, (a, b) = processes
    t1, t2, t3 = kit.issue(task="t1"), kit.issue(task="t2", caller="a2"), kit.issue(task="t3")
    for conn in (a, b):
        for t in (t1, t2, t3):
            assert _ask(conn, "verify", t.token)[0] == "ok"
    assert _ask(b, "verify", t1.token) == ("ok", 1)  # a cache hit in b
    assert _ask(a, "revoke", "task", "t1")[0] == "revoked"
    assert _ask(b, "verify", t1.token)[0] == "task_revoked"  # cached, yet refused at once
    assert _ask(b, "verify", t3.token)[0] == "ok"
    kit.revocations.revoke("agent", "a2", 0, 1000)  # written by a third process (the test)
    assert _ask(a, "verify", t2.token)[0] == "agent_revoked"
    assert _ask(b, "verify", t2.token)[0] == "agent_revoked"
