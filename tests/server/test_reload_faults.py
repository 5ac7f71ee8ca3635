"""Faults around the served index, each with a real server and real files: a reload failing on a full
disk (retried, and reported while the folder is ahead), a corrupt new generation, a worker waiting for
its index, a worker killed with SIGKILL, a worker that never drains, and where a reload's compile runs."""
import contextlib
import errno
import os
import re
import signal
import struct
import subprocess
import sys
import urllib.request
import zlib

import grpc
import lmdb
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from authz._pb import authz_pb2 as pb
from authz._pb import authz_pb2_grpc as pbg
from authz.engine.index import CURRENT_KEY, crc_key, generation_key
from harness import AuthzServer, env_with_repo, free_port, wait_until

SERVING, NOT_SERVING = health_pb2.HealthCheckResponse.SERVING, health_pb2.HealthCheckResponse.NOT_SERVING
POLICIES_HEALTH = "authz.policies"  # the health service that says whether the folder's policies are served
PERMIT = '@id("call")\npermit(principal, action == Action::"call", resource);\n'
FORBID_T = '@id("no-t")\nforbid(principal, action, resource == Tool::"t");\n'


def _write(folder, text, name="p.cedar"):
    """Replace a policy file atomically (temp file + rename), so no scan sees half of it."""
    tmp = folder / f".{name}.tmp"
    tmp.write_text(text)
    os.replace(tmp, folder / name)


def _padding(n):
    return "".join(f'@id("pad-{i}")\npermit(principal == Agent::"pad{i}", action, resource) '
                   f'when {{ context.n > {i} }};\n' for i in range(n))


def _check(server, tool="t"):
    """One v1 Check over a fresh connection: (decision, generation)."""
    with grpc.insecure_channel(server.address, options=[("grpc.use_local_subchannel_pool", 1)]) as ch:
        r = pbg.AuthorizerStub(ch).Check(pb.CheckRequest(
            principal=pb.EntityUid(type="Agent", id="a"), action=pb.EntityUid(type="Action", id="call"),
            resource=pb.EntityUid(type="Tool", id=tool)), timeout=10)
    return r.decision, r.generation


def _health(server, service=""):
    """The health status of `service`, or the gRPC status code when the check is refused."""
    with grpc.insecure_channel(server.address, options=[("grpc.use_local_subchannel_pool", 1)]) as ch:
        try:
            stub = health_pb2_grpc.HealthStub(ch)
            return stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=10).status
        except grpc.RpcError as e:
            return e.code()


def _metric(port, name):
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as r:
        for line in r.read().decode().splitlines():
            if line.startswith(name + " "):
                return float(line.rsplit(" ", 1)[1])
    return None


def _reader_pids(db):
    """The pids in the index's LMDB reader table."""
    env = lmdb.open(str(db), readonly=True, lock=True, map_size=1 << 32)
    try:
        lines = env.readers().splitlines()
    finally:
        env.close()
    return {int(line.split()[0]) for line in lines if line.split() and line.split()[0].isdigit()}


def _children(pid):
    """The child processes of `pid` (started by any of its threads)."""
    found = set()
    try:
        tasks = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return found
    for task in tasks:
        try:
            with open(f"/proc/{pid}/task/{task}/children") as f:
                found.update(int(p) for p in f.read().split())
        except OSError:
            continue
    return found


def _alive(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    with open(f"/proc/{pid}/stat") as f:
        return f.read().rsplit(")", 1)[1].split()[0] != "Z"


@contextlib.contextmanager
def _small_filesystem(path, size):
    """A tmpfs of `size` mounted at `path` (needs CAP_SYS_ADMIN; skipped without it)."""
    path.mkdir()
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)], capture_output=True,
                       text=True)
    if r.returncode:
        pytest.skip(f"cannot mount a small tmpfs here: {r.stderr.strip()}")
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], capture_output=True)


def _fill(path):
    """Fill the file system holding `path` with one file; returns it."""
    filler = path / "filler"
    chunk = b"\0" * (64 << 10)
    with open(filler, "wb") as f:
        for _ in range(1 << 16):  # bounded: 4 GiB at most
            try:
                f.write(chunk)
                f.flush()
            except OSError as e:
                assert e.errno == errno.ENOSPC, e
                break
    return filler


def test_reload_failing_on_a_full_disk_is_retried_and_reported(tmp_path):
    with _small_filesystem(tmp_path / "data", "8m") as data:
        policies = tmp_path / "policies"
        policies.mkdir()
        _write(policies, PERMIT)
        metrics_port = free_port()
        server = AuthzServer(tmp_path, ["--listen", "127.0.0.1:0", "--policies", str(policies), "--workers", "1",
                                        "--data-dir", str(data), "--decision-log", "", "--reload-interval", "0.05",
                                        "--metrics-listen", f"127.0.0.1:{metrics_port}"]).start()
        try:
            assert _check(server) == (pb.DECISION_ALLOW, 1)
            wait_until(lambda: _health(server, POLICIES_HEALTH) == SERVING, 30, "policies health SERVING")
            filler = _fill(data)
            # A new forbid (and enough policies that the generation needs new pages of the full disk).
            _write(policies, PERMIT + FORBID_T + _padding(300))
            wait_until(lambda: "No space left on device" in server.stderr(), 30, "the reload failing on ENOSPC")
            wait_until(lambda: _health(server, POLICIES_HEALTH) == NOT_SERVING, 30, "policies health NOT_SERVING")
            assert _metric(metrics_port, "authz_policies_stale") == 1
            assert _health(server) == SERVING  # the last good generation is still served
            assert _check(server) == (pb.DECISION_ALLOW, 1)
            # Room again: the reload is retried without any change to the folder.
            filler.unlink()
            wait_until(lambda: _check(server)[0] == pb.DECISION_DENY, 60, "the retried reload's forbid applied")
            wait_until(lambda: _health(server, POLICIES_HEALTH) == SERVING, 30, "policies health SERVING again")
            assert _metric(metrics_port, "authz_policies_stale") == 0
            assert _metric(metrics_port, "authz_reload_failures_total") >= 1
        finally:
            assert server.stop() == 0


def _publish_raw(db, blob, crc):
    """Make `blob` the index's current generation behind the compiler's back (a damaged write)."""
    env = lmdb.open(str(db), map_size=1 << 32, lock=True)
    try:
        with env.begin(write=True) as txn:
            number = struct.unpack("<Q", txn.get(CURRENT_KEY))[0] + 1
            txn.put(generation_key(number), blob)
            txn.put(crc_key(number), struct.pack("<I", crc))
            txn.put(CURRENT_KEY, struct.pack("<Q", number))
    finally:
        env.close()
    return number


@pytest.mark.parametrize("damage", ["crc_mismatch", "unreadable_blob"])
def test_a_corrupt_new_generation_leaves_the_old_one_serving(tmp_path, damage):
    policies = tmp_path / "policies"
    policies.mkdir()
    _write(policies, PERMIT)
    server = AuthzServer(tmp_path, ["--listen", "127.0.0.1:0", "--policies", str(policies), "--workers", "1",
                                    "--data-dir", str(tmp_path / "data"), "--reload-interval", "0.05"]).start()
    db = tmp_path / "data" / "authz.lmdb"
    try:
        assert _check(server) == (pb.DECISION_ALLOW, 1)
        wait_until(lambda: _health(server, POLICIES_HEALTH) == SERVING, 30, "policies health SERVING")
        blob = b"AUTHZ\0\0\0" + os.urandom(200)
        crc = zlib.crc32(blob) ^ 1 if damage == "crc_mismatch" else zlib.crc32(blob)
        assert _publish_raw(db, blob, crc) == 2
        # The worker cannot load generation 2: it says so, and keeps deciding with generation 1.
        wait_until(lambda: _health(server, POLICIES_HEALTH) == NOT_SERVING, 30, "policies health NOT_SERVING")
        assert _health(server) == SERVING
        assert _check(server) == (pb.DECISION_ALLOW, 1)
        assert _check(server, "other") == (pb.DECISION_ALLOW, 1)
        # The next good compile replaces it.
        _write(policies, PERMIT + FORBID_T)
        wait_until(lambda: _check(server) == (pb.DECISION_DENY, 3), 30, "generation 3 served")
        wait_until(lambda: _health(server, POLICIES_HEALTH) == SERVING, 30, "policies health SERVING again")
    finally:
        assert server.stop() == 0


def test_a_worker_waits_for_its_index_and_serves_once_it_appears(tmp_path):
    db = tmp_path / "later" / "authz.lmdb"
    server = AuthzServer(tmp_path, ["--listen", "127.0.0.1:0", "--db", str(db), "--wait-for-index", "--workers", "1",
                                    "--data-dir", str(tmp_path / "data")]).start(wait_serving=False)
    try:
        assert _health(server) == NOT_SERVING
        with pytest.raises(grpc.RpcError) as e:
            _check(server)
        assert e.value.code() == grpc.StatusCode.UNAVAILABLE and "index_unavailable" in e.value.details()
        policies = tmp_path / "policies"
        policies.mkdir()
        _write(policies, PERMIT)
        r = subprocess.run([sys.executable, "-m", "authz", "compile", str(policies), "--db", str(db)],
                           capture_output=True, text=True, timeout=60, env=env_with_repo())
        assert r.returncode == 0, r.stderr
        server.wait_serving()
        assert _check(server) == (pb.DECISION_ALLOW, 1)
        assert "not serving until the index can be opened" in server.stderr()
    finally:
        assert server.stop() == 0


def test_a_killed_worker_is_replaced_and_its_reader_slot_cleared(tmp_path):
    policies = tmp_path / "policies"
    policies.mkdir()
    _write(policies, PERMIT)
    # Two workers: the survivor keeps the index open, so the replacement is not its first opener
    # (which would reset the reader table itself).
    server = AuthzServer(tmp_path, ["--listen", "127.0.0.1:0", "--policies", str(policies), "--workers", "2",
                                    "--data-dir", str(tmp_path / "data")]).start()
    db = tmp_path / "data" / "authz.lmdb"
    try:
        victim = server.pids[0]
        assert victim in _reader_pids(db)  # the worker's snapshot of its generation
        before = _children(server.proc.pid)
        os.kill(victim, signal.SIGKILL)
        fresh = wait_until(lambda: _children(server.proc.pid) - before, 60, "a replacement worker")
        server.wait_serving()
        assert _check(server) == (pb.DECISION_ALLOW, 1)
        assert f"(pid {victim}) exited with code -9; restarting it" in server.stderr()
        # The dead worker's slot is gone before any compile (it would pin generation 1's pages).
        assert victim not in _reader_pids(db)
        wait_until(lambda: fresh & _reader_pids(db), 30, "the replacement reading the index")
    finally:
        assert server.stop() == 0


def test_a_worker_that_does_not_drain_is_killed_after_the_drain_timeout(tmp_path):
    policies = tmp_path / "policies"
    policies.mkdir()
    _write(policies, PERMIT)
    server = AuthzServer(tmp_path, ["--listen", "127.0.0.1:0", "--policies", str(policies), "--workers", "1",
                                    "--data-dir", str(tmp_path / "data"), "--drain", "1"]).start()
    worker = server.pids[0]
    try:
        os.kill(worker, signal.SIGSTOP)  # a worker that cannot answer SIGTERM
        server.proc.send_signal(signal.SIGTERM)
        assert server.proc.wait(60) == 0
        assert "worker 0 did not drain in time; killing it" in server.stderr()
        assert not _alive(worker)
    finally:
        if _alive(worker):
            os.kill(worker, signal.SIGKILL)
        server.stop()


def _peak_rss_kib(pid):
    with open(f"/proc/{pid}/status") as f:
        return int(re.search(r"^VmHWM:\s+(\d+) kB", f.read(), re.M).group(1))


def _compile_child(supervisor):
    """The pid of the supervisor's running compile child, if any."""
    for pid in _children(supervisor):
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                if b"authz.server.reload" in f.read():
                    return pid
        except OSError:
            continue
    return None


def test_a_reload_compiles_in_a_short_lived_child_process(tmp_path):
    policies = tmp_path / "policies"
    policies.mkdir()
    _write(policies, PERMIT)
    server = AuthzServer(tmp_path, ["--listen", "127.0.0.1:0", "--policies", str(policies), "--workers", "1",
                                    "--data-dir", str(tmp_path / "data"), "--reload-interval", "0.05"]).start()
    try:
        _write(policies, PERMIT + _padding(5000))
        # A compile killed midway (as the OOM killer would) is a failed reload, retried unchanged.
        doomed = wait_until(lambda: _compile_child(server.proc.pid), 30, "the compile child")
        os.kill(doomed, signal.SIGKILL)
        wait_until(lambda: "the compile process was killed by signal 9" in server.stderr(), 30, "the kill logged")
        assert _check(server) == (pb.DECISION_ALLOW, 1)
        wait_until(lambda: _check(server)[1] == 2, 60, "generation 2 served")
        m = wait_until(lambda: re.search(r"compiled `[^`]*` in a child process \(pid (\d+)\): generation 2, "
                                         r"[\d.]+ s, peak ([\d.]+) MiB", server.stderr()), 30, "the compile logged")
        child, child_peak_kib = int(m.group(1)), float(m.group(2)) * 1024
        assert child not in (server.proc.pid, doomed, *server.pids) and not _alive(child)
        # The supervisor never held what the compile did.
        assert _peak_rss_kib(server.proc.pid) < child_peak_kib
    finally:
        assert server.stop() == 0
