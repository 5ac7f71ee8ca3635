"""The `authz compile` / `authz check` command line: JSONL in, JSONL out, in order, bad lines answered in place."""

import json
import subprocess
import sys

POLICIES = '''@id("read-docs")
permit(principal in Group::"eng", action == Action::"read", resource) when { context.env == "prod" };
forbid(principal, action, resource) when { resource has secret && resource.secret };
'''
ENTITIES = [
    {"uid": {"type": "User", "id": "alice"}, "attrs": {}, "parents": [{"type": "Group", "id": "eng"}]},
    {"uid": {"type": "Doc", "id": "s"}, "attrs": {"secret": True}, "parents": []},
]


def cli(*args, stdin=None):
    return subprocess.run([sys.executable, "-m", "authz", *args], input=stdin, capture_output=True, text=True, timeout=60)


def test_compile_then_check_jsonl(tmp_path):
    (tmp_path / "p.cedar").write_text(POLICIES)
    (tmp_path / "entities.json").write_text(json.dumps(ENTITIES))
    db = str(tmp_path / "db")
    assert cli("compile", str(tmp_path), "--db", db).returncode == 0
    lines = [
        {"principal": 'User::"alice"', "action": 'Action::"read"', "resource": 'Doc::"d"', "context": {"env": "prod"}},
        "not json",
        {"principal": 'User::"alice"', "action": 'Action::"read"', "resource": 'Doc::"s"', "context": {"env": "prod"}},
        {"principal": "User::alice", "action": 'Action::"read"', "resource": 'Doc::"d"'},
        {"principal": {"type": "User", "id": "bob"}, "action": 'Action::"read"', "resource": 'Doc::"d"', "context": {"env": "prod"}},
        {"principal": 'User::"alice"', "action": 'Action::"read"'},
        {"principal": 'User::"alice"', "action": 'Action::"read"', "resource": 'Doc::"d"', "context": {"x": 1.5}},
    ]
    stdin = "\n".join(line if isinstance(line, str) else json.dumps(line) for line in lines) + "\n"
    result = cli("check", "--db", db, stdin=stdin)
    assert result.returncode == 1, result.stderr  # some lines were errors
    out = [json.loads(line) for line in result.stdout.splitlines()]
    assert len(out) == len(lines)
    assert out[0] == {"decision": "allow", "policies": ["read-docs"], "errors": []}
    assert "error" in out[1]
    assert out[2] == {"decision": "deny", "policies": ["p.cedar:1"], "errors": []}
    assert "error" in out[3] and "principal" in out[3]["error"]
    assert out[4] == {"decision": "deny", "policies": [], "errors": []}
    assert "missing request field `resource`" in out[5]["error"]
    assert "error" in out[6]


def test_check_single_request_flag(tmp_path):
    (tmp_path / "p.cedar").write_text(POLICIES)
    db = str(tmp_path / "db")
    cli("compile", str(tmp_path / "p.cedar"), "--db", db)
    request = json.dumps({"principal": 'User::"a"', "action": 'Action::"read"', "resource": 'Doc::"d"'})
    result = cli("check", "--db", db, "--request", request)
    assert json.loads(result.stdout) == {"decision": "deny", "policies": [], "errors": []}


def _checked(tmp_path, lines):
    """(exit status, output lines) of `authz check` given `lines` on stdin, one each."""
    (tmp_path / "p.cedar").write_text(POLICIES)
    db = str(tmp_path / "db")
    assert cli("compile", str(tmp_path / "p.cedar"), "--db", db).returncode == 0
    result = cli("check", "--db", db, stdin="".join(line + "\n" for line in lines))
    assert "Traceback" not in result.stderr, result.stderr
    return result.returncode, [json.loads(line) for line in result.stdout.splitlines()]


A_REQUEST = json.dumps({"principal": 'User::"alice"', "action": 'Action::"read"', "resource": 'Doc::"d"',
                        "context": {"env": "prod"}})


def test_check_answers_every_line_a_blank_one_included(tmp_path):
    code, out = _checked(tmp_path, [A_REQUEST, "", "   ", A_REQUEST, ""])
    assert len(out) == 5 and code == 1
    # Decided (denied: with no entities alice is in no group).
    assert out[0] == out[3] == {"decision": "deny", "policies": [], "errors": []}
    assert out[1] == out[2] == out[4] == {"error": "empty request line"}


def test_check_exit_status_says_whether_a_line_was_an_error(tmp_path):
    assert _checked(tmp_path, [A_REQUEST, A_REQUEST])[0] == 0
    code, out = _checked(tmp_path, ["not json", "{}"])
    assert code == 1 and [set(x) for x in out] == [{"error"}, {"error"}]
    db = str(tmp_path / "db")
    assert cli("check", "--db", db, "--request", A_REQUEST).returncode == 0
    assert cli("check", "--db", db, "--request", "[]").returncode == 1
