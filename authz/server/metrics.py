"""Prometheus metrics of the server, shared by all worker processes (prometheus-client multiprocess mode)."""
from __future__ import annotations

import bisect
import os
import shutil
import tempfile

_ENV = "PROMETHEUS_MULTIPROC_DIR"
LATENCY_BUCKETS = (1e-5, 2.5e-5, 5e-5, 1e-4, 2.5e-4, 5e-4, 1e-3, 2.5e-3, 5e-3, 1e-2, 2.5e-2, 0.1)


def prepare_multiprocess_dir() -> str:
    """Create a fresh folder for the workers' metric files and point the environment at it.

    Must run before prometheus_client is imported in this process and before workers start.
    """
    path = tempfile.mkdtemp(prefix="authz-metrics-")
    os.environ[_ENV] = path
    return path


def remove_multiprocess_dir(path: str) -> None:
    """Delete the metric files folder."""
    shutil.rmtree(path, ignore_errors=True)


def start_metrics_http(host: str, port: int):
    """Serve /metrics for all processes; returns (server, thread)."""
    from prometheus_client import CollectorRegistry, start_http_server
    from prometheus_client.multiprocess import MultiProcessCollector

    registry = CollectorRegistry()
    MultiProcessCollector(registry)
    return start_http_server(port, addr=host, registry=registry)


def mark_worker_dead(pid: int) -> None:
    """Drop the live gauges of a worker that exited."""
    if os.environ.get(_ENV):
        from prometheus_client import multiprocess

        multiprocess.mark_process_dead(pid)


class NullMetrics:
    """Metrics that count nothing (no metrics endpoint configured)."""

    enabled = False

    def decision(self, api: str, decision: str, latency_s: float) -> None:
        """Count one decision."""

    def decisions(self, api: str, decision: str, count: int, latency_s: float) -> None:
        """Count `count` decisions with one outcome, each of which took `latency_s` (a batch's items)."""

    def request_error(self, api: str, code: str, count: int = 1) -> None:
        """Count requests answered with a deny because they could not be decided."""

    def decision_log_dropped(self, count: int = 1) -> None:
        """Count decision events the log had no room for, or could not write."""

    def worker_generation(self, generation: int, digest: str = "") -> None:
        """Report the generation this worker serves and its policy set's content digest."""

    def reload(self, ok: bool, generation: int | None = None) -> None:
        """Count one recompile of the watched policies."""

    def policies_stale(self, stale: bool) -> None:
        """Report whether the policies folder holds changes the served generation lacks (a failed reload)."""

    def shadow_differences(self, api: str, change: str, count: int = 1) -> None:
        """Count decisions the shadow set would have made otherwise (change: allow_to_deny, deny_to_allow, policies)."""

    def shadow_failures(self, api: str, count: int = 1) -> None:
        """Count decisions the shadow set could not evaluate."""

    def state_store(self, backend: str, conflicts: int, exhausted: int, failures: int) -> None:
        """Report the state store's running totals (this process's, since it started): commits refused
        because the shared state moved, decisions that gave up after the attempts, calls to the store
        refused or failed. Only what grew since the last report is counted."""


class Metrics(NullMetrics):
    """The server's metrics; every process that records must have the multiprocess folder set."""

    enabled = True

    def __init__(self, worker: bool = True):
        from prometheus_client import Counter, Gauge, Histogram

        self._decisions = Counter("authz_decisions", "Decisions by API and outcome.", ["api", "decision"])
        self._errors = Counter("authz_request_errors", "Requests denied because they could not be decided, by code.",
                               ["api", "code"])
        self._latency = Histogram("authz_decision_latency_seconds", "Time to decide one request in the server.",
                                  ["api"], buckets=LATENCY_BUCKETS)
        self._dropped = Counter("authz_decision_log_dropped",
                                "Decision events not logged: the log queue was full, or the write failed (a full disk).")
        # Only workers create this gauge: the supervisor's 0 would be the minimum.
        self._worker_gen = Gauge("authz_worker_generation", "Lowest policy generation served by a live worker.",
                                 multiprocess_mode="livemin") if worker else None
        # One series a live worker: the policy set it serves (a rollout has converged when every series
        # at 1 has the same digest). The series of a generation left behind is set to 0.
        self._policy_set = Gauge("authz_policy_set_info", "1 for the policy set a live worker serves: its generation "
                                 "and content digest (first 16 hex digits), else 0.", ["digest", "generation"],
                                 multiprocess_mode="liveall") if worker else None
        self._policy_set_labels = None
        self._generation = Gauge("authz_index_generation", "Policy generation last compiled by the server.",
                                 multiprocess_mode="max")
        self._reloads = Counter("authz_reloads", "Recompiles of the watched policies folder, by result.", ["result"])
        self._reload_failures = Counter("authz_reload_failures", "Recompiles that failed (last good generation kept).")
        # Only the supervisor (which watches the folder) creates this gauge.
        self._stale = None if worker else Gauge(
            "authz_policies_stale", "1 while the policies folder holds changes that failed to compile "
            "(an older generation is served; the reload is retried), else 0.", multiprocess_mode="max")
        self._shadow = Counter("authz_shadow_differences", "Decisions the shadow policies would have made "
                               "otherwise, by API and change (allow_to_deny, deny_to_allow, policies).",
                               ["api", "change"])
        self._shadow_failures = Counter("authz_shadow_failures", "Decisions the shadow policies could not "
                                        "evaluate (the enforced decision stands).", ["api"])
        self._state = Counter("authz_state_events", "Task-state store events by backend and kind: conflict "
                              "(a commit refused because the shared state moved: the decision is made again on "
                              "fresh state), exhausted (a decision that gave up after its attempts: denied "
                              "state_unavailable), failure (a call to the store refused or failed).",
                              ["backend", "kind"]) if worker else None
        self._state_seen = {}
        self._children = {}

    def decision(self, api, decision, latency_s):
        self.decisions(api, decision, 1, latency_s)

    def decisions(self, api, decision, count, latency_s):
        # One update per outcome, not per decision: in multiprocess mode each update of a value
        # takes a lock and writes the worker's metrics file (~6 µs a decision when done per item).
        key = (api, decision)
        pair = self._children.get(key)
        if pair is None:
            pair = self._children[key] = (self._decisions.labels(api, decision), self._latency.labels(api))
        pair[0].inc(count)
        observe_many(pair[1], latency_s, count)

    def request_error(self, api, code, count=1):
        self._errors.labels(api, code).inc(count)

    def decision_log_dropped(self, count=1):
        self._dropped.inc(count)

    def worker_generation(self, generation, digest=""):
        self._worker_gen.set(generation)
        labels = (digest[:16], str(generation))
        if labels != self._policy_set_labels:
            if self._policy_set_labels is not None:
                self._policy_set.labels(*self._policy_set_labels).set(0)
            self._policy_set.labels(*labels).set(1)
            self._policy_set_labels = labels

    def reload(self, ok, generation=None):
        self._reloads.labels("ok" if ok else "error").inc()
        if not ok:
            self._reload_failures.inc()
        if generation is not None:
            self._generation.set(generation)

    def policies_stale(self, stale):
        self._stale.set(1 if stale else 0)

    def shadow_differences(self, api, change, count=1):
        self._shadow.labels(api, change).inc(count)

    def shadow_failures(self, api, count=1):
        self._shadow_failures.labels(api).inc(count)

    def state_store(self, backend, conflicts, exhausted, failures):
        for kind, total in (("conflict", conflicts), ("exhausted", exhausted), ("failure", failures)):
            key = (backend, kind)
            seen = self._state_seen.get(key)
            if seen is None:
                self._state.labels(backend, kind)  # the series exists (at 0) from the first report
                seen = 0
            if total > seen:
                self._state.labels(backend, kind).inc(total - seen)
            self._state_seen[key] = total


def observe_many(histogram, amount: float, count: int) -> None:
    """`count` observations of `amount` in a histogram's child, as `count` calls of observe() would
    record them, in one update of its sum and of one bucket (prometheus-client keeps them in
    `_sum`, `_buckets` and `_upper_bounds`; tests/server/test_units.py checks the result against
    observe())."""
    if count == 1 or amount != amount or not hasattr(histogram, "_buckets"):  # (NaN: no bucket)
        for _ in range(count):
            histogram.observe(amount)
        return
    histogram._sum.inc(amount * count)
    i = bisect.bisect_left(histogram._upper_bounds, amount)
    if i < len(histogram._buckets):
        histogram._buckets[i].inc(count)
