"""Without identity configured (development mode) the console answers loopback clients only. The servers of
these tests listen on 127.0.0.1, so the other peer is a request whose transport reports another address."""
from __future__ import annotations

import asyncio

from aiohttp.test_utils import make_mocked_request

from authz.console.keys import CONSOLE
from authz.console.web import Console, build_console_app


class Transport:
    """What aiohttp reads of a connection: its peer address."""

    def __init__(self, host: str):
        self.host = host

    def get_extra_info(self, name, default=None):
        return (self.host, 40000) if name == "peername" else default

    def is_closing(self):
        return False


def answer(app, host: str, path: str = "/console/login"):
    request = make_mocked_request("GET", path, app=app, transport=Transport(host))
    guard = app._middlewares[0]  # the console's middleware, in front of the sign-in page
    return asyncio.run(guard(request, app[CONSOLE].login_page))


def test_development_mode_refuses_other_peers(tmp_path):
    console = Console(str(tmp_path), decider=None, store=None, tokens=None, callers=None)
    assert console.development_mode
    app = build_console_app(console)
    for host in ("10.1.2.3", "192.168.0.7", "2001:db8::1", "::ffff:10.0.0.1"):
        r = answer(app, host)
        assert r.status == 403 and "loopback" in r.text
        assert r.headers["Content-Security-Policy"].startswith("default-src 'none'")
    for host in ("127.0.0.1", "::1", "::ffff:127.0.0.1"):
        assert answer(app, host).status == 200
