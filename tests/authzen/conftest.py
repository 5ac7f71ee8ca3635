"""Fixtures for the AuthZEN tests (what they import is in authzenkit.py)."""
from __future__ import annotations

import pytest
from authzenkit import HttpAuthzServer, serve_args


@pytest.fixture(scope="module")
def dev_server(tmp_path_factory):
    """Development mode on loopback (2 workers sharing the HTTP port), the interop policies."""
    tmp = tmp_path_factory.mktemp("authzen")
    server = HttpAuthzServer(tmp, serve_args(tmp, "--workers", "2", "--max-batch-size", "100")).start()
    yield server
    server.stop()


@pytest.fixture
def client(dev_server):
    c = dev_server.client()
    yield c
    c.close()
