"""The console's pages: approvals (pending, live; detail; history), tasks, decisions, revocations and
policies, and the live-update stream. Each handler reads through the worker's layers (the task-state
store, the decision-log index, the revocation set, the served generation) and acts through actions.py."""
from __future__ import annotations

import asyncio
import json
import re
import time

from aiohttp import web

from authz.console.decisions_index import FILTERS
from authz.console.keys import OPERATOR
from authz.state import StateError

EVENTS_POLL_S = 0.5      # how often a live-update stream reads the change feed
EVENTS_MAX_S = 300.0     # a stream ends after this; the browser reconnects
EVENTS_KEEPALIVE_S = 15.0
MAX_STREAMS = 64         # live-update streams per worker
_TIME = re.compile(r"^\d{4}-\d\d-\d\d(T\d\d:\d\d(:\d\d)?)?Z?$")
MAX_FILTER_CHARS = 512


class Pages:
    def __init__(self, console):
        self.c = console

    # -- approvals --------------------------------------------------------------------------------

    async def home(self, request):
        raise web.HTTPSeeOther("/console/approvals")

    def _pending(self):
        return self.c.store.list_approvals(self.c.clock(), state="pending", limit=200)

    async def approvals(self, request):
        try:
            pending = self._pending()
        except StateError as e:
            return self.c.action_error(request, e)
        return self.c.render(request, "approvals.html", pending=pending, now=self.c.clock())

    async def pending_fragment(self, request):
        try:
            pending = self._pending()
        except StateError as e:
            return self.c.action_error(request, e)
        return self.c.render(request, "_pending.html", pending=pending, now=self.c.clock())

    async def history(self, request):
        c = self.c
        state = request.query.get("state", "")
        states = [state] if state in ("approved", "rejected", "expired", "used") else \
            ["approved", "rejected", "expired", "used"]
        try:
            items = [a for s in states for a in c.store.list_approvals(c.clock(), state=s, limit=200)]
        except StateError as e:
            return c.action_error(request, e)
        items.sort(key=lambda a: a.requested_at, reverse=True)
        return c.render(request, "history.html", items=items[:200], state=state)

    async def approval(self, request, message: str = "", status: int = 200):
        c = self.c
        try:
            a = c.store.get_approval(request.match_info["id"], c.clock())
            view = c.store.task_view(a.task, c.clock())
        except StateError as e:
            return c.action_error(request, e)
        index = await c.fresh_index()
        asked = await c.in_index(index.asked_by, a.id) if index is not None else None
        ctx = (asked or {}).get("context") or {}
        arguments = ctx.get("mcp", {}).get("arguments") if isinstance(ctx.get("mcp"), dict) else None
        if arguments is None:
            arguments = {k: v for k, v in ctx.items() if k not in ("task", "agent", "http", "token", "delegation")}
        return c.render(request, "approval.html", status, a=a, view=view, asked=asked,
                        arguments=json.dumps(arguments, indent=1, sort_keys=True, default=str)[:20000],
                        message=message)

    async def decide(self, request):
        c = self.c
        op = request[OPERATOR]
        form = await c.form(request, op)
        if isinstance(form, web.Response):
            return form
        verdict = form.get("verdict")
        if verdict not in ("approve", "reject"):
            return c.error(request, 400, "verdict is approve or reject")
        try:
            a, did = c.actions.decide_approval(op.name, request.match_info["id"], verdict == "approve",
                                               form.get("reason", ""))
        except Exception as e:  # noqa: BLE001 - action_error re-raises what it does not know
            return c.action_error(request, e)
        return await self.approval(request, f"Approval {a.state} by {op.name} (decision {did}).")

    # -- live updates -----------------------------------------------------------------------------

    async def events(self, request):
        """Server-sent events: `approvals` whenever an approval changes (the page then reloads its list)."""
        c = self.c
        if c.streams >= MAX_STREAMS:
            return c.error(request, 503, "too many live-update streams; the page falls back to reloading")
        c.streams += 1
        resp = None
        try:
            resp = web.StreamResponse(headers={"Content-Type": "text/event-stream", "Cache-Control": "no-store",
                                               "X-Accel-Buffering": "no",
                                               "Content-Security-Policy": "default-src 'none'"})
            await resp.prepare(request)
            seq = c.store.sizes()["changes"]
            await resp.write(b"retry: 2000\nevent: hello\ndata: %d\n\n" % seq)
            end = time.monotonic() + EVENTS_MAX_S
            beat = time.monotonic()
            while time.monotonic() < end:
                changes = c.store.changes_since(seq, 100)
                if changes.items or changes.gap:
                    seq = changes.last
                    await resp.write(b"event: approvals\ndata: %d\n\n" % seq)
                elif time.monotonic() - beat > EVENTS_KEEPALIVE_S:
                    await resp.write(b": keep-alive\n\n")
                    beat = time.monotonic()
                await asyncio.sleep(EVENTS_POLL_S)
            return resp
        except (ConnectionResetError, StateError):
            return resp
        finally:
            c.streams -= 1

    # -- tasks ------------------------------------------------------------------------------------

    def _status(self, task):
        try:
            return self.c.store.task_status(task, self.c.clock())
        except StateError as e:
            return (f"unknown ({e.code})", "")

    async def tasks(self, request):
        c = self.c
        index = await c.fresh_index()
        rows = await c.in_index(index.tasks, 100) if index is not None else []
        revoked = c.tokens.revocations.current() if c.tokens is not None else None
        now = c.clock()
        for r in rows:
            r["status"], r["approval"] = self._status(r["task"])
            if revoked is not None and revoked.task_revoked(r["task"], now):
                r["status"] = "revoked"
            try:
                r["view"] = c.store.task_view(r["task"], now) or {}
            except StateError:
                r["view"] = {}
        return c.render(request, "tasks.html", rows=rows)

    async def task(self, request, message: str = "", status: int = 200):
        c = self.c
        task = request.match_info["id"]
        if len(task) > MAX_FILTER_CHARS:
            return c.error(request, 400, "the task id is too long")
        try:
            view = c.store.task_view(task, c.clock())
        except StateError as e:
            return c.action_error(request, e)
        index = await c.fresh_index()
        before = _int(request.query.get("before"))
        timeline = await c.in_index(index.search, {"task": task}, "", "", before, 100) if index is not None else []
        st, approval = self._status(task)
        revoked = c.tokens is not None and c.tokens.revocations.current().task_revoked(task, c.clock())
        return c.render(request, "task.html", status, task=task, view=view, timeline=timeline,
                        task_status="revoked" if revoked else st, approval=approval, message=message,
                        next_before=timeline[-1]["id"] if len(timeline) == 100 else 0)

    async def task_act(self, request):
        c = self.c
        op = request[OPERATOR]
        form = await c.form(request, op)
        if isinstance(form, web.Response):
            return form
        task, what = request.match_info["id"], form.get("what")
        try:
            if what == "suspend":
                a, did = c.actions.suspend(op.name, task, form.get("reason", ""))
                message = f"Task suspended: approval {a.id} (decision {did}); approve it to resume the task."
            elif what == "revoke":
                _, did = c.actions.revoke(op.name, "task", task)
                message = f"Task revoked (decision {did})."
            else:
                return c.error(request, 400, "what is suspend or revoke (resume: approve the task's approval)")
        except Exception as e:  # noqa: BLE001 - action_error re-raises what it does not know
            return c.action_error(request, e)
        return await self.task(request, message)

    # -- decisions --------------------------------------------------------------------------------

    async def decisions(self, request):
        c = self.c
        q = request.query
        filters = {k: q.get(k, "").strip()[:MAX_FILTER_CHARS] for k in FILTERS}
        since, until = q.get("since", "").strip(), q.get("until", "").strip()
        for t in (since, until):
            if t and not _TIME.match(t):
                return c.error(request, 400, "times look like 2026-01-31T12:00:00Z (UTC; the date alone will do)")
        index = await c.fresh_index()
        rows, took_ms, behind = [], 0.0, 0
        if index is not None:
            t0 = time.perf_counter()
            rows = await c.in_index(index.search, filters, since, _until(until), _int(q.get("before")), 50)
            took_ms = (time.perf_counter() - t0) * 1000
            behind = await c.in_index(index.behind_bytes)
        params = {k: v for k, v in {**filters, "since": since, "until": until}.items() if v}
        return c.render(request, "decisions.html", rows=rows, filters=filters, since=since, until=until,
                        took_ms=took_ms, behind=behind, params=params, logged=c.index_paths is not None,
                        indexed=index is not None,
                        next_before=rows[-1]["id"] if len(rows) == 50 else 0)

    async def decision(self, request):
        c = self.c
        index = await c.fresh_index()
        line = await c.in_index(index.line, _int(request.match_info["id"])) if index is not None else None
        if line is None:
            return c.error(request, 404, "no such decision in the index")
        return c.render(request, "decision.html", d=line, text=json.dumps(line, indent=1, sort_keys=True)[:50000])

    # -- revocations ------------------------------------------------------------------------------

    async def revocations(self, request, message: str = "", status: int = 200):
        c = self.c
        now = c.clock()
        try:
            entries = sorted(c.actions.entries(), key=lambda e: e[2], reverse=True)
        except Exception as e:  # noqa: BLE001 - a revocation set that cannot be read
            return c.error(request, 503, f"revocation_unavailable: {e}")
        entries = [e for e in entries if not e[3] or e[3] > now][:500]
        return c.render(request, "revocations.html", status, entries=entries, message=message)

    async def revocations_act(self, request):
        c = self.c
        op = request[OPERATOR]
        form = await c.form(request, op)
        if isinstance(form, web.Response):
            return form
        kind, value = form.get("kind", ""), form.get("value", "").strip()
        try:
            if form.get("what") == "lift":
                there, did = c.actions.lift(op.name, kind, value)
                message = (f"Lifted the revocation of {kind} {value}" if there else f"{kind} {value} was not revoked") \
                    + f" (decision {did})."
            else:
                ttl = _int(form.get("ttl_s"))
                _, did = c.actions.revoke(op.name, kind, value, ttl)
                message = f"Revoked {kind} {value} (decision {did})."
        except Exception as e:  # noqa: BLE001 - action_error re-raises what it does not know
            return c.action_error(request, e)
        return await self.revocations(request, message)

    # -- policies ---------------------------------------------------------------------------------

    async def policies(self, request):
        from authz.console.policies import served_policies

        c = self.c
        try:
            served = served_policies(c.decider, c.policies_dir, c.shadow_dir)
        except Exception as e:  # noqa: BLE001 - the index cannot be read now
            return c.error(request, 503, f"index_unavailable: {e}")
        return c.render(request, "policies.html", served=served)


def _int(text) -> int:
    try:
        n = int(text or 0)
    except ValueError:
        return 0
    return n if 0 <= n < 1 << 62 else 0


def _until(t: str) -> str:
    """An `until` that names a day or a minute includes all of it."""
    return t + "\uffff" if t else ""

