"""Fixtures for the console tests (the helpers live in consolekit.py)."""
from __future__ import annotations

import json
import os
import shutil

import pytest
from consolekit import BUNDLED, CHROMIUM, CONSOLE_POLICY, OPERATORS, ConsoleServer, add_operator
from harness import EchoUpstream, Envoy


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
    keys = {name: add_operator(data, name) for name in ("alice", "bob", "ops-5")}
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
