"""Decider: the one place servers ask the engine; adds decision ids, fail-closed outcomes, the log and metrics."""
from __future__ import annotations

import logging
import os
import time

from authz.errors import IndexUnavailableError, RequestError
from authz.server.logthrottle import ThrottledLog
from authz.server.taskstate import Granted, task_of

log = logging.getLogger("authz.server")
# An engine failure repeats for every request that reaches the damaged part: one traceback per 10 s.
_engine_failures = ThrottledLog(log, 10.0)

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

    __slots__ = ("decision_id", "allowed", "policies", "errors", "generation", "code", "message", "field",
                 "approval_id", "queue")

    def __init__(self, decision_id, allowed, policies, errors, generation, code=None, message="", field="",
                 approval_id="", queue=""):
        self.decision_id, self.allowed, self.policies, self.errors = decision_id, allowed, policies, errors
        self.generation, self.code, self.message, self.field = generation, code, message, field
        self.approval_id, self.queue = approval_id, queue  # approval_required: the approval the call waits for

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


def decision_id(prefix: str, seq: int) -> str:
    """The decision id of sequence number `seq` of the process whose ids start with `prefix`."""
    return prefix + hex(seq)[2:].zfill(10)  # f"{prefix}{seq:010x}", without parsing a format spec (2.5x faster)


class DecisionBatch:
    """A decided batch as the decision log takes it: Decider.decide_batch's requests and results, made
    into events (and lines) by the log's writer thread, off the request path.

    INVARIANT: nothing changes `requests` or `results` after decide_batch returns.
    `shadow`: {index: (decision, policies)} of the items the shadow policies decide otherwise, or None.
    """

    __slots__ = ("prefix", "first", "requests", "results", "shadow")

    def __init__(self, prefix: str, first: int, requests: list, results: list, shadow=None):
        self.prefix, self.first, self.requests, self.results = prefix, first, requests, results
        self.shadow = shadow

    def __len__(self) -> int:
        return len(self.results)

    def event(self, i: int) -> tuple:
        """The decision log event of item i: (decision_id, principal, action, resource, decision,
        policies, errors, reason, token), and for an approval asked or used, its
        {"id", "queue"} / {"id", "approver"} as a tenth member."""
        d = self.results[i]
        did = decision_id(self.prefix, self.first + i)
        approval = None
        if type(d) is tuple:
            code, decision, policies, errors = d[0], DENY, (), ()
            if len(d) > 3:
                approval = {"id": d[3], "queue": d[4]}
        else:
            code, decision, policies, errors = None, ALLOW if d.allowed else DENY, d.policies, d.errors
            if type(d) is Granted:
                approval = {"id": d.approval_id, "approver": d.approver}
        r = self.requests[i]
        if type(r) is Invalid:
            event = (did, r.principal, r.action, r.resource, decision, policies, errors, code, r.token)
        else:
            ctx = r.get("context")
            event = (did, r.get("principal"), r.get("action"), r.get("resource"), decision, policies, errors, code,
                     token_of(r) if ctx and "delegation" in ctx else None)
        return event if approval is None else event + (approval,)


def _check_one(engine, r: dict):
    """engine.check of one request dict; its `entities` (request entities, Engine.check) when it brings some
    (check_batch reads them from the dict itself)."""
    entities = r.get("entities")
    if entities is None:
        return engine.check(principal=r["principal"], action=r["action"], resource=r["resource"],
                            context=r.get("context") or {})
    return engine.check(principal=r["principal"], action=r["action"], resource=r["resource"],
                        context=r.get("context") or {}, entities=entities)


def _log_engine_failure() -> None:
    """Log the exception being handled, throttled."""
    _engine_failures.log(logging.ERROR, "engine failure", "engine failure; denying with internal_error",
                         exc_info=True)


class Decider:
    """Decides Cedar requests with an authz.Engine opened lazily on `db_path`. Never raises from decide().

    Until the index can be opened every request is denied with `index_unavailable`.
    """

    def __init__(self, db_path: str, decision_log=None, metrics=None, engine_factory=None, tracer=None,
                 task_state=None):
        from authz.server.metrics import NullMetrics

        self.db_path = db_path
        self.decision_log = decision_log
        self.metrics = metrics or NullMetrics()
        self.tracer = tracer  # a tracing.DecisionTracer, or None (traces off: one test per decision)
        self.task_state = task_state  # a taskstate.TaskState: requests made with a task token go through it
        self.shadow = None  # a shadow.Shadow while a shadow policy set is evaluated beside the enforced one
        self.engine = None
        self.last_error = ""
        self._engine_factory = engine_factory
        self._prefix = os.urandom(6).hex()
        self._seq = 0  # the last decision id's sequence number
        self.last_request_ns = 0  # perf_counter_ns when the last request came to decide (drain waits on it)
        # What Status tells besides the engine's (set by the worker): the supervisor's shared flag, 1 while the
        # policies folder holds changes that failed to compile (None: no folder watched), and the state backend.
        self.policies_stale = None
        self.state_backend = "lmdb"

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

    @property
    def policy_digest(self) -> str:
        """The content digest (SHA-256 hex) of the policy set the engine serves; "" before the index is open
        or for an index compiled before digests were stored."""
        return getattr(self.engine, "policy_digest", "") or ""

    def digest_of(self, generation) -> str:
        """The first 16 hex digits of `generation`'s policy digest, as the decision log writes it ("" unknown)."""
        digest_of = getattr(self.engine, "digest_of", None)
        return digest_of(generation)[:16] if digest_of is not None else ""

    def request_entities(self, entities):
        """A call's request entities (a list of Cedar JSON entities) checked and resolved once by the engine,
        for requests to carry as their `entities` (Engine.request_entities); RequestError naming what is
        wrong. Before the index is open they are returned as they are (the requests are then denied
        index_unavailable anyway)."""
        engine = self.engine
        if engine is None or not entities:
            return entities
        return engine.request_entities(entities)

    def next_id(self) -> str:
        """A decision id unique across workers and restarts."""
        self._seq += 1
        return decision_id(self._prefix, self._seq)

    def decide_one(self, request: dict, api: str, trace=None) -> Outcome:
        """decide([request], api)[0] without the batch bookkeeping (the hot path of a Check: Envoy's,
        authz.v1's, AuthZEN's evaluation); logged as a Check (DecisionLog.record_check).

        `trace`: where the caller's trace context is (see tracing.py); the request's own HTTP
        headers when None."""
        engine = self.engine
        ctx = request.get("context")
        if engine is None or "entities" in request:  # (request entities: engine.check_batch reads them)
            return self.decide([request], api, None, trace)[0]
        # (task_of is None without a context: the common request skips it)
        if ctx and self.task_state is not None and task_of(request) is not None:
            return self._decide_one_with_state(engine, request, api, trace)
        t0 = self.last_request_ns = time.perf_counter_ns()
        try:
            d = engine.check(request["principal"], request["action"], request["resource"], ctx or {})
        except Exception:
            d = None
        if d is None:  # the general path classifies and logs the failure (outside the except: one traceback)
            return self.decide([request], api, None, trace)[0]
        generation = engine.generation  # INVARIANT: same generation as the check (one thread)
        latency_ns = time.perf_counter_ns() - t0
        seq = self._seq = self._seq + 1
        allowed = d.allowed
        o = Outcome(decision_id(self._prefix, seq), allowed, d.policies, d.errors, generation)
        if self.metrics.enabled:
            self.metrics.decision(api, ALLOW if allowed else DENY, latency_ns / 1e9)
        shadow = self.shadow.compare_one(api, request, d) if self.shadow is not None else None
        if self.decision_log is not None:
            self.decision_log.record_check(api, latency_ns, generation, self._prefix, seq, request, d, shadow)
        if self.tracer is not None:
            self.tracer.decision(api, trace, request, o, latency_ns)
        return o

    def _decide_one_with_state(self, engine, request: dict, api: str, trace) -> Outcome:
        """decide_one of a request made with a task token: decided with its task's state (as decide() does),
        logged as a Check (the decision log's runs of Checks) with the context it was decided with."""
        t0 = self.last_request_ns = time.perf_counter_ns()
        requests, results = [request], [None]
        self._evaluate_with_state(engine, requests, (0,), results)
        request, d = requests[0], results[0]  # (the request now carries the context it was decided with)
        generation = self.generation  # INVARIANT: same generation as the decision (one thread)
        latency_ns = time.perf_counter_ns() - t0
        seq = self._seq = self._seq + 1
        if type(d) is tuple:
            o = Outcome(decision_id(self._prefix, seq), False, (), (), generation, *d)
        else:
            o = Outcome(decision_id(self._prefix, seq), d.allowed, d.policies, d.errors, generation)
        if self.metrics.enabled:
            self._count(api, results, latency_ns / 1e9)
        shadow = self.shadow.compare(api, requests, results) if self.shadow is not None else None
        if self.decision_log is not None:
            self.decision_log.record_check(api, latency_ns, generation, self._prefix, seq, request, d,
                                           shadow.get(0) if shadow else None)
        if self.tracer is not None:
            self.tracer.decision(api, trace, request, o, latency_ns)
        return o

    def decide(self, requests: list, api: str, stop_on: str | None = None, trace=None) -> list:
        """Decide each request dict ({principal, action, resource, context}) or Invalid, in order,
        against one generation; returns one Outcome per request.

        With `stop_on` ("allow" or "deny") the outcomes end at the first one with that decision
        (an undecidable request counts as a deny); only returned outcomes are logged (and traced:
        `trace` as in decide_one).
        """
        results, first, generation = self.decide_batch(requests, api, stop_on, trace)
        prefix = self._prefix
        outcomes = []
        for i, d in enumerate(results):
            did = decision_id(prefix, first + i)
            if type(d) is tuple:
                outcomes.append(Outcome(did, False, (), (), generation, *d))
            else:
                outcomes.append(Outcome(did, d.allowed, d.policies, d.errors, generation))
        return outcomes

    def decide_batch(self, requests: list, api: str, stop_on: str | None = None, trace=None) -> tuple:
        """decide() without Outcome objects: (results, first, generation), results[i] being the
        engine's Decision or (code, message, field) for a request answered without one, with the
        decision id `decision_id(self.id_prefix, first + i)`. Logs, counts and traces the results."""
        t0 = self.last_request_ns = time.perf_counter_ns()
        n = len(requests)
        results: list = [None] * n
        if Invalid in map(type, requests):
            valid = []
            for i, r in enumerate(requests):
                if type(r) is Invalid:
                    results[i] = (r.code, r.message, r.field)
                else:
                    valid.append(i)
        else:  # the common case, found without a Python loop: every item is a request
            valid = range(n)
        if valid:
            engine = self.engine  # INVARIANT: opened by the worker's background task, never on the request path
            if engine is None:
                for i in valid:
                    results[i] = ("index_unavailable", "no policy index is loaded", "")
            elif self.task_state is not None:
                # A request made with a task token has `token` in its context: only those are looked at closer.
                stateful = [i for i in valid if "token" in (requests[i].get("context") or ())
                            and task_of(requests[i]) is not None]
                if stateful:
                    held = set(stateful)
                    plain = [i for i in valid if i not in held]
                else:
                    plain = valid
                if stateful and any("entities" in requests[i] for i in stateful):
                    # The task state decides with the stored entities only: a request's own are never dropped.
                    for i in stateful:
                        if "entities" in requests[i]:
                            results[i] = ("request_parse_error", "`entities`: request entities cannot be used "
                                          "with a task token", "entities")
                    stateful = [i for i in stateful if results[i] is None]
                    valid = plain  # what is left to decide without the task state
                if stateful:
                    if plain:
                        self._evaluate(engine, requests, plain, results)
                    self._evaluate_with_state(engine, requests, stateful, results)
                else:
                    self._evaluate(engine, requests, valid, results)
            else:
                self._evaluate(engine, requests, valid, results)
        # INVARIANT: single-threaded per worker, so the engine cannot switch generations between
        # the evaluation above and this read.
        generation = self.generation
        if stop_on is not None:
            want = stop_on == ALLOW
            for k, d in enumerate(results):
                if (type(d) is not tuple and d.allowed) == want:
                    del results[k + 1:]
                    break
        latency_ns = time.perf_counter_ns() - t0
        first = self._seq + 1
        self._seq += len(results)
        if self.metrics.enabled:
            self._count(api, results, latency_ns / n / 1e9 if n else 0.0)
        # The shadow set sees each request as the enforced engine did (task-state contexts included).
        shadow = self.shadow.compare(api, requests, results) if self.shadow is not None else None
        if self.decision_log is not None and results:
            # INVARIANT (DecisionBatch): nothing changes requests or results after this.
            self.decision_log.record_batch(api, latency_ns, generation,
                                           DecisionBatch(self._prefix, first, requests, results, shadow))
        if self.tracer is not None:
            self.tracer.batch(api, trace, requests, results, self._prefix, first, generation, latency_ns)
        return results, first, generation

    def _count(self, api: str, results: list, per_item_s: float) -> None:
        """The metrics of a decided batch: one update per outcome (and error code), not per item."""
        allowed = denied = 0
        errors = None
        for d in results:
            if type(d) is tuple:
                denied += 1
                if errors is None:
                    errors = {}
                errors[d[0]] = errors.get(d[0], 0) + 1
            elif d.allowed:
                allowed += 1
            else:
                denied += 1
        if allowed:
            self.metrics.decisions(api, ALLOW, allowed, per_item_s)
        if denied:
            self.metrics.decisions(api, DENY, denied, per_item_s)
        if errors:
            for code, count in errors.items():
                self.metrics.request_error(api, code, count)

    @property
    def id_prefix(self) -> str:
        """What every decision id of this process starts with (then 10 hex digits of a sequence number)."""
        return self._prefix

    def _evaluate_with_state(self, engine, requests, indexes, results):
        """results[i] for requests made with a task token: decided with their task's state (taskstate.py)."""
        try:
            self.task_state.decide(engine, requests, indexes, results)
        except RequestError as e:  # a malformed request: decide the batch's items one by one to place it
            if len(indexes) == 1:
                results[indexes[0]] = ("request_parse_error", str(e), "")
                return
            for i in indexes:
                self._evaluate_with_state(engine, requests, [i], results)
        except IndexUnavailableError as e:
            for i in indexes:
                results[i] = ("index_unavailable", str(e), "")
        except Exception:
            _log_engine_failure()
            for i in indexes:
                results[i] = ("internal_error", "internal error", "")

    def _evaluate(self, engine, requests, valid, results):
        """Fill results[i] with the Decision, or (code, message, field) when there is none, for each valid index."""
        try:
            if len(valid) == 1:
                r = requests[valid[0]]
                results[valid[0]] = _check_one(engine, r)
                return
            if len(valid) == len(requests):
                results[:] = engine.check_batch(requests)
                return
            decisions = engine.check_batch([requests[i] for i in valid])
            for i, d in zip(valid, decisions):
                results[i] = d
            return
        except RequestError as e:
            if len(valid) == 1:
                results[valid[0]] = ("request_parse_error", str(e), "")
                return
        except IndexUnavailableError as e:
            for i in valid:
                results[i] = ("index_unavailable", str(e), "")
            return
        except Exception:
            _log_engine_failure()
            for i in valid:
                results[i] = ("internal_error", "internal error", "")
            return
        # A malformed item made the batch fail: decide item by item to pin it down.
        self._evaluate_each(engine, requests, valid, results)

    @staticmethod
    def _evaluate_each(engine, requests, valid, results):
        """_evaluate, one request at a time (each with its own `entities`, if any)."""
        for i in valid:
            r = requests[i]
            try:
                results[i] = _check_one(engine, r)
            except RequestError as e:
                results[i] = ("request_parse_error", str(e), "")
            except IndexUnavailableError as e:
                results[i] = ("index_unavailable", str(e), "")
            except Exception:
                _log_engine_failure()
                results[i] = ("internal_error", "internal error", "")
