"""What only the Redis backend has: exact limits across processes that share nothing but Redis (with the
conflict retries counted), the fan-out of revocations and key rotations, the shared signing keys sealed
under the key-encryption key, failing closed and recovering when Redis stops and starts, and its settings."""
import multiprocessing
import time

import pytest
from rediskit import RedisServer, redis_settings
from statekit import T0

from authz.state import StateConfig, Unavailable
from authz.server.shared_state import probe
from authz.state.open import open_store
from authz.state.redis_config import RedisConfigError, RedisSettings
from authz.tokens.keys import KeyStoreError
from authz.tokens.shared_keys import SharedKeys, SharedKeyStore

LIMIT = 20


def _store(tmp_path, server, **over):
    return open_store(StateConfig(path=str(tmp_path / "unused"), redis=redis_settings(server, **over)))


def _node(url, port, attempts, out):
    """One 'node': its own store, `attempts` decisions of task t1 admitted while calls < LIMIT."""
    from rediskit import RedisServer as _RS
    server = _RS("/tmp", port=port)
    store = open_store(StateConfig(path="/tmp/unused", redis=redis_settings(server)))
    allowed = 0
    for _ in range(attempts):
        def step(batch):
            txn = batch.task("t1", "a1")
            if txn.view()["task"]["calls"] < LIMIT:
                txn.allowed(("Tool", "x"))
                return True
            txn.denied()
            return False
        allowed += store.transact(time.time(), step)
    out.put((allowed, store.conflicts, store.commits))
    store.close()


def test_a_limit_of_20_admits_exactly_20_across_processes(redis_server, tmp_path):
    redis_server.flush()
    ctx = multiprocessing.get_context("fork")
    out = ctx.Queue()
    nodes = [ctx.Process(target=_node, args=(redis_server.url, redis_server.port, 15, out)) for _ in range(3)]
    for p in nodes:
        p.start()
    results = [out.get(timeout=60) for _ in nodes]
    for p in nodes:
        p.join(timeout=30)
    assert sum(r[0] for r in results) == LIMIT
    conflicts, commits = sum(r[1] for r in results), sum(r[2] for r in results)
    print(f"\n3 processes x 15 decisions: {conflicts} conflicts retried over {commits} commits "
          f"({conflicts / max(commits, 1):.1%})")
    store = _store(tmp_path, redis_server)
    view = store.task_view("t1", time.time())
    assert view["calls"] == LIMIT and view["denies"] == 45 - LIMIT
    store.close()


def test_a_revocation_reaches_another_node_through_the_fanout(redis_server, tmp_path):
    redis_server.flush()
    a, b = _store(tmp_path, redis_server), _store(tmp_path, redis_server)
    try:
        assert not b.revocations.current().task_revoked("t9", time.time())  # b's listener is up
        lags = []
        for i in range(20):
            start = time.monotonic()
            a.revocations.revoke("task", f"t{i}", 0, 100)
            while not b.revocations.current().task_revoked(f"t{i}", time.time()):
                assert time.monotonic() - start < 5
                time.sleep(0.001)
            lags.append(time.monotonic() - start)
        print(f"\nrevocation fan-out: max {max(lags) * 1000:.1f} ms over 20")
        assert b.fanout.messages >= 1
    finally:
        a.close()
        b.close()


def test_shared_keys_rotate_on_every_node_and_are_sealed(redis_server, tmp_path):
    redis_server.flush()
    a, b = _store(tmp_path, redis_server), _store(tmp_path, redis_server)
    try:
        ka = SharedKeyStore(a.link, a.settings, 900, 5, a.fanout)
        kb = SharedKeyStore(b.link, b.settings, 900, 5, b.fanout)
        assert ka.active_kid == kb.active_kid
        old = ka.active_kid
        new, retired, _ = SharedKeys(a.link, a.settings).rotate(900, 5)
        assert retired == old
        deadline = time.monotonic() + 5
        while kb.active_kid != new:
            assert time.monotonic() < deadline
            time.sleep(0.005)
        assert kb.public_key(old) is not None  # still verifies the tokens it signed
        raw = redis_server.client().hgetall(b"t:keys")
        private = ka.signing_key()[1].private_bytes_raw()
        assert all(private not in value for value in raw.values())  # never stored in the clear
        with pytest.raises(KeyStoreError, match="another key-encryption key"):
            SharedKeys(a.link, redis_settings(redis_server, kek=b"x" * 32)).read()
        with pytest.raises(ValueError, match="another key-encryption key"):  # authz serve refuses to start
            probe(redis_settings(redis_server, kek=b"x" * 32))
    finally:
        a.close()
        b.close()


def test_redis_stopped_fails_closed_fast_and_recovers_without_restart(tmp_path):
    server = RedisServer(tmp_path / "r").start()
    store = _store(tmp_path, server, command_timeout_s=0.2, connect_timeout_s=0.2, max_staleness_s=0.5)
    try:
        with store.begin("t1", "a1", T0) as txn:
            txn.commit_allowed(("Tool", "x"))
        store.revocations.current()
        server.stop()
        with pytest.raises(Unavailable):
            store.begin("t1", "a1", T0 + 1)
        start = time.monotonic()
        for _ in range(50):  # the breaker answers at once: no timeout per call
            with pytest.raises(Unavailable):
                store.begin("t1", "a1", T0 + 1)
        assert time.monotonic() - start < 5
        time.sleep(0.7)
        from authz.state.redis_revocations import StaleRevocations
        with pytest.raises(StaleRevocations):
            store.revocations.current()
        server.start()  # same port, empty (no persistence in this test)
        deadline = time.monotonic() + 10
        while True:
            try:
                with store.begin("t1", "a1", T0 + 2) as txn:
                    txn.commit_allowed(("Tool", "x"))
                break
            except Unavailable:
                assert time.monotonic() < deadline
                time.sleep(0.05)
        store.revocations.current()
    finally:
        store.close()
        server.stop()


def test_probe_tells_a_wrong_password_from_an_unreachable_server(tmp_path):
    server = RedisServer(tmp_path / "r", password="right-one").start()
    try:
        assert probe(redis_settings(server)) is None
        with pytest.raises(ValueError, match="authentication failed") as err:
            probe(redis_settings(server, password="wrong-one"))
        assert "wrong-one" not in str(err.value)
        port = server.port
    finally:
        server.stop()
    assert "cannot connect" in probe(RedisSettings(f"redis://127.0.0.1:{port}/0", kek=b"k" * 32,
                                                   connect_timeout_s=0.2))


def test_settings_are_checked(tmp_path):
    kek = tmp_path / "kek"
    kek.write_bytes(b"\x01" * 32)
    ok = {"url": "redis://127.0.0.1:6379/0", "key_encryption_key_file": str(kek)}
    assert RedisSettings.from_table(ok).kek == b"\x01" * 32
    bad = [({"url": "http://x:1/0"}, "must be redis://"),
           ({"url": "redis://u:p@x:1/0"}, "must not carry credentials"),
           ({"url": "redis://x:1/db"}, "database must be a number"),
           ({"key_prefix": "bad prefix"}, "key_prefix"),
           ({"key_encryption_key_file": None}, "is required"),
           ({"key_encryption_key_file": str(tmp_path / "missing")}, "cannot read"),
           ({"password_file": str(tmp_path / "missing")}, "cannot read"),
           ({"command_timeout_ms": 0}, "command_timeout_ms"),
           ({"tls_ca_file": str(kek)}, "needs a rediss:// url")]
    short = tmp_path / "short"
    short.write_bytes(b"abc")
    bad.append(({"key_encryption_key_file": str(short)}, "must hold 32 bytes"))
    for over, message in bad:
        doc = {**ok, **over}
        doc = {k: v for k, v in doc.items() if v is not None}
        with pytest.raises(RedisConfigError, match=message):
            RedisSettings.from_table(doc)
    secret = tmp_path / "pw"
    secret.write_text("s3cret-value\n")
    settings = RedisSettings.from_table({**ok, "password_file": str(secret)})
    assert settings.password == "s3cret-value" and "s3cret" not in repr(settings)


def test_a_batch_over_many_tasks_loads_them_in_one_round_trip(redis_server, tmp_path):
    redis_server.flush()
    store = _store(tmp_path, redis_server)
    trips = []
    fast = store.link.fast
    store.link.fast = lambda commands: trips.append(commands[0][0]) or fast(commands)
    try:
        pairs = [(f"t{i}", f"a{i % 3}") for i in range(10)]

        def step(batch):
            batch.prefetch(pairs)
            loaded = len(trips)
            for task, agent in pairs:
                batch.task(task, agent).allowed(("Tool", "x"))
            assert len(trips) == loaded  # nothing more to read
        store.transact(T0, step)
        assert trips.count("EVALSHA") == 2  # one LOAD of the 10 tasks and 3 agents, one COMMIT
        assert [store.task_view(t, T0)["calls"] for t, _ in pairs] == [1] * 10
    finally:
        store.close()


def test_rediss_verifies_the_server_against_the_configured_ca(tmp_path):
    import pathlib
    import subprocess
    import sys
    sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1] / "identity"))
    import material as m

    from rediskit import free_port

    ca, other = m.CertificateAuthority("redis.test"), m.CertificateAuthority("elsewhere.test")
    cert, key = m.write_leaf(tmp_path, "redis", ca, dns=["localhost"])
    (tmp_path / "ca.pem").write_bytes(ca.pem())
    (tmp_path / "other.pem").write_bytes(other.pem())
    port = free_port()
    proc = subprocess.Popen(["redis-server", "--port", "0", "--tls-port", str(port), "--bind", "127.0.0.1",
                             "--tls-cert-file", str(cert), "--tls-key-file", str(key),
                             "--tls-ca-cert-file", str(tmp_path / "ca.pem"), "--tls-auth-clients", "no",
                             "--save", "", "--appendonly", "no", "--dir", str(tmp_path)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        url = f"rediss://localhost:{port}/0"
        settings = RedisSettings(url, tls_ca_file=str(tmp_path / "ca.pem"), kek=b"k" * 32, key_prefix="tls:")
        deadline = time.monotonic() + 10
        while probe(settings) is not None:
            assert time.monotonic() < deadline, probe(settings)
            time.sleep(0.05)
        store = open_store(StateConfig(path=str(tmp_path / "unused"), redis=settings))
        try:
            with store.begin("t1", "a1", T0) as txn:  # the decision path's own connection (resp.py)
                txn.commit_allowed(("Tool", "x"))
            assert store.task_view("t1", T0)["calls"] == 1  # redis-py
            store.revocations.revoke("task", "t1", 0, 10)
            assert store.revocations.current().task_revoked("t1", time.time())
        finally:
            store.close()
        wrong = RedisSettings(url, tls_ca_file=str(tmp_path / "other.pem"), kek=b"k" * 32, key_prefix="tls:")
        assert "certificate verify failed" in probe(wrong)
        store = open_store(StateConfig(path=str(tmp_path / "unused"), redis=wrong))
        try:
            with pytest.raises(Unavailable, match="certificate verify failed"):
                store.begin("t1", "a1", T0)
        finally:
            store.close()
    finally:
        proc.terminate()
        proc.wait(10)


def test_a_worker_copy_never_passes_for_current_after_redis_lost_its_data(redis_server, tmp_path):
    redis_server.flush()
    a, b = _store(tmp_path, redis_server), _store(tmp_path, redis_server)

    def call(store, task="t1"):
        def step(batch):
            txn = batch.task(task, "a1")
            calls = txn.view()["task"]["calls"]
            txn.allowed(("Tool", "x"))
            return calls
        return store.transact(time.time(), step)
    try:
        assert [call(a) for _ in range(3)] == [0, 1, 2]  # a holds its copy of t1 (3 calls)
        redis_server.flush()  # Redis restarted without persistence
        assert [call(b), call(b, "t2"), call(b)] == [0, 0, 1]  # as many writes again: t1 written last
        assert call(a) == 2 and a.conflicts >= 1  # a's copy (3 calls) was refused, the task read again
    finally:
        a.close()
        b.close()
