"""Hot reload under load: several recompiles while requests stream in; zero failures, each answer from one whole generation."""
import os
import re
import threading
import time
import urllib.request

import grpc

from authz._pb import authz_pb2 as pb
from authz._pb import authz_pb2_grpc as pbg
from harness import AuthzServer, free_port, wait_until

MAX_REQUESTS_PER_THREAD = 50000
MAX_SECONDS = 60.0
VERSIONS = 5


def _write_atomically(folder, text):
    """Replace p.cedar in one step (temp file + rename): no scan can see it half written."""
    tmp = folder / ".p.cedar.tmp"
    tmp.write_text(text)
    os.replace(tmp, folder / "p.cedar")


def _write_version(folder, k):
    """Publish version k: two permits whose ids carry k, so a mixed answer would show."""
    _write_atomically(folder, f'@id("a-v{k}")\npermit(principal, action, resource) when {{ context.n >= 0 }};\n'
                              f'@id("b-v{k}")\npermit(principal, action == Action::"call", resource);\n'
                              f'@id("f-v{k}")\nforbid(principal, action, resource == Tool::"never");\n')


def _version_of(result):
    ids = sorted(result.policies)
    m = re.fullmatch(r"a-v(\d+)", ids[0]) if len(ids) == 2 else None
    assert m and ids == [f"a-v{m.group(1)}", f"b-v{m.group(1)}"], f"mixed or unexpected answer {ids}"
    return int(m.group(1))


def _request(n=0):
    ctx = {"n": n}
    req = pb.BatchCheckItem(principal=pb.EntityUid(type="Agent", id=f"a{n}"),
                            action=pb.EntityUid(type="Action", id="call"), resource=pb.EntityUid(type="Tool", id="t"))
    req.context.update(ctx)
    return req


def test_hot_reload_under_load(tmp_path):
    policies = tmp_path / "policies"
    policies.mkdir()
    _write_version(policies, 1)
    metrics_port = free_port()
    server = AuthzServer(tmp_path, ["--listen", "127.0.0.1:0", "--policies", str(policies), "--workers", "2",
                                    "--data-dir", str(tmp_path / "data"), "--reload-interval", "0.05",
                                    "--metrics-listen", f"127.0.0.1:{metrics_port}"]).start()
    stop = threading.Event()
    failures, seen, counts = [], set(), []

    def load(worker_no):
        n = 0
        deadline = time.monotonic() + MAX_SECONDS
        # A fresh connection per thread; the kernel spreads them over both workers.
        with grpc.insecure_channel(server.address, options=[("grpc.use_local_subchannel_pool", 1)]) as ch:
            stub = pbg.AuthorizerStub(ch)
            while not stop.is_set() and n < MAX_REQUESTS_PER_THREAD and time.monotonic() < deadline:
                try:
                    resp = stub.BatchCheck(pb.BatchCheckRequest(items=[_request(i) for i in range(5)]), timeout=10)
                    versions = {_version_of(r) for r in resp.results}
                    generations = {r.generation for r in resp.results}
                    assert len(resp.results) == 5 and len(versions) == 1 and len(generations) == 1, resp
                    assert all(r.decision == pb.DECISION_ALLOW for r in resp.results)
                    seen.update(versions)
                except Exception as e:  # noqa: BLE001 - every failure is reported below
                    failures.append(repr(e))
                    return
                n += 1
        counts.append(n)

    threads = [threading.Thread(target=load, args=(i,)) for i in range(4)]
    try:
        for t in threads:
            t.start()

        def every_worker_serves(k):
            for _ in range(8):
                with grpc.insecure_channel(server.address, options=[("grpc.use_local_subchannel_pool", 1)]) as ch:
                    r = pbg.AuthorizerStub(ch).BatchCheck(pb.BatchCheckRequest(items=[_request()]), timeout=10)
                if _version_of(r.results[0]) != k:
                    return False
            return True

        for k in range(2, VERSIONS + 1):
            _write_version(policies, k)
            wait_until(lambda: every_worker_serves(k) or failures, 30, f"version {k} served")
            assert not failures, failures[:3]
        # A broken edit: the last good generation keeps serving, the failure is logged, counted (once
        # per attempt: it is retried) and reported as a stale folder.
        _write_atomically(policies, "permit(principal, action, resource) when { 1 + };")
        wait_until(lambda: "reload of" in server.stderr() and "failed" in server.stderr(), 30, "failed reload logged")
        assert every_worker_serves(VERSIONS)
        with urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=5) as r:
            metrics = {line.rsplit(" ", 1)[0]: float(line.rsplit(" ", 1)[1])
                       for line in r.read().decode().splitlines() if line and not line.startswith("#")}
        assert metrics["authz_reload_failures_total"] >= 1
        assert metrics["authz_policies_stale"] == 1
        assert metrics["authz_index_generation"] == VERSIONS
    finally:
        stop.set()
        for t in threads:
            t.join(MAX_SECONDS + 10)
        server.stop()
    assert not failures, failures[:3]
    assert len(counts) == 4 and sum(counts) > 0
    assert seen <= set(range(1, VERSIONS + 1)) and VERSIONS in seen
    assert server.workers_alive() is False
