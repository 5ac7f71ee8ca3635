"""The decision log under real faults, written by a real 2-worker server: a full file system (a small tmpfs),
rotation by size, a rename by logrotate and SIGHUP. Every line in every file is whole JSON, every decision
is either in the log or counted as dropped, and a failure is logged once, not once a write."""
import errno
import json
import os
import re
import signal
import subprocess
import urllib.request

import pytest

from authz._pb import authz_pb2 as pb
from authz._pb import authz_pb2_grpc as pbg
from authz.server.logfile import AppendError, LineFile
from harness import POLICIES, AuthzServer, free_port, wait_until

CANNOT_WRITE = "cannot write decision log"
WRITTEN_AGAIN = "is written again"


@pytest.fixture
def policies(tmp_path):
    folder = tmp_path / "policies"
    folder.mkdir()
    (folder / "p.cedar").write_text(POLICIES)
    return folder


def _server(tmp_path, policies, log_path, workers=2, **server_table):
    metrics_port = free_port()
    config = tmp_path / "authz.toml"
    config.write_text("[server]\n" + "".join(f"{k} = {v!r}\n" for k, v in server_table.items()))
    server = AuthzServer(tmp_path, ["--config", str(config), "--listen", "127.0.0.1:0", "--policies", str(policies),
                                    "--workers", str(workers), "--data-dir", str(tmp_path / "data"),
                                    "--decision-log", str(log_path), "--metrics-listen", f"127.0.0.1:{metrics_port}"])
    return server.start(), metrics_port


def _batch(channel, n=100) -> list:
    """Decide a BatchCheck of `n` items; returns their decision ids."""
    r = pbg.AuthorizerStub(channel).BatchCheck(pb.BatchCheckRequest(
        principal=pb.EntityUid(type="Agent", id="a1"), action=pb.EntityUid(type="Action", id="call"),
        items=[pb.BatchCheckItem(resource=pb.EntityUid(type="Tool", id=f"t{i}")) for i in range(n)]), timeout=10)
    return [x.decision_id for x in r.results]


def _dropped(metrics_port) -> float:
    text = urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=10).read().decode()
    m = re.search(r"^authz_decision_log_dropped_total (\S+)$", text, re.M)
    return float(m.group(1)) if m else 0.0


def _logged_ids(*paths) -> list:
    """The decision ids of every line of the files; each line must be a whole JSON object."""
    ids = []
    for path in paths:
        data = path.read_bytes()
        assert not data or data.endswith(b"\n"), f"{path} ends in a cut line"
        for line in data.splitlines():
            ids.append(json.loads(line)["decision_id"])
    return ids


@pytest.fixture
def small_fs(tmp_path):
    """A 256 KiB tmpfs (needs CAP_SYS_ADMIN, as root in CI)."""
    path = tmp_path / "logfs"
    path.mkdir()
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=256k", "tmpfs", str(path)], capture_output=True, text=True)
    if r.returncode:
        pytest.skip(f"cannot mount a small tmpfs here: {r.stderr.strip()}")
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], capture_output=True)


def _fill_leaving(folder, room: int):
    """Fill the file system of `folder` with one file, then free `room` bytes of it; returns the file."""
    filler = folder / "filler"
    with open(filler, "wb") as f:
        for _ in range(1 << 12):  # bounded: 256 MiB at most
            try:
                f.write(b"\0" * (64 << 10))
                f.flush()
            except OSError as e:
                assert e.errno == errno.ENOSPC, e
                break
    os.truncate(filler, max(0, filler.stat().st_size - room))
    return filler


def test_full_disk_drops_whole_lines_counts_them_and_recovers(tmp_path, policies, small_fs):
    log_path = small_fs / "decisions.jsonl"
    filler = _fill_leaving(small_fs, 48 << 10)  # room for about two batches' lines
    server, metrics_port = _server(tmp_path, policies, log_path)
    sent = []
    try:
        with server.channel() as ch:
            for _ in range(100):  # bounded: the room is gone after a few batches
                sent += _batch(ch)
                if _dropped(metrics_port) > 0:
                    break
            wait_until(lambda: _dropped(metrics_port) > 0, 30, "lines dropped on the full disk")
            for _ in range(10):  # still full: more drops, no more log lines about it
                sent += _batch(ch)
            wait_until(lambda: len(sent) - len(_logged_ids(log_path)) == _dropped(metrics_port), 30,
                       "every decision logged or counted as dropped")
            failures = server.stderr().count(CANNOT_WRITE)
            assert 1 <= failures <= len(server.pids), server.stderr()[-3000:]
            # Room again: the lines of the next batches are written.
            filler.unlink()
            last = _batch(ch)
            sent += last
            wait_until(lambda: set(last) <= set(_logged_ids(log_path)), 30, "logging resumed")
            wait_until(lambda: len(sent) - len(_logged_ids(log_path)) == _dropped(metrics_port), 30,
                       "every decision logged or counted as dropped")
        logged = _logged_ids(log_path)
        assert len(set(logged)) == len(logged) and set(logged) <= set(sent)
        assert _dropped(metrics_port) >= 1000
        assert server.stderr().count(CANNOT_WRITE) == failures  # one line per worker and episode
        assert server.stderr().count(WRITTEN_AGAIN) >= 1
        assert "Traceback" not in server.stderr()
    finally:
        assert server.stop() == 0


def test_rotated_by_size_keeping_the_newest_files(tmp_path, policies):
    log_path = tmp_path / "log" / "decisions.jsonl"
    server, metrics_port = _server(tmp_path, policies, log_path, decision_log_max_bytes=8192, decision_log_keep=2)
    sent = []
    try:
        with server.channel() as ch:
            for _ in range(10):
                sent += _batch(ch)
        files = [log_path, log_path.with_name("decisions.jsonl.1"), log_path.with_name("decisions.jsonl.2")]

        def last_logged():
            try:
                return sent[-1] in _logged_ids(*files)
            except FileNotFoundError:  # read between two renames of a rotation
                return False

        wait_until(last_logged, 30, "the last decision logged")
        assert not log_path.with_name("decisions.jsonl.3").exists()
        assert all(0 < f.stat().st_size <= 8192 for f in files)
        logged = _logged_ids(*files)
        assert len(set(logged)) == len(logged) and set(logged) <= set(sent)
        assert _dropped(metrics_port) == 0
    finally:
        assert server.stop() == 0


def test_renamed_log_is_followed_and_sighup_reopens_it(tmp_path, policies):
    log_path = tmp_path / "log" / "decisions.jsonl"
    server, _ = _server(tmp_path, policies, log_path, workers=1)
    try:
        with server.channel() as ch:
            first = _batch(ch, 5)
            wait_until(lambda: log_path.exists() and set(first) <= set(_logged_ids(log_path)), 30, "first lines")
            # logrotate renames the file: the next lines go to a new file at the path.
            os.rename(log_path, log_path.with_name("old-1"))
            second = _batch(ch, 5)
            wait_until(lambda: log_path.exists() and set(second) <= set(_logged_ids(log_path)), 30,
                       "a new file at the path")
            assert _logged_ids(log_path.with_name("old-1")) == first
            # Renamed again, then SIGHUP: the worker opens (creates) the file at once, before any decision.
            os.rename(log_path, log_path.with_name("old-2"))
            os.kill(server.pids[0], signal.SIGHUP)
            wait_until(log_path.exists, 30, "the file reopened on SIGHUP")
            assert log_path.stat().st_size == 0
            third = _batch(ch, 5)
            wait_until(lambda: set(third) <= set(_logged_ids(log_path)), 30, "lines in the reopened file")
        assert _logged_ids(log_path.with_name("old-2")) == second
        assert server.workers_alive() and "decision log" in server.stderr() and "reopened" in server.stderr()
    finally:
        assert server.stop() == 0


def test_a_line_left_cut_short_is_removed_before_the_next_append(tmp_path):
    path = tmp_path / "d.jsonl"
    path.write_bytes(b'{"decision_id":"a"}\n{"decision_id":"b"}\n{"decision_id":"c", "pol')  # a killed writer
    f = LineFile(str(path))
    f.append(b'{"decision_id":"d"}\n')
    f.close()
    assert _logged_ids(path) == ["a", "b", "d"]


def test_a_write_cut_short_by_a_full_disk_keeps_only_whole_lines(small_fs):
    path = small_fs / "d.jsonl"
    filler = _fill_leaving(small_fs, 8 << 10)
    f = LineFile(str(path))
    lines = b"".join(b'{"decision_id":"%06d"}\n' % i for i in range(2000))  # ~46 KB: more than the room
    with pytest.raises(AppendError) as e:
        f.append(lines)
    kept = path.read_bytes()
    assert e.value.error.errno == errno.ENOSPC
    assert 0 < len(kept) == e.value.written and kept.endswith(b"\n") and lines.startswith(kept)
    filler.unlink()
    f.append(b'{"decision_id":"x"}\n')
    f.close()
    assert _logged_ids(path)[-1] == "x"


def test_rotation_keeps_each_file_under_the_limit(tmp_path):
    path = tmp_path / "d.jsonl"
    f = LineFile(str(path), max_bytes=4096, keep=3)
    lines = [b'{"decision_id":"%05d"}\n' % i for i in range(1000)]  # 21 bytes each
    for k in range(0, 1000, 64):
        f.append(b"".join(lines[k:k + 64]))
    f.append(b'{"decision_id":"' + b"l" * 5000 + b'"}\n')  # longer than the limit: a file of its own
    f.close()
    files = [path] + [path.with_name(f"d.jsonl.{i}") for i in (1, 2, 3)]
    assert not path.with_name("d.jsonl.4").exists()
    assert _logged_ids(path) == ["l" * 5000]
    assert all(0 < p.stat().st_size <= 4096 for p in files[1:])
    ids = _logged_ids(*reversed(files[1:]))
    assert ids == [f"{i:05d}" for i in range(1000 - len(ids), 1000)]  # the newest lines, in order


def test_writers_sharing_a_file_follow_each_others_rotations(tmp_path):
    """Two writers (as two workers) alternate on one path with a small limit: each rotation by one is
    followed by the other, every line lands once, and every file stays under the limit."""
    path = tmp_path / "d.jsonl"
    writers = [LineFile(str(path), max_bytes=4096, keep=100) for _ in range(2)]
    for k in range(300):
        writers[k % 2].append(b"".join(b'{"decision_id":"%d-%d"}\n' % (k, i) for i in range(10)))
    for w in writers:
        w.close()
    rotated = sorted(tmp_path.glob("d.jsonl.*"), key=lambda p: -int(p.suffix[1:]))
    assert len(rotated) >= 10 and all(p.stat().st_size <= 4096 for p in [*rotated, path])
    assert _logged_ids(*rotated, path) == [f"{k}-{i}" for k in range(300) for i in range(10)]
