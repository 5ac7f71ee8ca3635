"""The console's aiohttp application (mounted at /console on the worker's HTTP listener): sign-in, the
pages (Jinja2 templates in templates/, assets in static/), the live-update stream, and the security
around them: a Content-Security-Policy and no-store on every answer, CSRF tokens on every form, the
session cookie (session.py), and in development mode (no identity configured) loopback clients only.

Who is the operator: a session cookie from signing in with an operator key (operators.py), or, when
identity is configured, a bearer JWT the worker's identity layer verifies, passed on by a trusted
reverse proxy (a peer that proved by mTLS an identity in `trusted_peps`); either way the principal
is Operator::"<name>" and every action is a Cedar decision (actions.py). Reading the pages needs a
signed-in operator, as the gRPC API needs a caller.
"""
from __future__ import annotations

import asyncio
import concurrent.futures
import ipaddress
import logging
import pathlib
import secrets
import time

import jinja2
from aiohttp import web

from authz.console import pages
from authz.console.actions import Actions, Refused
from authz.console.decisions_index import FILE as INDEX_FILE, DecisionIndex
from authz.console.keys import CONSOLE, OPERATOR, PRE_CSRF
from authz.console.operators import OperatorKeys
from authz.console.session import COOKIE, SignInLimit, Sessions, load_secret
from authz.errors import IdentityError
from authz.server.config import is_loopback_address
from authz.server.http import HttpPeer
from authz.state import NotFound, SelfApproval, StateError, Unavailable

log = logging.getLogger("authz.console")

PREFIX = "/console"
HERE = pathlib.Path(__file__).resolve().parent
PRE_COOKIE = "authz_console_pre"  # the sign-in form's CSRF nonce
CSP = ("default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; connect-src 'self'; "
       "form-action 'self'; frame-ancestors 'none'; base-uri 'none'")
MAX_FORM_BYTES = 16 * 1024
CATCH_UP_LINES = 20_000  # log lines a page load indexes at most (~2 s here); the page says what is left
_STATIC = {"console.css": "text/css", "console.js": "text/javascript"}


class Operator:
    """Who is signed in: `name` (Operator::"<name>"), the session id its CSRF tokens are bound to."""

    __slots__ = ("name", "sid")

    def __init__(self, name: str, sid: str):
        self.name, self.sid = name, sid


def _uid_text(u) -> str:
    return f'{u["type"]}::"{u["id"]}"' if isinstance(u, dict) and "type" in u and "id" in u else ""


def _loopback(remote) -> bool:
    try:
        return is_loopback_address(ipaddress.ip_address(remote or ""))
    except ValueError:
        return False


class Console:
    """The console of one worker: its store, decider, token service and the shared data folder."""

    def __init__(self, data_dir: str, decider, store, tokens, callers, decision_log_path: str = "",
                 policies_dir: str = "", shadow_dir: str = "", clock=time.time):
        self.decider, self.store, self.tokens, self.callers, self.clock = decider, store, tokens, callers, clock
        self.development_mode = callers is None or callers.development_mode
        self.operators = OperatorKeys(data_dir)
        self.sessions = Sessions(load_secret(data_dir), clock=clock)
        self.limit = SignInLimit()
        self.actions = Actions(decider, store, tokens, clock)
        self.policies_dir, self.shadow_dir = policies_dir, shadow_dir
        self.index_paths = (str(pathlib.Path(data_dir) / INDEX_FILE), decision_log_path) if decision_log_path else None
        self.index = None  # opened on first use (a page that needs it)
        self._index_pool = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="console-index")
        self.streams = 0
        self.templates = jinja2.Environment(loader=jinja2.FileSystemLoader(str(HERE / "templates")),
                                            autoescape=True)
        self.templates.filters["when"] = lambda t: time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(t)) \
            if t else ""
        self.templates.filters["uid"] = _uid_text
        self.templates.filters["ent"] = lambda v: _uid_text(v.get("__entity", v)) if isinstance(v, dict) else str(v)

    # -- plumbing ---------------------------------------------------------------------------------

    async def in_index(self, fn, *args):
        """Run an index call on the index's own thread (SQLite off the event loop)."""
        return await asyncio.get_running_loop().run_in_executor(self._index_pool, fn, *args)

    async def fresh_index(self):
        """The index caught up with the log (a bounded step), or None without a decision log (or when the
        index cannot be opened: logged, and the pages say there is nothing to search)."""
        if self.index_paths is None:
            return None
        try:
            if self.index is None:
                self.index = await self.in_index(DecisionIndex, *self.index_paths)
            await self.in_index(self.index.catch_up, CATCH_UP_LINES)
        except Exception:  # noqa: BLE001 - the pages show what is indexed
            log.exception("the decision-log index `%s`", self.index_paths[0])
        return self.index

    def render(self, request, name: str, status: int = 200, **values):
        op = request.get(OPERATOR)
        body = self.templates.get_template(name).render(
            operator=op, csrf=self.sessions.csrf(op.sid) if op else request.get(PRE_CSRF, ""), prefix=PREFIX,
            page=name.split(".")[0], **values)
        return web.Response(text=body, status=status, content_type="text/html", charset="utf-8")

    def error(self, request, status: int, message: str):
        return self.render(request, "error.html", status, status_code=status, message=message)

    def operator(self, request) -> Operator | None:
        """Who is signed in: the session cookie, else (identity configured) a verified bearer JWT."""
        s = self.sessions.read(request.cookies.get(COOKIE))
        if s is not None and self.operators.record_id(s.name) == s.key_id:
            return Operator(s.name, s.sid)
        if not self.development_mode and request.headers.get("Authorization"):
            peer = HttpPeer(request)
            if not self.callers.is_trusted_pep(peer):  # only a proxy that proved itself passes on an identity
                return None
            try:
                caller = self.callers.v1_caller(peer)
            except IdentityError:
                return None
            if caller.token is not None and caller.identity:  # a verified JWT, not the proxy's own identity
                return Operator(caller.identity, "bearer:" + caller.identity)
        return None

    async def form(self, request, op: Operator) -> dict | web.Response:
        """The posted form after its CSRF token was checked (else the 403 answer)."""
        if request.content_length is not None and request.content_length > MAX_FORM_BYTES:
            return self.error(request, 413, "the form is too large")
        data = await request.post()
        if not self.sessions.csrf_ok(op.sid, data.get("csrf")):
            return self.error(request, 403, "the form's CSRF token is missing or wrong: reload the page and try again")
        return {k: v for k, v in data.items() if isinstance(v, str)}

    # -- sign-in ----------------------------------------------------------------------------------

    async def login_page(self, request):
        nonce = secrets.token_urlsafe(16)
        request[PRE_CSRF] = self.sessions.csrf("pre:" + nonce)
        resp = self.render(request, "login.html", message="")
        resp.set_cookie(PRE_COOKIE, nonce, httponly=True, samesite="Strict", path=PREFIX,
                        secure=request.scheme == "https", max_age=3600)
        return resp

    async def login(self, request):
        data = await request.post() if (request.content_length or 0) <= MAX_FORM_BYTES else {}
        nonce = request.cookies.get(PRE_COOKIE, "")
        if not nonce or not self.sessions.csrf_ok("pre:" + nonce, data.get("csrf")):
            return self.error(request, 403, "the sign-in form's CSRF token is missing or wrong: reload the page")
        name, key = str(data.get("name", ""))[:64], str(data.get("key", ""))
        client = request.remote or "?"
        if not self.limit.allowed(("addr", client), ("name", name)):
            log.warning("console sign-in refused: too many failed attempts (operator `%s`, client %s)", name, client)
            request[PRE_CSRF] = data.get("csrf")
            return self.render(request, "login.html", 429, message="Too many failed attempts: wait a minute.")
        key_id = await asyncio.get_running_loop().run_in_executor(None, self.operators.verify, name, key)
        if key_id is None:
            self.limit.failed(("addr", client), ("name", name))
            log.warning("console sign-in failed for operator `%s` from %s", name, client)
            request[PRE_CSRF] = data.get("csrf")
            return self.render(request, "login.html", 401, message="Unknown operator or wrong key.")
        cookie, _ = self.sessions.issue(name, key_id)
        log.info("console: operator `%s` signed in from %s", name, client)
        resp = web.HTTPSeeOther(PREFIX + "/approvals")
        resp.set_cookie(COOKIE, cookie, httponly=True, samesite="Strict", path=PREFIX,
                        secure=request.scheme == "https", max_age=self.sessions.ttl_s)
        resp.del_cookie(PRE_COOKIE, path=PREFIX)
        return resp

    async def logout(self, request):
        got = await self.form(request, request[OPERATOR])
        if isinstance(got, web.Response):
            return got
        resp = web.HTTPSeeOther(PREFIX + "/login")
        resp.del_cookie(COOKIE, path=PREFIX)
        return resp

    async def static(self, request):
        name = request.match_info["name"]
        if name not in _STATIC:
            return self.error(request, 404, "no such file")
        return web.Response(body=(HERE / "static" / name).read_bytes(), content_type=_STATIC[name],
                            headers={"Cache-Control": "max-age=300"})

    # -- the answer of an action ------------------------------------------------------------------

    def action_error(self, request, e: Exception):
        if isinstance(e, Refused):
            return self.error(request, 503 if e.unavailable else 403, str(e))
        if isinstance(e, SelfApproval):
            return self.error(request, 403, f"self_approval: {e}")
        if isinstance(e, NotFound):
            return self.error(request, 404, str(e))
        if isinstance(e, Unavailable):
            return self.error(request, 503, f"state_unavailable: {e}")
        if isinstance(e, StateError):
            return self.error(request, 409 if e.code == "failed_precondition" else 400, f"{e.code}: {e}")
        raise e


@web.middleware
async def _guard(request, handler):
    """Every console answer: loopback only in development mode, a signed-in operator except for sign-in
    and assets, and the security headers."""
    console: Console = request.app[CONSOLE]
    if console.development_mode and not _loopback(request.remote):
        resp = web.Response(status=403, text="the console without identity configured answers loopback clients "
                                             "only (docs/console.md)")
    else:
        public = request.path in (PREFIX + "/login",) or request.path.startswith(PREFIX + "/static/")
        op = console.operator(request)
        request[OPERATOR] = op
        if op is None and not public:
            if request.method == "GET" and not request.path.endswith("/events"):
                resp = web.HTTPSeeOther(PREFIX + "/login")
            else:
                resp = console.error(request, 401, "sign in first")
        else:
            try:
                resp = await handler(request)
            except web.HTTPException as e:
                if e.status >= 400:
                    resp = console.error(request, e.status, e.reason)
                else:
                    resp = e
            except Exception:  # noqa: BLE001 - an answer with the console's headers, the details in the log
                log.exception("console: %s %s failed", request.method, request.path)
                resp = console.error(request, 500, "internal error (see the server's log)")
    if not resp.prepared:
        h = resp.headers
        h["Content-Security-Policy"] = CSP
        h["X-Content-Type-Options"] = "nosniff"
        h["Referrer-Policy"] = "no-referrer"
        h["X-Frame-Options"] = "DENY"
        h.setdefault("Cache-Control", "no-store")
    return resp


def build_console_app(console: Console) -> web.Application:
    app = web.Application(middlewares=[_guard])
    app[CONSOLE] = console
    p = pages.Pages(console)
    app.add_routes([
        web.get("", p.home), web.get("/", p.home),
        web.get("/login", console.login_page), web.post("/login", console.login), web.post("/logout", console.logout),
        web.get("/static/{name}", console.static),
        web.get("/events", p.events),
        web.get("/approvals", p.approvals), web.get("/approvals/pending", p.pending_fragment),
        web.get("/approvals/history", p.history), web.get("/approvals/{id}", p.approval),
        web.post("/approvals/{id}/decide", p.decide),
        web.get("/tasks", p.tasks), web.get("/tasks/{id}", p.task), web.post("/tasks/{id}/act", p.task_act),
        web.get("/decisions", p.decisions), web.get("/decisions/{id}", p.decision),
        web.get("/revocations", p.revocations), web.post("/revocations", p.revocations_act),
        web.get("/policies", p.policies),
    ])
    return app


def mount(http_app: web.Application, cfg, decider, callers, tokens) -> Console:
    """Mount the console at /console on the worker's HTTP application (before it starts)."""
    console = Console(cfg.data_dir, decider, decider.task_state.store, tokens, callers, cfg.decision_log_path,
                      cfg.policies, cfg.shadow_policies)
    http_app.add_subapp(PREFIX, build_console_app(console))
    return console

