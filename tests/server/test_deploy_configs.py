"""The shipped deployment configs, served by real `authz serve` processes: the container's (docker/authz.toml) and
the Istio example's (the authz.toml of examples/istio/authz.yaml), their mounted paths pointed at files made here.

Both listen on 0.0.0.0 (reached on 127.0.0.1 only) and require identity: no development mode.
"""
import json
import pathlib
import re
import subprocess
import sys
import textwrap

import grpc

from harness import ROOT, AuthzServer, env_with_repo

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1] / "identity"))
import material as m  # noqa: E402

from authz._pb import authz_pb2 as pb  # noqa: E402
from authz._pb import authz_pb2_grpc as pbg  # noqa: E402

BUNDLED_POLICIES = ROOT / "authz" / "examples" / "policies"


def docker_config(tmp_path, jwks: pathlib.Path) -> pathlib.Path:
    text = (ROOT / "docker" / "authz.toml").read_text()
    for old, new in (("0.0.0.0:9191", "0.0.0.0:0"), ("0.0.0.0:9464", "0.0.0.0:0"),
                     ("/var/lib/authz", str(tmp_path / "data")), ("/etc/authz/policies", str(BUNDLED_POLICIES)),
                     ("/etc/authz/identity/jwks.json", str(jwks))):
        assert old in text, old
        text = text.replace(old, new)
    path = tmp_path / "authz.toml"
    path.write_text(text)
    return path


def istio_config(tmp_path, files: dict) -> pathlib.Path:
    manifest = (ROOT / "examples" / "istio" / "authz.yaml").read_text()
    block = re.search(r"^  authz\.toml: \|\n((?:    .*\n|\n)+)", manifest, re.M)
    text = textwrap.dedent(block.group(1))
    for old, new in (("0.0.0.0:9191", "0.0.0.0:0"), ("0.0.0.0:9464", "0.0.0.0:0"),
                     ("/var/lib/authz", str(tmp_path / "data")), ("/etc/authz/policies", str(tmp_path / "policies")),
                     *files.items()):
        assert old in text, old
        text = text.replace(old, str(new))
    path = tmp_path / "authz.toml"
    path.write_text(text)
    return path


def start(tmp_path, config, tls=None) -> AuthzServer:
    server = AuthzServer(tmp_path, ["--config", str(config)], tls=tls)
    server.start(wait_serving=False)
    assert server.address.startswith("0.0.0.0:")
    server.address = "127.0.0.1:" + server.address.rsplit(":", 1)[1]
    server.wait_serving()
    return server


def serve_refused(tmp_path, config):
    return subprocess.run([sys.executable, "-m", "authz.server", "--config", str(config)], cwd=tmp_path,
                          capture_output=True, text=True, timeout=60, env=env_with_repo())


def test_container_config_needs_its_key_set_then_serves_verified_callers_only(tmp_path):
    jwks = tmp_path / "jwks.json"
    config = docker_config(tmp_path, jwks)
    r = serve_refused(tmp_path, config)  # the key set is not mounted
    assert r.returncode == 2 and f"`identity.jwt[0].jwks_file`: `{jwks}` is not a readable file" in r.stderr, r.stderr

    idp = m.SigningKey("ES256", "idp-1")
    jwks.write_text(json.dumps(m.jwks(idp)))
    server = start(tmp_path, config)
    try:
        # The image's HEALTHCHECK command.
        health = subprocess.run([sys.executable, "-m", "authz", "health", "--server", server.address],
                                capture_output=True, text=True, timeout=60, env=env_with_repo())
        assert (health.returncode, health.stdout) == (0, "SERVING\n"), health.stderr
        # A caller naming itself is not believed.
        with server.channel() as ch:
            r = pbg.AuthorizerStub(ch).Check(pb.CheckRequest(
                principal=pb.EntityUid(type="Agent", id="researcher"), action=pb.EntityUid(type="Action", id="GET"),
                resource=pb.EntityUid(type="Tool", id="web.search")), metadata=(("x-authz-caller", "researcher"),),
                timeout=10)
        assert r.decision == pb.DECISION_DENY and r.reason == "principal_not_allowed"
    finally:
        server.stop()
    assert "DEVELOPMENT MODE" not in server.stderr() and "INSECURE" not in server.stderr()


def test_istio_config_serves_mesh_mtls_only(tmp_path):
    ca = m.CertificateAuthority("cluster.local")
    (tmp_path / "root-cert.pem").write_bytes(ca.pem())
    cert, key = m.write_leaf(tmp_path, "authz", ca, uris=["spiffe://cluster.local/ns/authz/sa/authz"],
                             dns=["localhost"])
    sidecar_cert, sidecar_key = m.write_leaf(tmp_path, "tool-api", ca,
                                             uris=["spiffe://cluster.local/ns/tools/sa/tool-api"])
    jwks = tmp_path / "jwks.json"
    jwks.write_text(json.dumps(m.jwks(m.SigningKey("ES256", "idp-1"))))
    (tmp_path / "policies").mkdir()
    (tmp_path / "policies" / "tools.cedar").write_text('permit(principal, action, resource == Tool::"search");\n')
    config = istio_config(tmp_path, {"/etc/authz/tls/tls.crt": cert, "/etc/authz/tls/tls.key": key,
                                     "/etc/authz/mesh-ca/root-cert.pem": tmp_path / "root-cert.pem",
                                     "/etc/authz/identity/jwks.json": jwks})
    tls = (ca.pem(), sidecar_cert.read_bytes(), sidecar_key.read_bytes())
    server = start(tmp_path, config, tls=tls)  # health SERVING over mTLS, as the tool-api sidecar
    try:
        with grpc.insecure_channel(server.address) as ch:  # no client certificate: no connection
            try:
                pbg.AuthorizerStub(ch).Check(pb.CheckRequest(), timeout=5)
                raise AssertionError("a plaintext call was answered")
            except grpc.RpcError as e:
                assert e.code() == grpc.StatusCode.UNAVAILABLE
    finally:
        server.stop()
    stderr = server.stderr()
    assert "trusted PEPs [spiffe://cluster.local/ns/tools/sa/tool-api]" in stderr, stderr
    assert "DEVELOPMENT MODE" not in stderr


def test_dockerfile_pins_its_base_checks_health_and_serves_the_identity_config():
    """The image as declared (building it needs a container engine and a registry: docs/serve.md#container-image)."""
    text = (ROOT / "Dockerfile").read_text()
    assert re.search(r"^ARG PYTHON_IMAGE=python:3\.11\.\d+-slim-bookworm@sha256:[0-9a-f]{64}$", text, re.M)
    assert re.findall(r"^FROM (\S+)", text, re.M) == ["${PYTHON_IMAGE}", "${PYTHON_IMAGE}"]
    assert re.search(r'^  CMD \["authz", "health", "--server", "127\.0\.0\.1:9191"', text, re.M)
    assert 'VOLUME ["/var/lib/authz"]' in text and "COPY docker/authz.toml /etc/authz/authz.toml" in text
    assert 'CMD ["serve", "--config", "/etc/authz/authz.toml"]' in text
    assert 'data_dir = "/var/lib/authz"' in (ROOT / "docker" / "authz.toml").read_text()
