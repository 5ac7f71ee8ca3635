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
import pytest

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


def istio_redis(tmp_path, password: str):
    """A redis-server run with examples/istio/redis.yaml's redis.conf and ACL (the password put in), on a free port."""
    sys.path.insert(0, str(ROOT / "tests" / "state"))
    from rediskit import RedisServer

    manifest = (ROOT / "examples" / "istio" / "redis.yaml").read_text()
    acl = [line[4:].replace("PASSWORD", password) for line in manifest.splitlines() if line.startswith("#   user ")]
    assert len(acl) == 2 and acl[1].startswith("user authz on >")
    (tmp_path / "users.acl").write_text("\n".join(acl) + "\n")
    block = re.search(r"^  redis\.conf: \|\n((?:    .*\n)+)", manifest, re.M)
    conf = textwrap.dedent(block.group(1))
    for old, new in (("port 6379", "port {port}\nbind 127.0.0.1"), ("dir /data", f"dir {tmp_path}"),
                     ("aclfile /etc/redis/acl/users.acl", f"aclfile {tmp_path / 'users.acl'}")):
        assert old in conf, old
        conf = conf.replace(old, new)
    server = RedisServer(tmp_path / "redis")
    (tmp_path / "redis.conf").write_text(conf.format(port=server.port))
    return server, ["redis-server", str(tmp_path / "redis.conf")]


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
    redis, redis_cmd = istio_redis(tmp_path, "acl-password")
    (tmp_path / "redis-password").write_text("acl-password\n")
    (tmp_path / "kek").write_bytes(bytes(range(32)))
    config = istio_config(tmp_path, {"/etc/authz/tls/tls.crt": cert, "/etc/authz/tls/tls.key": key,
                                     "/etc/authz/mesh-ca/root-cert.pem": tmp_path / "root-cert.pem",
                                     "/etc/authz/identity/jwks.json": jwks,
                                     "authz-redis.authz.svc.cluster.local:6379": f"127.0.0.1:{redis.port}",
                                     "/etc/authz/redis/password": tmp_path / "redis-password",
                                     "/etc/authz/kek/kek": tmp_path / "kek"})
    tls = (ca.pem(), sidecar_cert.read_bytes(), sidecar_key.read_bytes())
    redis.start(command=redis_cmd, password="acl-password", username="authz")
    server = None
    try:
        server = start(tmp_path, config, tls=tls)  # health SERVING over mTLS, as the tool-api sidecar
        _shared_state_works_with_the_acl(redis, config)
        with grpc.insecure_channel(server.address) as ch:  # no client certificate: no connection
            try:
                pbg.AuthorizerStub(ch).Check(pb.CheckRequest(), timeout=5)
                raise AssertionError("a plaintext call was answered")
            except grpc.RpcError as e:
                assert e.code() == grpc.StatusCode.UNAVAILABLE
    finally:
        if server is not None:
            server.stop()
        redis.stop()
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


def _shared_state_works_with_the_acl(redis, config):
    """The replica created the shared key set and listens for changes; what the store does is allowed by the
    manifest's ACL (a decision's load and commit, a revocation, an approval) and nothing outside its prefix is."""
    import time

    import redis as redis_py

    from authz.server.config import load_config
    from authz.state.open import open_store

    admin = redis_py.Redis(port=redis.port, username="authz", password="acl-password")
    assert admin.hexists("authz:prod:keys", "doc")
    assert admin.pubsub_numsub("authz:prod:events")[0][1] >= 2  # both workers' listeners
    with pytest.raises(redis_py.exceptions.NoPermissionError):
        admin.get("someone-else:key")
    store = open_store(load_config(str(config), {}).state_config())
    try:
        now = time.time()
        with store.begin("t-acl", "agent", now) as txn:
            txn.request_approval("q", ["agent"], ("Agent", "agent"), ("Action", "pay"), ("Tool", "x"), "0" * 64, ["p"])
            txn.commit_denied()
        assert store.task_view("t-acl", now)["denies"] == 1 and store.list_approvals(now)[0].task == "t-acl"
        store.revocations.revoke("task", "t-acl", 0, 10)
        assert store.revocations.current().task_revoked("t-acl", now)
    finally:
        store.close()
