"""Secure by default: development mode (callers name themselves) only on loopback, with real `authz serve` processes.

Off loopback with no identity configured the server refuses to start (exit 2) unless
`insecure_allow_self_asserted_callers` says so; even then the token admin calls (Issue,
Exchange, Revoke) are refused from peers that are not loopback. Servers bound to 0.0.0.0
are reached on 127.0.0.1 only; a peer that is not loopback is made by a relay whose
outgoing socket is bound to one of this machine's own non-loopback addresses (the
connection still goes to 127.0.0.1).
"""
import fcntl
import ipaddress
import json
import pathlib
import socket
import struct
import subprocess
import sys
import threading

import grpc
import pytest

from harness import AuthzServer, caller_metadata, env_with_repo

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1] / "identity"))
import material as m  # noqa: E402

from authz._pb import tokens_pb2 as tpb  # noqa: E402
from authz._pb import tokens_pb2_grpc as tpbg  # noqa: E402

SIOCGIFADDR = 0x8915
SCOPE = tpb.TokenScope(actions=['Action::"tools/call"'], resources=['Tool::"docs.*"'])


def serve(tmp_path, *args, timeout_s=60):
    """Run `authz serve ARGS` expecting it to refuse to start; returns the CompletedProcess."""
    return subprocess.run([sys.executable, "-m", "authz.server", "--data-dir", str(tmp_path / "data"), *args],
                          cwd=tmp_path, capture_output=True, text=True, timeout=timeout_s, env=env_with_repo())


def start_on_all_addresses(tmp_path, *args) -> AuthzServer:
    """A server listening on 0.0.0.0, reached on 127.0.0.1."""
    server = AuthzServer(tmp_path, ["--listen", "0.0.0.0:0", "--data-dir", str(tmp_path / "data"), *args])
    server.start(wait_serving=False)
    server.address = "127.0.0.1:" + server.address.rsplit(":", 1)[1]
    server.wait_serving()
    return server


def own_non_loopback_ipv4() -> str | None:
    """An IPv4 address of one of this machine's interfaces that is not loopback (None if there is none)."""
    for _, name in socket.if_nameindex():
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            try:
                raw = fcntl.ioctl(s.fileno(), SIOCGIFADDR, struct.pack("256s", name.encode()[:15]))
            except OSError:
                continue
        address = socket.inet_ntoa(raw[20:24])
        if not ipaddress.ip_address(address).is_loopback:
            return address
    return None


class SourceBoundRelay:
    """127.0.0.1:port -> 127.0.0.1:target, the outgoing connection bound to `source` (so the server sees `source`)."""

    def __init__(self, target_port: int, source: str):
        self.target_port, self.source = target_port, source
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.sockets: list = []

    def __enter__(self):
        threading.Thread(target=self._accept, daemon=True).start()
        return self

    def __exit__(self, *exc):
        self.listener.close()
        for s in self.sockets:
            s.close()

    def _accept(self):
        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            upstream = socket.socket()
            upstream.bind((self.source, 0))
            upstream.connect(("127.0.0.1", self.target_port))
            self.sockets += [client, upstream]
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pump, args=(a, b), daemon=True).start()

    @staticmethod
    def _pump(src, dst):
        try:
            while data := src.recv(65536):
                dst.sendall(data)
        except OSError:
            pass
        finally:
            try:
                dst.shutdown(socket.SHUT_WR)
            except OSError:
                pass


@pytest.fixture(scope="module")
def remote_source():
    address = own_non_loopback_ipv4()
    if address is None:
        pytest.skip("this machine has no non-loopback IPv4 address to make a remote peer from")
    return address


def admin_calls(address: str, metadata) -> dict:
    """Issue, Exchange and Revoke as `metadata`'s caller: {rpc: (status code name, details)}."""
    out = {}
    with grpc.insecure_channel(address) as ch:
        tokens = tpbg.TokensStub(ch)
        calls = {
            "Issue": lambda: tokens.Issue(tpb.IssueRequest(task="t-1", scope=SCOPE, ttl_s=60), metadata=metadata,
                                          timeout=10),
            "Exchange": lambda: tokens.Exchange(tpb.ExchangeRequest(subject_token="x.y.z", scope=SCOPE, ttl_s=60),
                                                metadata=metadata, timeout=10),
            "Revoke": lambda: tokens.Revoke(tpb.RevokeRequest(task="t-1"), metadata=metadata, timeout=10),
        }
        for name, call in calls.items():
            try:
                call()
                out[name] = ("OK", "")
            except grpc.RpcError as e:
                out[name] = (e.code().name, e.details())
    return out


@pytest.mark.parametrize("listen", ["0.0.0.0:0", "[::]:0", "203.0.113.7:0"])
def test_development_mode_off_loopback_refuses_to_start(tmp_path, listen):
    r = serve(tmp_path, "--listen", listen)
    assert r.returncode == 2, r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1, r.stderr
    assert lines[0].startswith("authz serve: error: `listen` `") and "not a loopback address" in lines[0]
    assert "[[identity.jwt]]" in lines[0] and "[identity.mtls]" in lines[0] and "docs/identity.md" in lines[0]
    assert "serving on" not in r.stdout
    assert not (tmp_path / "data").exists()  # refused before anything was written


def test_config_file_listen_off_loopback_refuses_to_start(tmp_path):
    (tmp_path / "authz.toml").write_text('[server]\nlisten = "0.0.0.0:0"\n')
    r = serve(tmp_path, "--config", str(tmp_path / "authz.toml"))
    assert r.returncode == 2 and "[[identity.jwt]]" in r.stderr and "docs/identity.md" in r.stderr, r.stderr


def test_insecure_flag_starts_loudly_and_keeps_admin_calls_on_loopback(tmp_path, remote_source):
    # The config-file form of the override, two workers: each says it is insecure.
    (tmp_path / "authz.toml").write_text('[server]\ninsecure_allow_self_asserted_callers = true\n')
    server = start_on_all_addresses(tmp_path, "--config", str(tmp_path / "authz.toml"), "--workers", "2")
    try:
        port = int(server.address.rsplit(":", 1)[1])
        # From loopback the development caller works as before.
        local = admin_calls(server.address, caller_metadata("researcher"))
        assert local["Issue"] == ("OK", "")
        assert local["Exchange"][0] == "PERMISSION_DENIED"  # a decision about the (bogus) token: it got in
        # From a peer that is not loopback every admin call is refused before anything is looked at.
        with SourceBoundRelay(port, remote_source) as relay:
            remote = admin_calls(f"127.0.0.1:{relay.port}", caller_metadata("security-officer"))
        for name, (code, details) in remote.items():
            assert code == "UNAUTHENTICATED", (name, code, details)
            assert "loopback" in details and "[[identity.jwt]]" in details, details
    finally:
        server.stop()
    warnings = [line for line in server.stderr().splitlines() if "INSECURE: development mode on `listen`" in line]
    assert any("supervisor" in line for line in warnings), server.stderr()
    assert {w for w in range(2) if any(f"worker {w} " in line for line in warnings)} == {0, 1}, server.stderr()


def test_insecure_flag_on_the_command_line(tmp_path):
    server = start_on_all_addresses(tmp_path, "--insecure-allow-self-asserted-callers")
    server.stop()
    assert "INSECURE: development mode on `listen` `0.0.0.0:" in server.stderr()


def test_identity_configured_serves_off_loopback_and_admin_calls_follow_identity(tmp_path, remote_source):
    idp = m.SigningKey("ES256", "idp-1")
    (tmp_path / "jwks.json").write_text(json.dumps(m.jwks(idp)))
    (tmp_path / "authz.toml").write_text(f'''
[server]
listen = "0.0.0.0:0"

[[identity.jwt]]
issuer = "{m.ISSUER}"
audiences = ["{m.AUDIENCE}"]
jwks_file = "jwks.json"
''')
    server = start_on_all_addresses(tmp_path, "--config", str(tmp_path / "authz.toml"))
    try:
        port = int(server.address.rsplit(":", 1)[1])
        bearer = (("authorization", "Bearer " + idp.sign(m.claims(sub="researcher"))),)
        with SourceBoundRelay(port, remote_source) as relay:
            remote = admin_calls(f"127.0.0.1:{relay.port}", bearer)
            named = admin_calls(f"127.0.0.1:{relay.port}", caller_metadata("researcher"))
        assert remote["Issue"] == ("OK", "")  # a verified caller, wherever it connects from
        assert all(code == "UNAUTHENTICATED" and "loopback" not in details for code, details in named.values())
    finally:
        server.stop()
    assert "INSECURE" not in server.stderr() and "DEVELOPMENT MODE" not in server.stderr()
