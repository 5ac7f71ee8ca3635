"""The `authz health` command: asks a running server's grpc.health.v1 service (container HEALTHCHECKs, scripts).

Exit codes: 0 SERVING, 1 any other answer (NOT_SERVING, an unknown service), 2 the server cannot be
reached (or does not answer within the timeout).
"""
from __future__ import annotations

import sys

import click


@click.command("health")
@click.option("--server", default="127.0.0.1:9191", show_default=True, help="The server's gRPC address HOST:PORT.")
@click.option("--service", default="", help='A health service name: "" (the server), "authz.policies" (the served '
                                            'policies are the folder\'s current ones), or an API service name.')
@click.option("--timeout", "timeout_s", default=5.0, show_default=True, type=click.FloatRange(0.1, 300),
              help="Seconds to wait for the answer.")
def health(server, service, timeout_s):
    """Print the server's health status; exit 0 when SERVING, 1 otherwise, 2 when it cannot be reached."""
    import grpc
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    with grpc.insecure_channel(server) as channel:
        try:
            answer = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(service=service),
                                                               timeout=timeout_s)
        except grpc.RpcError as e:
            if e.code() == grpc.StatusCode.NOT_FOUND:
                click.echo(f"SERVICE_UNKNOWN: the server has no health service `{service}`")
                sys.exit(1)
            click.echo(f"authz health: cannot reach `{server}`: {e.code().name}: {e.details()}", err=True)
            sys.exit(2)
    status = health_pb2.HealthCheckResponse.ServingStatus.Name(answer.status)
    click.echo(status)
    sys.exit(0 if answer.status == health_pb2.HealthCheckResponse.SERVING else 1)
