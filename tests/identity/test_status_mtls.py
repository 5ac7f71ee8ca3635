"""`authz status` over mTLS (--ca/--cert/--key/--server-name) against a server that requires client certificates:
answered with no caller identity beyond the TLS handshake (as the health service), refused without a certificate."""
import json
import subprocess
import sys

import material as m
from test_identity_e2e import JWT_TOML, Pki, write_setup

from harness import AuthzServer, env_with_repo  # noqa: E402 - (test_identity_e2e puts tests/server on the path)


def _status(address, *flags):
    return subprocess.run([sys.executable, "-m", "authz", "status", "--server", address, "--json", "--timeout", "5",
                           *flags], capture_output=True, text=True, timeout=120, env=env_with_repo())


def test_status_over_mtls(tmp_path):
    pki = Pki(tmp_path / "pki")
    cert, key = pki.leaf("authz", uris=["spiffe://example.org/authz"], dns=["localhost"])
    signing = {"RS256": m.SigningKey("RS256", "status-rs256")}
    args = write_setup(tmp_path, signing, JWT_TOML)
    args += ["--tls-cert", str(cert), "--tls-key", str(key), "--client-ca", str(pki.ca_file),
             "--trust-domain", m.TRUST_DOMAIN]
    server = AuthzServer(tmp_path, args, tls=pki.client("probe", uris=["spiffe://example.org/probe"])).start()
    try:
        ccert, ckey = pki.leaf("operator", uris=["spiffe://example.org/operator"])
        out = _status(server.address, "--ca", str(pki.ca_file), "--cert", str(ccert), "--key", str(ckey),
                      "--server-name", "localhost")
        assert out.returncode == 0, out.stderr
        answer = json.loads(out.stdout)
        (worker,) = answer["workers"]
        assert worker["generation"] == 1 and len(worker["policy_digest"]) == 64 and worker["serving"]
        assert worker["worker_pid"] in server.pids
        # TLS without a client certificate: the server refuses the handshake.
        out = _status(server.address, "--ca", str(pki.ca_file), "--server-name", "localhost")
        assert out.returncode == 2 and "cannot reach" in out.stderr
        # Half the client pair is a usage error.
        out = _status(server.address, "--ca", str(pki.ca_file), "--cert", str(ccert))
        assert out.returncode == 2 and "--cert and --key" in out.stderr
    finally:
        server.stop()
