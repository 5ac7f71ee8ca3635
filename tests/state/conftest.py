"""Fixtures for the state store tests (helpers in statekit.py)."""
import pytest
from statekit import make_store, mount_small_fs, unmount


@pytest.fixture
def store(tmp_path):
    s = make_store(tmp_path / "state")
    yield s
    s.close()


@pytest.fixture
def small_fs(tmp_path):
    """A 512 KiB tmpfs mounted under tmp_path (root only)."""
    folder = tmp_path / "small"
    mount_small_fs(folder, "512k")
    yield folder
    unmount(folder)


@pytest.fixture
def now():
    import time
    return time.time


@pytest.fixture(params=["lmdb"])
def any_store(request, tmp_path):
    """A store of each backend (LMDB on a real folder)."""
    s = make_store(tmp_path / "state")
    yield s
    s.close()
