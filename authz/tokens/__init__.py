"""Task tokens: short-lived EdDSA JWTs bound to one task and scope, delegation by exchange, revocation."""

from authz.tokens.config import TokenConfig
from authz.tokens.verify import TokenError, VerifiedToken, Verifier

__all__ = ["TokenConfig", "TokenError", "VerifiedToken", "Verifier"]
