"""One worker process: builds the grpc.aio server (ext_authz v3, authz.v1, health, reflection) and runs it until SIGTERM."""
from __future__ import annotations

import asyncio
import faulthandler
import gc
import logging
import multiprocessing
import multiprocessing.connection
import os
import signal
import sys
import threading
import time

log = logging.getLogger("authz.server")

ENVOY_SERVICE = "envoy.service.auth.v3.Authorization"
V1_SERVICE = "authz.v1.Authorizer"
TOKENS_SERVICE = "authz.v1.Tokens"
APPROVALS_SERVICE = "authz.v1.Approvals"
# A health "service" that is SERVING while the worker serves the policies folder's content and the
# index's current generation; NOT_SERVING while it serves an older generation (a reload failed, or
# the index's current generation cannot be loaded). The services above keep answering meanwhile.
POLICIES_HEALTH = "authz.policies"


def server_options(cfg) -> list:
    """Channel args for a worker's server.

    INVARIANT: so_reuseport is on because N workers bind one port; the supervisor has
    already checked that no other server holds it (grpcio would share it silently).
    """
    opts = [
        ("grpc.so_reuseport", 1),
        ("grpc.max_receive_message_length", cfg.max_message_bytes),
        ("grpc.max_send_message_length", cfg.max_message_bytes),
    ]
    if cfg.max_concurrent_streams:
        opts.append(("grpc.max_concurrent_streams", cfg.max_concurrent_streams))
    if cfg.max_connection_age_s:
        opts.append(("grpc.max_connection_age_ms", int(cfg.max_connection_age_s * 1000)))
        opts.append(("grpc.max_connection_age_grace_ms", int(max(cfg.drain_s, 1) * 1000)))
    return opts


def build_task_state(cfg, tokens, store=None):
    """The worker's task-state step over `store` (default: the configured one, opened lazily), revoking a
    task's or an agent's tokens through the tokens' revocation set when a tripwire says so."""
    from authz.server.taskstate import TaskState
    from authz.state.open import open_store
    from authz.tokens.revocation import entry_expiry

    def revoke(kind, subject):
        now = time.time()
        expires = entry_expiry(kind, now, tokens.keys.max_ttl_s, tokens.cfg.leeway_s)
        tokens.revocations.revoke(kind, subject, expires, tokens.cfg.max_revocations, "tripwire", 0)

    return TaskState(open_store(cfg.state_config()) if store is None else store, revoke)


def build_server(cfg, decider, parts=None):
    """A grpc.aio server with every servicer added (not yet bound or started); returns (server, health).

    `parts` (a dict), when given, receives the worker's `callers` and `tokens` (the HTTP listener shares them)."""
    import grpc
    from envoy.service.auth.v3 import external_auth_pb2
    from grpc_health.v1 import health, health_pb2_grpc
    from grpc_reflection.v1alpha import reflection, reflection_pb2_grpc

    from authz._pb import approvals_pb2, authz_pb2, tokens_pb2
    from authz.server.approvals_api import ApprovalsServicer
    from authz.server.api import AuthorizerServicer
    from authz.server.envoy import EnvoyAuthorizationServicer, Limits
    from authz.server.malformed import add_guarded
    from authz.server.tokens_api import TokensServicer, build_token_service
    from authz.server.shared_state import shared_keys
    from authz.state.open import open_store

    server = grpc.aio.server(options=server_options(cfg))
    limits = Limits(cfg.max_headers, cfg.max_header_bytes, cfg.max_batch_size, cfg.max_context_depth)
    store = open_store(cfg.state_config())  # task state, approvals, revocations (authz.state)
    tokens = build_token_service(cfg, decider, store, shared_keys(cfg, store))
    decider.task_state = build_task_state(cfg, tokens, store)
    callers = build_callers(cfg, tokens)
    if parts is not None:
        parts.update(callers=callers, tokens=tokens)
    EnvoyAuthorizationServicer(decider, limits, tokens, callers).add_to_server(server)
    AuthorizerServicer(decider, cfg.max_batch_size, cfg.max_context_depth, tokens, callers).add_to_server(server)
    TokensServicer(tokens).add_to_server(server)
    tokens.task_store = decider.task_state.store  # no token for a suspended or revoked task
    health_servicer = health.aio.HealthServicer()
    # INVARIANT (grpcio-health-checking's aio HealthServicer): enter_graceful_shutdown() sets this flag.
    ApprovalsServicer(decider.task_state, decider, cfg.development_mode,
                      lambda: health_servicer._gracefully_shutting_down).add_to_server(server)
    add_guarded(health_pb2_grpc.add_HealthServicer_to_server, health_servicer, server)
    add_guarded(reflection_pb2_grpc.add_ServerReflectionServicer_to_server, reflection.aio.ReflectionServicer((
        external_auth_pb2.DESCRIPTOR.services_by_name["Authorization"].full_name,
        authz_pb2.DESCRIPTOR.services_by_name["Authorizer"].full_name,
        tokens_pb2.DESCRIPTOR.services_by_name["Tokens"].full_name,
        approvals_pb2.DESCRIPTOR.services_by_name["Approvals"].full_name,
        health.SERVICE_NAME, reflection.SERVICE_NAME)), server)
    return server, health_servicer


def build_callers(cfg, tokens=None):
    """The worker's Callers (who is asking); the task tokens' bearer tokens are left to `tokens`.

    Also installs the caller resolver that authz.v1.Tokens uses (verified tokens and peers).
    """
    from authz.server.callers import Callers
    from authz.tokens import caller

    callers = Callers(cfg.identity_settings, cfg.max_context_depth,
                      defer_bearer=tokens.bearer if tokens is not None else None)
    caller.configure(cfg.development_mode, None if callers.development_mode else callers.resolve_identity)
    s = cfg.identity_settings
    exposed = cfg.exposed_self_asserted_listeners()
    if exposed:  # only with insecure_allow_self_asserted_callers: `authz serve` refuses it otherwise
        log.warning("INSECURE: development mode on %s: any client that reaches it can name itself as any agent",
                    ", ".join(exposed))
    if not s.development_mode:
        log.info("identity: %d JWT issuer(s) [%s]; mTLS %s; trusted PEPs [%s]", len(s.jwt),
                 ", ".join(j.issuer or f"spiffe://{j.trust_domain}" for j in s.jwt),
                 f"required, trust domains [{', '.join(s.mtls.trust_domains)}]" if s.mtls else "off",
                 ", ".join(s.trusted_peps))
        if s.trusted_peps and s.mtls is None:
            log.warning("trusted_peps without [identity.mtls]: no caller can prove a PEP identity by certificate, "
                        "so Envoy's source.principal is never trusted (authz.v1 PEPs may still use bearer tokens)")
    return callers


def server_credentials(mtls):
    """grpc server credentials requiring a client certificate that chains to `client_ca`.

    The certificate, key and CA files are re-read (on the next handshake) when any of them
    changes, checked at most once a second: SVIDs are short-lived and rotated on disk.
    """

    import grpc

    paths = (mtls.cert, mtls.key, mtls.client_ca)

    def stamp():
        try:
            return tuple(os.stat(p).st_mtime_ns for p in paths)
        except OSError:
            return None

    def read():
        with open(mtls.cert, "rb") as c, open(mtls.key, "rb") as k, open(mtls.client_ca, "rb") as ca:
            return grpc.ssl_server_certificate_configuration([(k.read(), c.read())], root_certificates=ca.read())

    state = {"stamp": stamp(), "checked": time.monotonic()}
    initial = read()

    def fetch():
        now = time.monotonic()
        if now - state["checked"] < 1.0:
            return None
        state["checked"] = now
        current = stamp()
        if current is None or current == state["stamp"]:
            return None
        try:
            config = read()
        except OSError as e:
            log.error("cannot re-read the TLS files: %s; keeping the current ones", e)
            return None
        state["stamp"] = current
        log.info("TLS certificate, key or client CA changed: new handshakes use the new files")
        return config

    return grpc.dynamic_ssl_server_credentials(initial, fetch, require_client_authentication=True)


async def set_health(health_servicer, serving: bool, names=("", ENVOY_SERVICE, V1_SERVICE, TOKENS_SERVICE,
                                                               APPROVALS_SERVICE)) -> None:
    """Overall and per-service status."""
    from grpc_health.v1 import health_pb2

    status = health_pb2.HealthCheckResponse.SERVING if serving else health_pb2.HealthCheckResponse.NOT_SERVING
    for name in names:
        await health_servicer.set(name, status)


async def _watch_index(decider, health_servicer, metrics, policies_stale) -> None:
    """Open the index as soon as it exists, then report the served generation and whether it is current.

    `policies_stale`: the supervisor's shared flag, 1 while the folder holds changes that failed to compile.
    """
    warned = False
    while not decider.open_engine():
        if not warned:
            log.warning("not serving until the index can be opened: %s", decider.last_error)
            warned = True
        await asyncio.sleep(0.1)
    await set_health(health_servicer, True)
    log.info("index open: generation %d", decider.generation)
    current_shown = None
    while True:
        latest = _index_generation(decider.db_path)  # read before the refresh: no false "behind"
        _refresh(decider.engine)
        served = decider.generation
        metrics.worker_generation(served, decider.policy_digest)
        behind = latest is not None and latest > served
        current = not behind and not (policies_stale is not None and policies_stale.value)
        if current != current_shown:
            if behind:
                log.error("serving generation %d: the index's current generation %d cannot be loaded", served, latest)
            await set_health(health_servicer, current, (POLICIES_HEALTH,))
            current_shown = current
        await asyncio.sleep(0.5)


async def _report_state(store, backend: str, metrics, every_s: float = 1.0) -> None:
    """Copy the state store's conflict, give-up and failure totals into the metrics every `every_s` (the
    decision path only counts them in plain integers). LMDB serializes writers: it never conflicts."""
    link = getattr(store, "link", None)
    while True:
        metrics.state_store(backend, getattr(store, "conflicts", 0), getattr(store, "exhausted", 0),
                            getattr(link, "failures", 0))
        await asyncio.sleep(every_s)


def _index_generation(db: str) -> int | None:
    """The index's current generation number (None if it cannot be read)."""
    import struct

    from authz.engine.index import CURRENT_KEY, open_env, release_env

    try:
        env = open_env(db, create=False)
    except Exception:  # noqa: BLE001 - reported by the engine's own errors
        return None
    try:
        with env.begin() as txn:
            raw = txn.get(CURRENT_KEY)
    except Exception:  # noqa: BLE001
        return None
    finally:
        release_env(env)
    return struct.unpack("<Q", raw)[0] if raw is not None and len(raw) == 8 else None


async def _wait_until_quiet(decider, limit_s: float, quiet_s: float = 0.1) -> float:
    """Keep serving until no request has come to decide for `quiet_s` since the drain began (at most
    `limit_s`); returns the wait.

    grpc's server.stop() cancels the RPCs a worker has received but not yet dispatched to a
    handler; serving on a little longer dispatches (and answers) them first — also those that
    arrived just before SIGTERM at a worker that had been idle (or stopped) for a while.
    """
    start_ns = time.perf_counter_ns()
    while True:
        now_ns = time.perf_counter_ns()
        waited = (now_ns - start_ns) / 1e9
        idle_s = (now_ns - max(decider.last_request_ns, start_ns)) / 1e9
        if idle_s >= quiet_s or waited >= limit_s:
            return waited
        await asyncio.sleep(min(quiet_s - idle_s, limit_s - waited) + 0.005)


def _refresh(engine) -> None:
    """Follow the index's current generation even when no request arrives (for the generation metric)."""
    try:
        engine.refresh()
    except Exception as e:  # the engine keeps serving its loaded generation
        log.debug("refresh failed: %s", e)


async def serve_worker(cfg, conn, metrics_enabled: bool, policies_stale=None, shadow_flags=None) -> int:
    """Run one worker until SIGTERM/SIGINT or the supervisor's death; returns the exit code.
    `shadow_flags`: the supervisor's shadow.ShadowFlags (None: no policies folder, no shadow set)."""
    from authz.server.decider import Decider
    from authz.server.decisionlog import DecisionLog
    from authz.server.metrics import Metrics, NullMetrics
    from authz.server.tracing import build_tracer

    metrics = Metrics() if metrics_enabled else NullMetrics()
    dlog = None
    if cfg.decision_log_path:
        dlog = DecisionLog(cfg.decision_log_path, cfg.decision_log_queue, on_drop=metrics.decision_log_dropped,
                           loop=asyncio.get_running_loop(), max_bytes=cfg.decision_log_max_bytes,
                           keep=cfg.decision_log_keep)
    tracer = build_tracer(cfg.tracing_settings)
    decider = Decider(cfg.db_path, dlog, metrics, tracer=tracer)
    decider.policies_stale, decider.state_backend = policies_stale, cfg.state.get("backend") or "lmdb"  # (Status)
    if dlog is not None:
        dlog.digest_of = decider.digest_of  # every line carries its generation's policy digest
    parts: dict = {}
    server, health_servicer = build_server(cfg, decider, parts)
    await set_health(health_servicer, False, ("", ENVOY_SERVICE, V1_SERVICE, TOKENS_SERVICE, APPROVALS_SERVICE,
                                              POLICIES_HEALTH))
    mtls = cfg.identity_settings.mtls
    try:
        if mtls is not None:
            port = server.add_secure_port(cfg.listen, server_credentials(mtls))
        else:
            port = server.add_insecure_port(cfg.listen)
    except (RuntimeError, OSError) as e:
        port, error = 0, str(e)
    else:
        error = ""
    if not port:
        conn.send(("error", f"cannot listen on `{cfg.listen}`: {error or 'bind failed'}"))
        return 1
    await server.start()
    http = None
    if cfg.http_listen:  # AuthZEN over HTTP (authzen.py), on the port the supervisor holds for the workers
        from authz.server.authzen import build_http_listener

        http = build_http_listener(cfg, decider, parts["callers"], parts["tokens"])
        if cfg.console:
            from authz.console.web import mount  # the operator console at /console (docs/console.md)

            mount(http.app, cfg, decider, parts["callers"], parts["tokens"])
        try:
            await http.start()
        except OSError as e:
            conn.send(("error", f"cannot listen on `{cfg.http_listen}`: {e.strerror or e}"))
            return 1
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    if dlog is not None:
        loop.add_signal_handler(signal.SIGHUP, dlog.reopen)  # logrotate's postrotate: `kill -HUP <pids>`
    parent = multiprocessing.parent_process()
    if parent is not None:
        def watch_parent():
            multiprocessing.connection.wait([parent.sentinel])
            loop.call_soon_threadsafe(stop.set)
        threading.Thread(target=watch_parent, name="parent-watch", daemon=True).start()
    watcher = asyncio.ensure_future(_watch_index(decider, health_servicer, metrics, policies_stale))
    reporter = asyncio.ensure_future(_report_state(decider.task_state.store, decider.state_backend, metrics)) \
        if metrics.enabled else None
    shadow_task = None
    if shadow_flags is not None:  # shadow policies (authz/server/shadow.py): the first look before ready
        from authz.server import shadow

        shadow.open_if_active(decider, cfg.shadow_db_path, shadow_flags, metrics)
        shadow_task = asyncio.ensure_future(shadow.follow(decider, cfg.shadow_db_path, shadow_flags,
                                                          health_servicer, metrics))
    # The cyclic GC: what start-up built lives as long as the worker (freeze it: collections skip
    # it), and requests make few cycles but many containers, which the decision log keeps for up
    # to a flush interval; collecting young objects every 50,000 allocations instead of 700 cut a
    # worker's CPU per BatchCheck decision by ~10% (bench/bench_grpc.py).
    gc.freeze()
    gc.set_threshold(50_000, 20, 100)
    conn.send(("ready", port, os.getpid()))
    await stop.wait()
    # Drain: health says NOT_SERVING; RPCs already received are answered (see _wait_until_quiet);
    # then new RPCs are refused (GOAWAY) and in-flight ones get the rest of drain_s.
    await health_servicer.enter_graceful_shutdown()
    waited = await _wait_until_quiet(decider, cfg.drain_s / 2)
    if http is not None:  # requests in flight get drain_s (HttpListener), as gRPC's below
        await asyncio.gather(http.stop(), server.stop(max(cfg.drain_s - waited, 0.1)))
    else:
        await server.stop(max(cfg.drain_s - waited, 0.1))
    watcher.cancel()
    if reporter is not None:
        reporter.cancel()
    if shadow_task is not None:
        shadow_task.cancel()
    if dlog is not None:
        dlog.close()
    if tracer is not None:
        tracer.shutdown()  # exports the spans still queued
    return 0


def run_worker(cfg, index: int, conn, metrics_enabled: bool, policies_stale=None, shadow_flags=None) -> None:
    """Process entry point (multiprocessing spawn target); `policies_stale`, `shadow_flags`: the supervisor's
    shared flags."""
    logging.basicConfig(level=logging.INFO,
                        format=f"%(asctime)s authz[worker {index} pid %(process)d] %(levelname)s %(message)s")
    faulthandler.register(signal.SIGUSR1, all_threads=True)  # `kill -USR1 <pid>`: stacks to stderr
    try:
        code = asyncio.run(serve_worker(cfg, conn, metrics_enabled, policies_stale, shadow_flags))
    except Exception as e:  # report, then die: the supervisor decides what to do
        log.exception("worker failed")
        try:
            conn.send(("error", f"worker failed: {e}"))
        except OSError:
            pass
        code = 1
    sys.exit(code)
