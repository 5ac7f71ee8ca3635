"""Verifier: checks our own task tokens (signature, type, audience, times, revocations) with a bounded cache.

A verified token becomes a VerifiedToken: its principal (the acting agent, `sub`), the Cedar
context it adds (`context.token`, `context.delegation`) and its Scope, the ceiling of what
it may be used for. Every refusal is a TokenError whose `code` is the stable deny reason.
The cache maps SHA-256(token) to the VerifiedToken; times and revocations are checked on
every use, so a cached entry never outlives `exp` nor a revocation.
"""
from __future__ import annotations

import base64
import binascii
import collections
import hashlib
import json
import time

import jwt

from authz.errors import AuthzError
from authz.tokens.config import MAX_TTL_CEILING_S, TokenConfig
from authz.tokens.revocation import RevocationError
from authz.tokens.scope import ScopeError, scope_from_claim

TOKEN_TYPE = "authz-task+jwt"
ALGORITHM = "EdDSA"
PRINCIPAL_TYPE = "Agent"
MAX_JTI_CHARS = 128


class TokenError(AuthzError):
    """A task token is refused; `code` is the deny reason (token_expired, token_revoked, ...)."""

    code = "token_invalid"

    def __init__(self, code: str, message: str, verified=None):
        super().__init__(message)
        self.code = code
        self.verified = verified  # the VerifiedToken when the signature held (expired, revoked, ...)


def agent_uid(agent_id: str) -> dict:
    return {"type": PRINCIPAL_TYPE, "id": agent_id}


def agent_entity(agent_id: str) -> dict:
    """Agent::"<id>" as a Cedar entity reference in a context value."""
    return {"__entity": agent_uid(agent_id)}


def chain_from_act(sub: str, act, max_depth: int) -> list:
    """The delegation chain [root, ..., current actor] of a token with `sub` and `act` (outermost act =
    the current actor, who is `sub`); TokenError when the claim is malformed or too deep."""
    if act is None:
        return [sub]
    actors = []
    node = act
    while node is not None:
        if not isinstance(node, dict) or not isinstance(node.get("sub"), str) or not node["sub"]:
            raise TokenError("token_malformed", "the `act` claim is malformed")
        if len(actors) > max_depth:
            raise TokenError("delegation_too_deep", f"the delegation chain is deeper than {max_depth}")
        actors.append(node["sub"])
        node = node.get("act")
    if actors[0] != sub:
        raise TokenError("token_malformed", "the outermost `act` is not the token's subject")
    actors.reverse()
    return actors


def act_from_chain(chain: list) -> dict | None:
    """The nested `act` claim of chain [root, ..., current actor] (None for a root token)."""
    if len(chain) < 2:
        return None
    act = None
    for agent in chain:
        act = {"sub": agent} if act is None else {"sub": agent, "act": act}
    return act


class VerifiedToken:
    """What a verified task token says; shared by every decision made with it (never mutated)."""

    __slots__ = ("sub", "task", "jti", "jti_chain", "iat", "nbf", "exp", "scope", "chain", "may_act",
                 "principal", "context_token", "context_delegation", "claims")

    def __init__(self, claims: dict, cfg: TokenConfig):
        self.claims = claims
        self.sub = claims["sub"]
        self.task = claims["task"]
        self.jti = claims["jti"]
        self.iat, self.exp = claims["iat"], claims["exp"]
        self.nbf = claims.get("nbf", self.iat)
        self.jti_chain = tuple(claims.get("jti_chain", ()))
        self.may_act = claims.get("may_act")
        self.scope = scope_from_claim(claims["scope"], cfg.max_scope_entries)
        self.chain = tuple(chain_from_act(self.sub, claims.get("act"), cfg.max_delegation_depth))
        self.principal = agent_uid(self.sub)
        self.context_token = {"task": self.task, "scope": self.scope.to_claim(), "jti": self.jti, "exp": self.exp}
        self.context_delegation = {"chain": [agent_entity(a) for a in self.chain], "depth": len(self.chain) - 1,
                                   "root": agent_entity(self.chain[0])}

    @property
    def depth(self) -> int:
        return len(self.chain) - 1

    def context(self, base: dict | None) -> dict:
        """`base` (not modified) with `token` and `delegation` set from this token."""
        ctx = dict(base) if base else {}
        ctx["token"] = self.context_token
        ctx["delegation"] = self.context_delegation
        return ctx


def _b64json(segment: str):
    try:
        raw = base64.urlsafe_b64decode(segment + "=" * (-len(segment) % 4))
        return json.loads(raw)
    except (binascii.Error, ValueError, UnicodeDecodeError, RecursionError):
        return None


def peek_issuer(token: str, max_bytes: int) -> str | None:
    """The unverified `iss` of a compact JWT (only to route it to the right verifier), else None."""
    if not isinstance(token, str) or len(token) > max_bytes or token.count(".") != 2:
        return None
    claims = _b64json(token.split(".", 2)[1])
    if not isinstance(claims, dict):
        return None
    iss = claims.get("iss")
    return iss if isinstance(iss, str) else None


def parse_bearer(value: str | None) -> str | None:
    """The token of an `authorization: Bearer <token>` value, else None."""
    if not value or len(value) < 8 or value[:7].lower() != "bearer ":
        return None
    token = value[7:].strip()
    return token or None


class Verifier:
    """Verifies our task tokens against the key store, the revocation set and the configuration."""

    def __init__(self, cfg: TokenConfig, keys, revocations, clock=time.time):
        self.cfg = cfg
        self.keys = keys
        self.revocations = revocations
        self.clock = clock
        self._cache: collections.OrderedDict = collections.OrderedDict()
        self._last = ("", b"")  # (token, its cache key): routing then verifying hashes a token once
        self.hits = self.misses = 0

    def _key(self, token: str) -> bytes:
        last_token, last_key = self._last
        if token is last_token:  # identity, not equality: no comparison with another caller's token
            return last_key
        key = hashlib.sha256(token.encode("utf-8", "surrogatepass")).digest()
        self._last = (token, key)
        return key

    def is_ours(self, token: str) -> bool:
        """Whether the (unverified) token claims to be one of ours: `iss` is our issuer (a token in the
        cache of verified tokens is ours without parsing it again)."""
        if not isinstance(token, str) or len(token) > self.cfg.max_token_bytes:
            return False
        if self._key(token) in self._cache:
            return True
        return peek_issuer(token, self.cfg.max_token_bytes) == self.cfg.issuer

    def verify(self, token: str, check_revocation: bool = True) -> VerifiedToken:
        """The VerifiedToken of `token`, or TokenError with the deny reason."""
        if not isinstance(token, str) or len(token) > self.cfg.max_token_bytes:
            raise TokenError("token_too_large", f"the token is longer than {self.cfg.max_token_bytes} bytes")
        key = self._key(token)
        vt = self._cache.get(key)
        if vt is None:
            self.misses += 1
            vt = self._verify_signed(token)
            cache = self._cache
            if len(cache) >= self.cfg.cache_size:
                cache.popitem(last=False)
            cache[key] = vt
        else:
            self.hits += 1
        now = self.clock()
        leeway = self.cfg.leeway_s
        if now > vt.exp + leeway:
            self._cache.pop(key, None)
            raise TokenError("token_expired", "the token has expired", vt)
        if vt.nbf > now + leeway or vt.iat > now + leeway:
            raise TokenError("token_not_yet_valid", "the token is not valid yet", vt)
        if check_revocation:
            try:
                self.check_revoked(vt, now)
            except TokenError as e:
                e.verified = vt
                raise
        return vt

    def check_revoked(self, vt: VerifiedToken, now: float | None = None) -> None:
        """TokenError when the token, one it was exchanged from, its task or an agent of its chain is revoked."""
        now = self.clock() if now is None else now
        try:
            rv = self.revocations.current()
        except RevocationError as e:  # its code: revocation_unavailable, or state_unavailable (shared, stale)
            raise TokenError(e.code, str(e)) from None
        if not len(rv):
            return
        if rv.token_revoked(vt.jti, now) or any(rv.token_revoked(j, now) for j in vt.jti_chain):
            raise TokenError("token_revoked", "the token (or one it was exchanged from) is revoked")
        if rv.task_revoked(vt.task, now):
            raise TokenError("task_revoked", "the token's task is revoked")
        for agent in vt.chain:
            if rv.agent_revoked(agent, now):
                raise TokenError("agent_revoked", "an agent of the token's delegation chain is revoked")

    def _verify_signed(self, token: str) -> VerifiedToken:
        cfg = self.cfg
        # The header only picks the key (and is checked again by PyJWT, as part of what the
        # signature covers); parsing it here is 20x cheaper than jwt.get_unverified_header.
        header = _b64json(token.split(".", 1)[0]) if token.count(".") == 2 else None
        if not isinstance(header, dict):
            raise TokenError("token_malformed", "the token is not a JWT")
        if header.get("alg") != ALGORITHM:
            raise TokenError("token_bad_algorithm", f"task tokens are signed with {ALGORITHM} only")
        if header.get("typ") != TOKEN_TYPE:
            raise TokenError("token_wrong_type", f"the token's `typ` is not `{TOKEN_TYPE}`")
        kid = header.get("kid")
        if not isinstance(kid, str) or len(kid) > 64:
            raise TokenError("token_unknown_key", "the token names no usable key id")
        public = self.keys.public_key(kid)
        if public is None:
            raise TokenError("token_unknown_key", "the token's key id is not one of this service's keys")
        try:
            claims = jwt.decode(token, public, algorithms=[ALGORITHM], options={
                "verify_signature": True, "verify_exp": False, "verify_nbf": False, "verify_iat": False,
                "verify_aud": False, "verify_iss": False, "verify_sub": False, "verify_jti": False})
        except jwt.InvalidSignatureError:
            raise TokenError("token_bad_signature", "the token's signature does not verify") from None
        except jwt.PyJWTError:
            raise TokenError("token_malformed", "the token cannot be decoded") from None
        except Exception:
            raise TokenError("token_malformed", "the token cannot be decoded") from None
        if claims.get("iss") != cfg.issuer:
            raise TokenError("token_wrong_issuer", "the token's issuer is not this service")
        if claims.get("aud") != cfg.aud:
            raise TokenError("token_wrong_audience", "the token's audience is not this service")
        self._check_claims(claims)
        try:
            return VerifiedToken(claims, cfg)
        except ScopeError as e:
            raise TokenError("token_malformed", f"the token's scope is malformed: {e}") from None

    def _check_claims(self, claims: dict) -> None:
        limit = self.cfg.max_task_chars
        for name in ("sub", "task"):
            v = claims.get(name)
            if not isinstance(v, str) or not v or len(v) > limit:
                raise TokenError("token_malformed", f"the token's `{name}` claim is missing or malformed")
        jti = claims.get("jti")
        if not isinstance(jti, str) or not jti or len(jti) > MAX_JTI_CHARS:
            raise TokenError("token_malformed", "the token's `jti` claim is missing or malformed")
        for name in ("iat", "exp") + (("nbf",) if "nbf" in claims else ()):
            v = claims.get(name)
            if isinstance(v, bool) or not isinstance(v, int):
                raise TokenError("token_malformed", f"the token's `{name}` claim is missing or not an integer")
        if not 0 < claims["exp"] - claims["iat"] <= MAX_TTL_CEILING_S:
            raise TokenError("token_malformed", "the token's lifetime is out of bounds")
        chain = claims.get("jti_chain", [])
        if not isinstance(chain, list) or len(chain) > self.cfg.max_delegation_depth or \
                not all(isinstance(j, str) and 0 < len(j) <= MAX_JTI_CHARS for j in chain):
            raise TokenError("token_malformed", "the token's `jti_chain` claim is malformed")
        if "scope" not in claims:
            raise TokenError("token_malformed", "the token has no `scope` claim")

    def check_scope(self, vt: VerifiedToken, action: dict, resource: dict) -> bool:
        """Whether the request's action and resource are inside the token's scope."""
        return vt.scope.allows(action, resource)

    def clear_cache(self) -> None:
        self._cache.clear()
