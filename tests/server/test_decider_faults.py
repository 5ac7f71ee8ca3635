"""The decider's fail-closed paths, driven by real faults under a real server: an index removed (its worker
restarted without one: index_unavailable) and a damaged generation the engine loads but cannot decide with
(internal_error). Every front answers without an allow, the log holds no traceback flood, and the server
serves again once the index is good."""
import json
import os
import re
import shutil
import signal
import struct
import time
import urllib.request
import zlib

import grpc
import lmdb
import pytest
from envoy.service.auth.v3 import external_auth_pb2 as ea
from envoy.service.auth.v3 import external_auth_pb2_grpc as eag

import authz
from authz._pb import authz_pb2 as pb
from authz._pb import authz_pb2_grpc as pbg
from authz._pb import tokens_pb2, tokens_pb2_grpc
from authz.engine.index import CURRENT_KEY, crc_key, generation_key
from authz.errors import IndexUnavailableError, RequestError
from harness import POLICIES, AuthzServer, caller_metadata, free_port, wait_until

AGENT_CALL = {"principal": {"type": "Agent", "id": "a1"}, "action": {"type": "Action", "id": "call"},
              "resource": {"type": "Tool", "id": "t"}, "context": {}}  # allowed by `agent-call`


def _uid(d):
    return pb.EntityUid(type=d["type"], id=d["id"])


def _v1_check(server):
    """(decision, None) of a v1 Check of AGENT_CALL, or (status code, details) when the call is refused."""
    with grpc.insecure_channel(server.address, options=[("grpc.use_local_subchannel_pool", 1)]) as ch:
        try:
            r = pbg.AuthorizerStub(ch).Check(pb.CheckRequest(
                principal=_uid(AGENT_CALL["principal"]), action=_uid(AGENT_CALL["action"]),
                resource=_uid(AGENT_CALL["resource"])), timeout=10)
        except grpc.RpcError as e:
            return e.code(), e.details()
    return r.decision, None


def _batch_codes(channel):
    r = pbg.AuthorizerStub(channel).BatchCheck(pb.BatchCheckRequest(
        principal=_uid(AGENT_CALL["principal"]), action=_uid(AGENT_CALL["action"]),
        items=[pb.BatchCheckItem(resource=pb.EntityUid(type="Tool", id=t)) for t in ("t", "u")]), timeout=10)
    return [(x.decision, x.request_error.code) for x in r.results]


def _envoy_reason(channel):
    req = ea.CheckRequest()
    req.attributes.request.http.method, req.attributes.request.http.path = "GET", "/public/x"
    r = eag.AuthorizationStub(channel).Check(req, timeout=10)
    assert r.status.code == 7 and r.denied_response.status.code == 403  # PERMISSION_DENIED, HTTP 403
    return json.loads(r.denied_response.body)["reason"]


def _metric(port, name, labels):
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read().decode()
    m = re.search(rf"^{name}{{{labels}}} (\S+)$", text, re.M)
    return float(m.group(1)) if m else 0.0


def _current_blob(db) -> bytes:
    env = lmdb.open(str(db), subdir=True, readonly=True, lock=False)
    try:
        with env.begin() as txn:
            return bytes(txn.get(generation_key(struct.unpack("<Q", txn.get(CURRENT_KEY))[0])))
    finally:
        env.close()


def _publish_raw(db, blob: bytes) -> int:
    """Make `blob` the current generation with a matching CRC, behind the compiler's back (a faulty writer)."""
    env = lmdb.open(str(db), map_size=1 << 32, subdir=True, lock=True)
    try:
        with env.begin(write=True) as txn:
            number = struct.unpack("<Q", txn.get(CURRENT_KEY))[0] + 1
            txn.put(generation_key(number), blob)
            txn.put(crc_key(number), struct.pack("<I", zlib.crc32(blob)))
            txn.put(CURRENT_KEY, struct.pack("<Q", number))
    finally:
        env.close()
    return number


def _undecidable_generation(tmp_path, blob: bytes) -> bytes:
    """The longest cut-short copy of `blob` that authz.Engine loads but cannot decide AGENT_CALL with."""
    scratch = tmp_path / "scratch"
    (tmp_path / "scratch.cedar").write_text(POLICIES)
    authz.compile([str(tmp_path / "scratch.cedar")], str(scratch))
    for cut in range(len(blob) - 1, 0, -1):  # bounded by the blob's size (a few KB)
        _publish_raw(scratch, blob[:cut])
        try:
            engine = authz.Engine(str(scratch))
        except IndexUnavailableError:
            continue  # refused at load: the served generation would stay
        try:
            engine.check(AGENT_CALL["principal"], AGENT_CALL["action"], AGENT_CALL["resource"], {})
        except RequestError:
            pass
        except Exception:  # noqa: BLE001 - what the decider turns into internal_error
            return blob[:cut]
        finally:
            engine.close()
    pytest.fail("no cut-short generation is loaded and then fails a decision: find another real fault that "
                "makes the engine raise, or the internal_error path is not reached any more")


@pytest.fixture
def served_db(tmp_path):
    """A compiled index and a 1-worker server on it (no policies folder: nothing recompiles it)."""
    (tmp_path / "p.cedar").write_text(POLICIES)
    db = tmp_path / "db"
    authz.compile([str(tmp_path / "p.cedar")], str(db))
    metrics_port = free_port()
    server = AuthzServer(tmp_path, ["--listen", "127.0.0.1:0", "--db", str(db), "--workers", "1",
                                    "--data-dir", str(tmp_path / "data"),
                                    "--metrics-listen", f"127.0.0.1:{metrics_port}"]).start()
    try:
        yield server, db, metrics_port
    finally:
        assert server.stop() == 0


def test_removed_index_is_index_unavailable_then_served_again(served_db, tmp_path):
    server, db, metrics_port = served_db
    assert _v1_check(server) == (pb.DECISION_ALLOW, None)
    shutil.rmtree(db)
    # The worker keeps the generation it has mapped ...
    assert _v1_check(server) == (pb.DECISION_ALLOW, None)
    # ... and the one that replaces it after a crash finds no index.
    os.kill(server.pids[0], signal.SIGKILL)
    wait_until(lambda: str(_v1_check(server)[1]).startswith("index_unavailable: "), 60,
               "v1 Check answering index_unavailable")
    code, details = _v1_check(server)
    assert code == grpc.StatusCode.UNAVAILABLE and "(decision " in details
    with grpc.insecure_channel(server.address) as ch:
        assert _batch_codes(ch) == [(pb.DECISION_DENY, "index_unavailable")] * 2
        assert _envoy_reason(ch) == "index_unavailable"
        with pytest.raises(grpc.RpcError) as e:
            tokens_pb2_grpc.TokensStub(ch).Issue(tokens_pb2.IssueRequest(
                task="t1", scope=tokens_pb2.TokenScope(actions=['Action::"call"'], resources=['Tool::"t"']),
                ttl_s=60), metadata=caller_metadata("spiffe://example.org/agent"), timeout=10)
        # (the revocation set lives in the index too: whichever is found missing first names the answer)
        assert e.value.code() == grpc.StatusCode.UNAVAILABLE
        assert e.value.details().split(":")[0] in ("index_unavailable", "revocation_unavailable")
    assert _metric(metrics_port, "authz_request_errors_total", 'api="v1",code="index_unavailable"') >= 3
    # The index comes back: the worker opens it and serves.
    authz.compile([str(tmp_path / "p.cedar")], str(db))
    server.wait_serving()
    assert _v1_check(server) == (pb.DECISION_ALLOW, None)
    assert "Traceback" not in server.stderr()


def test_generation_the_engine_cannot_decide_with_is_internal_error(served_db, tmp_path):
    from authz.server.decider import _engine_failures

    server, db, metrics_port = served_db
    good = _current_blob(db)
    damaged = _undecidable_generation(tmp_path, good)
    assert _v1_check(server) == (pb.DECISION_ALLOW, None)
    _publish_raw(db, damaged)
    start = time.monotonic()
    wait_until(lambda: str(_v1_check(server)[1]).startswith("internal_error: "), 60,
               "v1 Check answering internal_error")
    code, details = _v1_check(server)
    assert code == grpc.StatusCode.UNAVAILABLE and details.startswith("internal_error: internal error (decision ")
    with grpc.insecure_channel(server.address) as ch:
        for _ in range(20):  # each request reaches the damage again
            assert _batch_codes(ch) == [(pb.DECISION_DENY, "internal_error")] * 2
    elapsed = time.monotonic() - start
    assert _metric(metrics_port, "authz_request_errors_total", 'api="v1",code="internal_error"') >= 40
    # One traceback per interval at most, however many requests fail.
    tracebacks = server.stderr().count("Traceback")
    assert 1 <= tracebacks <= 2 + int(elapsed // _engine_failures._interval), server.stderr()[-3000:]
    assert server.stderr().count("engine failure; denying with internal_error") == tracebacks
    # A good generation again: served.
    _publish_raw(db, good)
    wait_until(lambda: _v1_check(server) == (pb.DECISION_ALLOW, None), 60, "the good generation served again")
