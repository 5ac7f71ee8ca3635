"""`authz health [--server HOST:PORT] [--service NAME]` against a real server: 0 SERVING, 1 otherwise, 2 unreachable."""
import subprocess
import sys

from harness import AuthzServer, env_with_repo, free_port, wait_until


def health(*args):
    r = subprocess.run([sys.executable, "-m", "authz", "health", *args], capture_output=True, text=True, timeout=60,
                       env=env_with_repo())
    return r.returncode, r.stdout.strip(), r.stderr.strip()


def test_health_serving_not_serving_unknown_and_unreachable(tmp_path, policies_dir):
    server = AuthzServer(tmp_path, ["--listen", "127.0.0.1:0", "--policies", str(policies_dir),
                                    "--data-dir", str(tmp_path / "data")]).start()
    try:
        assert health("--server", server.address) == (0, "SERVING", "")
        assert health("--server", server.address, "--service", "authz.policies") == (0, "SERVING", "")
        code, out, _ = health("--server", server.address, "--service", "no.such.service")
        assert (code, out) == (1, "SERVICE_UNKNOWN: the server has no health service `no.such.service`")

        # A policies folder that no longer compiles: the served generation is stale.
        (policies_dir / "broken.cedar").write_text("permit(principal, action, resource) when { 1 + };\n")
        wait_until(lambda: health("--server", server.address, "--service", "authz.policies")[0] == 1, 30,
                   "authz.policies NOT_SERVING", 0.2)
        assert health("--server", server.address, "--service", "authz.policies")[:2] == (1, "NOT_SERVING")
        assert health("--server", server.address)[:2] == (0, "SERVING")  # decisions go on with the last good one
    finally:
        server.stop()

    code, out, err = health("--server", f"127.0.0.1:{free_port()}", "--timeout", "5")
    assert code == 2 and out == "" and err.startswith("authz health: cannot reach `127.0.0.1:")
