"""Opening the configured state backend: `open_store(config)` (LMDB in data_dir, or Redis). The signing
keys that go with a shared store and the start-up probe are the server's wiring (authz/server/shared_state.py)."""
from __future__ import annotations

from authz.state.config import StateConfig


def open_store(config: StateConfig):
    """The Store of `config` (opened lazily: a store that cannot be reached fails stateful decisions
    closed, it does not stop the server)."""
    if config.redis is not None:
        from authz.state.redis_store import RedisStore
        return RedisStore(config)
    from authz.state.lmdb_store import LmdbStore
    return LmdbStore(config)
