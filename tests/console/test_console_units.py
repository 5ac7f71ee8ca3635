"""The console's pieces without a browser: operator keys (hashed, shown once, removal ends sessions), the
session cookie and CSRF tokens, the sign-in limit, the decision-log index (incremental, rotation,
truncation, keyset pages, the task summary) and the Cedar requests of the console's actions."""
from __future__ import annotations

import json
import os
import stat

import pytest

from authz.console.decisions_index import DecisionIndex
from authz.console.operators import OperatorError, OperatorKeys
from authz.console.session import SignInLimit, Sessions, load_secret


def test_operator_keys_are_stored_hashed_and_verified(tmp_path):
    keys = OperatorKeys(str(tmp_path))
    key = keys.add("alice")
    assert key.startswith("azop_") and len(key) > 40
    raw = (tmp_path / "operators.json").read_text()
    assert key not in raw and key[5:] not in raw
    assert stat.S_IMODE(os.stat(tmp_path / "operators.json").st_mode) == 0o600
    record = json.loads(raw)["operators"]["alice"]
    assert set(record) == {"salt", "hash", "created", "id"}
    assert keys.verify("alice", key) == record["id"]
    assert keys.verify("alice", key + "x") is None
    assert keys.verify("bob", key) is None
    assert keys.verify("alice", "x" * 10_000) is None
    with pytest.raises(OperatorError, match="exists"):
        keys.add("alice")
    for bad in ("", "a b", "-x", "x" * 65, "é"):
        with pytest.raises(OperatorError, match="operator name"):
            keys.add(bad)
    other = keys.add("bob")
    assert [n for n, _ in keys.names()] == ["alice", "bob"] and other != key
    keys.remove("alice")
    assert keys.verify("alice", key) is None and keys.record_id("alice") is None
    with pytest.raises(OperatorError, match="no operator"):
        keys.remove("alice")


def test_a_new_key_for_the_same_name_ends_the_old_sessions(tmp_path):
    keys = OperatorKeys(str(tmp_path))
    keys.add("alice")
    first = keys.record_id("alice")
    keys.remove("alice")
    keys.add("alice")
    assert keys.record_id("alice") != first


def test_sessions_are_signed_expire_and_bind_csrf(tmp_path):
    secret = load_secret(str(tmp_path))
    assert load_secret(str(tmp_path)) == secret and len(secret) == 32
    now = [1000.0]
    sessions = Sessions(secret, ttl_s=60, clock=lambda: now[0])
    cookie, s = sessions.issue("alice", "k1")
    got = sessions.read(cookie)
    assert (got.name, got.key_id, got.sid) == ("alice", "k1", s.sid)
    body, mac = cookie.split(".")
    assert sessions.read(body + "." + mac[:-1] + ("A" if mac[-1] != "A" else "B")) is None
    assert sessions.read(body[:-2] + "." + mac) is None
    assert Sessions(os.urandom(32), clock=lambda: now[0]).read(cookie) is None  # another deployment's secret
    for junk in (None, "", "a.b.c", "x" * 2000, "abc.def"):
        assert sessions.read(junk) is None
    token = sessions.csrf(s.sid)
    assert sessions.csrf_ok(s.sid, token)
    assert not sessions.csrf_ok("other", token) and not sessions.csrf_ok(s.sid, None)
    now[0] += 61
    assert sessions.read(cookie) is None


def test_sign_in_limit_per_address_and_name():
    t = [0.0]
    limit = SignInLimit(attempts=3, window_s=60, clock=lambda: t[0])
    for _ in range(3):
        assert limit.allowed(("addr", "1.2.3.4"), ("name", "alice"))
        limit.failed(("addr", "1.2.3.4"), ("name", "alice"))
    assert not limit.allowed(("addr", "1.2.3.4"), ("name", "bob"))
    assert not limit.allowed(("addr", "5.6.7.8"), ("name", "alice"))
    assert limit.allowed(("addr", "5.6.7.8"), ("name", "bob"))
    t[0] += 61
    assert limit.allowed(("addr", "1.2.3.4"), ("name", "alice"))


def _line(n, task="t1", decision="allow", approval=None, principal="ops-1"):
    d = {"decision_id": f"d{n}", "time": f"2026-01-01T00:00:{n % 60:02d}.000000Z", "api": "envoy",
         "principal": f'Agent::"{principal}"', "action": 'Action::"tools/call"', "resource": f'Tool::"t{n % 3}"',
         "decision": decision, "policies": [], "errors": [], "latency_us": 1.0, "generation": 1,
         "token": {"jti": f"j{n}", "task": task, "chain": [principal]}}
    if decision == "deny":
        d["reason"] = "forbidden_by_policy"
    if approval:
        d["approval"] = {"id": approval, "queue": "payments"}
    if n == 5:  # the shadow policies would have decided otherwise
        d["shadow"] = {"decision": "deny", "policies": ["candidate"]}
    return json.dumps(d) + "\n"


def test_the_index_follows_the_log_incrementally(tmp_path):
    log = tmp_path / "decisions.jsonl"
    ix = DecisionIndex(str(tmp_path / "ix.sqlite"), str(log))
    assert ix.catch_up() == 0  # no log yet
    with open(log, "w") as f:
        f.writelines(_line(n) for n in range(10))
        f.write('{"decision_id": "cut')  # a line being written: left for later
    assert ix.catch_up() == 10
    assert ix.behind_bytes() == len('{"decision_id": "cut')
    with open(log, "a") as f:
        f.write('", "x": 1}\n' + "not json\n" + _line(10, "t2", "deny", "a" * 32))
    assert ix.catch_up() == 3
    assert ix.catch_up() == 0
    rows = ix.search({})
    assert [r["decision_id"] for r in rows][:2] == ["d10", "cut"] and len(rows) == 12
    assert [r["decision_id"] for r in ix.search({"task": "t2"})] == ["d10"]
    assert ix.search({"decision": "deny", "reason": "forbidden_by_policy"})[0]["approval"] == "a" * 32
    assert ix.asked_by("a" * 32)["decision_id"] == "d10"
    assert [r["decision_id"] for r in ix.search({"resource": 'Tool::"t1"'})] == ["d10", "d7", "d4", "d1"]
    # Keyset pages: newest first, then older ones.
    page = ix.search({"task": "t1"}, limit=4)
    older = ix.search({"task": "t1"}, before=page[-1]["id"], limit=4)
    assert [r["decision_id"] for r in page + older] == [f"d{n}" for n in range(9, 1, -1)]
    # A time range (inclusive).
    assert {r["decision_id"] for r in ix.search({}, "2026-01-01T00:00:03", "2026-01-01T00:00:04\uffff")} == \
        {"d3", "d4"}
    assert [(r["decision_id"], r["shadow"]) for r in ix.search({"shadow": "deny"})] == [("d5", "deny")]
    tasks = {t["task"]: t for t in ix.tasks()}
    assert (tasks["t1"]["calls"], tasks["t1"]["denies"], tasks["t2"]["denies"]) == (10, 0, 1)
    assert ix.tasks()[0]["task"] == "t2"  # the most recently active first


def test_the_index_finishes_a_rotated_log_then_reads_the_new_one(tmp_path):
    log = tmp_path / "decisions.jsonl"
    ix = DecisionIndex(str(tmp_path / "ix.sqlite"), str(log))
    log.write_text("".join(_line(n) for n in range(3)))
    assert ix.catch_up() == 3
    with open(log, "a") as f:
        f.write(_line(3))  # written before the rotation, not indexed yet
    os.rename(log, str(log) + ".1")
    log.write_text(_line(4) + _line(5))
    assert ix.catch_up() == 3
    assert [r["decision_id"] for r in ix.search({})] == ["d5", "d4", "d3", "d2", "d1", "d0"]
    # Truncated in place: read again from its start.
    log.write_text(_line(6))
    assert ix.catch_up() == 1
    assert ix.search({})[0]["decision_id"] == "d6"


def test_the_index_keeps_at_most_max_rows(tmp_path):
    log = tmp_path / "decisions.jsonl"
    log.write_text("".join(_line(n) for n in range(50)))
    ix = DecisionIndex(str(tmp_path / "ix.sqlite"), str(log), max_rows=20)
    ix.catch_up()
    rows = ix.search({}, limit=500)
    assert len(rows) == 20 and rows[-1]["decision_id"] == "d30"


def test_two_indexes_of_one_file_never_read_a_line_twice(tmp_path):
    """Two workers catching up on the same index file: each line is indexed once."""
    log = tmp_path / "decisions.jsonl"
    log.write_text("".join(_line(n) for n in range(30)))
    a = DecisionIndex(str(tmp_path / "ix.sqlite"), str(log))
    b = DecisionIndex(str(tmp_path / "ix.sqlite"), str(log))
    assert a.catch_up(max_lines=10, chunk_bytes=sum(len(_line(n)) for n in range(10)) + 5) == 10
    assert b.catch_up() == 20
    assert a.catch_up() == 0
    assert len(a.search({}, limit=500)) == 30


def test_the_operators_command(tmp_path):
    from click.testing import CliRunner

    from authz.cli import main

    runner = CliRunner()
    added = runner.invoke(main, ["operators", "add", "carol", "--data-dir", str(tmp_path)])
    assert added.exit_code == 0
    key = added.stdout.strip()
    assert OperatorKeys(str(tmp_path)).verify("carol", key) is not None
    listed = runner.invoke(main, ["operators", "list", "--data-dir", str(tmp_path)])
    assert listed.exit_code == 0 and listed.stdout.startswith("carol\t") and key not in listed.stdout
    again = runner.invoke(main, ["operators", "add", "carol", "--data-dir", str(tmp_path)])
    assert again.exit_code == 2 and "exists" in again.stderr
    assert runner.invoke(main, ["operators", "add", "no spaces", "--data-dir", str(tmp_path)]).exit_code == 2
    assert runner.invoke(main, ["operators", "remove", "carol", "--data-dir", str(tmp_path)]).exit_code == 0
    gone = runner.invoke(main, ["operators", "remove", "carol", "--data-dir", str(tmp_path)])
    assert gone.exit_code == 2 and "no operator" in gone.stderr
    assert runner.invoke(main, ["operators", "list", "--data-dir", str(tmp_path)]).stdout == ""
