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
        return f'{uid.get("type")}::{_q(uid.get("id"))}'
    return str(uid)


def _plain(text) -> bool:
    return type(text) is str and text.isascii() and text.isprintable() and '"' not in text and "\\" not in text


def _q(text) -> str:
    """A JSON string literal; the common plain case skips json.dumps."""
    if _plain(text):
        return f'"{text}"'
    return json.dumps(text if isinstance(text, str) else str(text), ensure_ascii=False)


def _quid(uid) -> str:
    """format_uid(uid) as a JSON string literal."""
    if uid is None:
        return "null"
    if type(uid) is dict:
        t, i = uid.get("type"), uid.get("id")
        if _plain(t) and _plain(i):
            return f'"{t}::\\"{i}\\""'
    return json.dumps(format_uid(uid), ensure_ascii=False)


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
               latency_ns, generation, reason, token=None):
        """Queue one event; never blocks, never raises. `token`: (jti, task, chain) of a task token."""
        if len(self._queue) >= self.max_queue:
            self.dropped += 1
            if self._on_drop is not None:
                self._on_drop()
            return
        self._queue.append((decision_id, time.time(), api, principal, action, resource, decision,
                            policies, errors, latency_ns, generation, reason, token))

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
            if len(lines) >= 200:
                self._write(lines)
                lines = []
                time.sleep(0)  # let the request thread have the GIL between chunks
        if lines:
            self._write(lines)

    _second = -1
    _second_text = ""

    def _format(self, ev) -> str:
        (decision_id, t, api, principal, action, resource, decision, policies, errors,
         latency_ns, generation, reason, token) = ev
        # Hand-assembled JSON: this runs once per decision, json.dumps of a dict costs twice as much.
        line = (f'{{"decision_id":{_q(decision_id)},"time":"{self._time_text(t)}.{int(t % 1 * 1e6):06d}Z",'
                f'"api":{_q(api)},"principal":{_quid(principal)},"action":{_quid(action)},'
                f'"resource":{_quid(resource)},"decision":{_q(decision)},'
                f'"policies":[{",".join(map(_q, policies))}],'
                f'"errors":{json.dumps(list(errors), ensure_ascii=False, default=str) if errors else "[]"},'
                f'"latency_us":{round(latency_ns / 1000, 1)},"generation":{int(generation or 0)}')
        if reason:
            line += f',"reason":{_q(reason)}'
        if token is not None:  # the token's id, task and delegation chain; never the token itself
            jti, task, chain = token
            line += f',"token":{{"jti":{_q(jti)},"task":{_q(task)},"chain":[{",".join(map(_q, chain))}]}}'
        return line + "}\n"

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
