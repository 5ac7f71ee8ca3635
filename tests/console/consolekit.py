"""Helpers of the console tests (conftest.py holds the fixtures): the operators and the policy added to the
bundled examples (alice a reviewer, bob not; reviewers may suspend and revoke tasks), `authz serve` with
its HTTP address, operator keys made by the CLI, and where Debian's chromium is."""
from __future__ import annotations

import pathlib
import subprocess
import sys

HERE = pathlib.Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "server"))
from harness import AuthzServer, env_with_repo  # noqa: E402

BUNDLED = HERE.parents[1] / "authz" / "examples" / "policies"
CHROMIUM = "/usr/bin/chromium"
OPERATORS = [{"uid": {"type": "Operator", "id": "alice"}, "attrs": {},
              "parents": [{"type": "Team", "id": "reviewers"}]},
             {"uid": {"type": "Operator", "id": "bob"}, "attrs": {}, "parents": []},
             # A reviewer who is also an agent's name: never approves that agent's calls (self_approval).
             {"uid": {"type": "Operator", "id": "ops-5"}, "attrs": {},
              "parents": [{"type": "Team", "id": "reviewers"}]}]

# The reviewers may also suspend and revoke tasks and lift those revocations (docs/console.md).
CONSOLE_POLICY = """
@id("reviewers-act-on-tasks")
permit(principal in Team::"reviewers",
       action in [Action::"authz::SuspendTask", Action::"authz::Revoke", Action::"authz::LiftRevocation"],
       resource is Task);
"""


class ConsoleServer(AuthzServer):
    """AuthzServer with the console's address."""

    @property
    def console(self) -> str:
        return f"http://{self.http_address}/console"


def add_operator(data_dir: pathlib.Path, name: str) -> str:
    """`authz operators add NAME`: the key it prints once."""
    out = subprocess.run([sys.executable, "-m", "authz", "operators", "add", name, "--data-dir", str(data_dir)],
                         capture_output=True, text=True, timeout=60, env=env_with_repo(), check=True)
    return out.stdout.strip()
