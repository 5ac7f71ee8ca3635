"""The `authz serve` click command (registered on the `authz` group by authz/cli.py)."""
from __future__ import annotations

import logging
import os
import sys

import click

from authz.server.config import ConfigError, load_config


@click.command("serve")
@click.option("--config", "config_path", type=click.Path(dir_okay=False), help="TOML config file; flags override it.")
@click.option("--db", help="LMDB index path (default: DATA_DIR/authz.lmdb).")
@click.option("--policies", help="Policies folder: compiled at start, watched and recompiled on change.")
@click.option("--shadow-policies", "shadow_policies",
              help="A candidate policies folder evaluated beside --policies on every decision, never enforced; "
                   "differences are logged and counted (docs/policy-tooling.md).")
@click.option("--wait-for-index", "wait_for_index", is_flag=True,
              help="With --db and no --policies: start even if no index is there yet (another process compiles "
                   "it); health stays NOT_SERVING until it appears. Without it, a missing index is an error.")
@click.option("--listen", help="gRPC address HOST:PORT (default 127.0.0.1:9191).")
@click.option("--http-listen", "http_listen",
              help="HTTP address HOST:PORT for AuthZEN (docs/authzen.md) in every worker (default: off).")
@click.option("--workers", type=int, help="Worker processes sharing the port (default 1).")
@click.option("--data-dir", "data_dir", help="Folder for the index and state (default authz-data).")
@click.option("--metrics-listen", "metrics_listen", help="Prometheus /metrics address HOST:PORT (default: off).")
@click.option("--decision-log", "decision_log", help='Decision log JSONL path ("" = off; default DATA_DIR/decisions.jsonl).')
@click.option("--max-batch-size", "max_batch_size", type=int, help="Maximum BatchCheck items (default 1000).")
@click.option("--max-message-bytes", "max_message_bytes", type=int, help="Maximum gRPC message size (default 4 MiB).")
@click.option("--reload-interval", "reload_interval_s", type=float, help="Policies folder poll interval in seconds.")
@click.option("--drain", "drain_s", type=float, help="Seconds in-flight RPCs get to finish on SIGTERM (default 5).")
@click.option("--tls-cert", "tls_cert", help="Server certificate chain (PEM): serve over mTLS ([identity.mtls] cert).")
@click.option("--tls-key", "tls_key", help="Server private key (PEM) ([identity.mtls] key).")
@click.option("--client-ca", "client_ca", help="CA bundle (PEM) client certificates must chain to ([identity.mtls] client_ca).")
@click.option("--trust-domain", "trust_domains", multiple=True,
              help="SPIFFE trust domain allowed for client certificates; repeatable ([identity.mtls] trust_domains).")
@click.option("--insecure-allow-self-asserted-callers", "insecure_allow_self_asserted_callers", is_flag=True,
              default=None, help="Run in development mode (callers name themselves) on an address that is not "
                                 "loopback. Never in production: configure [identity] instead.")
@click.option("--log-level", default="info", type=click.Choice(["debug", "info", "warning", "error"]))
def serve(config_path, log_level, **flags):
    """Serve Envoy ext_authz v3 and authz.v1 Check/BatchCheck over gRPC (and AuthZEN over HTTP with --http-listen).

    With no arguments it compiles and serves the bundled example policies on 127.0.0.1:9191.
    """
    logging.basicConfig(level=getattr(logging, log_level.upper()),
                        format="%(asctime)s authz[supervisor pid %(process)d] %(levelname)s %(message)s")
    wait_for_index = flags.pop("wait_for_index")
    try:
        cfg = load_config(config_path, flags)
        cfg.require_identity_off_loopback()
    except ConfigError as e:
        click.echo(f"authz serve: error: {e}", err=True)
        sys.exit(2)
    _probe_shared_state(cfg)
    exposed = cfg.exposed_self_asserted_listeners()
    if exposed:
        logging.getLogger("authz.server").warning(
            "INSECURE: development mode on %s (insecure_allow_self_asserted_callers): any client that reaches it "
            "can name itself as any agent; token admin calls are still refused from non-loopback peers",
            ", ".join(exposed))
    if not cfg.policies and not os.path.exists(os.path.join(cfg.db_path, "data.mdb")):
        if not wait_for_index:
            click.echo(f"authz serve: error: no index at `{cfg.db_path}` and no policies folder to compile: "
                       f"compile one first (`authz compile POLICIES --db {cfg.db_path}`), serve a folder "
                       f"(`--policies DIR`), or pass --wait-for-index if another process compiles it", err=True)
            sys.exit(2)
        logging.getLogger("authz.server").warning(
            "no index at `%s` yet: not serving (health NOT_SERVING) until one is compiled there", cfg.db_path)
    from authz.server.workers import AddressInUseError, Supervisor

    try:
        code = Supervisor(cfg).run()
    except AddressInUseError as e:
        click.echo(f"authz serve: error: {e}", err=True)
        sys.exit(1)
    sys.exit(code)


def _probe_shared_state(cfg) -> None:
    """With `[state] backend = "redis"`: refuse to start when Redis refuses our credentials; start (stateful
    decisions denied state_unavailable until it answers) when it cannot be reached yet."""
    settings = cfg.state_config().redis
    if settings is None:
        return
    from authz.server.shared_state import probe

    try:
        problem = probe(settings)
    except ValueError as e:
        click.echo(f"authz serve: error: {e}", err=True)
        sys.exit(2)
    if problem is not None:
        logging.getLogger("authz.server").warning(
            "the shared state store %s does not answer (%s): starting; decisions that need shared state are "
            "denied state_unavailable until it does", settings.where(), problem)
