"""Fixtures for the state store tests (helpers in statekit.py)."""
import pytest
from statekit import make_store, mount_small_fs, unmount


@pytest.fixture
def store(any_store):
    """The store of each backend (see any_store); a test of LMDB only uses make_store itself."""
    return any_store


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


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory):
    """One real redis-server for the session (each test flushes it first)."""
    from rediskit import RedisServer
    server = RedisServer(tmp_path_factory.mktemp("redis")).start()
    yield server
    server.stop()


@pytest.fixture(params=["lmdb", "redis"])
def any_store(request, tmp_path):
    """A store of each backend: LMDB on a real folder, Redis on a real redis-server."""
    if request.param == "lmdb":
        s = make_store(tmp_path / "state")
    else:
        from rediskit import redis_settings
        server = request.getfixturevalue("redis_server")
        server.flush()
        s = make_store(tmp_path / "state", redis=redis_settings(server))
    yield s
    s.close()
