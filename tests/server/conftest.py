"""Fixtures for the server tests (the helpers live in harness.py)."""
import pytest

from harness import POLICIES, AuthzServer


@pytest.fixture
def policies_dir(tmp_path):
    d = tmp_path / "policies"
    d.mkdir()
    (d / "policies.cedar").write_text(POLICIES)
    return d


@pytest.fixture(scope="module")
def shared_server(tmp_path_factory):
    """One 2-worker server on the test policies, shared by a module's tests."""
    tmp = tmp_path_factory.mktemp("srv")
    pol = tmp / "policies"
    pol.mkdir()
    (pol / "policies.cedar").write_text(POLICIES)
    server = AuthzServer(tmp, ["--listen", "127.0.0.1:0", "--policies", str(pol), "--data-dir", str(tmp / "data"),
                               "--workers", "2", "--max-batch-size", "100"]).start()
    yield server
    server.stop()
