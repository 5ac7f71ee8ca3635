"""Fixtures for the task-token tests (the helpers live in tokenkit.py)."""
import pytest

from tokenkit import Clock, Kit, make_index, mount_small_fs, unmount


@pytest.fixture
def clock():
    return Clock()


@pytest.fixture
def kit(tmp_path, clock):
    k = Kit(tmp_path / "data", make_index(tmp_path), clock)
    yield k
    k.revocations.close()


@pytest.fixture
def small_fs(tmp_path):
    """A 64 KiB tmpfs mounted under tmp_path (root only)."""
    folder = tmp_path / "small"
    mount_small_fs(folder, "64k")
    yield folder
    unmount(folder)
