"""The README's tour and Python example, run as written, twice: every commented value must be what they give.

Shell blocks run in bash in one scratch folder; a comment line holding a JSON object is a line the block
must print, in order. A block whose command is `authz serve ...` starts that server (on a free port of
127.0.0.1, in the scratch folder) in place of the one before it. Python blocks run statement by statement
against the running server (its address in place of 127.0.0.1:9191); an expression statement followed by a
comment that starts like a Python literal must evaluate to that literal. Each block runs twice in a row, as
a reader may run it again: what the first run leaves behind (a revoked task, a compiled index) must not
change what the second run shows.
"""
import ast
import io
import pathlib
import re
import shlex
import subprocess
import sys
import tokenize

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent / "server"))
from harness import AuthzServer, env_with_repo  # noqa: E402

ROOT = pathlib.Path(__file__).resolve().parents[1]
SECTIONS = ("A five-minute tour", "From Python")
README_ADDRESS = "127.0.0.1:9191"
RUNS = 2
BLOCK_TIMEOUT_S = 60
# A comment that starts like a Python literal states a value; any other comment is prose.
VALUE_COMMENT = re.compile(r"[(\[{'\"\d-]|(True|False|None)\b")


def readme_blocks():
    """(language, text) of each fenced block in the README's SECTIONS, in order."""
    text = (ROOT / "README.md").read_text()
    parts = re.split(r"^## (.+)$", text, flags=re.M)
    blocks = []
    for title, body in zip(parts[1::2], parts[2::2]):
        if title.strip() in SECTIONS:
            blocks += re.findall(r"^```(\w*)\n(.*?)^```$", body, flags=re.M | re.S)
    return blocks


def serve_args(block):
    """The arguments of a block that is one `authz serve` command, else None."""
    commands = [line for line in block.splitlines() if line.strip() and not line.lstrip().startswith("#")]
    if len(commands) == 1 and commands[0].startswith("authz serve"):
        return shlex.split(commands[0], comments=True)[2:]
    return None


def run_shell(block, cwd):
    """Runs a shell block; returns (stdout lines, the lines its JSON comments say it prints)."""
    script = f'set -euo pipefail\nauthz() {{ "{sys.executable}" -m authz "$@"; }}\n{block}'
    done = subprocess.run(["bash", "-c", script], cwd=cwd, env=env_with_repo(), capture_output=True, text=True,
                          timeout=BLOCK_TIMEOUT_S)
    assert done.returncode == 0, f"block failed ({done.returncode}):\n{block}\nstderr:\n{done.stderr}"
    expected = [m.group(1) for m in re.finditer(r"^# (\{.*\})$", block, flags=re.M)]
    return done.stdout.splitlines(), expected


def comments_by_line(source):
    comments = {}
    for tok in tokenize.generate_tokens(io.StringIO(source).readline):
        if tok.type == tokenize.COMMENT:
            comments[tok.start[0]] = tok.string[1:].strip()
    return comments


def plain(value):
    """A value as Python literals compare: protobuf repeated fields become lists."""
    if isinstance(value, tuple):
        return tuple(plain(v) for v in value)
    if isinstance(value, (str, bytes, int, float, bool, type(None), dict)):
        return value
    return [plain(v) for v in value]


def run_python(block, address):
    """Runs a Python block statement by statement; returns how many commented values it checked."""
    source = block.replace(README_ADDRESS, address)
    comments = comments_by_line(source)
    namespace = {"__name__": "readme"}
    checked = 0
    for node in ast.parse(source).body:
        comment = comments.get(node.end_lineno)
        if isinstance(node, ast.Expr) and comment is not None and VALUE_COMMENT.match(comment):
            try:
                expected = ast.literal_eval(comment)
            except (ValueError, SyntaxError):
                raise AssertionError(f"the comment after `{ast.unparse(node)}` is not a Python literal: {comment}")
            got = eval(compile(ast.Expression(node.value), "README.md", "eval"), namespace)
            assert plain(got) == expected, f"`{ast.unparse(node)}` gave {plain(got)!r}, README says {comment}"
            checked += 1
        else:
            exec(compile(ast.Module([node], []), "README.md", "exec"), namespace)
    return checked


def test_readme_tour_twice(tmp_path, monkeypatch):
    blocks = readme_blocks()
    monkeypatch.chdir(tmp_path)
    server, servers_started, lines_checked, values_checked = None, 0, 0, 0
    try:
        for language, block in blocks:
            args = serve_args(block) if language == "sh" else None
            if args is not None:
                if server is not None:
                    assert server.stop() == 0, server.stderr()
                server = AuthzServer(tmp_path, [*args, "--listen", "127.0.0.1:0"], name=f"serve{servers_started}")
                server.start()
                servers_started += 1
                continue
            for run in range(RUNS):
                if language == "sh":
                    printed, expected = run_shell(block, tmp_path)
                    assert printed == expected, f"run {run + 1} of:\n{block}"
                    lines_checked += len(expected)
                elif language == "python":
                    values_checked += run_python(block, server.address if server else README_ADDRESS)
    finally:
        if server is not None:
            server.stop()
    # The tour as the README has it: two servers, decisions printed by the CLI, values from Python.
    assert servers_started == 2
    assert lines_checked >= 3 * RUNS
    assert values_checked >= 10 * RUNS
