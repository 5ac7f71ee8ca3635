"""ThrottledLog: at most one log line per interval for each kind of event, saying how many were held back.

For events a client can cause at will (malformed requests, a request that trips an engine failure):
each writes a line when it is the first of its kind in `interval_s`, so a flood costs a few lines,
not one (or a traceback) per request.
"""
from __future__ import annotations

import logging
import threading
import time


def printable(text: str, limit: int = 300) -> str:
    """`text` for a log line: non-printable characters escaped (no forged lines), at most `limit` characters."""
    if not text.isprintable():
        text = "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)
    return text if len(text) <= limit else text[:limit] + "…"


class ThrottledLog:
    """Logs through `logger` at most once per `interval_s` for each kind.

    The kinds must be a small fixed set (method names, error codes): one entry is kept per kind.
    """

    def __init__(self, logger: logging.Logger, interval_s: float, clock=time.monotonic):
        self._logger = logger
        self._interval = interval_s
        self._clock = clock
        self._lock = threading.Lock()  # sync handlers log from grpc's thread pool
        self._state: dict = {}  # kind -> [time of its last line, events held back since]

    def log(self, level: int, kind: str, msg: str, *args, exc_info: bool = False) -> bool:
        """Log `msg % args` unless a line of this kind was written less than `interval_s` ago; True if written.

        A line written after held-back events ends with how many there were.
        """
        now = self._clock()
        with self._lock:
            state = self._state.get(kind)
            if state is not None and now - state[0] < self._interval:
                state[1] += 1
                return False
            held = state[1] if state is not None else 0
            self._state[kind] = [now, 0]
        if held:
            msg += " (%d more held back since the last such line)"
            args += (held,)
        self._logger.log(level, msg, *args, exc_info=exc_info)
        return True
