"""Who is asking: bearer JWT verification (OIDC, JWT-SVID), JWKS / SPIFFE bundle key sets (files or URLs), SPIFFE ids of peers."""

from authz.errors import IdentityError
from authz.identity.jwks import ALGORITHMS, FileKeySet, Key, KeySet, StaticKeySet, parse_jwks
from authz.identity.jwt import Issuer, JwtVerifier, TokenCache, VerifiedToken, token_digest
from authz.identity.remote import JWKS_UNAVAILABLE, RemoteKeySet, RemoteSource
from authz.identity.spiffe import SpiffeId, parse_spiffe_id, spiffe_id_from_certificate

__all__ = ["ALGORITHMS", "FileKeySet", "IdentityError", "Issuer", "JWKS_UNAVAILABLE", "JwtVerifier", "Key", "KeySet",
           "RemoteKeySet", "RemoteSource", "SpiffeId", "StaticKeySet", "TokenCache", "VerifiedToken", "parse_jwks",
           "parse_spiffe_id", "spiffe_id_from_certificate", "token_digest"]
