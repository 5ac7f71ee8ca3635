"""Issuer: signs task tokens (Issue) and narrower delegated ones (Exchange, RFC 8693 semantics).

Both are policy decisions made by the caller-supplied `authorize(request) -> Authorization`:
  Issue     principal = Agent::"<caller>", action = Action::"authz::IssueToken",
            resource = Task::"<task>", context = {scope: {actions, resources}, ttl_s}
  Exchange  principal = Agent::"<new actor>", action = Action::"authz::DelegateToken",
            resource = Task::"<task>", context = {scope, ttl_s, delegation: {chain, depth, root},
            parent: {sub, jti}}
Claims: iss, aud, sub (the acting agent), task, scope {actions, resources}, jti, iat, nbf, exp,
and for a delegated token `act` (nested, outermost = current actor = sub, innermost = root) and
`jti_chain` (the ids of the tokens it descends from, so revoking one revokes its descendants);
`may_act` when asked for. Header: alg EdDSA, typ authz-task+jwt, kid.
"""
from __future__ import annotations

import os
import time

import jwt

from authz.tokens.config import TokenConfig
from authz.tokens.scope import Scope
from authz.tokens.verify import (ALGORITHM, TOKEN_TYPE, TokenError, VerifiedToken, act_from_chain, agent_entity,
                                 agent_uid)

ISSUE_ACTION = {"type": "Action", "id": "authz::IssueToken"}
DELEGATE_ACTION = {"type": "Action", "id": "authz::DelegateToken"}
TASK_TYPE = "Task"
MAX_MAY_ACT = 16


class Issued:
    """A signed token and what it says."""

    __slots__ = ("token", "claims", "scope", "decision_id")

    def __init__(self, token: str, claims: dict, scope: Scope, decision_id: str):
        self.token, self.claims, self.scope, self.decision_id = token, claims, scope, decision_id

    @property
    def jti(self) -> str:
        return self.claims["jti"]

    @property
    def exp(self) -> int:
        return self.claims["exp"]


class Authorization:
    """The answer of an `authorize` callback."""

    __slots__ = ("allowed", "decision_id", "reason")

    def __init__(self, allowed: bool, decision_id: str = "", reason: str = ""):
        self.allowed, self.decision_id, self.reason = allowed, decision_id, reason


def _check_id(value, what: str, limit: int) -> str:
    if not isinstance(value, str) or not value:
        raise TokenError("invalid_argument", f"`{what}` is missing")
    if len(value) > limit:
        raise TokenError("invalid_argument", f"`{what}` is longer than {limit} characters")
    if not value.isprintable():
        raise TokenError("invalid_argument", f"`{what}` holds control characters")
    return value


def _may_act_claim(may_act, limit: int):
    may_act = list(may_act or ())
    if len(may_act) > MAX_MAY_ACT:
        raise TokenError("invalid_argument", f"`may_act`: more than {MAX_MAY_ACT} agents")
    subs = [_check_id(a, f"may_act[{i}]", limit) for i, a in enumerate(may_act)]
    if not subs:
        return None
    return {"sub": subs[0]} if len(subs) == 1 else [{"sub": s} for s in subs]


def may_act_allows(claim, actor: str) -> bool:
    """Whether `actor` is named by a `may_act` claim ({"sub": ...} or a list of them); absent = anyone."""
    if claim is None:
        return True
    entries = claim if isinstance(claim, list) else [claim]
    return any(isinstance(e, dict) and e.get("sub") == actor for e in entries)


class Issuer:
    """Issues and exchanges task tokens signed with the key store's active key."""

    def __init__(self, cfg: TokenConfig, keys, verifier, clock=time.time):
        self.cfg = cfg
        self.keys = keys
        self.verifier = verifier
        self.clock = clock

    def _ttl(self, requested: int) -> int:
        if isinstance(requested, bool) or not isinstance(requested, int) or requested < 0:
            raise TokenError("invalid_argument", "`ttl_s` must be a non-negative integer")
        return min(requested or self.cfg.max_ttl_s, self.cfg.max_ttl_s)

    def _refuse_revoked(self, agents, task: str) -> None:
        now = self.clock()
        try:
            rv = self.verifier.revocations.current()
        except Exception as e:
            raise TokenError(getattr(e, "code", "revocation_unavailable"), str(e)) from None
        if rv.task_revoked(task, now):
            raise TokenError("task_revoked", f"task `{task}` is revoked")
        for agent in agents:
            if rv.agent_revoked(agent, now):
                raise TokenError("agent_revoked", f"agent `{agent}` is revoked")

    def issue(self, caller: str, task: str, actions, resources, ttl_s: int, may_act, authorize) -> Issued:
        """A root token for `caller` on `task`; TokenError when refused (the code says why)."""
        cfg = self.cfg
        caller = _check_id(caller, "caller", cfg.max_task_chars)
        task = _check_id(task, "task", cfg.max_task_chars)
        scope = Scope.parse(actions, resources, cfg.max_scope_entries)
        if scope.empty:
            raise TokenError("invalid_argument", "`scope` needs at least one action and one resource")
        ttl = self._ttl(ttl_s)
        may_act_claim = _may_act_claim(may_act, cfg.max_task_chars)
        self._refuse_revoked([caller], task)
        request = {"principal": agent_uid(caller), "action": ISSUE_ACTION,
                   "resource": {"type": TASK_TYPE, "id": task},
                   "context": {"scope": scope.to_claim(), "ttl_s": ttl}}
        auth = authorize(request)
        if not auth.allowed:
            raise TokenError(auth.reason or "denied_by_policy", f"issuing a token is not permitted: {auth.reason}")
        now = int(self.clock())
        claims = {"iss": cfg.issuer, "aud": cfg.aud, "sub": caller, "task": task, "scope": scope.to_claim(),
                  "jti": _new_jti(), "iat": now, "nbf": now, "exp": now + ttl}
        if may_act_claim is not None:
            claims["may_act"] = may_act_claim
        return Issued(self._sign(claims), claims, scope, auth.decision_id)

    def exchange(self, actor: str, subject_token: str, actions, resources, ttl_s: int, may_act,
                 authorize) -> Issued:
        """A token for `actor` derived from `subject_token`: scope within the parent's, expiry no later,
        the actor appended to the chain; TokenError when refused."""
        cfg = self.cfg
        actor = _check_id(actor, "caller", cfg.max_task_chars)
        parent: VerifiedToken = self.verifier.verify(subject_token)  # includes revocation checks
        if not may_act_allows(parent.may_act, actor):
            raise TokenError("may_act_mismatch", "the subject token does not allow this agent to act for it")
        chain = list(parent.chain) + [actor]
        depth = len(chain) - 1
        if depth > cfg.max_delegation_depth:
            raise TokenError("delegation_too_deep",
                             f"the delegation chain would be deeper than {cfg.max_delegation_depth}")
        requested = Scope.parse(actions, resources, cfg.max_scope_entries)
        scope = requested.narrow(parent.scope)
        if scope.empty:
            raise TokenError("out_of_scope", "the requested scope does not intersect the subject token's")
        now = int(self.clock())
        ttl = self._ttl(ttl_s)
        exp = min(now + ttl, parent.exp)
        if exp <= now:
            raise TokenError("token_expired", "the subject token has expired")
        may_act_claim = _may_act_claim(may_act, cfg.max_task_chars)
        self._refuse_revoked([actor], parent.task)
        request = {"principal": agent_uid(actor), "action": DELEGATE_ACTION,
                   "resource": {"type": TASK_TYPE, "id": parent.task},
                   "context": {"scope": scope.to_claim(), "ttl_s": exp - now,
                               "delegation": {"chain": [agent_entity(a) for a in chain], "depth": depth,
                                              "root": agent_entity(chain[0])},
                               "parent": {"sub": parent.sub, "jti": parent.jti}}}
        auth = authorize(request)
        if not auth.allowed:
            raise TokenError(auth.reason or "denied_by_policy", f"delegating the token is not permitted: {auth.reason}")
        claims = {"iss": cfg.issuer, "aud": cfg.aud, "sub": actor, "task": parent.task, "scope": scope.to_claim(),
                  "jti": _new_jti(), "iat": now, "nbf": now, "exp": exp, "act": act_from_chain(chain),
                  "jti_chain": list(parent.jti_chain) + [parent.jti]}
        if may_act_claim is not None:
            claims["may_act"] = may_act_claim
        return Issued(self._sign(claims), claims, scope, auth.decision_id)

    def _sign(self, claims: dict) -> str:
        kid, private = self.keys.signing_key()
        token = jwt.encode(claims, private, algorithm=ALGORITHM, headers={"kid": kid, "typ": TOKEN_TYPE})
        if len(token) > self.cfg.max_token_bytes:
            raise TokenError("invalid_argument", f"the token would be longer than {self.cfg.max_token_bytes} bytes")
        return token


def _new_jti() -> str:
    return os.urandom(16).hex()
