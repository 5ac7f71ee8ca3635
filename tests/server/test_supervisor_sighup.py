"""SIGHUP to the `authz serve` supervisor (logrotate's postrotate `kill -HUP`): the server keeps serving and
every worker reopens the decision log."""
import json
import os
import signal

import grpc

from harness import AuthzServer, wait_until

from authz._pb import authz_pb2 as pb
from authz._pb import authz_pb2_grpc as pbg


def check(server) -> str:
    """One authz.v1 Check (development mode on loopback: an explicit principal); returns its decision id."""
    with grpc.insecure_channel(server.address) as ch:
        r = pbg.AuthorizerStub(ch).Check(pb.CheckRequest(
            principal=pb.EntityUid(type="Agent", id="a1"), action=pb.EntityUid(type="Action", id="call"),
            resource=pb.EntityUid(type="Tool", id="t")), timeout=10)
    assert r.decision == pb.DECISION_ALLOW
    return r.decision_id


def logged_ids(path) -> set:
    try:
        return {json.loads(line)["decision_id"] for line in path.read_text().splitlines()}
    except FileNotFoundError:
        return set()


def test_sighup_to_the_supervisor_reopens_the_decision_log_in_every_worker(tmp_path, policies_dir):
    log_path = tmp_path / "data" / "decisions.jsonl"
    server = AuthzServer(tmp_path, ["--listen", "127.0.0.1:0", "--policies", str(policies_dir),
                                    "--data-dir", str(tmp_path / "data"), "--workers", "2"]).start()
    try:
        first = check(server)
        wait_until(lambda: first in logged_ids(log_path), 30, "the first decision in the log")
        rotated = tmp_path / "data" / "decisions.jsonl.1"
        os.rename(log_path, rotated)  # what logrotate does before its postrotate command

        os.kill(server.proc.pid, signal.SIGHUP)
        # Each worker opens the file at the path again at once (before any new decision is written).
        wait_until(log_path.exists, 30, "the decision log reopened at its path")
        wait_until(lambda: server.stderr().count("reopened") >= 2, 30, "both workers reopening the log")
        assert server.proc.poll() is None and server.workers_alive()

        second = check(server)
        wait_until(lambda: second in logged_ids(log_path), 30, "the new decision in the new file")
        assert first in logged_ids(rotated) and second not in logged_ids(rotated)
        assert server.proc.poll() is None and server.workers_alive()
    finally:
        code = server.stop()
    assert code == 0, server.stderr()
