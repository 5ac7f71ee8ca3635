"""Shadow policies in a worker: the shadow set evaluated beside each enforced decision, never changing it.

The supervisor compiles the shadow set (the policies folder with its @mode("shadow") policies enforced, or
the `shadow_policies` folder with the served entities) into its own index, DATA_DIR/shadow.lmdb, and says
through two shared flags (ShadowFlags) whether there is one to evaluate and whether its source failed to
compile. `follow` opens it with a second authz.Engine and hands a Shadow to the Decider (`decider.shadow`;
None when there is no shadow set: one attribute test a decision). The Decider asks the Shadow about each
request the policies decided, with the request as the enforced engine saw it (for a task-state request:
the context with `task` and `agent`); a differing outcome, (decision, policies), goes to the decision log
line's "shadow" field and counts in authz_shadow_differences_total{api, change}. A shadow evaluation that
fails is logged (throttled), counted in authz_shadow_failures_total and otherwise ignored.
"""
from __future__ import annotations

import asyncio
import logging

from authz.engine import Decision
from authz.server.logthrottle import ThrottledLog

log = logging.getLogger("authz.server")
_failures = ThrottledLog(log, 10.0)

SHADOW_HEALTH = "authz.shadow"  # health "service": NOT_SERVING while the shadow source fails to compile
ALLOW_TO_DENY, DENY_TO_ALLOW, POLICIES = "allow_to_deny", "deny_to_allow", "policies"


class ShadowFlags:
    """What the supervisor tells the workers, in shared memory: `active` (1: the shadow index holds the
    current shadow set, evaluate it) and `stale` (1: the shadow source failed to compile; an older shadow
    set, or none, is evaluated)."""

    def __init__(self, ctx):
        self.active = ctx.RawValue("b", 0)
        self.stale = ctx.RawValue("b", 0)


def _differs(enforced, shadow):
    """The change and the shadow outcome (decision, policies) when `shadow` differs from `enforced`, else None."""
    if enforced.allowed != shadow.allowed:
        change = ALLOW_TO_DENY if enforced.allowed else DENY_TO_ALLOW
    elif enforced.policies != shadow.policies and sorted(enforced.policies) != sorted(shadow.policies):
        change = POLICIES
    else:
        return None
    return change, ("allow" if shadow.allowed else "deny", list(shadow.policies))


class Shadow:
    """Evaluates the shadow set's `engine` for decided requests; compare functions never raise."""

    __slots__ = ("engine", "metrics")

    def __init__(self, engine, metrics):
        self.engine, self.metrics = engine, metrics

    def compare_one(self, api: str, request: dict, decision):
        """The shadow outcome (decision, policies) of `request` when it differs from the enforced `decision`,
        else None."""
        try:
            entities = request.get("entities")
            if entities is None:
                s = self.engine.check(request["principal"], request["action"], request["resource"],
                                      request.get("context") or {})
            else:
                s = self.engine.check(request["principal"], request["action"], request["resource"],
                                      request.get("context") or {}, entities=entities)
            found = _differs(decision, s)
            if found is None:
                return None
            self.metrics.shadow_differences(api, found[0])
        except Exception:
            self._failed(api, 1)
            return None
        return found[1]

    def compare(self, api: str, requests: list, results: list):
        """{index: (decision, policies)} of the items whose results[i] is a policy decision (an engine
        Decision) that the shadow set would decide otherwise, or None when none would."""
        indexes = [i for i, d in enumerate(results) if type(d) is Decision]
        if not indexes:
            return None
        try:
            decided = self.engine.check_batch([requests[i] for i in indexes])
            out, changes = None, None
            for i, s in zip(indexes, decided):
                found = _differs(results[i], s)
                if found is not None:
                    if out is None:
                        out, changes = {}, {}
                    out[i] = found[1]
                    changes[found[0]] = changes.get(found[0], 0) + 1
            if changes:
                for change, count in changes.items():
                    self.metrics.shadow_differences(api, change, count)
        except Exception:
            self._failed(api, len(indexes))
            return None
        return out

    def _failed(self, api: str, count: int) -> None:
        try:
            _failures.log(logging.WARNING, "shadow", "shadow policies could not be evaluated (the enforced "
                          "decisions stand)", exc_info=True)
            self.metrics.shadow_failures(api, count)
        except Exception:  # noqa: BLE001 - never into the request path
            pass


def open_if_active(decider, path: str, flags: ShadowFlags, metrics, warned: str = "") -> str:
    """Open the shadow index for `decider` when the supervisor says there is a shadow set and none is open;
    returns the error that stopped it ("" if none; one already `warned` of is not logged again)."""
    if not flags.active.value or decider.shadow is not None:
        return ""
    from authz import Engine

    try:
        decider.shadow = Shadow(Engine(path), metrics)
    except Exception as e:  # noqa: BLE001 - enforcement goes on without a shadow set
        if str(e) != warned:
            log.error("shadow policies: cannot open `%s`: %s", path, e)
        return str(e)
    log.info("shadow policies: evaluating `%s` (generation %d) beside the enforced set", path,
             decider.shadow.engine.generation)
    return ""


async def follow(decider, path: str, flags: ShadowFlags, health_servicer, metrics, interval_s: float = 0.5) -> None:
    """Keep `decider.shadow` on the shadow index at `path` while the supervisor says there is a shadow set,
    None otherwise; report health service SHADOW_HEALTH (SERVING unless the shadow source fails to
    compile or its index cannot be opened)."""
    from grpc_health.v1 import health_pb2

    shown, warned, retired = None, "", None
    while True:
        if retired is not None:  # closed a turn after it was dropped: no decision uses it any more
            retired.close()
            retired = None
        active = bool(flags.active.value)
        if active and decider.shadow is None:
            warned = open_if_active(decider, path, flags, metrics, warned)
        elif not active and decider.shadow is not None:
            retired, decider.shadow = decider.shadow.engine, None
            log.info("shadow policies: none to evaluate")
        elif decider.shadow is not None:
            try:
                decider.shadow.engine.refresh()
            except Exception as e:  # noqa: BLE001 - the loaded shadow generation keeps being evaluated
                log.debug("shadow refresh failed: %s", e)
        ok = not flags.stale.value and (not active or decider.shadow is not None)
        if ok != shown:
            await health_servicer.set(SHADOW_HEALTH, health_pb2.HealthCheckResponse.SERVING if ok
                                      else health_pb2.HealthCheckResponse.NOT_SERVING)
            shown = ok
        await asyncio.sleep(interval_s)
