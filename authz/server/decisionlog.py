"""DecisionLog: one JSONL line per decision, written by a background thread from a bounded queue."""
from __future__ import annotations

import collections
import json
import logging
import os
import threading
import time

log = logging.getLogger("authz.decisionlog")


def format_uid(uid):
    """`Type::"id"` for a {type, id} dict (strings pass through)."""
    if uid is None:
        return None
    if isinstance(uid, dict):
        return f'{uid.get("type")}::{json.dumps(uid.get("id"), ensure_ascii=False)}'
    return str(uid)


class DecisionLog:
    """Appends decision events to a JSONL file off the request path.

    `record()` only appends a tuple to a bounded deque (no I/O, no formatting); a daemon
    thread formats and writes them in batches with one O_APPEND write each, so several
    worker processes can share one file without interleaving lines. When the queue is
    full new events are dropped and counted (`dropped`) rather than growing memory.
    """

    FIELDS = ("decision_id", "time", "api", "principal", "action", "resource", "decision",
              "policies", "errors", "latency_us", "generation", "reason")

    def __init__(self, path: str, max_queue: int = 10000, flush_interval_s: float = 0.05, on_drop=None):
        self.path = path
        self.max_queue = max_queue
        self.dropped = 0
        self.written = 0
        self._queue: collections.deque = collections.deque()
        self._interval = flush_interval_s
        self._on_drop = on_drop
        self._stop = threading.Event()
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        self._fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o640)
        self._thread = threading.Thread(target=self._run, name="decision-log", daemon=True)
        self._thread.start()

    def record(self, decision_id, api, principal, action, resource, decision, policies, errors,
               latency_ns, generation, reason):
        """Queue one event; never blocks, never raises."""
        if len(self._queue) >= self.max_queue:
            self.dropped += 1
            if self._on_drop is not None:
                self._on_drop()
            return
        self._queue.append((decision_id, time.time(), api, principal, action, resource, decision,
                            policies, errors, latency_ns, generation, reason))

    def _run(self):
        while not self._stop.wait(self._interval):
            self._drain()
        self._drain()

    def _drain(self):
        lines = []
        queue = self._queue
        while queue:
            try:
                lines.append(self._format(queue.popleft()))
            except Exception:  # one bad event must not stop the log
                log.exception("cannot format a decision event")
            if len(lines) >= 1000:
                self._write(lines)
                lines = []
        if lines:
            self._write(lines)

    _second = -1
    _second_text = ""

    def _format(self, ev) -> str:
        (decision_id, t, api, principal, action, resource, decision, policies, errors,
         latency_ns, generation, reason) = ev
        doc = {
            "decision_id": decision_id,
            "time": f"{self._time_text(t)}.{int(t % 1 * 1e6):06d}Z",
            "api": api,
            "principal": format_uid(principal),
            "action": format_uid(action),
            "resource": format_uid(resource),
            "decision": decision,
            "policies": list(policies),
            "errors": list(errors),
            "latency_us": round(latency_ns / 1000, 1),
            "generation": generation,
        }
        if reason:
            doc["reason"] = reason
        return json.dumps(doc, ensure_ascii=False, separators=(",", ":"), default=str) + "\n"

    def _time_text(self, t: float) -> str:
        second = int(t)
        if second != self._second:
            self._second, self._second_text = second, time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second))
        return self._second_text

    def _write(self, lines):
        data = "".join(lines).encode("utf-8", "replace")
        try:
            while data:
                n = os.write(self._fd, data)
                data = data[n:]
            self.written += len(lines)
        except OSError as e:
            self.dropped += len(lines)
            log.error("cannot write decision log `%s`: %s", self.path, e.strerror)

    def close(self, timeout: float = 5.0):
        """Write what is queued, stop the thread and close the file."""
        self._stop.set()
        self._thread.join(timeout)
        try:
            os.close(self._fd)
        except OSError:
            pass
