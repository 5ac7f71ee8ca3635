"""authz.v1.Tokens servicer, and the TokenGate that turns requests made with a task token into Cedar requests.

A request made with one of our task tokens (a bearer token whose `iss` is this service:
`authorization` metadata on authz.v1, the `authorization` header on the Envoy path) is
decided for the token's acting agent: principal = Agent::"<sub>", context.token = {task,
scope, jti, exp}, context.delegation = {chain, depth, root}. A refused token, or a request
outside the token's scope, is denied with its reason (token_expired, out_of_scope, ...)
whatever the policies say. Bearer tokens of other issuers pass through untouched (the
identity layer's business).
"""
from __future__ import annotations

import json
import logging
import time

import grpc

from authz._pb import tokens_pb2, tokens_pb2_grpc
from authz.server.callers import is_loopback_peer
from authz.server.decider import Invalid
from authz.server.malformed import add_guarded
from authz.state import InvalidArgument, StateError
from authz.tokens.caller import caller_identity
from authz.tokens.config import MAX_TTL_CEILING_S, TokenConfig
from authz.tokens.issuer import Authorization, Issuer
from authz.tokens.keys import KeyStore, KeyStoreError, ensure_keys
from authz.tokens.revocation import RevocationError, RevocationFullError, RevocationStore, entry_expiry
from authz.tokens.scope import ScopeError
from authz.tokens.verify import TokenError, Verifier, agent_uid, parse_bearer

log = logging.getLogger("authz.tokens")

API = "tokens"
SERVICE = "authz.v1.Tokens"
RESERVED_CONTEXT = ("token", "delegation")
STATE_CONTEXT = ("task", "agent")  # set by the server from the task's state (taskstate.py)
LONG_MAX = (1 << 63) - 1


def _context_problem(ctx) -> tuple | None:
    """(field, message) when a caller's context sets what only the server sets, or a bad `cost`."""
    for key in STATE_CONTEXT:
        if key in ctx:
            return f"context.{key}", f"`context.{key}` is set by the server from the task's state"
    if "cost" in ctx:
        cost = ctx["cost"]
        if type(cost) is not int or not 0 <= cost <= LONG_MAX:
            return "context.cost", "`context.cost` must be a non-negative integer (Long)"
    return None
REVOKE_ACTION = {"type": "Action", "id": "authz::Revoke"}
# Deny reasons of decisions made with a task token; they are decisions, not request errors.
TOKEN_REASONS = frozenset({
    "out_of_scope", "principal_mismatch", "token_expired", "token_not_yet_valid", "token_revoked", "task_revoked",
    "agent_revoked", "token_malformed", "token_too_large", "token_bad_signature", "token_bad_algorithm",
    "token_wrong_type", "token_unknown_key", "token_wrong_issuer", "token_wrong_audience", "delegation_too_deep",
})
_UNAVAILABLE = frozenset({"revocation_unavailable", "keys_unavailable", "index_unavailable", "internal_error",
                          "state_unavailable"})


class TaskInactive(TokenError):
    """The task-state store holds the task suspended or revoked: FAILED_PRECONDITION (a revocation of
    the tokens layer stays PERMISSION_DENIED)."""


class _NoKeys:
    """Stands in for an unusable key store: every use fails with keys_unavailable."""

    max_ttl_s = MAX_TTL_CEILING_S  # unknown: the longest any token can live

    def __init__(self, error: str):
        self.error = error

    def _fail(self, *args):
        raise TokenError("keys_unavailable", f"signing keys unavailable: {self.error}")

    public_key = signing_key = jwks = _fail


class TokenService:
    """A worker's token machinery: keys, revocations, verifier, issuer, and the decider for token decisions."""

    def __init__(self, cfg: TokenConfig, data_dir: str, db_path: str, decider=None, clock=time.time,
                 admin_from_loopback_only: bool = False, revocations=None, keys=None):
        self.cfg = cfg
        self.decider = decider
        # Development mode: callers name themselves, so Issue/Exchange/Revoke are taken from loopback peers only.
        self.admin_from_loopback_only = admin_from_loopback_only
        # `keys`: a shared key store (authz.tokens.shared_keys) or None for the data folder's; `revocations`:
        # the Store's revocation set (authz.state) or None for the index's.
        try:
            if keys is None:
                ensure_keys(data_dir, cfg.max_ttl_s)
                keys = KeyStore(data_dir, cfg.key_check_interval_s, clock)
            self.keys = keys() if callable(keys) else keys
        except (OSError, KeyStoreError) as e:  # fail closed: our tokens are refused, none is issued
            log.error("task tokens unavailable: %s", e)
            self.keys = _NoKeys(str(e))
        self.revocations = RevocationStore(db_path, clock) if revocations is None else revocations
        self.verifier = Verifier(cfg, self.keys, self.revocations, clock)
        self.issuer = Issuer(cfg, self.keys, self.verifier, clock)
        self.clock = clock
        self.task_store = None  # the task-state Store (authz.state): no token for a suspended or revoked task

    def check_task_active(self, task: str) -> None:
        """TokenError task_suspended (an approval is pending) / task_revoked (in the task-state store), or
        state_unavailable when the store cannot tell (fail closed). A task the store never saw is active."""
        if self.task_store is None or not task:
            return
        try:
            status, approval_id = self.task_store.task_status(task, self.clock())
        except StateError as e:
            raise TokenError("invalid_argument" if isinstance(e, InvalidArgument) else "state_unavailable",
                             str(e)) from None
        if status == "revoked":
            raise TaskInactive("task_revoked", f"task `{task}` is revoked")
        if status == "suspended":
            raise TaskInactive("task_suspended", f"task `{task}` waits for approval {approval_id}")

    # -- decisions made with a token ------------------------------------------------------------

    def bearer(self, value: str | None) -> str | None:
        """The token of an `authorization` value when it is a bearer token of ours, else None."""
        token = parse_bearer(value)
        if token is None or not self.verifier.is_ours(token):
            return None
        return token

    def v1_token(self, context) -> str | None:
        """Our task token from an authz.v1 call's `authorization` metadata, else None."""
        for key, value in context.invocation_metadata() or ():
            if key == "authorization":
                return self.bearer(value)
        return None

    def bind(self, token: str | None, requests: list) -> list:
        """Requests (dicts whose principal may be None, or Invalid) made with `token` -> Cedar request
        dicts for the token's agent, or Invalid with the deny reason. Without a token: principals are
        required and the reserved context keys may not be set by the caller."""
        if token is None:
            return [self._plain(r) for r in requests]
        try:
            vt = self.verifier.verify(token)
        except TokenError as e:
            vt = e.verified  # authentic but refused (expired, revoked): the log says whose it was
            principal = vt.principal if vt is not None else None
            log_token = (vt.jti, vt.task, list(vt.chain)) if vt is not None else None
            return [r if isinstance(r, Invalid) else
                    Invalid(e.code, str(e), "authorization", principal or r.get("principal"), r.get("action"),
                            r.get("resource"), log_token)
                    for r in requests]
        except Exception:
            log.exception("token verification failed; denying")
            return [r if isinstance(r, Invalid) else Invalid("internal_error", "internal error", "authorization")
                    for r in requests]
        return [self._with_token(vt, r) for r in requests]

    @staticmethod
    def _plain(r):
        if isinstance(r, Invalid):
            return r
        if r.get("principal") is None:
            return Invalid("request_parse_error", "`principal` is missing", "principal", None, r.get("action"),
                           r.get("resource"))
        ctx = r.get("context")
        if ctx:
            for key in RESERVED_CONTEXT:
                if key in ctx:
                    return Invalid("request_parse_error", f"`context.{key}` is set by task tokens only",
                                   f"context.{key}", r.get("principal"), r.get("action"), r.get("resource"))
            problem = _context_problem(ctx)
            if problem is not None:
                return Invalid("request_parse_error", problem[1], problem[0], r.get("principal"), r.get("action"),
                               r.get("resource"))
        return r

    @staticmethod
    def _with_token(vt, r):
        if isinstance(r, Invalid):
            return r
        action, resource = r.get("action"), r.get("resource")
        log_token = (vt.jti, vt.task, list(vt.chain))
        principal = r.get("principal")
        if principal is not None and principal != vt.principal:
            return Invalid("principal_mismatch", "the request's principal is not the token's agent", "principal",
                           principal, action, resource, log_token)
        if not vt.scope.allows(action, resource):
            return Invalid("out_of_scope", "the request is outside the token's scope", "", vt.principal, action,
                           resource, log_token)
        ctx = r.get("context")
        problem = _context_problem(ctx) if ctx else None
        if problem is not None:
            return Invalid("request_parse_error", problem[1], problem[0], vt.principal, action, resource, log_token)
        return {"principal": vt.principal, "action": action, "resource": resource,
                "context": vt.context(r.get("context"))}

    def bind_envoy(self, requests: list) -> list:
        """Envoy-mapped requests: when the `authorization` header carries one of our tokens, bind them to
        it (and hide the header from policies); otherwise return them unchanged."""
        http = requests[0]["context"]["http"]
        value = http["headers"].get("authorization")
        token = self.bearer(value) if value is not None else None
        if token is None:
            return requests
        headers = {k: v for k, v in http["headers"].items() if k != "authorization"}
        shared_http = {**http, "headers": headers}
        stripped = []
        for r in requests:
            ctx = {**r["context"], "http": shared_http}
            stripped.append({"principal": None, "action": r["action"], "resource": r["resource"], "context": ctx})
        return self.bind(token, stripped)

    # -- policy decisions about tokens -----------------------------------------------------------

    def authorize(self, request: dict) -> Authorization:
        """Decide an authz:: request (IssueToken, DelegateToken, Revoke) with the policies."""
        o = self.decider.decide([request], API)[0]
        if o.code in ("index_unavailable", "internal_error"):
            raise TokenError(o.code, f"cannot decide: {o.message} (decision {o.decision_id})")
        return Authorization(o.allowed, o.decision_id, o.reason)


def _task_of(svc: TokenService, token: str) -> str | None:
    """The task of a subject token, when it verifies (else the exchange refuses it with its reason)."""
    try:
        return svc.verifier.verify(token).task
    except Exception:  # noqa: BLE001 - exchange() reports the token's problem
        return None


def _scope_pb(claim: dict) -> tokens_pb2.TokenScope:
    return tokens_pb2.TokenScope(actions=claim["actions"], resources=claim["resources"])


def _issued_pb(issued, now: float) -> tokens_pb2.IssuedToken:
    return tokens_pb2.IssuedToken(
        access_token=issued.token, issued_token_type="urn:ietf:params:oauth:token-type:jwt", token_type="Bearer",
        expires_in=max(0, int(issued.exp - now)), scope=_scope_pb(issued.claims["scope"]), token_id=issued.jti,
        expires_at=issued.exp, task=issued.claims["task"])


class TokensServicer(tokens_pb2_grpc.TokensServicer):
    """authz.v1.Tokens over a TokenService."""

    def __init__(self, service: TokenService):
        self.service = service

    def add_to_server(self, server) -> None:
        """Register on `server`; a malformed request is answered INVALID_ARGUMENT (authz.server.malformed)."""
        add_guarded(tokens_pb2_grpc.add_TokensServicer_to_server, self, server)

    async def _fail(self, context, e: Exception):
        code = getattr(e, "code", "internal_error")
        if isinstance(e, ScopeError) or code == "invalid_argument":
            status = grpc.StatusCode.INVALID_ARGUMENT
        elif isinstance(e, RevocationFullError):
            status = grpc.StatusCode.RESOURCE_EXHAUSTED
        elif isinstance(e, TaskInactive):
            status = grpc.StatusCode.FAILED_PRECONDITION
        elif code in _UNAVAILABLE or isinstance(e, (RevocationError, KeyStoreError)):
            status = grpc.StatusCode.UNAVAILABLE
        else:
            status = grpc.StatusCode.PERMISSION_DENIED
        await context.abort(status, f"{code}: {e}")

    async def _service(self, context) -> TokenService:
        return self.service

    async def _caller(self, context) -> str:
        """The identity of the caller of an admin call (Issue, Exchange, Revoke), else the call is aborted."""
        if self.service.admin_from_loopback_only and not is_loopback_peer(context.peer()):
            await context.abort(grpc.StatusCode.UNAUTHENTICATED,
                                "unauthenticated: development mode (no identity configured) takes token admin calls "
                                "from loopback peers only; configure [[identity.jwt]] or [identity.mtls] "
                                "(docs/identity.md)")
        caller = caller_identity(context)
        if caller is None:
            await context.abort(grpc.StatusCode.UNAUTHENTICATED,
                                "unauthenticated: no verified caller identity (mTLS certificate or bearer token)")
        return caller

    async def Issue(self, request, context):  # noqa: N802 - gRPC method name
        svc = await self._service(context)
        caller = await self._caller(context)
        try:
            svc.check_task_active(request.task)
            issued = svc.issuer.issue(caller, request.task, list(request.scope.actions), list(request.scope.resources),
                                      request.ttl_s, list(request.may_act), svc.authorize)
        except (TokenError, ScopeError, KeyStoreError) as e:
            await self._fail(context, e)
        except Exception as e:
            log.exception("Issue failed")
            await self._fail(context, e)
        log.info("issued token %s for task %s to %s (decision %s)", issued.jti, issued.claims["task"], caller,
                 issued.decision_id)
        return tokens_pb2.IssueResponse(token=_issued_pb(issued, svc.clock()), decision_id=issued.decision_id)

    async def Exchange(self, request, context):  # noqa: N802 - gRPC method name
        svc = await self._service(context)
        caller = await self._caller(context)
        if not request.subject_token:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "invalid_argument: `subject_token` is missing")
        try:
            svc.check_task_active(_task_of(svc, request.subject_token))
            issued = svc.issuer.exchange(caller, request.subject_token, list(request.scope.actions),
                                         list(request.scope.resources), request.ttl_s, list(request.may_act),
                                         svc.authorize)
        except (TokenError, ScopeError, KeyStoreError) as e:
            await self._fail(context, e)
        except Exception as e:
            log.exception("Exchange failed")
            await self._fail(context, e)
        log.info("exchanged a token of task %s for %s: token %s, depth %d (decision %s)", issued.claims["task"],
                 caller, issued.jti, len(issued.claims["jti_chain"]), issued.decision_id)
        return tokens_pb2.ExchangeResponse(token=_issued_pb(issued, svc.clock()), decision_id=issued.decision_id)

    async def Revoke(self, request, context):  # noqa: N802 - gRPC method name
        svc = await self._service(context)
        caller = await self._caller(context)
        cfg = svc.cfg
        target = request.WhichOneof("target")
        try:
            presented = None
            if request.token:
                presented = svc.verifier.verify(request.token, check_revocation=False)
            elif target is None:
                raise TokenError("invalid_argument", "give a `token_id`, a `task`, an `agent` or a `token`")
            now = svc.clock()
            if target is None or target == "token_id":
                kind = "token"
                value = presented.jti if target is None else request.token_id
                token_exp = presented.exp if target is None else None  # named by its id: unknown
                resource = {"type": "Token", "id": value}
            else:
                kind = target
                value = getattr(request, target)
                token_exp = None
                resource = {"type": "Task" if kind == "task" else "Agent", "id": value}
            if not value or len(value) > cfg.max_task_chars or not value.isprintable():
                raise TokenError("invalid_argument", f"`{target or 'token'}` is missing or malformed")
            ctx = {"kind": kind, "target": value, "ttl_s": int(request.ttl_s)}
            if presented is not None:
                ctx = presented.context(ctx)
            auth = svc.authorize({"principal": agent_uid(caller), "action": REVOKE_ACTION, "resource": resource,
                                  "context": ctx})
            if not auth.allowed:
                raise TokenError(auth.reason, f"revoking is not permitted (decision {auth.decision_id})")
            expires = svc.revocations.revoke(
                kind, value, entry_expiry(kind, now, svc.keys.max_ttl_s, cfg.leeway_s, token_exp, request.ttl_s),
                cfg.max_revocations, caller, cfg.max_revocations_per_caller)
        except (TokenError, RevocationError) as e:
            await self._fail(context, e)
        except Exception as e:
            log.exception("Revoke failed")
            await self._fail(context, e)
        log.warning("revoked %s %s by %s (decision %s)", kind, value, caller, auth.decision_id)
        return tokens_pb2.RevokeResponse(decision_id=auth.decision_id, expires_at=int(expires))

    async def Introspect(self, request, context):  # noqa: N802 - gRPC method name
        svc = await self._service(context)
        if not request.token:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "invalid_argument: `token` is missing")
        if not svc.verifier.is_ours(request.token):
            return tokens_pb2.IntrospectResponse(active=False, reason="token_wrong_issuer")
        try:
            vt = svc.verifier.verify(request.token)
        except TokenError as e:
            return tokens_pb2.IntrospectResponse(active=False, reason=e.code)
        except Exception:
            log.exception("Introspect failed")
            return tokens_pb2.IntrospectResponse(active=False, reason="internal_error")
        c = vt.claims
        return tokens_pb2.IntrospectResponse(
            active=True, subject=vt.sub, task=vt.task, token_id=vt.jti, scope=_scope_pb(vt.scope.to_claim()),
            issued_at=vt.iat, expires_at=vt.exp, chain=list(vt.chain), depth=vt.depth, issuer=c["iss"],
            audience=c["aud"])

    async def GetJwks(self, request, context):  # noqa: N802 - gRPC method name
        svc = await self._service(context)
        try:
            jwks = svc.keys.jwks()
        except TokenError as e:
            await self._fail(context, e)
        except Exception as e:
            await self._fail(context, KeyStoreError(str(e)))
        return tokens_pb2.GetJwksResponse(keys=[tokens_pb2.JsonWebKey(**k) for k in jwks["keys"]],
                                          jwks_json=json.dumps(jwks, separators=(",", ":")))


def build_token_service(cfg, decider, store=None, keys=None) -> TokenService:
    """The TokenService of a worker's (validated) ServeConfig; revocations in `store` (the worker's state
    Store) when given; `keys` a shared key store (or a function making one) instead of the data folder's."""
    return TokenService(TokenConfig.from_dict(cfg.tokens), cfg.data_dir, cfg.db_path, decider,
                        admin_from_loopback_only=cfg.development_mode,
                        revocations=store.revocations if store is not None else None, keys=keys)
