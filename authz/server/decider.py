"""Decider: the one place servers ask the engine; adds decision ids, fail-closed outcomes, the log and metrics."""
from __future__ import annotations

import itertools
import logging
import os
import time

from authz.errors import IndexUnavailableError, RequestError

log = logging.getLogger("authz.server")

ALLOW, DENY = "allow", "deny"


class Invalid:
    """A request the server could not even build; it is answered with a deny carrying `code`."""

    __slots__ = ("code", "message", "field", "principal", "action", "resource", "token")

    def __init__(self, code: str, message: str, field: str = "", principal=None, action=None, resource=None,
                 token=None):
        self.code, self.message, self.field = code, message, field
        self.principal, self.action, self.resource = principal, action, resource
        self.token = token  # (jti, task, chain) of the task token it was made with, for the log


class Outcome:
    """One answered request: allowed or not, why, and the id it has in the decision log.

    `code` is None for a decision the policies made, else the stable code of the reason the
    request was denied without one (request_parse_error, index_unavailable, internal_error, ...).
    """

    __slots__ = ("decision_id", "allowed", "policies", "errors", "generation", "code", "message", "field")

    def __init__(self, decision_id, allowed, policies, errors, generation, code=None, message="", field=""):
        self.decision_id, self.allowed, self.policies, self.errors = decision_id, allowed, policies, errors
        self.generation, self.code, self.message, self.field = generation, code, message, field

    @property
    def decision(self) -> str:
        return ALLOW if self.allowed else DENY

    @property
    def reason(self) -> str:
        """The stable reason code of a deny ("" for an allow)."""
        if self.allowed:
            return ""
        if self.code:
            return self.code
        return "forbidden_by_policy" if self.policies else "no_permitting_policy"


def token_of(request) -> tuple | None:
    """(jti, task, chain) of the task token a request dict was made with, for the decision log."""
    ctx = request.get("context")
    if not ctx or "delegation" not in ctx:
        return None
    tok, dlg = ctx.get("token"), ctx.get("delegation")
    if type(tok) is not dict or type(dlg) is not dict:
        return None
    chain = [e["__entity"]["id"] if isinstance(e, dict) and "__entity" in e else str(e) for e in dlg.get("chain", ())]
    return tok.get("jti"), tok.get("task"), chain


class Decider:
    """Decides Cedar requests with an authz.Engine opened lazily on `db_path`. Never raises from decide().

    Until the index can be opened every request is denied with `index_unavailable`.
    """

    def __init__(self, db_path: str, decision_log=None, metrics=None, engine_factory=None):
        from authz.server.metrics import NullMetrics

        self.db_path = db_path
        self.decision_log = decision_log
        self.metrics = metrics or NullMetrics()
        self.engine = None
        self.last_error = ""
        self._engine_factory = engine_factory
        self._prefix = os.urandom(6).hex()
        self._counter = itertools.count(1)

    def open_engine(self) -> bool:
        """Try to open the index; True once it is open."""
        if self.engine is not None:
            return True
        try:
            if self._engine_factory is not None:
                self.engine = self._engine_factory(self.db_path)
            else:
                import authz

                self.engine = authz.Engine(self.db_path)
        except IndexUnavailableError as e:
            self.last_error = str(e)
            return False
        except Exception as e:
            if not self.last_error:
                log.exception("cannot open the index `%s`", self.db_path)
            self.last_error = f"cannot open the index `{self.db_path}`: {e}"
            return False
        return True

    @property
    def generation(self) -> int:
        """The generation the engine serves, 0 before the index is open."""
        engine = self.engine
        try:
            return int(engine.generation) if engine is not None else 0
        except Exception:
            return 0

    def next_id(self) -> str:
        """A decision id unique across workers and restarts."""
        return f"{self._prefix}{next(self._counter):010x}"

    def decide_one(self, request: dict, api: str) -> Outcome:
        """decide([request], api)[0] without the batch bookkeeping (the Envoy hot path)."""
        engine = self.engine
        if engine is None:
            return self.decide([request], api)[0]
        t0 = time.perf_counter_ns()
        try:
            d = engine.check(principal=request["principal"], action=request["action"],
                             resource=request["resource"], context=request.get("context") or {})
        except Exception:
            return self.decide([request], api)[0]  # the general path classifies and logs the failure
        generation = engine.generation  # INVARIANT: same generation as the check (one thread)
        latency_ns = time.perf_counter_ns() - t0
        did = f"{self._prefix}{next(self._counter):010x}"
        o = Outcome(did, d.allowed, d.policies, d.errors, generation)
        decision = ALLOW if o.allowed else DENY
        self.metrics.decision(api, decision, latency_ns / 1e9)
        if self.decision_log is not None:
            self.decision_log.record(did, api, request["principal"], request["action"], request["resource"],
                                     decision, d.policies, d.errors, latency_ns, generation, None,
                                     token_of(request))
        return o

    def decide(self, requests: list, api: str, stop_on: str | None = None) -> list:
        """Decide each request dict ({principal, action, resource, context}) or Invalid, in order,
        against one generation; returns one Outcome per request.

        With `stop_on` ("allow" or "deny") the outcomes end at the first one with that decision
        (an undecidable request counts as a deny); only returned outcomes are logged.
        """
        t0 = time.perf_counter_ns()
        n = len(requests)
        results: list = [None] * n
        valid = [i for i, r in enumerate(requests) if not isinstance(r, Invalid)]
        for i, r in enumerate(requests):
            if isinstance(r, Invalid):
                results[i] = (None, r.code, r.message, r.field)
        if valid:
            engine = self.engine  # INVARIANT: opened by the worker's background task, never on the request path
            if engine is None:
                for i in valid:
                    results[i] = (None, "index_unavailable", "no policy index is loaded", "")
            else:
                self._evaluate(engine, requests, valid, results)
        # INVARIANT: single-threaded per worker, so the engine cannot switch generations between
        # the evaluation above and this read.
        generation = self.generation
        if stop_on is not None:
            for k, (d, _, _, _) in enumerate(results):
                allowed = d is not None and bool(d.allowed)
                if allowed == (stop_on == ALLOW):
                    del results[k + 1:]
                    break
        latency_ns = time.perf_counter_ns() - t0
        per_item_s = latency_ns / n / 1e9 if n else 0.0
        outcomes = []
        record = self.decision_log.record if self.decision_log is not None else None
        for i, (d, code, message, field) in enumerate(results):
            did = self.next_id()
            if d is not None:
                o = Outcome(did, bool(d.allowed), d.policies, d.errors, generation)
            else:
                o = Outcome(did, False, (), (), generation, code, message, field)
                self.metrics.request_error(api, code)
            outcomes.append(o)
            self.metrics.decision(api, o.decision, per_item_s)
            if record is not None:
                r = requests[i]
                if isinstance(r, Invalid):
                    p, a, res, tok = r.principal, r.action, r.resource, r.token
                else:
                    p, a, res, tok = r.get("principal"), r.get("action"), r.get("resource"), token_of(r)
                record(did, api, p, a, res, o.decision, o.policies, o.errors, latency_ns, generation, code, tok)
        return outcomes

    def _evaluate(self, engine, requests, valid, results):
        """Fill results[i] = (decision, None, "", "") or an error tuple for each valid index."""
        try:
            if len(valid) == 1:
                r = requests[valid[0]]
                results[valid[0]] = (engine.check(principal=r["principal"], action=r["action"], resource=r["resource"],
                             context=r.get("context") or {}),
                                     None, "", "")
                return
            decisions = engine.check_batch([requests[i] for i in valid])
            for i, d in zip(valid, decisions):
                results[i] = (d, None, "", "")
            return
        except RequestError as e:
            if len(valid) == 1:
                results[valid[0]] = (None, "request_parse_error", str(e), "")
                return
        except IndexUnavailableError as e:
            for i in valid:
                results[i] = (None, "index_unavailable", str(e), "")
            return
        except Exception:
            log.exception("engine failure; denying")
            for i in valid:
                results[i] = (None, "internal_error", "internal error", "")
            return
        # A malformed item made the batch fail: decide item by item to pin it down.
        for i in valid:
            r = requests[i]
            try:
                results[i] = (engine.check(principal=r["principal"], action=r["action"], resource=r["resource"],
                             context=r.get("context") or {}),
                              None, "", "")
            except RequestError as e:
                results[i] = (None, "request_parse_error", str(e), "")
            except Exception:
                log.exception("engine failure; denying")
                results[i] = (None, "internal_error", "internal error", "")
