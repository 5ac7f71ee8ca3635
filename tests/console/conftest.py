"""Fixtures for the console tests: the bundled example policies (plus two operators: alice a reviewer,
bob not, and a policy letting reviewers suspend and revoke tasks) behind a real Envoy and a 2-worker
`authz serve --http-listen`, operator keys made by the CLI, and headless Chromium (Debian's package)
driven by Playwright."""
from __future__ import annotations

import json
import os
import pathlib
import re
import shutil
import subprocess
import sys

import pytest

HERE = pathlib.Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "server"))
from harness import AuthzServer, EchoUpstream, Envoy, env_with_repo  # noqa: E402

BUNDLED = HERE.parents[1] / "authz" / "examples" / "policies"
CHROMIUM = "/usr/bin/chromium"
OPERATORS = [{"uid": {"type": "Operator", "id": "alice"}, "attrs": {},
              "parents": [{"type": "Team", "id": "reviewers"}]},
             {"uid": {"type": "Operator", "id": "bob"}, "attrs": {}, "parents": []}]

# The reviewers may also suspend and revoke tasks and lift those revocations (docs/console.md).
CONSOLE_POLICY = """
@id("reviewers-act-on-tasks")
permit(principal in Team::"reviewers",
       action in [Action::"authz::SuspendTask", Action::"authz::Revoke", Action::"authz::LiftRevocation"],
       resource is Task);
"""


class ConsoleServer(AuthzServer):
    """AuthzServer that also reads the HTTP address from its first line."""

    http_address = None

    def _read_line(self) -> str:
        line = super()._read_line()
        m = re.search(r"HTTP on (\S+)", line)
        self.http_address = m.group(1) if m else None
        return line

    @property
    def console(self) -> str:
        return f"http://{self.http_address}/console"


def add_operator(data_dir: pathlib.Path, name: str) -> str:
    """`authz operators add NAME`: the key it prints once."""
    out = subprocess.run([sys.executable, "-m", "authz", "operators", "add", name, "--data-dir", str(data_dir)],
                         capture_output=True, text=True, timeout=60, env=env_with_repo(), check=True)
    return out.stdout.strip()


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    """(server, envoy, {operator: key}) on the bundled policies and entities with the two operators."""
    tmp = tmp_path_factory.mktemp("console")
    policies = tmp / "policies"
    shutil.copytree(BUNDLED, policies)
    entities = json.loads((policies / "entities.json").read_text())
    entities += OPERATORS + [{"uid": {"type": "Agent", "id": f"ops-{n}"}, "attrs": {"clearance": 1},
                              "parents": [{"type": "Team", "id": "ops"}]} for n in range(10)]
    (policies / "entities.json").write_text(json.dumps(entities))
    (policies / "console.cedar").write_text(CONSOLE_POLICY)
    data = tmp / "data"
    keys = {name: add_operator(data, name) for name in ("alice", "bob")}
    server = ConsoleServer(tmp, ["--listen", "127.0.0.1:0", "--http-listen", "127.0.0.1:0", "--policies",
                                 str(policies), "--data-dir", str(data), "--workers", "2"]).start()
    try:
        port = int(server.address.rsplit(":", 1)[1])
        with EchoUpstream() as upstream, Envoy(tmp, port, upstream.port) as envoy:
            yield server, envoy, keys
    finally:
        server.stop()


@pytest.fixture(scope="module")
def browser():
    from playwright.sync_api import sync_playwright

    assert os.path.exists(CHROMIUM), "install Debian's chromium (apt-get install -y chromium; .ci/run does)"
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=["--no-sandbox"])
        try:
            yield b
        finally:
            b.close()


@pytest.fixture(scope="module")
def shots(tmp_path_factory):
    """The folder of the pages' screenshots (test artifacts, not committed)."""
    return tmp_path_factory.mktemp("screenshots")
