"""Bearer JWT verification: JWS compact form, per-issuer algorithm allow-list, keys by kid, claims with bounded leeway.

One JwtVerifier holds the trusted issuers (OIDC issuers matched by `iss`, JWT-SVID trust
domains matched by the trust domain of `sub`) and a bounded cache of verified tokens keyed by
the SHA-256 of the token, whose entries never outlive the token's `exp` nor a change of the
issuer's keys. Every failure raises IdentityError with a stable reason code (the constants
below). Tokens never appear in messages or logs; only sub, iss and kid do.
"""
from __future__ import annotations

import base64
import binascii
import dataclasses
import hashlib
import json
import logging
import math
import re
import time

from authz.errors import IdentityError
from authz.identity.jwks import ALGORITHM_KEYS, ALGORITHMS, KeySet
from authz.identity.spiffe import SCHEME_PREFIX, check_trust_domain, parse_spiffe_id

log = logging.getLogger("authz.identity")

# Reason codes (stable).
TOKEN_TOO_LARGE = "token_too_large"
TOKEN_MALFORMED = "token_malformed"
TOKEN_ALG_NOT_ALLOWED = "token_alg_not_allowed"
TOKEN_ALG_NONE = "token_alg_none"        # an unsigned token (`alg: none`)
TOKEN_ALG_HMAC = "token_alg_hmac"        # a symmetric algorithm: the HS256-with-a-public-key confusion attack
TOKEN_HEADER_NOT_ALLOWED = "token_header_not_allowed"
TOKEN_WRONG_TYPE = "token_wrong_type"
TOKEN_UNKNOWN_KID = "token_unknown_kid"
TOKEN_KEY_MISMATCH = "token_key_mismatch"
TOKEN_BAD_SIGNATURE = "token_bad_signature"
TOKEN_MISSING_CLAIM = "token_missing_claim"
TOKEN_EXPIRED = "token_expired"
TOKEN_NOT_YET_VALID = "token_not_yet_valid"
TOKEN_WRONG_ISSUER = "token_wrong_issuer"
TOKEN_WRONG_AUDIENCE = "token_wrong_audience"
TOKEN_BAD_SUBJECT = "token_bad_subject"

DEFAULT_MAX_TOKEN_BYTES = 8192
DEFAULT_LEEWAY_S = 30.0
MAX_LEEWAY_S = 300.0
DEFAULT_CACHE_SIZE = 10000
MAX_SUBJECT_CHARS = 2048
MAX_TIME_S = 10**12           # bound on exp/nbf/iat (about year 33658): keeps time arithmetic in floats
DEFAULT_TYPES = ("jwt", "jose")
# Header members a token may carry; anything else (crit, jku, x5u, x5c, jwk, b64, zip, enc, cty...) is refused.
ALLOWED_HEADERS = frozenset({"alg", "kid", "typ", "x5t", "x5t#S256"})
_B64URL = re.compile(rb"[A-Za-z0-9_-]*")


@dataclasses.dataclass(frozen=True)
class Issuer:
    """One trusted token issuer.

    `issuer`: the exact `iss` tokens must carry (OIDC; optional for a JWT-SVID trust domain).
    `trust_domain`: JWT-SVIDs: `sub` must be a SPIFFE id of this trust domain; such tokens are
    matched by the trust domain of their `sub` when no issuer matches their `iss`.
    `algorithms`: the allow-list, a subset of RS256/RS384/RS512/PS256/ES256/ES384/EdDSA.
    `types`: accepted `typ` values besides JWT and JOSE (compared case-insensitively).
    `subject_trust_domains`: trust domains whose SPIFFE ids an OIDC issuer may assert as `sub`
    (e.g. this service's own tokens for mTLS-proven agents); by default a `sub` that looks like
    a SPIFFE id is refused unless the entry is that trust domain's (no workload impersonation).
    """

    keys: KeySet
    audiences: tuple
    issuer: str = ""
    trust_domain: str = ""
    algorithms: tuple = ALGORITHMS
    leeway_s: float = DEFAULT_LEEWAY_S
    types: tuple = ()
    subject_trust_domains: tuple = ()

    def __post_init__(self):
        if not self.issuer and not self.trust_domain:
            raise ValueError("an issuer needs `issuer` or `trust_domain`")
        if isinstance(self.audiences, str) or not self.audiences or not all(
                isinstance(a, str) and a for a in self.audiences):
            raise ValueError("`audiences` must be a non-empty array of strings")
        bad = [a for a in self.algorithms if a not in ALGORITHM_KEYS]
        if bad or not self.algorithms:
            raise ValueError(f"algorithm `{bad[0] if bad else ''}` is not allowed; choose from {', '.join(ALGORITHMS)}")
        if isinstance(self.leeway_s, bool) or not isinstance(self.leeway_s, (int, float)) \
                or not 0 <= self.leeway_s <= MAX_LEEWAY_S:
            raise ValueError(f"`leeway_s` must be between 0 and {MAX_LEEWAY_S:g}")
        object.__setattr__(self, "audiences", tuple(self.audiences))
        object.__setattr__(self, "algorithms", frozenset(self.algorithms))
        object.__setattr__(self, "types", frozenset(DEFAULT_TYPES) | {t.lower() for t in self.types})
        object.__setattr__(self, "subject_trust_domains", frozenset(self.subject_trust_domains))

    @property
    def name(self) -> str:
        return self.issuer or f"{SCHEME_PREFIX}{self.trust_domain}"


class VerifiedToken:
    """A token whose signature and claims were verified.

    `subject` is `sub`, `claims` the whole payload (read only by convention: it is shared by
    every cache hit), `expires_at` the `exp` (seconds since the epoch). `memo` is a dict for
    data derived from the claims by a caller (e.g. their Cedar form), kept with the cache entry.
    """

    __slots__ = ("subject", "issuer", "kid", "alg", "claims", "expires_at", "trust_domain", "memo",
                 "_source", "_version")

    def __init__(self, subject, issuer, kid, alg, claims, expires_at, trust_domain, source, version):
        self.subject, self.issuer, self.kid, self.alg = subject, issuer, kid, alg
        self.claims, self.expires_at, self.trust_domain = claims, expires_at, trust_domain
        self.memo: dict = {}
        self._source, self._version = source, version

    def __repr__(self) -> str:
        return f"VerifiedToken(sub={self.subject!r}, iss={self.issuer!r}, kid={self.kid!r})"


class TokenCache:
    """Verified tokens by the SHA-256 of the token, at most `size` of them, each dropped at its `exp`.

    INVARIANT: an entry is returned only while `now < exp` and while its issuer's key set
    still has the version it was verified with, so no cached token outlives its expiry or a
    key rotation. Eviction is oldest-first when full.
    """

    def __init__(self, size: int = DEFAULT_CACHE_SIZE):
        self.size = size
        self._entries: dict = {}
        self.hits = self.misses = 0

    def get(self, digest: bytes, now: float) -> VerifiedToken | None:
        vt = self._entries.get(digest)
        if vt is not None:
            if now < vt.expires_at and vt._source.keys.current_version() == vt._version:
                self.hits += 1
                return vt
            del self._entries[digest]
        self.misses += 1
        return None

    def put(self, digest: bytes, vt: VerifiedToken) -> None:
        if self.size <= 0:
            return
        entries = self._entries
        if digest not in entries and len(entries) >= self.size:
            del entries[next(iter(entries))]
        entries[digest] = vt

    def discard(self, digest: bytes) -> None:
        """Forget one token (e.g. revoked)."""
        self._entries.pop(digest, None)

    def clear(self) -> None:
        self._entries.clear()

    def __len__(self) -> int:
        return len(self._entries)


def token_digest(token: bytes) -> bytes:
    """The cache key of a token."""
    return hashlib.sha256(token).digest()


def _show(value, limit: int = 64) -> str:
    text = value if isinstance(value, str) else repr(value)
    return text if len(text) <= limit else text[:limit] + "..."


def _b64decode(part: bytes, what: str) -> bytes:
    if _B64URL.fullmatch(part) is None:
        raise IdentityError(TOKEN_MALFORMED, f"the token's {what} is not base64url")
    try:
        raw = base64.urlsafe_b64decode(part + b"=" * (-len(part) % 4))
    except (binascii.Error, ValueError):
        raise IdentityError(TOKEN_MALFORMED, f"the token's {what} is not base64url") from None
    # Canonical encoding only: one token, one spelling (stray low bits would give the same bytes).
    if base64.urlsafe_b64encode(raw).rstrip(b"=") != part:
        raise IdentityError(TOKEN_MALFORMED, f"the token's {what} is not canonical base64url")
    return raw


def _no_duplicates(pairs):
    out = {}
    for k, v in pairs:
        if k in out:
            raise ValueError("duplicate member")
        out[k] = v
    return out


def _reject_constant(name):
    raise ValueError(f"`{name}` is not JSON")


# Built once: json.loads with hooks would build a decoder per call.
_DECODER = json.JSONDecoder(object_pairs_hook=_no_duplicates, parse_constant=_reject_constant)


def _decode_json(part: bytes, what: str) -> dict:
    raw = _b64decode(part, what)
    try:
        doc = _DECODER.decode(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError):
        raise IdentityError(TOKEN_MALFORMED, f"the token's {what} is not a JSON object without duplicate members") from None
    if not isinstance(doc, dict):
        raise IdentityError(TOKEN_MALFORMED, f"the token's {what} is not a JSON object")
    return doc


def _number(claims: dict, name: str):
    value = claims.get(name)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or (
            isinstance(value, float) and not math.isfinite(value)):
        raise IdentityError(TOKEN_MALFORMED, f"the `{name}` claim is not a number")
    if not -MAX_TIME_S <= value <= MAX_TIME_S:
        raise IdentityError(TOKEN_MALFORMED, f"the `{name}` claim is out of range")
    return value


class JwtVerifier:
    """Verifies bearer tokens against the configured issuers; `verify` returns a VerifiedToken or raises IdentityError."""

    def __init__(self, issuers, max_token_bytes: int = DEFAULT_MAX_TOKEN_BYTES,
                 cache_size: int = DEFAULT_CACHE_SIZE, clock=time.time):
        self.max_token_bytes = max_token_bytes
        self.cache = TokenCache(cache_size)
        self._clock = clock
        self._by_issuer: dict = {}
        self._by_trust_domain: dict = {}
        self.issuers = tuple(issuers)
        for entry in self.issuers:
            if entry.issuer:
                if entry.issuer in self._by_issuer:
                    raise ValueError(f"issuer `{entry.issuer}` is configured twice")
                self._by_issuer[entry.issuer] = entry
            if entry.trust_domain:
                if entry.trust_domain in self._by_trust_domain:
                    raise ValueError(f"trust domain `{entry.trust_domain}` is configured twice")
                self._by_trust_domain[entry.trust_domain] = entry

    def verify(self, token) -> VerifiedToken:
        """Verify a compact JWS (str or bytes, without the `Bearer ` prefix)."""
        if isinstance(token, str):
            if len(token) > self.max_token_bytes:
                raise IdentityError(TOKEN_TOO_LARGE, f"the token is longer than {self.max_token_bytes} bytes")
            try:
                token = token.encode("ascii")
            except UnicodeEncodeError:
                raise IdentityError(TOKEN_MALFORMED, "the token is not ASCII") from None
        elif not isinstance(token, bytes):
            raise IdentityError(TOKEN_MALFORMED, "the token is not a string")
        if len(token) > self.max_token_bytes:
            raise IdentityError(TOKEN_TOO_LARGE, f"the token is longer than {self.max_token_bytes} bytes")
        now = self._clock()
        digest = hashlib.sha256(token).digest()
        vt = self.cache.get(digest, now)
        if vt is not None:
            return vt
        try:
            vt = self._verify(token, now)
        except IdentityError as e:
            log.debug("token refused: %s (%s)", e.code, e)
            raise
        self.cache.put(digest, vt)
        return vt

    def _select(self, claims: dict) -> Issuer:
        """The issuer entry for these (not yet verified) claims: by `iss`, else by the trust domain of a SPIFFE `sub`."""
        iss = claims.get("iss")
        if isinstance(iss, str):
            entry = self._by_issuer.get(iss)
            if entry is not None:
                return entry
        sub = claims.get("sub")
        if isinstance(sub, str) and sub.startswith(SCHEME_PREFIX) and self._by_trust_domain:
            try:
                sid = parse_spiffe_id(sub, require_path=True)
            except IdentityError as e:
                raise IdentityError(TOKEN_BAD_SUBJECT, f"`sub`: {e}") from None
            entry = self._by_trust_domain.get(sid.trust_domain)
            if entry is None:
                check_trust_domain(sid, self._by_trust_domain)  # raises untrusted_trust_domain
            if entry.issuer and iss != entry.issuer:
                raise IdentityError(TOKEN_WRONG_ISSUER,
                                    f"issuer `{_show(iss)}` is not `{entry.issuer}`, the issuer of `{sid.trust_domain}`")
            return entry
        if iss is None:
            raise IdentityError(TOKEN_WRONG_ISSUER, "the token has no `iss` claim and no SPIFFE `sub` of a trusted trust domain")
        raise IdentityError(TOKEN_WRONG_ISSUER, f"issuer `{_show(iss)}` is not trusted")

    def _verify(self, token: bytes, now: float) -> VerifiedToken:
        parts = token.split(b".")
        if len(parts) != 3:
            raise IdentityError(TOKEN_MALFORMED, "the token is not a JWS in compact form (three dot-separated parts)")
        h64, p64, s64 = parts
        if not h64 or not p64:
            raise IdentityError(TOKEN_MALFORMED, "the token has an empty header or payload")
        header = _decode_json(h64, "header")
        claims = _decode_json(p64, "payload")
        signature = _b64decode(s64, "signature")

        alg = header.get("alg")
        if not isinstance(alg, str):
            raise IdentityError(TOKEN_MALFORMED, "the token header has no `alg`")
        if alg not in ALGORITHM_KEYS:
            if alg.lower() == "none":
                raise IdentityError(TOKEN_ALG_NONE, "unsigned tokens (`none`) are never accepted")
            if alg.upper().startswith("HS"):
                raise IdentityError(TOKEN_ALG_HMAC, f"symmetric algorithm `{_show(alg)}` is never accepted")
            raise IdentityError(TOKEN_ALG_NOT_ALLOWED, f"algorithm `{_show(alg)}` is not allowed")
        for name in header:
            if name not in ALLOWED_HEADERS:
                raise IdentityError(TOKEN_HEADER_NOT_ALLOWED, f"header `{_show(name)}` is not allowed")
        kid = header.get("kid")
        if not isinstance(kid, str) or not kid:
            raise IdentityError(TOKEN_UNKNOWN_KID, "the token header has no `kid`")
        if not signature:
            raise IdentityError(TOKEN_BAD_SIGNATURE, "the token has no signature")

        entry = self._select(claims)
        typ = header.get("typ")
        if typ is not None and (not isinstance(typ, str) or typ.lower() not in entry.types):
            raise IdentityError(TOKEN_WRONG_TYPE, f"token type `{_show(typ)}` is not accepted by `{entry.name}`")
        if alg not in entry.algorithms:
            raise IdentityError(TOKEN_ALG_NOT_ALLOWED, f"algorithm `{alg}` is not allowed for `{entry.name}`")
        version = entry.keys.current_version()
        key = entry.keys.get(kid)
        if key is None:
            raise IdentityError(TOKEN_UNKNOWN_KID, f"`{entry.name}` has no key `{_show(kid)}`")
        if alg not in key.algorithms:
            raise IdentityError(TOKEN_KEY_MISMATCH, f"key `{_show(kid)}` of `{entry.name}` does not verify `{alg}`")
        if not _VERIFIERS[alg].verify(token[:len(h64) + 1 + len(p64)], key.public_key, signature):
            raise IdentityError(TOKEN_BAD_SIGNATURE, f"bad signature (issuer `{entry.name}`, key `{_show(kid)}`)")

        # The signature holds: from here on the claims are the issuer's.
        leeway = entry.leeway_s
        exp = _number(claims, "exp")
        if exp is None:
            raise IdentityError(TOKEN_MISSING_CLAIM, "the token has no `exp` claim")
        if now >= exp + leeway:
            raise IdentityError(TOKEN_EXPIRED, f"the token expired at {_show(exp)} ({now - exp:.0f} s ago)")
        nbf = _number(claims, "nbf")
        if nbf is not None and now + leeway < nbf:
            raise IdentityError(TOKEN_NOT_YET_VALID, f"the token is valid from {_show(nbf)} only")
        iat = _number(claims, "iat")
        if iat is not None and now + leeway < iat:
            raise IdentityError(TOKEN_NOT_YET_VALID, f"the token claims to be issued in the future ({_show(iat)})")
        iss = claims.get("iss")
        if entry.issuer and iss != entry.issuer:  # INVARIANT: _select matched it; kept as a guard
            raise IdentityError(TOKEN_WRONG_ISSUER, f"issuer `{_show(iss)}` is not `{entry.issuer}`")
        aud = claims.get("aud")
        if aud is None:
            raise IdentityError(TOKEN_WRONG_AUDIENCE, "the token has no `aud` claim")
        audiences = [aud] if isinstance(aud, str) else aud
        if not isinstance(audiences, list) or not all(isinstance(a, str) for a in audiences):
            raise IdentityError(TOKEN_MALFORMED, "the `aud` claim is not a string or an array of strings")
        if not any(a in entry.audiences for a in audiences):
            raise IdentityError(TOKEN_WRONG_AUDIENCE, f"the token is not meant for {', '.join(entry.audiences)}")
        sub = claims.get("sub")
        if sub is None:
            raise IdentityError(TOKEN_MISSING_CLAIM, "the token has no `sub` claim")
        if not isinstance(sub, str) or not sub or len(sub) > MAX_SUBJECT_CHARS or not sub.isprintable():
            raise IdentityError(TOKEN_BAD_SUBJECT, f"`sub` must be a printable string of 1 to {MAX_SUBJECT_CHARS} characters")
        trust_domain = ""
        if entry.trust_domain:
            try:
                sid = parse_spiffe_id(sub, require_path=True)
            except IdentityError as e:
                raise IdentityError(TOKEN_BAD_SUBJECT, f"`sub` of a JWT-SVID: {e}") from None
            check_trust_domain(sid, (entry.trust_domain,))
            trust_domain = sid.trust_domain
        elif sub[:len(SCHEME_PREFIX)].lower() == SCHEME_PREFIX:
            try:
                sid = parse_spiffe_id(sub, require_path=True)
            except IdentityError as e:
                raise IdentityError(TOKEN_BAD_SUBJECT, f"`sub`: {e}") from None
            if sid.trust_domain not in entry.subject_trust_domains:
                raise IdentityError(TOKEN_BAD_SUBJECT, f"`{entry.name}` may not assert SPIFFE ids of "
                                    f"`{sid.trust_domain}` (workload identities come from their trust domain)")
        vt = VerifiedToken(sub, iss if isinstance(iss, str) else entry.name, kid, alg, claims, exp,
                           trust_domain, entry, version)
        log.debug("token verified: sub=%s iss=%s kid=%s", _show(sub, 256), _show(vt.issuer, 256), _show(kid))
        return vt


def _verifiers() -> dict:
    from jwt.algorithms import get_default_algorithms

    algorithms = get_default_algorithms()
    return {name: algorithms[name] for name in ALGORITHMS}


# INVARIANT: only asymmetric algorithms of the allow-list are reachable; `none` and HS* never are.
_VERIFIERS = _verifiers()
