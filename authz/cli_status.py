"""The `authz status` command: asks a running server which policy set it serves (authz.v1.Authorizer/Status):
the generation, the policy set's content digest, the worker's pid, whether the folder's latest changes
failed to compile, the state backend. `--samples N` asks over N fresh connections, which the kernel spreads
over the workers sharing the port (SO_REUSEPORT), and prints each distinct worker's answer: watching it
while a new policy folder rolls out shows every worker, on every node, move to the new digest
(docs/scale-out.md).

Exit codes: 0 every answer names one policy set (same digest, none stale, all serving), 1 they differ
(a rollout in progress, a failed reload), 2 the server cannot be reached.
"""
from __future__ import annotations

import json
import pathlib
import sys

import click

MAX_SAMPLES = 1000


def _channel(server: str, ca, cert, key, server_name):
    """A fresh channel of its own (its own connection: no subchannel shared with another channel)."""
    import grpc

    options = [("grpc.use_local_subchannel_pool", 1)]
    if not (ca or cert or key):
        return grpc.insecure_channel(server, options=options)
    if not ca or bool(cert) != bool(key):
        raise click.UsageError("TLS needs --ca (and, for mTLS, both --cert and --key)")
    ca, cert, key = (pathlib.Path(p).read_bytes() if p else None for p in (ca, cert, key))
    if server_name:
        options.append(("grpc.ssl_target_name_override", server_name))
    creds = grpc.ssl_channel_credentials(root_certificates=ca, private_key=key, certificate_chain=cert)
    return grpc.secure_channel(server, creds, options=options)


def _ask(server, tls, timeout_s) -> dict:
    import grpc

    from authz._pb import authz_pb2, authz_pb2_grpc

    with _channel(server, *tls) as channel:
        try:
            a = authz_pb2_grpc.AuthorizerStub(channel).Status(authz_pb2.StatusRequest(), timeout=timeout_s)
        except grpc.RpcError as e:
            code = e.code().name if e.code() is not None else "UNKNOWN"
            click.echo(f"authz status: cannot reach `{server}`: {code}: {e.details()}", err=True)
            sys.exit(2)
    return {"worker_pid": a.worker_pid, "generation": a.generation, "policy_digest": a.policy_digest,
            "policies_stale": a.policies_stale, "state_backend": a.state_backend, "serving": a.serving}


@click.command("status")
@click.option("--server", default="127.0.0.1:9191", show_default=True, help="The server's gRPC address HOST:PORT.")
@click.option("--samples", default=1, show_default=True, type=click.IntRange(1, MAX_SAMPLES),
              help="Ask over this many fresh connections (spread over the workers) and print each distinct answer.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
@click.option("--ca", type=click.Path(exists=True, dir_okay=False), help="TLS: the server's CA (PEM).")
@click.option("--cert", type=click.Path(exists=True, dir_okay=False), help="mTLS: your certificate (PEM).")
@click.option("--key", type=click.Path(exists=True, dir_okay=False), help="mTLS: your key (PEM).")
@click.option("--server-name", help="TLS: the name the server's certificate carries, if not HOST.")
@click.option("--timeout", "timeout_s", default=5.0, show_default=True, type=click.FloatRange(0.1, 300),
              help="Seconds to wait for each answer.")
def status(server, samples, as_json, ca, cert, key, server_name, timeout_s):
    """Print the policy set the server's workers serve; exit 0 when every answer names the same one."""
    tls = (ca, cert, key, server_name)
    seen = {}
    for _ in range(samples):
        answer = _ask(server, tls, timeout_s)
        seen.setdefault((answer["worker_pid"], answer["generation"], answer["policy_digest"]), answer)
    workers = sorted(seen.values(), key=lambda a: (a["policy_digest"], a["generation"], a["worker_pid"]))
    digests = {a["policy_digest"] for a in workers}
    converged = len(digests) == 1 and all(a["serving"] and not a["policies_stale"] for a in workers)
    if as_json:
        click.echo(json.dumps({"server": server, "samples": samples, "converged": converged, "workers": workers}))
    else:
        click.echo(f"{'PID':>8}  {'GENERATION':>10}  {'POLICY DIGEST':<64}  STALE  STATE  SERVING")
        for a in workers:
            click.echo(f"{a['worker_pid']:>8}  {a['generation']:>10}  {a['policy_digest'] or '-':<64}  "
                       f"{'yes' if a['policies_stale'] else 'no':<5}  {a['state_backend']:<5}  "
                       f"{'yes' if a['serving'] else 'no'}")
        click.echo(f"converged: {len(workers)} worker answer(s), one policy set" if converged else
                   f"not converged: {len(digests)} policy set(s) among {len(workers)} worker answer(s)")
    sys.exit(0 if converged else 1)
