"""Supervisor of `authz serve`: checks and reserves the port, spawns N worker processes, watches policies, drains on SIGTERM.

The supervisor never creates a gRPC object nor reads the index (grpc issue 16001: fork after gRPC
init breaks); workers are started with the `spawn` method, and compiles run in child processes
(authz/server/reload.py). It opens the index only to clear the reader slot of a worker that died.
"""
from __future__ import annotations

import errno
import faulthandler
import logging
import multiprocessing
import multiprocessing.connection
import os
import signal
import socket
import sys
import threading
import time

from authz.errors import AuthzError
from authz.server.config import format_hostport, parse_hostport

log = logging.getLogger("authz.server")

READY_TIMEOUT_S = 60.0
MAX_RESTARTS_PER_MINUTE = 10


class AddressInUseError(AuthzError):
    """Another server already listens on the address."""

    code = "address_in_use"


def _family(host: str, port: int):
    infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    family, _, _, _, sockaddr = infos[0]
    return family, sockaddr


def check_port_free(host: str, port: int) -> int:
    """Bind once without SO_REUSEPORT to prove nobody listens on host:port; returns the port (chosen if 0).

    grpcio binds with SO_REUSEPORT by default, so a second server on a busy port would
    otherwise start and silently share it.
    """
    family, sockaddr = _family(host, port)
    s = socket.socket(family, socket.SOCK_STREAM)
    try:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # tolerate TIME_WAIT, not listeners
        s.bind(sockaddr)
        return s.getsockname()[1]
    except OSError as e:
        if e.errno == errno.EADDRINUSE:
            raise AddressInUseError(
                f"cannot listen on `{format_hostport(host, port)}`: the address is already in use by another server") from None
        raise AddressInUseError(f"cannot listen on `{format_hostport(host, port)}`: {e.strerror}") from None
    finally:
        s.close()


def reserve_port(host: str, port: int) -> socket.socket:
    """Hold host:port with SO_REUSEPORT (bound, never listening) so the workers can share it."""
    family, sockaddr = _family(host, port)
    s = socket.socket(family, socket.SOCK_STREAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    s.bind(sockaddr)
    return s


def reserve_listen_port(host: str, port: int):
    """Prove host:port free, then hold it for the workers; returns (reservation, port).

    For port 0 the reservation itself picks the port, so no other socket can take the
    number between the check and the hold.
    """
    if port:
        check_port_free(host, port)
    try:
        s = reserve_port(host, port)
    except OSError as e:
        raise AddressInUseError(f"cannot listen on `{format_hostport(host, port)}`: {e.strerror}") from None
    return s, s.getsockname()[1]


class _Worker:
    __slots__ = ("index", "process", "conn", "pid")

    def __init__(self, index, process, conn):
        self.index, self.process, self.conn, self.pid = index, process, conn, None


class Supervisor:
    """Runs `authz serve` with a validated ServeConfig."""

    def __init__(self, cfg, out=None):
        self.cfg = cfg
        self.out = out or sys.stdout
        self.workers: list = []
        self.listen = cfg.listen
        self.metrics = None
        self._metrics_dir = None
        self._metrics_http = None
        self._watcher = None
        self._reservation = None
        self._http_reservation = None
        self.http_listen = cfg.http_listen
        self._stop = threading.Event()
        self._restarts: list = []
        self._ctx = multiprocessing.get_context("spawn")
        # 1 while the policies folder holds changes that failed to compile; shared with the workers
        # (their health says so), in memory that needs no disk.
        self._policies_stale = self._ctx.RawValue("b", 0)
        self._compiler = None
        self._shadow_sets = None  # shadow_sets.ShadowSets with a policies folder (the shadow set, if any)
        self._applied = None  # the folder's snapshot before the compile being served ...
        self._generation = None  # ... and its generation

    # -- lifecycle ---------------------------------------------------------------------------

    def run(self) -> int:
        """Start everything, serve until SIGTERM/SIGINT, drain; returns the process exit code."""
        cfg = self.cfg
        if cfg.development_mode:
            log.warning("DEVELOPMENT MODE: no [[identity.jwt]] and no [identity.mtls] configured; "
                        "principals are taken from requests as given (source.principal, explicit uids)")
        os.makedirs(cfg.data_dir, exist_ok=True)
        try:
            host, port = parse_hostport(cfg.listen)
            # Held from here on: a port chosen by the kernel (`:0`) could otherwise be handed to
            # the metrics listener, or anyone, while the policies compile.
            self._reservation, port = reserve_listen_port(host, port)
            if cfg.http_listen:  # held the same way: the workers' HTTP listeners share it (SO_REUSEPORT)
                http_host, http_port = parse_hostport(cfg.http_listen, "http_listen")
                self._http_reservation, http_port = reserve_listen_port(http_host, http_port)
                self.http_listen = format_hostport(http_host, http_port)
            if cfg.metrics_listen:
                from authz.server import metrics as metrics_mod

                self._metrics_dir = metrics_mod.prepare_multiprocess_dir()
                self._start_metrics()
            if cfg.policies:
                from authz.server.shadow_sets import ShadowSets

                self._shadow_sets = ShadowSets(cfg, self._ctx)
                code = self._initial_compile()
                if code:
                    return code
                self._shadow_sets.compile_initial()
            self.listen = format_hostport(host, port)
            for i in range(cfg.workers):
                self.workers.append(self._spawn(i))
            for w in self.workers:
                error = self._await_ready(w)
                if error:
                    log.error("%s", error)
                    print(f"authz serve: error: {error}", file=sys.stderr, flush=True)
                    return 1
            if cfg.policies:
                from authz.server.reload import PolicyWatcher

                self._watcher = PolicyWatcher(cfg.policies, cfg.db_path, cfg.reload_interval_s, self.metrics,
                                              self._compiler, self._applied, self._policies_stale,
                                              self._generation)
                self._watcher.start()
                self._shadow_sets.start_watching()
            self._install_signals()
            pids = " ".join(str(w.pid) for w in self.workers)
            http = f", HTTP on {self.http_listen}" if cfg.http_listen else ""
            print(f"authz: serving on {self.listen} (workers {cfg.workers}, pids {pids}, db {cfg.db_path}){http}",
                  file=self.out, flush=True)
            self._loop()
            return 0
        finally:
            self._shutdown()

    def _initial_compile(self) -> int:
        from authz.errors import CompileError
        from authz.server.reload import ReloadError, snapshot

        self._compiler = self._shadow_sets.enforced_compiler()
        self._applied = snapshot(self.cfg.policies)
        try:
            gen = self._compiler(self.cfg.policies, self.cfg.db_path)
        except CompileError as e:
            for line in e.diagnostics:
                print(line, file=sys.stderr)
            print(f"authz serve: error: cannot compile `{self.cfg.policies}`", file=sys.stderr, flush=True)
            return 2
        except ReloadError as e:
            print(f"authz serve: error: cannot compile `{self.cfg.policies}`: {e}", file=sys.stderr, flush=True)
            return 1
        self._generation = gen
        log.info("compiled `%s` into `%s`: generation %s", self.cfg.policies, self.cfg.db_path, gen)
        if self.metrics is not None:
            self.metrics.reload(True, gen)
        return 0

    def _start_metrics(self):
        from authz.server import metrics as metrics_mod

        host, port = parse_hostport(self.cfg.metrics_listen, "metrics_listen")
        try:
            self._metrics_http = metrics_mod.start_metrics_http(host, port)
        except OSError as e:
            raise AddressInUseError(f"cannot serve metrics on `{self.cfg.metrics_listen}`: {e.strerror}") from None
        self.metrics = metrics_mod.Metrics(worker=False)
        log.info("metrics on http://%s/metrics", self.cfg.metrics_listen)

    def _spawn(self, index: int) -> _Worker:
        from authz.server.app import run_worker

        parent_conn, child_conn = self._ctx.Pipe(duplex=False)
        cfg = _replace(self.cfg, listen=self.listen, http_listen=self.http_listen)
        shadow_flags = self._shadow_sets.flags if self._shadow_sets is not None else None
        p = self._ctx.Process(target=run_worker, args=(cfg, index, child_conn, bool(self.cfg.metrics_listen),
                                                       self._policies_stale, shadow_flags),
                              name=f"authz-worker-{index}", daemon=False)
        p.start()
        child_conn.close()
        return _Worker(index, p, parent_conn)

    def _await_ready(self, w: _Worker) -> str:
        """Wait for the worker's ready message; returns an error text or ""."""
        deadline = time.monotonic() + READY_TIMEOUT_S
        while time.monotonic() < deadline:
            ready = multiprocessing.connection.wait([w.conn, w.process.sentinel], timeout=0.5)
            if w.conn in ready:
                try:
                    msg = w.conn.recv()
                except EOFError:
                    return f"worker {w.index} exited before it was ready"
                if msg[0] == "ready":
                    w.pid = msg[2]
                    return ""
                return msg[1]
            if w.process.sentinel in ready:
                return f"worker {w.index} exited with code {w.process.exitcode} before it was ready"
        return f"worker {w.index} not ready after {READY_TIMEOUT_S:.0f}s"

    def _install_signals(self):
        def on_signal(signum, frame):
            self._stop.set()

        def on_hangup(signum, frame):
            # logrotate's postrotate `kill -HUP <supervisor>`: the workers reopen the decision log. Only
            # workers that said they are ready have their handler installed (SIGHUP would kill the others).
            if not self.cfg.decision_log_path:
                return
            for w in self.workers:
                if w.pid is not None and w.process.is_alive():
                    try:
                        os.kill(w.pid, signal.SIGHUP)
                    except ProcessLookupError:
                        pass

        faulthandler.register(signal.SIGUSR1, all_threads=True)  # `kill -USR1 <pid>`: stacks to stderr

        signal.signal(signal.SIGTERM, on_signal)
        signal.signal(signal.SIGINT, on_signal)
        signal.signal(signal.SIGHUP, on_hangup)

    def _loop(self):
        while not self._stop.is_set():
            sentinels = {w.process.sentinel: w for w in self.workers}
            for s in multiprocessing.connection.wait(list(sentinels), timeout=0.2):
                if self._stop.is_set():
                    break
                self._restart(sentinels[s])

    def _restart(self, w: _Worker):
        # The sentinel can fire (the process closed its files) before the process can be reaped.
        w.process.join(5)
        code = w.process.exitcode
        log.error("worker %d (pid %s) exited with code %s; restarting it", w.index, w.pid, code)
        self._mark_dead(w)
        self._clear_stale_readers()
        now = time.monotonic()
        self._restarts = [t for t in self._restarts if now - t < 60] + [now]
        if len(self._restarts) > MAX_RESTARTS_PER_MINUTE:
            log.error("workers keep exiting (%d restarts in a minute); stopping", len(self._restarts))
            self._stop.set()
            return
        fresh = self._spawn(w.index)
        self.workers[self.workers.index(w)] = fresh
        error = self._await_ready(fresh)
        if error:
            log.error("%s", error)

    def _clear_stale_readers(self):
        """Free the index reader slots of processes that died holding them (a SIGKILLed worker's would
        keep every later generation's pages from being reused, growing the index until the map is full)."""
        from authz.engine.index import open_env, release_env
        from authz.errors import IndexUnavailableError

        paths = [self.cfg.db_path]
        if self._shadow_sets is not None and os.path.exists(self._shadow_sets.path):
            paths.append(self._shadow_sets.path)  # the shadow index, which workers read too
        for path in paths:
            try:
                env = open_env(path, create=False)
            except IndexUnavailableError as e:
                log.warning("cannot check the index `%s` for stale readers: %s", path, e)
                continue
            try:
                cleared = env.reader_check()
            except Exception as e:  # noqa: BLE001 - the next publish checks again
                log.warning("cannot check the index `%s` for stale readers: %s", path, e)
                continue
            finally:
                release_env(env)
            if cleared:
                log.info("cleared %d stale reader slot(s) of `%s`", cleared, path)

    def _mark_dead(self, w):
        if self._metrics_dir and w.pid:
            from authz.server.metrics import mark_worker_dead

            mark_worker_dead(w.pid)

    def _shutdown(self):
        """Stop the policy watcher (and its compile), SIGTERM every worker, wait for their drain, kill stragglers."""
        if self._watcher is not None:
            self._watcher.stop()
        if self._shadow_sets is not None:
            self._shadow_sets.stop()
        for w in self.workers:
            if w.process.is_alive():
                w.process.terminate()
        deadline = time.monotonic() + self.cfg.drain_s + 5
        for w in self.workers:
            w.process.join(max(0.0, deadline - time.monotonic()))
            if w.process.is_alive():
                log.error("worker %d did not drain in time; killing it", w.index)
                w.process.kill()
                w.process.join(5)
            self._mark_dead(w)
        if self._metrics_http is not None:
            server, _thread = self._metrics_http
            server.shutdown()
        if self._metrics_dir:
            from authz.server.metrics import remove_multiprocess_dir

            remove_multiprocess_dir(self._metrics_dir)
        if self._reservation is not None:
            self._reservation.close()
        if self._http_reservation is not None:
            self._http_reservation.close()
        log.info("stopped")


def _replace(cfg, **changes):
    import dataclasses

    return dataclasses.replace(cfg, **changes)
