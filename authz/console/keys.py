"""The typed keys the console keeps on its aiohttp application and requests."""
from aiohttp import web

CONSOLE = web.AppKey("console")        # the app's Console (web.py)
OPERATOR = web.RequestKey("operator")  # who is signed in: web.Operator, or None
PRE_CSRF = web.RequestKey("pre_csrf")  # the sign-in form's CSRF token
