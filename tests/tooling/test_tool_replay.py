"""Replay: the decision log records each request's context (bounded, credentials redacted, task state as
decided), and `authz replay` decides logged requests again against other policies, through the real
compiler, engine, decision log and CLI; one test drives a real `authz serve` with task tokens."""
import json
import pathlib
import sys

import grpc
import pytest
from click.testing import CliRunner

from authz.compiler import compile_sources
from authz.server import requestlog
from authz.server.decider import Decider, Invalid
from authz.server.decisionlog import DecisionLog

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1] / "server"))
from harness import AuthzServer, issue_token  # noqa: E402

from authz._pb import authz_pb2 as pb  # noqa: E402
from authz._pb import authz_pb2_grpc as pbg  # noqa: E402
from authz.cli import main  # noqa: E402

OLD = """\
@id("read")
permit(principal in Team::"eng", action == Action::"read", resource) when { context.env == "prod" };
@id("secret")
forbid(principal, action, resource) when { resource has secret && resource.secret };
@id("admin")
permit(principal == User::"root", action, resource);
"""
ENTITIES = [
    {"uid": {"type": "Team", "id": "eng"}, "attrs": {}, "parents": []},
    {"uid": {"type": "User", "id": "alice"}, "attrs": {}, "parents": [{"type": "Team", "id": "eng"}]},
    {"uid": {"type": "Doc", "id": "s"}, "attrs": {"secret": True}, "parents": []},
]


def uid(t, i):
    return {"type": t, "id": i}


def req(principal, resource, **context):
    return {"principal": uid("User", principal), "action": uid("Action", "read"), "resource": uid("Doc", resource),
            "context": context}


def run(*args):
    result = CliRunner().invoke(main, ["replay", *map(str, args)])
    return result.exit_code, result.stdout, result.stderr


@pytest.fixture
def recorded(tmp_path):
    """A decision log written by the real Decider and DecisionLog for the OLD policies; the NEW folder."""
    old, new = tmp_path / "old", tmp_path / "new"
    for folder, text in ((old, OLD), (new, OLD.replace('"prod"', '"staging"').replace(
            'resource has secret && resource.secret', 'resource has secret && resource.secret && context has env'))):
        folder.mkdir()
        (folder / "p.cedar").write_text(text)
        (folder / "entities.json").write_text(json.dumps(ENTITIES))
    compile_sources([str(old)], str(tmp_path / "db"))
    log_path = tmp_path / "decisions.jsonl"
    log = DecisionLog(str(log_path), flush_interval_s=3600)
    decider = Decider(str(tmp_path / "db"), decision_log=log)
    assert decider.open_engine()
    decider.decide([req("alice", "d", env="prod"),          # allow [read] -> deny (env is staging now)
                    req("alice", "d", env="staging"),       # deny [] -> allow [read]
                    req("root", "s"),                       # deny [secret] -> allow [admin]: secret needs env now
                    req("root", "d"),                       # allow [admin], unchanged
                    Invalid("request_parse_error", "bad")], "v1")
    decider.decide_one(req("bob", "d", env="prod"), "envoy")  # deny [], unchanged
    log.close()
    return tmp_path, log_path, new


def test_the_log_records_each_request_context(recorded):
    _, log_path, _ = recorded
    lines = [json.loads(x) for x in log_path.read_text().splitlines()]
    assert [x.get("context") for x in lines] == [{"env": "prod"}, {"env": "staging"}, {}, {}, None, {"env": "prod"}]
    assert lines[4]["reason"] == "request_parse_error"


def test_replay_reports_every_change_grouped_by_policy(recorded):
    tmp_path, log_path, new = recorded
    code, out, err = run("--log", log_path, "--policies", new)
    assert code == 0, err
    ids = [json.loads(x)["decision_id"] for x in log_path.read_text().splitlines()]
    blocks = out.split("\n\n")
    assert blocks[0].splitlines()[0] == "policy `admin`: 1 decision would change (1 deny->allow)"
    assert f'{ids[2]} User::"root" Action::"read" Doc::"s": deny -> allow ["secret"] -> ["admin"]' in blocks[0]
    assert blocks[1].splitlines()[0] == "policy `read`: 2 decisions would change (1 allow->deny, 1 deny->allow)"
    assert f'{ids[0]} User::"alice" Action::"read" Doc::"d": allow -> deny ["read"] -> []' in blocks[1]
    assert f'{ids[1]} User::"alice" Action::"read" Doc::"d": deny -> allow [] -> ["read"]' in blocks[1]
    assert blocks[2].startswith("policy `secret`: 1 decision would change (1 deny->allow)")
    assert out.endswith("6 log lines: 5 replayed, 1 not replayable (decided_without_policies: 1)\n"
                        "3 decisions would change: 1 allow->deny, 2 deny->allow, 0 with other determining policies\n")
    assert run("--log", log_path, "--policies", new, "--fail-on-change")[0] == 1
    code, out, _ = run("--log", log_path, "--policies", tmp_path / "old", "--fail-on-change")
    assert code == 0 and out.endswith("0 decisions would change: 0 allow->deny, 0 deny->allow, 0 with other "
                                      "determining policies\n")


def test_replay_json_and_policies_changed(recorded):
    tmp_path, log_path, new = recorded
    (new / "p.cedar").write_text(OLD.replace('@id("read")', '@id("read-v2")'))
    code, out, _ = run("--log", log_path, "--policies", new, "--json")
    assert code == 0
    doc = json.loads(out)
    assert (doc["replayed"], doc["changed"], doc["policies_changed"], doc["unchanged"]) == (5, 1, 1, 4)
    (change,) = doc["changes"]
    assert change["change"] == "policies changed" and change["policies"] == ["read", "read-v2"]
    assert change["before"] == {"decision": "allow", "policies": ["read"]}
    assert change["after"] == {"decision": "allow", "policies": ["read-v2"], "errors": []}
    assert doc["by_policy"] == {"read": [change["decision_id"]], "read-v2": [change["decision_id"]]}


def test_lines_that_cannot_be_replayed_are_counted_by_cause(recorded):
    _, log_path, new = recorded
    good = json.loads(log_path.read_text().splitlines()[0])
    extra = [
        {k: v for k, v in good.items() if k != "context"},                       # a log from before contexts
        {**{k: v for k, v in good.items() if k != "context"}, "request_truncated": True},
        {**good, "approval": {"id": "a1", "approver": "Agent::\"r\""}},
        {**good, "principal": "not a uid"},
        {**good, "context": {"x": 1.5}},                                          # the engine refuses it
        {**good, "time": "2020-01-01T00:00:00.000000Z"},                          # before --since
    ]
    with open(log_path, "a") as fh:
        fh.write("not json\n\n")
        fh.write("x" * (2 << 20) + "\n")
        fh.writelines(json.dumps(x) + "\n" for x in extra)
    code, out, _ = run("--log", log_path, "--policies", new, "--since", "2021-01-01", "--json")
    doc = json.loads(out)
    assert doc["not_replayable"] == {"allowed_by_approval": 1, "decided_without_policies": 1, "no_context": 1,
                                     "no_uids": 1, "request_error": 1, "request_truncated": 1, "unreadable": 2}
    assert (doc["lines"], doc["before_since"], doc["replayed"]) == (14, 1, 5)
    code, out, _ = run("--log", log_path, "--policies", new, "--since", "1h", "--json")
    assert json.loads(out)["before_since"] == 1


@pytest.mark.parametrize("args, message", [
    (["--log", "missing.jsonl", "--policies", "{new}"], "cannot read decision log `missing.jsonl`"),
    (["--log", "{log}", "--policies", "{tmp}/nope"], "the policies do not compile:\n{tmp}/nope: no such file"),
    (["--log", "{log}", "--policies", "{new}", "--since", "yesterday"], "--since `yesterday`: expected an ISO 8601"),
])
def test_bad_input(recorded, args, message, monkeypatch):
    tmp_path, log_path, new = recorded
    monkeypatch.chdir(tmp_path)
    fill = {"new": new, "log": log_path, "tmp": tmp_path}
    code, _, err = run(*[a.format(**fill) for a in args])
    assert code == 2 and message.format(**fill) in err


def test_request_context_is_bounded_and_redacted():
    headers = {"authorization": "Bearer secret-token", "cookie": "s=1", "x-request-id": "r1"}
    part = requestlog.context_part({"http": {"method": "GET", "headers": headers}})
    assert json.loads("{" + part[1:] + "}")["context"]["http"]["headers"] == {
        "authorization": "[redacted]", "cookie": "[redacted]", "x-request-id": "r1"}
    assert "secret-token" not in part and headers["authorization"] == "Bearer secret-token"  # not changed
    assert requestlog.context_part({}) == requestlog.context_part(None) == ',"context":{}'
    big = {"blob": "x" * requestlog.MAX_CONTEXT_CHARS}
    assert requestlog.context_part(big) == ',"request_truncated":true'
    assert requestlog.context_part({"s": {1, 2}}) == ',"request_truncated":true'
    shared = {"env": "prod"}
    assert requestlog.context_part(shared) is requestlog.context_part(shared)


TASK_POLICIES = """\
@id("issue")
permit(principal, action == Action::"authz::IssueToken", resource is Task);
@id("tools")
permit(principal, action == Action::"call", resource is Tool);
@id("deploy-needs-tests")
forbid(principal, action == Action::"call", resource == Tool::"deploy")
unless { context has task && context.task.tools.contains(Tool::"ci.run_tests") };
"""


def test_decisions_made_with_task_state_replay_as_recorded(tmp_path):
    """Through a real `authz serve`: a deploy denied before the task ran its tests and allowed after is
    unchanged when replayed against the same policies (the log holds context.task as it was decided), and
    only the first deploy changes without the rule."""
    pol = tmp_path / "policies"
    pol.mkdir()
    (pol / "p.cedar").write_text(TASK_POLICIES)
    log_path = tmp_path / "decisions.jsonl"
    server = AuthzServer(tmp_path, ["--listen", "127.0.0.1:0", "--policies", str(pol), "--data-dir",
                                    str(tmp_path / "data"), "--workers", "1", "--decision-log", str(log_path)]).start()
    try:
        token = issue_token(server.address, "agent-1", "t-deploy", ['Action::"call"'], ['Tool::"*"'], 300).access_token
        with grpc.insecure_channel(server.address) as ch:
            stub = pbg.AuthorizerStub(ch)

            def call(tool):
                return stub.Check(pb.CheckRequest(action=pb.EntityUid(type="Action", id="call"),
                                                  resource=pb.EntityUid(type="Tool", id=tool)),
                                  metadata=[("authorization", f"Bearer {token}")], timeout=10).decision

            assert [call("deploy"), call("ci.run_tests"), call("deploy")] == [
                pb.DECISION_DENY, pb.DECISION_ALLOW, pb.DECISION_ALLOW]
    finally:
        assert server.stop() == 0
    lines = [json.loads(x) for x in log_path.read_text().splitlines()]
    deploys = [x for x in lines if x["resource"] == 'Tool::"deploy"']
    assert [d["context"]["task"]["tools"] for d in deploys] == [
        [], [{"__entity": {"type": "Tool", "id": "ci.run_tests"}}]]
    assert "access_token" not in log_path.read_text() and token not in log_path.read_text()
    code, out, _ = run("--log", log_path, "--policies", pol, "--json", "--fail-on-change")
    doc = json.loads(out)
    assert (code, doc["replayed"], doc["changed"]) == (0, 4, 0), out
    (pol / "p.cedar").write_text(TASK_POLICIES.split('@id("deploy-needs-tests")')[0])
    code, out, _ = run("--log", log_path, "--policies", pol, "--json", "--fail-on-change")
    doc = json.loads(out)
    assert (code, doc["changed"], doc["deny_to_allow"]) == (1, 1, 1)
    assert doc["changes"][0]["decision_id"] == deploys[0]["decision_id"]
    assert doc["by_policy"] == {"deploy-needs-tests": [deploys[0]["decision_id"]], "tools": [deploys[0]["decision_id"]]}


def test_request_entities_are_logged_and_replayed(tmp_path):
    """A request that brings its own entities (authz.Engine's request entities) is logged with them, by the
    fast writer and the Python one alike, and replayed with them."""
    from authz.server._jsonl import format_decisions

    pol = tmp_path / "policies"
    pol.mkdir()
    (pol / "p.cedar").write_text(OLD)
    (pol / "entities.json").write_text(json.dumps(ENTITIES))
    compile_sources([str(pol)], str(tmp_path / "db"))
    log_path = tmp_path / "decisions.jsonl"
    log = DecisionLog(str(log_path), flush_interval_s=3600)
    decider = Decider(str(tmp_path / "db"), decision_log=log)
    assert decider.open_engine()
    bob_in_eng = [{"uid": uid("User", "bob"), "attrs": {}, "parents": [uid("Team", "eng")]}]
    public = [{"uid": uid("Doc", "s"), "attrs": {"secret": False}, "parents": []}]
    resolved = decider.request_entities(bob_in_eng)
    outcomes = decider.decide([{**req("bob", "d", env="prod"), "entities": resolved},       # allow [read]
                               {**req("alice", "s", env="prod"), "entities": public}], "v1")  # allow [read]
    assert [o.decision for o in outcomes] == ["allow", "allow"]
    batch = log._queue[-1][4]
    fast = format_decisions(batch.prefix, batch.first, batch.requests, batch.results, 1.0, "v1", 1000, 1,
                            lambda i: log._format_event(*log._batch_fields(1.0, "v1", 1000, 1), batch.event(i),
                                                        batch.requests[i]))
    slow = "".join(log._format_event(*log._batch_fields(1.0, "v1", 1000, 1), batch.event(i), batch.requests[i])
                   for i in range(2)).encode()
    assert fast == slow
    log.close()
    lines = [json.loads(x) for x in log_path.read_text().splitlines()]
    assert [x["entities"] for x in lines] == [bob_in_eng, public]
    code, out, _ = run("--log", log_path, "--policies", pol, "--json")
    doc = json.loads(out)
    assert (code, doc["replayed"], doc["changed"]) == (0, 2, 0)
    (pol / "p.cedar").write_text(OLD.replace("resource.secret", "resource.secret == false"))
    code, out, _ = run("--log", log_path, "--policies", pol, "--json")
    doc = json.loads(out)
    assert [(c["change"], c["resource"]) for c in doc["changes"]] == [("allow->deny", 'Doc::"s"')]
    assert requestlog.entities_part([{"uid": uid("T", "x" * requestlog.MAX_ENTITIES_CHARS), "attrs": {},
                                      "parents": []}]) == ',"request_truncated":true'
    assert requestlog.entities_part([]) == ""
