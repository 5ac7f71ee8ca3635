"""The tokens' side of revocation: when a new entry stops mattering (`entry_expiry`), and the names the
tokens layer has always used for the revocation set, which lives behind the Store boundary now
(authz/state/revocations.py: the interface; lmdb_revocations.py and redis_store.py: the backends).

`RevocationStore(db, clock)` is the LMDB set in the policy index's environment at `db` (as before).
"""
from __future__ import annotations

from authz.state.lmdb_revocations import (COUNT_KEY, ENTRY_PREFIX, EXPIRY_PREFIX, GEN_KEY, HELD_PREFIX,  # noqa: F401
                                          OWNER_PREFIX, entry_key)
from authz.state.lmdb_revocations import index_revocations as RevocationStore  # noqa: F401,N812
from authz.state.revocations import (EMPTY, KINDS, RevocationError, RevocationFullError,  # noqa: F401
                                     RevocationQuotaError, Revocations)

__all__ = ["COUNT_KEY", "EMPTY", "ENTRY_PREFIX", "EXPIRY_PREFIX", "GEN_KEY", "HELD_PREFIX", "KINDS", "OWNER_PREFIX",
           "RevocationError", "RevocationFullError", "RevocationQuotaError", "RevocationStore", "Revocations",
           "entry_expiry", "entry_key"]


def entry_expiry(kind: str, now: float, lifetime_s: int, leeway_s: int, token_exp: int | None = None,
                 ttl_s: int = 0) -> float:
    """When a new revocation stops mattering (0 = never). A token's: once it would have expired anyway,
    at its `exp` + leeway (named by its id alone, its `exp` is at most now + the longest token lifetime).
    A task's or an agent's: after `ttl_s` (0 = never), yet never before every token issued until now
    has expired, or such a token would be valid again when the entry lapses."""
    if kind == "token":
        return (now + lifetime_s if token_exp is None else token_exp) + leeway_s
    if not ttl_s:
        return 0
    return now + max(ttl_s, lifetime_s + leeway_s)
