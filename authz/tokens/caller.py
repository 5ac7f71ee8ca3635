"""caller_identity: who is calling an authz.v1 RPC (the agent asking for, exchanging or revoking a token).

With the identity layer configured, its resolver decides alone (verified bearer JWTs, mTLS
peers checked against the allowed trust domains). Without it: the mTLS peer's SPIFFE id,
then, in development mode only (no identity configuration at all), an explicit
`x-authz-caller` metadata value. None means unauthenticated.
"""
from __future__ import annotations

CALLER_HEADER = "x-authz-caller"
MAX_CALLER_CHARS = 256

_state = {"development_mode": False, "resolver": None}


def configure(development_mode: bool, resolver=None) -> None:
    """Set once per worker at start: whether `x-authz-caller` is believed, and an optional
    `resolver(context) -> str | None` tried first (the identity layer's verified identities)."""
    _state["development_mode"] = bool(development_mode)
    _state["resolver"] = resolver


def _valid(text) -> bool:
    return isinstance(text, str) and 0 < len(text) <= MAX_CALLER_CHARS and text.isprintable()


def caller_identity(context) -> str | None:
    """The caller's verified identity, or (development mode) its declared one; None if unknown."""
    resolver = _state["resolver"]
    if resolver is not None:  # INVARIANT: no fallback, or a peer it refused would get in below
        try:
            identity = resolver(context)
        except Exception:
            return None
        return identity if _valid(identity) else None
    try:
        auth = context.auth_context() or {}
    except Exception:
        auth = {}
    spiffe = auth.get("peer_spiffe_id") or []
    if len(spiffe) == 1:  # grpcio drops it for a certificate with several URI SANs; be as strict
        value = spiffe[0].decode("utf-8", "replace") if isinstance(spiffe[0], bytes) else spiffe[0]
        return value if _valid(value) and value.startswith("spiffe://") else None
    if _state["development_mode"]:
        values = [v for k, v in (context.invocation_metadata() or ()) if k == CALLER_HEADER]
        if len(values) == 1 and _valid(values[0]):
            return values[0]
    return None
