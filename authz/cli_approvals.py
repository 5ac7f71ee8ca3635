"""The `authz approvals` commands: list, show, approve and reject the approvals of a running server
(authz.v1.Approvals).

Who you are: `--token`/`--token-file` (a bearer JWT), or `--ca/--cert/--key` (mTLS); in development
mode only, `--as NAME` (the server believes `x-authz-caller` from loopback peers only).
Exit codes: 0 done, 1 refused (permission, not found, not pending, bad input: the message on stderr),
2 usage errors and an unreachable server.
"""
from __future__ import annotations

import datetime
import json
import pathlib
import sys

import click

REFUSED = ("PERMISSION_DENIED", "NOT_FOUND", "FAILED_PRECONDITION", "INVALID_ARGUMENT", "UNAUTHENTICATED")
MAX_SECRET_FILE_BYTES = 64 * 1024


def _connection(f):
    for option in reversed((
            click.option("--server", default="127.0.0.1:9191", show_default=True, help="The server's gRPC HOST:PORT."),
            click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table."),
            click.option("--as", "as_name", metavar="NAME",
                         help="Act as NAME (development mode only: sent as `x-authz-caller`)."),
            click.option("--token", help="A bearer token naming you (prefer --token-file: arguments are visible)."),
            click.option("--token-file", type=click.Path(dir_okay=False), help="A file holding the bearer token."),
            click.option("--ca", type=click.Path(exists=True, dir_okay=False), help="mTLS: the server's CA (PEM)."),
            click.option("--cert", type=click.Path(exists=True, dir_okay=False), help="mTLS: your certificate (PEM)."),
            click.option("--key", type=click.Path(exists=True, dir_okay=False), help="mTLS: your key (PEM)."),
            click.option("--server-name", help="mTLS: the name the server's certificate carries, if not HOST."),
            click.option("--timeout", "timeout_s", default=10.0, show_default=True, type=click.FloatRange(0.1, 300),
                         help="Seconds to wait for the answer."))):
        f = option(f)
    return f


def _read_secret(path: str) -> str:
    try:
        with open(path, "rb") as fh:
            raw = fh.read(MAX_SECRET_FILE_BYTES + 1)
    except OSError as e:
        raise click.UsageError(f"cannot read --token-file: {e.strerror}") from None
    if len(raw) > MAX_SECRET_FILE_BYTES:
        raise click.UsageError("--token-file is too large for a token")
    return raw.decode("utf-8", "replace").strip()


class _Client:
    """A channel to the server and the metadata that names the caller."""

    def __init__(self, opts: dict):
        import grpc

        token = opts["token"]
        if opts["token_file"]:
            if token:
                raise click.UsageError("give --token or --token-file, not both")
            token = _read_secret(opts["token_file"])
        self.metadata = []
        if token:
            self.metadata.append(("authorization", f"Bearer {token}"))
        if opts["as_name"]:
            self.metadata.append(("x-authz-caller", opts["as_name"]))
        tls = (opts["ca"], opts["cert"], opts["key"])
        if any(tls):
            if not all(tls):
                raise click.UsageError("mTLS needs --ca, --cert and --key")
            ca, cert, key = (pathlib.Path(p).read_bytes() for p in tls)
            creds = grpc.ssl_channel_credentials(root_certificates=ca, private_key=key, certificate_chain=cert)
            options = [("grpc.ssl_target_name_override", opts["server_name"])] if opts["server_name"] else []
            self.channel = grpc.secure_channel(opts["server"], creds, options=options)
        else:
            self.channel = grpc.insecure_channel(opts["server"])
        self.server, self.timeout_s, self.as_json = opts["server"], opts["timeout_s"], opts["as_json"]

    def call(self, method: str, request):
        import grpc

        from authz._pb import approvals_pb2_grpc

        stub = approvals_pb2_grpc.ApprovalsStub(self.channel)
        try:
            return getattr(stub, method)(request, metadata=self.metadata, timeout=self.timeout_s)
        except grpc.RpcError as e:
            code = e.code().name if e.code() is not None else "UNKNOWN"
            if code in REFUSED:
                click.echo(f"authz approvals: {e.details()}", err=True)
                sys.exit(1)
            click.echo(f"authz approvals: cannot reach `{self.server}`: {code}: {e.details()}", err=True)
            sys.exit(2)
        finally:
            self.channel.close()


def _record(a) -> dict:
    from google.protobuf.json_format import MessageToDict

    return MessageToDict(a, preserving_proto_field_name=True, always_print_fields_with_no_presence=True)


def _uid(uid) -> str:
    return f'{uid.type}::{json.dumps(uid.id, ensure_ascii=False)}'


def _when(t: float) -> str:
    if not t:
        return "-"
    return datetime.datetime.fromtimestamp(t, datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def _show_one(a) -> None:
    rows = (("id", a.id), ("state", a.state), ("kind", a.kind), ("queue", a.queue), ("task", a.task),
            ("chain", " > ".join(a.chain)), ("principal", _uid(a.principal)), ("action", _uid(a.action)),
            ("resource", _uid(a.resource)), ("policies", ", ".join(a.policies)), ("digest", a.digest),
            ("requested", _when(a.requested_at)), ("expires", _when(a.expires_at)),
            ("approver", a.approver or "-"), ("reason", a.reason or "-"), ("decided", _when(a.decided_at)),
            ("grant expires", _when(a.grant_expires_at)), ("used", _when(a.used_at)))
    for name, value in rows:
        click.echo(f"{name + ':':15}{value}")


def _print_one(client, a) -> None:
    if client.as_json:
        click.echo(json.dumps(_record(a), ensure_ascii=False))
    else:
        _show_one(a)


@click.group("approvals")
def approvals():
    """Approvals a running server waits for (authz.v1.Approvals): list, show, approve, reject."""


@approvals.command("list")
@_connection
@click.option("--state", type=click.Choice(["pending", "approved", "rejected", "expired", "used"]),
              help="Only approvals in this state.")
@click.option("--queue", help="Only this queue.")
@click.option("--task", help="Only this task.")
@click.option("--limit", default=100, show_default=True, type=click.IntRange(1, 1000), help="At most this many.")
def list_(state, queue, task, limit, **opts):
    """The approvals, newest first."""
    from authz._pb import approvals_pb2 as pb

    client = _Client(opts)
    found = client.call("List", pb.ApprovalsListRequest(state=state or "", queue=queue or "", task=task or "",
                                                        limit=limit)).approvals
    if client.as_json:
        click.echo(json.dumps([_record(a) for a in found], ensure_ascii=False))
        return
    rows = [("ID", "STATE", "QUEUE", "TASK", "PRINCIPAL", "ACTION", "RESOURCE", "EXPIRES")]
    rows += [(a.id, a.state, a.queue, a.task, _uid(a.principal), _uid(a.action), _uid(a.resource),
              _when(a.expires_at)) for a in found]
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    for r in rows:
        click.echo("  ".join(v.ljust(w) for v, w in zip(r, widths)).rstrip())


@approvals.command("show")
@_connection
@click.argument("approval_id")
def show(approval_id, **opts):
    """One approval."""
    from authz._pb import approvals_pb2 as pb

    client = _Client(opts)
    _print_one(client, client.call("Get", pb.ApprovalsGetRequest(id=approval_id)).approval)


@approvals.command("approve")
@_connection
@click.argument("approval_id")
@click.option("--reason", default="", help="Why (kept with the approval).")
def approve(approval_id, reason, **opts):
    """Approve a pending approval: its exact call is allowed once and the task resumes."""
    from authz._pb import approvals_pb2 as pb

    client = _Client(opts)
    _print_one(client, client.call("Approve", pb.ApprovalsApproveRequest(id=approval_id, reason=reason)).approval)


@approvals.command("reject")
@_connection
@click.argument("approval_id")
@click.option("--reason", required=True, help="Why (required).")
def reject(approval_id, reason, **opts):
    """Reject a pending approval: the call stays denied; the task resumes, or is revoked (on_reject)."""
    from authz._pb import approvals_pb2 as pb

    client = _Client(opts)
    _print_one(client, client.call("Reject", pb.ApprovalsRejectRequest(id=approval_id, reason=reason)).approval)
