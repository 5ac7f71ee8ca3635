"""Fixtures for the task-token tests (the helpers live in tokenkit.py)."""
import pytest

from tokenkit import Clock, Kit, make_index


@pytest.fixture
def clock():
    return Clock()


@pytest.fixture
def kit(tmp_path, clock):
    k = Kit(tmp_path / "data", make_index(tmp_path), clock)
    yield k
    k.revocations.close()
