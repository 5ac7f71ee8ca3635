"""DecisionLog: one JSONL line per decision, written by a background thread from a bounded queue."""
from __future__ import annotations

import collections
import json
import logging
import queue
import threading
import time

from authz.server._jsonl import format_checks, format_decisions, format_events
from authz.server.decider import DecisionBatch
from authz.server.logfile import AppendError, LineFile
from authz.server.requestlog import context_part, entities_part

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


_REOPEN = object()  # queued for the writer thread: reopen the file


class _CheckRun:
    """Consecutive queued events of requests decided one at a time (DecisionLog.record_check): `checks`
    holds (time, latency_ns, generation, seq, request, result) for each, and a seventh member, the
    shadow outcome (decision, policies), for a check the shadow policies decide otherwise (`shadowed`)."""

    __slots__ = ("api", "prefix", "checks", "shadowed")

    def __init__(self, api: str, prefix: str, check: tuple):
        self.api, self.prefix, self.checks, self.shadowed = api, prefix, [check], len(check) > 6


class DecisionLog:
    """Appends decision events to a JSONL file off the request path.

    `record()`, `record_batch()` and `record_check()` only append to a bounded deque (no I/O, no
    formatting).
    Every `flush_interval_s` the queued events are formatted and written in chunks of whole lines,
    each appended under the file's lock (authz.server.logfile.LineFile), so several worker
    processes share one file without interleaving or cutting lines; the file is rotated past
    `max_bytes` (keeping `keep` old ones), followed when renamed, and reopened by `reopen()`. When
    the queue holds `max_queue` events new ones are dropped and counted rather than growing
    memory; so are lines that cannot be written (a full disk): `dropped`, and `on_drop(count)` if
    given.

    With `loop` (a server worker's asyncio loop) the events are formatted on that loop, every
    `flush_interval_s` or on its next turn once 256 events wait (the responses are on their way by
    then), and a daemon thread only writes (os.write releases the GIL), getting what is formatted
    every `flush_interval_s` or every 256 KiB. A formatting thread contended for the GIL with grpc's threads (~30% of a
    worker's BatchCheck throughput), and holding decided requests until a timer fired cost
    ~2.6 µs of CPU a decision. Formatted bytes waiting for the writer are bounded too
    (`max_pending_bytes`; beyond it lines are dropped and counted). Without `loop` one daemon
    thread formats and writes every `flush_interval_s`.
    """

    FIELDS = ("decision_id", "time", "api", "principal", "action", "resource", "decision",
              "policies", "errors", "latency_us", "generation", "reason")
    _MEMO_MAX = 4096  # quoted uids / policy ids remembered by the writer thread

    _CHUNK_LINES = 2000  # lines formatted per step on the loop before requests get a turn
    _FORMAT_AT = 256  # queued events that get formatted on the loop's next turn, before the tick

    def __init__(self, path: str, max_queue: int = 10000, flush_interval_s: float = 0.05, on_drop=None,
                 loop=None, max_pending_bytes: int = 64 << 20, max_bytes: int = 0, keep: int = 0):
        self.path = path
        self.max_queue = max_queue
        # Dropped events: each counter has one writer thread.
        self._dropped_unwritten = 0  # no room in the queue (or for the writer)
        self._dropped_write = 0  # the write failed
        self._failing_since = -1  # while writes fail: self._dropped_write when they began to
        self.written = 0
        # Each queued item is one batch: (time, api, latency_ns, generation, events, count), where
        # events is a list of events or a DecisionBatch (authz.server.decider), of which the first
        # `count` are written; an event is (decision_id, principal, action, resource, decision,
        # policies, errors, reason, token).
        self._queue: collections.deque = collections.deque()
        # Events queued minus events taken: each counter has one writer thread, so no lock is needed.
        self._queued_in = 0
        self._queued_out = 0
        self._interval = flush_interval_s
        self._on_drop = on_drop
        self._stop = threading.Event()
        # generation -> its policy set's digest as logged (the first 16 hex digits; "" when unknown):
        # set by the worker to its Decider's digest_of.
        self.digest_of = None
        self._uid_memo: dict = {}
        self._str_memo: dict = {}
        self._file = LineFile(path, max_bytes, keep)  # only the writer thread uses it after this
        self._reopen_asked = threading.Event()
        self._loop = loop
        if loop is None:
            self._thread = threading.Thread(target=self._run, name="decision-log", daemon=True)
        else:
            # Formatted chunks for the writer thread: (bytes, lines), None to stop. Bytes handed
            # over minus bytes written bound what waits (one writer thread per counter).
            self._chunks: queue.SimpleQueue = queue.SimpleQueue()
            self._bytes_in = 0
            self._bytes_out = 0
            self.max_pending_bytes = max_pending_bytes
            self._formatted: list = []  # formatted on the loop, not yet handed to the writer
            self._formatted_bytes = self._formatted_lines = 0
            self._format_scheduled = False
            self._timer = loop.call_later(flush_interval_s, self._tick)
            self._thread = threading.Thread(target=self._write_chunks, name="decision-log-writer", daemon=True)
        self._thread.start()

    @property
    def dropped(self) -> int:
        """Events that never reached the file."""
        return self._dropped_unwritten + self._dropped_write

    def record(self, decision_id, api, principal, action, resource, decision, policies, errors,
               latency_ns, generation, reason, token=None):
        """Queue one event; never blocks, never raises. `token`: (jti, task, chain) of a task token."""
        self.record_batch(api, latency_ns, generation,
                          [(decision_id, principal, action, resource, decision, policies, errors, reason, token)])

    def record_batch(self, api, latency_ns, generation, events):
        """Queue the events of one batch, which share the time, `api`, latency and generation.

        `events` is a list of (decision_id, principal, action, resource, decision, policies,
        errors, reason, token), or a DecisionBatch (authz.server.decider) whose events are made
        when they are formatted. Events beyond the queue's room are dropped and counted.
        """
        count = len(events)
        room = self.max_queue - (self._queued_in - self._queued_out)
        if room < count:
            self._lost(count - max(room, 0))
            if room <= 0:
                return
            count = room
        self._queued_in += count
        self._queue.append((time.time(), api, latency_ns, generation, events, count))
        self._format_if_many_wait()

    def record_check(self, api, latency_ns, generation, prefix, seq, request, result, shadow=None):
        """Queue the event of a request decided on its own (an Envoy Check): `result` is the engine's
        Decision for the request dict `request`, whose decision id is prefix + seq in hex
        (authz.server.decider.decision_id); `shadow`, the shadow policies' (decision, policies) when
        they differ. Never blocks, never raises.

        On an event loop, consecutive checks are queued as one run and formatted by one call: a
        queued item, a DecisionBatch and a formatting call of their own for each Check cost more than
        the formatting itself (the log's work a Check, in process: ~28.6k instructions then, ~14.8k
        now, GC and freeing included).
        """
        waiting = self._queued_in - self._queued_out
        if waiting >= self.max_queue:
            self._lost(1)
            return
        check = (time.time(), latency_ns, generation, seq, request, result)
        if shadow is not None:
            check += (shadow,)
        queue_ = self._queue
        last = queue_[-1] if queue_ else None
        # Without a loop the writer thread may be formatting the last run, so each check is its own.
        if self._loop is not None and type(last) is _CheckRun and last.api == api and last.prefix == prefix:
            last.checks.append(check)
            if shadow is not None:
                last.shadowed = True
        else:
            queue_.append(_CheckRun(api, prefix, check))
        self._queued_in += 1
        if waiting + 1 >= self._FORMAT_AT:  # (the common check returns without the call)
            self._format_if_many_wait()

    def _format_if_many_wait(self):
        """On a loop, format on its next turn once a few hundred events wait (fewer wait for the
        periodic tick): formatting each Check's one event on its own cost ~20-40 µs of worker CPU a
        request, and holding thousands of decided BatchCheck items until a timer fired ~2.6 µs a
        decision (GC, memory)."""
        if (self._loop is not None and not self._format_scheduled
                and self._queued_in - self._queued_out >= self._FORMAT_AT):
            self._format_scheduled = True
            self._loop.call_soon(self._format_soon)

    def reopen(self):
        """Have the writer thread open the file at `path` again, soon (SIGHUP, after logrotate moved it)."""
        self._reopen_asked.set()
        if self._loop is not None:
            self._chunks.put(_REOPEN)

    def _reopen_if_asked(self):
        if self._reopen_asked.is_set():
            self._reopen_asked.clear()
            try:
                self._file.reopen()
                log.info("decision log `%s` reopened", self.path)
            except OSError as e:  # the next write tries again, and reports it
                log.error("cannot reopen decision log `%s`: %s", self.path, e.strerror)

    def _run(self):
        while not self._stop.wait(self._interval):
            self._reopen_if_asked()
            self._drain()
        self._drain()

    def _format_soon(self):
        """Format what is queued, a chunk at a time (requests get a turn between chunks)."""
        self._format_scheduled = False
        if self._drain(self._CHUNK_LINES) and not self._format_scheduled:
            self._format_scheduled = True
            self._loop.call_soon(self._format_soon)

    def _tick(self):
        """The loop's periodic step: format what waits, hand what is formatted to the writer thread."""
        if self._queue and not self._format_scheduled:
            self._format_soon()
        self._hand_over()
        self._timer = self._loop.call_later(self._interval, self._tick)

    def _hand_over(self):
        if self._formatted:
            data = b"".join(self._formatted)
            lines = self._formatted_lines
            self._formatted, self._formatted_bytes, self._formatted_lines = [], 0, 0
            self._bytes_in += len(data)
            self._chunks.put((data, lines))

    def _drain(self, max_lines: int = 0) -> bool:
        """Format (and emit) queued events, all of them or about `max_lines`; True if some are left."""
        chunks, lines, done = [], 0, 0
        queue_ = self._queue
        while queue_:
            batch = queue_.popleft()
            run = type(batch) is _CheckRun
            count = len(batch.checks) if run else batch[5]
            self._queued_out += count
            try:
                chunks.append(self._format_run(batch) if run else self._format_batch(batch))
                lines += count
            except Exception:  # one bad batch must not stop the log
                log.exception("cannot format decision events")
            if lines >= 1000:
                self._emit(chunks, lines)
                done += lines
                chunks, lines = [], 0
                if max_lines and done >= max_lines:
                    break
        if chunks:
            self._emit(chunks, lines)
        return bool(queue_)

    def _emit(self, chunks, lines: int):
        data = b"".join(chunks)
        if self._loop is None:
            self._write(data, lines)
            return
        if self._bytes_in - self._bytes_out + self._formatted_bytes + len(data) > self.max_pending_bytes:
            self._lost(lines)
            return
        self._formatted.append(data)
        self._formatted_bytes += len(data)
        self._formatted_lines += lines
        if self._formatted_bytes >= 256 << 10:  # the writer gets big chunks, not one per request
            self._hand_over()

    def _write_chunks(self):
        while True:
            item = self._chunks.get()
            if item is None:
                return
            if item is _REOPEN:
                self._reopen_if_asked()
                continue
            self._write(*item)
            self._bytes_out += len(item[0])

    def _lost(self, lines: int):
        """Count events dropped before formatting (called by the recording thread, or the loop's)."""
        self._dropped_unwritten += lines
        if self._on_drop is not None:
            self._on_drop(lines)

    _second = -1
    _second_text = ""

    def _format_batch(self, batch) -> bytes:
        """The JSON lines of one queued batch, as UTF-8.

        Hand-assembled JSON (authz.server._jsonl): this runs once per decision, and json.dumps of a dict
        costs many times as much. What the events of a batch share is formatted once.
        """
        t, api, latency_ns, generation, events, count = batch
        latency_ns, generation = int(latency_ns), int(generation or 0)
        digest = self._digest(generation)

        def line(event, request=None):  # the Python formatter, for what authz.server._jsonl leaves to it
            return self._format_event(*self._batch_fields(t, api, latency_ns, generation, digest), event, request)

        if type(events) is list:
            return format_events(events[:count], t, api, latency_ns, generation, line, digest)
        decided = events  # a DecisionBatch: its events are made here, off the request path
        data = format_decisions(decided.prefix, decided.first, decided.requests, decided.results[:count], t, api,
                                latency_ns, generation, lambda i: line(decided.event(i), decided.requests[i]), digest)
        return data if decided.shadow is None else self._with_shadow(data, decided.shadow)

    def _format_run(self, run) -> bytes:
        """The JSON lines of a _CheckRun, as UTF-8 (authz.server._jsonl; the Python formatter for what it leaves)."""
        checks = run.checks

        def line(k):
            t, latency_ns, generation, seq, request, result = checks[k][:6]
            event = DecisionBatch(run.prefix, seq, [request], [result]).event(0)
            generation = int(generation or 0)
            return self._format_event(*self._batch_fields(t, run.api, int(latency_ns), generation,
                                                          self._digest(generation)), event, request)

        data = format_checks(run.prefix, run.api, checks, line, self._digest)
        if not run.shadowed:
            return data
        return self._with_shadow(data, {k: c[6] for k, c in enumerate(checks) if len(c) > 6})

    def _with_shadow(self, data: bytes, shadow: dict) -> bytes:
        """`data`, lines formatted as usual, with line i ending in the field `"shadow": {"decision", "policies"}`
        for each shadow[i] = (decision, policies): lines with a shadow difference are written by the same
        writer as the others, then given the field (a JSON line holds no raw newline, and ends with `}`)."""
        lines = data.split(b"\n")
        for i, (decision, policies) in shadow.items():
            if i < len(lines) - 1:
                field = f',"shadow":{{"decision":{_q(decision)},"policies":[{",".join(map(self._qstr, policies))}]}}}}'
                lines[i] = lines[i][:-1] + field.encode("utf-8", "replace")
        return b"\n".join(lines)

    def _digest(self, generation) -> str:
        """The policy digest logged with `generation`'s decisions ("" when unknown)."""
        digest_of = self.digest_of
        return digest_of(generation) if digest_of is not None else ""

    def _batch_fields(self, t, api, latency_ns, generation, digest="") -> tuple:
        """(shared, tail): the JSON text of what a batch's events share, after the decision id and at the end."""
        tenths = (latency_ns + 50) // 100
        shared = f'"time":"{self._time_text(t)}.{int(t % 1 * 1e6):06d}Z","api":{_q(api)},'
        return shared, f'"latency_us":{tenths // 10}.{tenths % 10},"generation":{generation},"policy_digest":{_q(digest)}'

    def _format_event(self, shared, tail, event, request=None) -> str:
        """One event's JSON line, for what authz.server._jsonl leaves to Python (task tokens, unusual values);
        with `request` (a request dict), its context last (authz.server.requestlog)."""
        decision_id, principal, action, resource, decision, policies, errors, reason, token, *approval = event
        quid, qstr = self._quid, self._qstr
        line = (f'{{"decision_id":{_q(decision_id)},{shared}"principal":{quid(principal)},'
                f'"action":{quid(action)},"resource":{quid(resource)},"decision":{qstr(decision)},'
                f'"policies":[{",".join(map(qstr, policies))}],'
                f'"errors":{json.dumps(list(errors), ensure_ascii=False, default=str) if errors else "[]"},'
                f'{tail}')
        if reason:
            line += f',"reason":{qstr(reason)}'
        if token is not None:  # the token's id, task and delegation chain; never the token itself
            jti, task, chain = token
            line += f',"token":{{"jti":{_q(jti)},"task":{_q(task)},"chain":[{",".join(map(_q, chain))}]}}'
        if approval:  # the approval this call asked for ({"id", "queue"}) or was allowed by ({"id", "approver"})
            line += f',"approval":{json.dumps(approval[0], ensure_ascii=False)}'
        if type(request) is dict:
            line += context_part(request.get("context"))
            if request.get("entities") is not None:
                line += entities_part(request["entities"])
        return line + "}\n"

    def _quid(self, uid) -> str:
        """_quid(uid), remembered for {type, id} dicts of strings."""
        if type(uid) is not dict:
            return _quid(uid)
        key = (uid.get("type"), uid.get("id"))
        if type(key[0]) is not str or type(key[1]) is not str:
            return _quid(uid)
        text = self._uid_memo.get(key)
        if text is None:
            if len(self._uid_memo) >= self._MEMO_MAX:
                self._uid_memo.clear()
            text = self._uid_memo[key] = _quid(uid)
        return text

    def _qstr(self, value) -> str:
        """_q(value), remembered for strings (decision ids are not: each is new)."""
        text = self._str_memo.get(value) if type(value) is str else None
        if text is None:
            text = _q(value)
            if type(value) is str and len(value) < 128:
                if len(self._str_memo) >= self._MEMO_MAX:
                    self._str_memo.clear()
                self._str_memo[value] = text
        return text

    def _time_text(self, t: float) -> str:
        second = int(t)
        if second != self._second:
            self._second, self._second_text = second, time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second))
        return self._second_text

    def _write(self, data: bytes, lines: int):
        """Append whole lines (LineFile); what cannot be written is dropped and counted. A failure is
        logged once when it begins and once when writes succeed again, not for every chunk."""
        try:
            self._file.append(data)
        except AppendError as e:
            lost = data.count(b"\n", e.written)
            self.written += lines - lost
            if self._failing_since < 0:
                self._failing_since = self._dropped_write
                log.error("cannot write decision log `%s`: %s; its lines are dropped (and counted in "
                          "authz_decision_log_dropped_total) until it can", self.path, e)
            self._dropped_write += lost
            if self._on_drop is not None:
                self._on_drop(lost)
            return
        self.written += lines
        if self._failing_since >= 0:
            log.warning("decision log `%s` is written again; %d lines were dropped", self.path,
                        self._dropped_write - self._failing_since)
            self._failing_since = -1

    def close(self, timeout: float = 5.0):
        """Write what is queued, stop the thread and close the file. With a loop: call it on the loop's thread."""
        if self._loop is None:
            self._stop.set()
            self._thread.join(timeout)
        else:
            self._timer.cancel()
            self._drain()
            self._hand_over()
            self._chunks.put(None)
            self._thread.join(timeout)
        self._file.close()
