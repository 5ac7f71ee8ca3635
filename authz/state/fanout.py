"""Fanout: each worker's listener for the deployment's changes (revocations, signing keys), so that a
change made on one node reaches every node's next decision without any decision waiting on Redis.

One daemon thread per process (started on first use, after fork) subscribes to `<key_prefix>events`
and, for each registered watcher:
  * on a message naming it (published by the same atomic script that made the change), calls
    `watcher.refresh()` at once (typically < 5 ms after the write on a LAN);
  * every POLL_S, calls `watcher.refresh()` anyway: each compares a version counter (one GET) and
    re-reads only when it moved, so a message lost while the subscription was being re-established
    is caught within POLL_S;
  * after every successful round it records `fresh_at`; a reader that finds `fresh_at` older than
    `max_staleness_s` (Redis unreachable) fails closed instead of trusting what it holds.
Staleness bound while Redis is reachable: POLL_S + one round trip (a message normally beats it).
A broken connection is retried with back-off (50 ms doubling to 2 s) and re-subscribes; a success
also reopens the store's circuit breaker (redis_link.py).
"""
from __future__ import annotations

import logging
import threading
import time

import redis

from authz.state.redis_link import BACKOFF_MAX_S, BACKOFF_MIN_S, describe

log = logging.getLogger("authz.state")

POLL_S = 0.25


class Fanout:
    def __init__(self, link, channel: bytes, clock=time.monotonic):
        self.link, self.channel, self.clock = link, channel, clock
        self.watchers = {}  # topic (bytes) -> object with refresh()
        self.fresh_at = None  # clock() of the last round that reached Redis
        self._thread = None
        self._pid = None
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self.messages = 0

    def watch(self, topic: bytes, watcher) -> None:
        self.watchers[topic] = watcher
        self.start()

    def start(self) -> None:
        import os
        with self._lock:
            if self._thread is not None and self._pid == os.getpid() and self._thread.is_alive():
                return
            self._stop.clear()
            self._pid = os.getpid()
            self._thread = threading.Thread(target=self._run, name="authz-fanout", daemon=True)
            self._thread.start()

    def stale(self, max_age_s: float) -> bool:
        fresh = self.fresh_at
        return fresh is None or self.clock() - fresh > max_age_s

    def stop(self) -> None:
        self._stop.set()

    def _refresh_all(self) -> None:
        for watcher in list(self.watchers.values()):
            watcher.refresh()
        self.fresh_at = self.clock()

    def _run(self) -> None:
        backoff, failing = BACKOFF_MIN_S, ""
        while not self._stop.is_set():
            pubsub = None
            try:
                client = self.link.new_client(timeout_s=max(POLL_S * 4, self.link.settings.command_timeout_s))
                pubsub = client.pubsub(ignore_subscribe_messages=True)
                pubsub.subscribe(self.channel)
                self._refresh_all()  # after (re)subscribing: catch up on what was missed
                self.link.up()
                if failing:
                    log.warning("shared state: %s answers again", self.link.settings.where())
                backoff, failing = BACKOFF_MIN_S, ""
                next_poll = self.clock() + POLL_S
                while not self._stop.is_set():
                    msg = pubsub.get_message(timeout=max(0.0, next_poll - self.clock()))
                    if msg is not None and msg.get("type") == "message":
                        self.messages += 1
                        watcher = self.watchers.get(bytes(msg["data"]).split(b" ", 1)[0])
                        if watcher is not None:
                            watcher.refresh()
                            self.fresh_at = self.clock()
                    if self.clock() >= next_poll:
                        self._refresh_all()
                        next_poll = self.clock() + POLL_S
            except (redis.RedisError, OSError) as e:
                if describe(e) != failing:
                    failing = describe(e)
                    log.warning("shared state: %s: %s (retrying)", self.link.settings.where(), failing)
                self._stop.wait(backoff)
                backoff = min(backoff * 2, BACKOFF_MAX_S)
            except Exception:  # noqa: BLE001 - never let the listener die: log and start over
                log.exception("shared state listener failed; restarting it")
                self._stop.wait(BACKOFF_MAX_S)
            finally:
                if pubsub is not None:
                    try:
                        pubsub.close()
                    except Exception:  # noqa: BLE001
                        pass
