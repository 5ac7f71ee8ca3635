"""The operator console: server-rendered pages at `/console` on the worker's HTTP listener (docs/console.md).

operators.py owns the operator API keys (hashed, in the data folder); session.py the signed session
cookie, CSRF tokens and the sign-in rate limit; decisions_index.py the SQLite index of the decision log;
actions.py the Cedar decisions every console action is; web.py the aiohttp application, sign-in and the
security of every answer; pages.py the pages (templates/, static/); policies.py the Policies page's facts.
"""
