"""Stale LMDB readers: a reader killed with SIGKILL leaves its slot in the lock file, pinning its
generation's pages; each publish clears such slots, so the index file stays bounded."""

import os
import signal
import subprocess
import sys

import lmdb

import authz

POLICIES = 400
COMPILES = 12

# A process that keeps the index open (as a serving worker does) without holding a snapshot.
_OPEN = """
import sys, time
from authz.engine.index import open_env
env = open_env(sys.argv[1], create=False)
print("open", flush=True)
time.sleep(120)
"""
# A reader with a snapshot of the current generation (an Engine), as a worker has while it serves.
_READER = """
import sys, time
import authz
engine = authz.Engine(sys.argv[1])
print("reading", engine.generation, flush=True)
time.sleep(120)
"""


def _start(code, db):
    p = subprocess.Popen([sys.executable, "-c", code, db], stdout=subprocess.PIPE, text=True)
    line = p.stdout.readline()
    assert line, "helper process did not start"
    return p


def _reader_pids(db):
    """The pids in the index's reader table (py-lmdb's readers() text: pid, thread, txnid per line)."""
    env = lmdb.open(db, readonly=True, lock=True, map_size=1 << 32)
    try:
        lines = env.readers().splitlines()
    finally:
        env.close()
    return {int(line.split()[0]) for line in lines if line.split() and line.split()[0].isdigit()}


def test_a_killed_reader_does_not_pin_old_generations(tmp_path):
    src = tmp_path / "policies"
    src.mkdir()
    (src / "p.cedar").write_text("".join(
        f'@id("p{i}")\npermit(principal == Agent::"a{i}", action == Action::"call", resource) '
        f'when {{ context.n > {i} }};\n' for i in range(POLICIES)))
    db = str(tmp_path / "db")
    authz.compile([str(src)], db=db)
    holder = _start(_OPEN, db)
    reader = _start(_READER, db)
    try:
        assert reader.pid in _reader_pids(db)
        os.kill(reader.pid, signal.SIGKILL)
        reader.wait(30)
        sizes = []
        for _ in range(COMPILES):
            authz.compile([str(src)], db=db)
            sizes.append(os.path.getsize(os.path.join(db, "data.mdb")))
        assert reader.pid not in _reader_pids(db)
        # Two generations live at a time: once LMDB reuses freed pages the file stops growing.
        # With the dead reader's slot kept, each compile would add a whole generation.
        assert sizes[-1] == sizes[2], sizes
        with authz.Engine(db) as engine:
            assert engine.check('Agent::"a3"', 'Action::"call"', 'Tool::"t"', {"n": 10}).allowed
    finally:
        holder.kill()
        holder.wait(30)
