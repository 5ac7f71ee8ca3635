"""The server's wiring of a shared (Redis) state backend: the signing keys that go with it (every node signs
and verifies with the same keys, kept in Redis, sealed) and the probe `authz serve` runs at start. Here, not in
authz.state, because it joins the state store and the tokens layer."""
from __future__ import annotations


def shared_keys(cfg, store):
    """A function making the worker's signing-key store when the state is shared (every node signs and
    verifies with the same keys, kept in Redis, encrypted), else None (the data folder's keys)."""
    if store.config.redis is None:
        return None
    from authz.tokens.config import TokenConfig
    from authz.tokens.shared_keys import SharedKeyStore
    tokens = TokenConfig.from_dict(cfg.tokens)
    return lambda: SharedKeyStore(store.link, store.settings, tokens.max_ttl_s, tokens.leeway_s, store.fanout)


def probe(settings) -> str | None:
    """Ask Redis once (PING, authenticated; the shared key set's key-encryption key) at start: None when it
    answers; the problem otherwise. Raises ValueError for what no retry can fix (authentication, ACL, a key
    set sealed under another key-encryption key): `authz serve` refuses to start."""
    import redis

    from authz.state.redis_link import RedisLink, describe
    from authz.tokens.keys import KeyStoreError
    from authz.tokens.shared_keys import SharedKeys
    link = RedisLink(settings)
    client = link.new_client()
    try:
        client.ping()
        try:
            SharedKeys(link, settings).read()  # a key set sealed under another key-encryption key: refused
        except KeyStoreError as e:
            if "key-encryption key" in str(e):
                raise ValueError(str(e)) from None
        return None
    except (redis.AuthenticationError, redis.exceptions.NoPermissionError) as e:
        raise ValueError(f"the shared state store {settings.where()}: {describe(e)}") from None
    except redis.ResponseError as e:
        if "WRONGPASS" in str(e) or "NOAUTH" in str(e) or "NOPERM" in str(e):
            raise ValueError(f"the shared state store {settings.where()}: {describe(e)}") from None
        return describe(e)
    except (redis.RedisError, OSError) as e:
        return describe(e)
    finally:
        client.close()
        link.close()
