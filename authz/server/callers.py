"""Who is asking, for the servicers: verified bearer JWTs, mTLS peers' SPIFFE ids, and the enforcement points trusted to name principals.

Envoy path: a verified `authorization: Bearer` token gives principal Agent::"<sub>" and
`context.jwt`; otherwise `source.principal` counts only when the gRPC caller (Envoy) proved,
by mTLS, an identity listed in `trusted_peps`; otherwise the principal is Anonymous.
authz.v1: the caller's verified identity (bearer token, else mTLS peer) is the principal; an
explicit principal is accepted only from a trusted PEP, or when a policy permits
`Action::"authz::CheckAs"` with the caller as principal and the named principal as resource.
With no identity configuration at all (development mode) requests are taken as given.
"""
from __future__ import annotations

import ipaddress
import logging
import urllib.parse

from authz.server._envoy_map import ANONYMOUS
from authz.errors import IdentityError, RequestError
from authz.identity import ALGORITHMS, Issuer, JwtVerifier, parse_spiffe_id, spiffe_id_from_certificate
from authz.identity.spiffe import check_trust_domain
from authz.server.config import is_loopback_address
from authz.server.decider import Invalid
from authz.server.records import from_json

log = logging.getLogger("authz.server")

PRINCIPAL_TYPE = "Agent"
CHECK_AS = {"type": "Action", "id": "authz::CheckAs"}
PRINCIPAL_NOT_ALLOWED = "principal_not_allowed"
UNAUTHENTICATED = "unauthenticated"
# Every deny reason this layer (and authz.identity) produces: decisions about identity, not malformed requests.
IDENTITY_REASONS = frozenset({
    "token_too_large", "token_malformed", "token_alg_not_allowed", "token_alg_none", "token_alg_hmac",
    "token_header_not_allowed", "token_wrong_type",
    "token_unknown_kid", "token_key_mismatch", "token_bad_signature", "token_missing_claim", "token_expired",
    "token_not_yet_valid", "token_wrong_issuer", "token_wrong_audience", "token_bad_subject", "jwks_unavailable",
    "spiffe_id_invalid", "untrusted_trust_domain", "peer_cert_invalid", "peer_cert_multiple_uris",
    "peer_cert_not_spiffe", PRINCIPAL_NOT_ALLOWED, UNAUTHENTICATED,
})
MAX_PEER_CACHE = 1024
_BEARER = "bearer "


def agent(identity: str) -> dict:
    """Agent::"<identity>"."""
    return {"type": PRINCIPAL_TYPE, "id": identity}


def bearer_token(value) -> str | None:
    """The token of an `authorization` value `Bearer <token>` (scheme case-insensitive), else None."""
    if not isinstance(value, str) or len(value) <= len(_BEARER) or value[:len(_BEARER)].lower() != _BEARER:
        return None
    return value[len(_BEARER):].strip(" ")


def is_loopback_peer(peer) -> bool:
    """True when a gRPC peer (`ipv4:127.0.0.1:5000`, `ipv6:[::1]:5000`, brackets maybe %-encoded) is a
    loopback address; False for anything else (other addresses, unix sockets, an unknown form)."""
    if not isinstance(peer, str):
        return False
    kind, _, rest = urllib.parse.unquote(peer).partition(":")
    if kind not in ("ipv4", "ipv6"):
        return False
    host = rest.rpartition(":")[0]
    if kind == "ipv6":
        host = host.removeprefix("[").removesuffix("]").split("%")[0]
    try:
        return is_loopback_address(ipaddress.ip_address(host))
    except ValueError:
        return False


def build_verifier(settings) -> JwtVerifier | None:
    """A JwtVerifier over the `[[identity.jwt]]` issuers of IdentitySettings (None when there are none)."""
    if not settings.jwt:
        return None
    issuers = [Issuer(j.open_key_set(), j.audiences, j.issuer, j.trust_domain,
                      j.algorithms or ALGORITHMS, j.leeway_s, j.types, j.subject_trust_domains) for j in settings.jwt]
    return JwtVerifier(issuers, settings.max_token_bytes, settings.token_cache_size)


class Caller:
    """The verified identity of an authz.v1 caller: its principal (None if unauthenticated), token, PEP standing."""

    __slots__ = ("principal", "identity", "token", "is_pep")

    def __init__(self, identity: str | None, token=None, is_pep: bool = False):
        self.identity, self.token, self.is_pep = identity, token, is_pep
        self.principal = agent(identity) if identity is not None else None


class Callers:
    """Resolves who is asking on both APIs from IdentitySettings (see the module docstring).

    `defer_bearer(authorization_value)`: true when a bearer token belongs to another layer
    (the task tokens of authz.tokens); such tokens are left for it untouched.
    """

    def __init__(self, settings, max_context_depth: int = 32, verifier=None, defer_bearer=None):
        self.development_mode = settings.development_mode
        self.verifier = verifier if verifier is not None else build_verifier(settings)
        self.trusted_peps = frozenset(settings.trusted_peps)
        self.trust_domains = frozenset(settings.mtls.trust_domains) if settings.mtls is not None else frozenset()
        self.max_context_depth = max_context_depth
        self.defer_bearer = defer_bearer
        self._peers: dict = {}

    # -- pieces --------------------------------------------------------------------------------

    def _certificate_id(self, cert) -> str:
        """The SPIFFE id of a leaf certificate (PEM), cached by the certificate; raises IdentityError."""
        cached = self._peers.get(cert)
        if cached is None:
            try:
                cached = str(spiffe_id_from_certificate(cert, self.trust_domains))
            except IdentityError as e:
                cached = e
            if len(self._peers) >= MAX_PEER_CACHE:
                del self._peers[next(iter(self._peers))]
            self._peers[cert] = cached
        if isinstance(cached, IdentityError):
            raise IdentityError(cached.code, str(cached))
        return cached

    def peer_id(self, grpc_context) -> str | None:
        """The mTLS peer's SPIFFE id; None without a client certificate; IdentityError for an unacceptable one."""
        try:
            auth = grpc_context.auth_context() or {}
        except Exception:
            return None
        pems = auth.get("x509_pem_cert")
        if not pems:
            return None
        return self._certificate_id(pems[0])

    def is_trusted_pep(self, grpc_context) -> bool:
        """True when the gRPC caller proved (mTLS) an identity listed in `trusted_peps`."""
        if not self.trusted_peps:
            return False
        try:
            return self.peer_id(grpc_context) in self.trusted_peps
        except IdentityError:
            return False

    def claims_record(self, vt) -> dict:
        """A verified token's claims as a Cedar record (computed once per cached token)."""
        record = vt.memo.get("record")
        if record is None:
            try:
                record = from_json(vt.claims, self.max_context_depth, "jwt")
            except RequestError as e:
                raise IdentityError("token_malformed", f"the token's claims: {e}") from None
            vt.memo["record"] = record
        return record

    def _deferred(self, value: str) -> bool:
        return self.defer_bearer is not None and bool(self.defer_bearer(value))

    # -- Envoy ---------------------------------------------------------------------------------

    def bind_envoy(self, requests: list, check_request, grpc_context) -> list:
        """Set the principal (and `context.jwt`) of Envoy-mapped requests; raises IdentityError to deny.

        The verified token's `authorization` header is removed from `context.http.headers`;
        an untrusted `source.principal` is blanked in `context.source`.
        """
        if self.development_mode:
            return requests
        ctx = requests[0]["context"]
        http, source = ctx["http"], ctx["source"]
        headers = http["headers"]
        update: dict = {}
        principal = None
        value = headers.get("authorization")
        if value is not None and self.verifier is not None and not self._deferred(value):
            token = bearer_token(value)
            if token is not None:
                vt = self.verifier.verify(token)
                principal = agent(vt.subject)
                update["jwt"] = self.claims_record(vt)
                update["http"] = {**http, "headers": {k: v for k, v in headers.items() if k != "authorization"}}
        claimed = source.get("principal")
        if claimed:
            if self.is_trusted_pep(grpc_context):
                if principal is None:
                    principal = agent(self._source_id(claimed, check_request.attributes.source.certificate))
            else:
                update["source"] = {**source, "principal": ""}
        if principal is None:
            principal = ANONYMOUS
        out = []
        for r in requests:
            c = r["context"]
            out.append({"principal": principal, "action": r["action"], "resource": r["resource"],
                        "context": {**c, **update} if update else c})
        return out

    def _source_id(self, claimed: str, certificate: str) -> str:
        """`source.principal` from a trusted PEP, checked: a SPIFFE id of an allowed trust domain, and, when Envoy
        sends the client certificate (`include_peer_certificate`), the single URI SAN of that certificate."""
        if certificate:
            sid = self._certificate_id(urllib.parse.unquote(certificate))
            if sid != claimed:
                raise IdentityError("peer_cert_invalid", "`source.principal` is not the client certificate's SPIFFE id")
            return sid
        sid = parse_spiffe_id(claimed, require_path=True)
        check_trust_domain(sid, self.trust_domains)
        return str(sid)

    # -- authz.v1 ------------------------------------------------------------------------------

    def v1_caller(self, grpc_context) -> Caller:
        """The caller of an authz.v1 RPC: bearer token (metadata `authorization`), else the mTLS peer; IdentityError to deny."""
        values = [v for k, v in (grpc_context.invocation_metadata() or ()) if k == "authorization"]
        if len(values) > 1:
            raise IdentityError("token_malformed", "more than one `authorization` metadata value")
        vt = None
        if values and self.verifier is not None and not self._deferred(values[0]):
            token = bearer_token(values[0])
            if token is None:
                raise IdentityError("token_malformed", "`authorization` is not a bearer token")
            vt = self.verifier.verify(token)
        if vt is not None:
            identity = vt.subject
            # A token makes its subject a PEP only as a JWT-SVID (its SPIFFE id vouched for by the trust
            # domain's bundle): an OIDC issuer's `sub` is whatever that issuer says.
            is_pep = (bool(vt.trust_domain) and identity in self.trusted_peps) or self.is_trusted_pep(grpc_context)
            return Caller(identity, vt, is_pep)
        peer = self.peer_id(grpc_context)
        return Caller(peer, None, peer is not None and peer in self.trusted_peps)

    def resolve_identity(self, grpc_context) -> str | None:
        """The caller's verified identity string, None when there is none or it is refused (for authz.tokens.caller)."""
        try:
            return self.v1_caller(grpc_context).identity
        except IdentityError:
            return None

    def bind_v1(self, requests: list, caller, decider, api: str = "v1") -> list:
        """Requests (principal None when not given) of one call -> requests for `caller`, or Invalid with the deny reason.

        `caller` is a Caller or the IdentityError raised while resolving it.
        """
        if isinstance(caller, IdentityError):
            return [r if isinstance(r, Invalid) else
                    Invalid(caller.code, str(caller), "authorization", r.get("principal"), r.get("action"),
                            r.get("resource")) for r in requests]
        allowed_as: dict = {}
        out = []
        for r in requests:
            if isinstance(r, Invalid):
                out.append(r)
                continue
            p = r.get("principal")
            if p is None or p == caller.principal:
                if caller.principal is None:
                    out.append(Invalid(UNAUTHENTICATED, "no verified identity: present a bearer token or a client "
                                       "certificate", "principal", None, r.get("action"), r.get("resource")))
                    continue
                try:
                    ctx = self._own_context(r.get("context") or {}, caller)
                except IdentityError as e:  # claims that cannot be a Cedar record
                    out.append(Invalid(e.code, str(e), "authorization", caller.principal, r.get("action"),
                                       r.get("resource")))
                    continue
                out.append({"principal": caller.principal, "action": r["action"], "resource": r["resource"],
                            "context": ctx})
                continue
            if caller.is_pep or self._may_check_as(caller, p, decider, api, allowed_as):
                out.append(r)  # INVARIANT: a PEP's (or CheckAs-permitted caller's) request is taken as given
                continue
            who = caller.identity if caller.identity is not None else "an unauthenticated caller"
            out.append(Invalid(PRINCIPAL_NOT_ALLOWED,
                               f"`{who[:256]}` may not ask on behalf of `{p.get('type')}::{str(p.get('id'))[:256]}`",
                               "principal", p, r.get("action"), r.get("resource")))
        return out

    def _own_context(self, ctx: dict, caller) -> dict:
        """A caller asking for itself: `context.jwt` is its verified token's claims, never a value it sent."""
        if caller.token is not None:
            return {**ctx, "jwt": self.claims_record(caller.token)}
        if "jwt" in ctx:
            return {k: v for k, v in ctx.items() if k != "jwt"}
        return ctx

    @staticmethod
    def _may_check_as(caller, principal: dict, decider, api: str, memo: dict) -> bool:
        if caller.principal is None:
            return False
        key = (principal.get("type"), principal.get("id"))
        if key not in memo:
            o = decider.decide_one({"principal": caller.principal, "action": CHECK_AS, "resource": principal,
                                    "context": {}}, api)
            memo[key] = bool(o.allowed)
        return memo[key]
