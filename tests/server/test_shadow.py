"""Shadow policies: @mode("shadow") policies and a shadow_policies folder evaluated beside the enforced set by a
real `authz serve` over gRPC (never changing a decision; differences on the decision log line and in metrics),
hot reloads of the shadow set, a broken shadow folder, the enforced index against cedarpy, a bad @mode."""
import asyncio
import json
import subprocess
import sys
import urllib.request

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

import authz
from authz._pb import authz_pb2 as pb
from authz._pb import authz_pb2_grpc as pbg
from harness import AuthzServer, env_with_repo, free_port, wait_until

SERVING, NOT_SERVING = health_pb2.HealthCheckResponse.SERVING, health_pb2.HealthCheckResponse.NOT_SERVING

ENFORCED = '''
@id("all")
permit(principal, action, resource) when { resource != Tool::"new" && resource != Tool::"x" };

@id("no-x")
forbid(principal, action, resource == Tool::"x");
'''

SHADOWED = ENFORCED + '''
@id("shadow-no-rm")
@mode("shadow")
forbid(principal, action, resource == Tool::"rm");

@id("shadow-new")
@mode("shadow")
permit(principal, action, resource == Tool::"new");

@id("shadow-no-x")
@mode("shadow")
forbid(principal == Agent::"a", action, resource == Tool::"x");
'''


def _uid(t, i):
    return pb.EntityUid(type=t, id=i)


def _check(server, tool, agent="a"):
    with grpc.insecure_channel(server.address, options=[("grpc.use_local_subchannel_pool", 1)]) as ch:
        r = pbg.AuthorizerStub(ch).Check(pb.CheckRequest(principal=_uid("Agent", agent), action=_uid("Action", "call"),
                                                         resource=_uid("Tool", tool)), timeout=10)
    return r.decision == pb.DECISION_ALLOW, sorted(r.policies)


def _batch(server, tools):
    with grpc.insecure_channel(server.address, options=[("grpc.use_local_subchannel_pool", 1)]) as ch:
        r = pbg.AuthorizerStub(ch).BatchCheck(pb.BatchCheckRequest(items=[
            pb.BatchCheckItem(principal=_uid("Agent", "a"), action=_uid("Action", "call"), resource=_uid("Tool", t))
            for t in tools]), timeout=10)
    return [x.decision == pb.DECISION_ALLOW for x in r.results]


def _health(server, service):
    with grpc.insecure_channel(server.address, options=[("grpc.use_local_subchannel_pool", 1)]) as ch:
        try:
            return health_pb2_grpc.HealthStub(ch).Check(health_pb2.HealthCheckRequest(service=service),
                                                         timeout=10).status
        except grpc.RpcError as e:
            return e.code()


def _metrics(port) -> dict:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as r:
        text = r.read().decode()
    out = {}
    for line in text.splitlines():
        if line.startswith("authz_shadow_"):
            name, value = line.rsplit(" ", 1)
            out[name] = float(value)
    return out


def _lines(path):
    try:
        text = path.read_text()
    except FileNotFoundError:
        return []
    return [json.loads(line) for line in text.splitlines()]


def _logged(path, count):
    """The decision log's lines once it holds at least `count`."""
    return wait_until(lambda: (lambda ls: ls if len(ls) >= count else None)(_lines(path)), 20, f"{count} log lines")


def _checked(server, log, tool, agent="a"):
    """_check, and the decision log line it wrote."""
    n = len(_lines(log))
    result = _check(server, tool, agent)
    return result, _logged(log, n + 1)[n]


def _serve(tmp_path, policies, *extra, metrics_port=None):
    args = ["--listen", "127.0.0.1:0", "--policies", str(policies), "--data-dir", str(tmp_path / "data"),
            "--decision-log", str(tmp_path / "decisions.jsonl"), "--reload-interval", "0.05", *extra]
    if metrics_port:
        args += ["--metrics-listen", f"127.0.0.1:{metrics_port}"]
    return AuthzServer(tmp_path, args).start()


def test_shadow_policies_are_logged_and_counted_and_never_decide(tmp_path):
    policies = tmp_path / "policies"
    policies.mkdir()
    (policies / "p.cedar").write_text(SHADOWED)
    port = free_port()
    server = _serve(tmp_path, policies, metrics_port=port)
    log = tmp_path / "decisions.jsonl"
    try:
        # The enforced decisions are those of the set without the @mode("shadow") policies.
        assert _check(server, "rm") == (True, ["all"])
        assert _check(server, "new") == (False, [])
        assert _check(server, "x") == (False, ["no-x"])
        assert _check(server, "ok") == (True, ["all"])
        assert _batch(server, ["rm", "ok", "new"]) == [True, True, False]
        lines = _logged(log, 7)
        shadow = [(ln["resource"], ln["decision"], ln.get("shadow")) for ln in lines]
        assert shadow == [
            ('Tool::"rm"', "allow", {"decision": "deny", "policies": ["shadow-no-rm"]}),
            ('Tool::"new"', "deny", {"decision": "allow", "policies": ["shadow-new"]}),
            ('Tool::"x"', "deny", {"decision": "deny", "policies": ["no-x", "shadow-no-x"]}),
            ('Tool::"ok"', "allow", None),
            ('Tool::"rm"', "allow", {"decision": "deny", "policies": ["shadow-no-rm"]}),
            ('Tool::"ok"', "allow", None),
            ('Tool::"new"', "deny", {"decision": "allow", "policies": ["shadow-new"]}),
        ]
        # A line with a shadow difference is the same line with the field added, last.
        assert list(lines[0]) == list(lines[3]) + ["shadow"]
        metrics = _metrics(port)
        assert metrics['authz_shadow_differences_total{api="v1",change="allow_to_deny"}'] == 2
        assert metrics['authz_shadow_differences_total{api="v1",change="deny_to_allow"}'] == 2
        assert metrics['authz_shadow_differences_total{api="v1",change="policies"}'] == 1
        assert _health(server, "authz.shadow") == SERVING

        # Hot reload: the shadow policies go; nothing is compared any more.
        (policies / "p.cedar").write_text(ENFORCED)
        wait_until(lambda: "no @mode(\"shadow\") policy" in server.stderr(), 30, "the shadow set dropped")
        wait_until(lambda: "shadow policies: none to evaluate" in server.stderr(), 30, "the worker to follow")
        result, line = _checked(server, log, "rm")
        assert result == (True, ["all"]) and "shadow" not in line
        # ... and come back, changed.
        (policies / "p.cedar").write_text(ENFORCED + '@id("shadow-no-ok")\n@mode("shadow")\n'
                                                     'forbid(principal, action, resource == Tool::"ok");\n')
        wait_until(lambda: _checked(server, log, "ok")[1].get("shadow") == {"decision": "deny",
                                                                            "policies": ["shadow-no-ok"]},
                   30, "the new shadow set", interval_s=0.2)
        assert _check(server, "ok") == (True, ["all"])
    finally:
        assert server.stop() == 0


def test_a_shadow_policies_folder_is_a_candidate_set_with_the_served_entities(tmp_path):
    policies, candidate = tmp_path / "policies", tmp_path / "candidate"
    policies.mkdir()
    candidate.mkdir()
    (policies / "p.cedar").write_text('@id("all")\npermit(principal, action, resource);\n')
    (policies / "e.entities.json").write_text(json.dumps([
        {"uid": {"type": "Agent", "id": "b"}, "attrs": {}, "parents": [{"type": "Group", "id": "untrusted"}]}]))
    (candidate / "c.cedar").write_text('@id("all")\npermit(principal, action, resource);\n@id("no-untrusted")\n'
                                       'forbid(principal in Group::"untrusted", action, resource);\n')
    server = _serve(tmp_path, policies, "--shadow-policies", str(candidate))
    log = tmp_path / "decisions.jsonl"
    try:
        assert _check(server, "t", agent="b") == (True, ["all"])
        assert _check(server, "t", agent="a") == (True, ["all"])
        lines = _logged(log, 2)
        assert lines[0]["shadow"] == {"decision": "deny", "policies": ["no-untrusted"]}
        assert "shadow" not in lines[1]

        # Hot reload of the candidate folder.
        (candidate / "c.cedar").write_text('@id("only-a")\npermit(principal == Agent::"a", action, resource);\n')
        wait_until(lambda: _checked(server, log, "t", agent="b")[1].get("shadow") == {"decision": "deny",
                                                                                       "policies": []},
                   30, "the new candidate set", interval_s=0.2)
        result, line = _checked(server, log, "t", agent="a")
        assert result == (True, ["all"]) and line["shadow"] == {"decision": "allow", "policies": ["only-a"]}

        # A broken candidate folder: enforcement goes on, health says so, the last good shadow set is evaluated.
        (candidate / "c.cedar").write_text("permit(principal, action, resource")
        wait_until(lambda: _health(server, "authz.shadow") == NOT_SERVING, 30, "authz.shadow NOT_SERVING")
        assert _health(server, "") == SERVING and _health(server, "authz.policies") == SERVING
        result, line = _checked(server, log, "t", agent="b")
        assert result == (True, ["all"]) and line["shadow"] == {"decision": "deny", "policies": []}
        (candidate / "c.cedar").write_text('@id("all")\npermit(principal, action, resource);\n')
        wait_until(lambda: _health(server, "authz.shadow") == SERVING, 30, "authz.shadow SERVING again")
        wait_until(lambda: "shadow" not in _checked(server, log, "t", agent="b")[1], 30, "the repaired candidate set",
                   interval_s=0.2)
    finally:
        assert server.stop() == 0


def test_a_broken_shadow_folder_at_start_does_not_stop_enforcement(tmp_path):
    policies, candidate = tmp_path / "policies", tmp_path / "candidate"
    policies.mkdir()
    candidate.mkdir()
    (policies / "p.cedar").write_text('@id("all")\npermit(principal, action, resource);\n')
    (candidate / "c.cedar").write_text('@mode("sometimes")\nforbid(principal, action, resource);\n')
    server = _serve(tmp_path, policies, "--shadow-policies", str(candidate))
    try:
        assert _health(server, "") == SERVING
        assert _health(server, "authz.shadow") == NOT_SERVING
        assert _check(server, "t") == (True, ["all"])
        assert "shadow" not in _logged(tmp_path / "decisions.jsonl", 1)[0]
        assert 'c.cedar:1:1: @mode must be "enforce" or "shadow", not "sometimes"' in server.stderr()
        (candidate / "c.cedar").write_text('@id("none")\nforbid(principal, action, resource);\n')
        wait_until(lambda: _health(server, "authz.shadow") == SERVING, 30, "authz.shadow SERVING")
        wait_until(lambda: _checked(server, tmp_path / "decisions.jsonl", "t")[1].get("shadow") == {
            "decision": "deny", "policies": ["none"]}, 30, "the shadow set evaluated", interval_s=0.2)
    finally:
        assert server.stop() == 0


def test_a_bad_mode_is_refused_with_its_place(tmp_path):
    (tmp_path / "p.cedar").write_text('permit(principal, action, resource);\n\n@id("f")\n  @mode("shadows")\n'
                                      'forbid(principal, action, resource);\n')
    r = subprocess.run([sys.executable, "-m", "authz", "compile", str(tmp_path / "p.cedar"), "--db",
                        str(tmp_path / "db")], capture_output=True, text=True, env=env_with_repo(), timeout=120)
    assert r.returncode != 0
    assert f'{tmp_path / "p.cedar"}:4:3: @mode must be "enforce" or "shadow", not "shadows"' in r.stderr
    (tmp_path / "q.cedar").write_text('@mode\npermit(principal, action, resource);\n')
    try:
        authz.compile([str(tmp_path / "q.cedar")], str(tmp_path / "db"))
    except authz.CompileError as e:
        assert any(d.endswith('q.cedar:1:1: @mode must be "enforce" or "shadow", not no value') for d in e.diagnostics)
    else:
        raise AssertionError("@mode without a value compiled")
    # authz serve refuses such a policies folder, as any compile error.
    folder = tmp_path / "policies"
    folder.mkdir()
    (folder / "p.cedar").write_text('@mode("later")\npermit(principal, action, resource);\n')
    r = subprocess.run([sys.executable, "-m", "authz.server", "--listen", "127.0.0.1:0", "--policies", str(folder),
                        "--data-dir", str(tmp_path / "data")], capture_output=True, text=True, env=env_with_repo(),
                       timeout=120)
    assert r.returncode == 2 and '@mode must be "enforce" or "shadow", not "later"' in r.stderr


DIFFERENTIAL = [
    ('permit(principal, action == Action::"read", resource);', "enforce"),
    ('forbid(principal in Group::"bad", action, resource);', "shadow"),
    ('permit(principal == User::"admin", action, resource);', "enforce"),
    ('forbid(principal, action == Action::"delete", resource) unless { principal == User::"admin" };', "shadow"),
    ('permit(principal, action == Action::"write", resource) when { context.level > 2 };', "shadow"),
    ('forbid(principal, action, resource == Doc::"secret") when { context.level < 5 };', "enforce"),
    ('permit(principal in Group::"bad", action == Action::"write", resource);', "enforce"),
]
ENTITIES = [{"uid": {"type": "User", "id": "mallory"}, "attrs": {}, "parents": [{"type": "Group", "id": "bad"}]},
            {"uid": {"type": "User", "id": "admin"}, "attrs": {}, "parents": []},
            {"uid": {"type": "Group", "id": "bad"}, "attrs": {}, "parents": []}]


def _policy_text(items, with_mode):
    out = []
    for k, (text, mode) in enumerate(items):
        note = f'@mode("{mode}")\n' if with_mode and (mode == "shadow" or k % 2) else ""
        out.append(f'@id("p{k}")\n{note}{text}\n')
    return "\n".join(out)


def test_the_enforced_index_holds_no_shadow_policy(tmp_path):
    """Differential: decisions of a set with @mode("shadow") policies equal cedarpy's for the set without them,
    and the shadow index's equal cedarpy's for the whole set."""
    import cedarpy

    (tmp_path / "p.cedar").write_text(_policy_text(DIFFERENTIAL, True))
    (tmp_path / "e.entities.json").write_text(json.dumps(ENTITIES))
    from authz.compiler import compile_with_shadow

    generation, shadow = compile_with_shadow([str(tmp_path)], str(tmp_path / "db"), str(tmp_path / "shadow"))
    assert generation == 1 and shadow == 1
    # cedarpy names policies policy0, policy1, ... in text order: `names` maps them to the @ids.
    kept = [k for k, (_, mode) in enumerate(DIFFERENTIAL) if mode == "enforce"]
    enforced_text = "\n".join(DIFFERENTIAL[k][0] for k in kept)
    enforced_names = {f"policy{n}": f"p{k}" for n, k in enumerate(kept)}
    shadow_text = "\n".join(text for text, _ in DIFFERENTIAL)
    shadow_names = {f"policy{k}": f"p{k}" for k in range(len(DIFFERENTIAL))}
    requests = [{"principal": f'User::"{p}"', "action": f'Action::"{a}"', "resource": f'Doc::"{d}"',
                 "context": {"level": level}}
                for p in ("mallory", "admin", "bob") for a in ("read", "write", "delete")
                for d in ("secret", "plain") for level in (1, 3, 6)]
    with authz.Engine(str(tmp_path / "db")) as enforced, authz.Engine(str(tmp_path / "shadow")) as shadowed:
        assert not any(enforced.annotations(f"p{k}") for k, p in enumerate(DIFFERENTIAL) if p[1] == "shadow")
        differences = 0
        for rq in requests:
            for engine, text, names in ((enforced, enforced_text, enforced_names),
                                        (shadowed, shadow_text, shadow_names)):
                d = engine.check(rq["principal"], rq["action"], rq["resource"], rq["context"])
                c = cedarpy.is_authorized(rq, text, json.dumps(ENTITIES))
                assert d.allowed == (c.decision == cedarpy.Decision.Allow), (rq, text)
                assert sorted(d.policies) == sorted(names[r] for r in c.diagnostics.reasons), (rq, d.policies)
            a = enforced.check(rq["principal"], rq["action"], rq["resource"], rq["context"])
            b = shadowed.check(rq["principal"], rq["action"], rq["resource"], rq["context"])
            differences += a.allowed != b.allowed
        assert differences > 5  # the shadow policies matter for these requests


def test_checks_decided_one_at_a_time_log_their_shadow_difference(tmp_path):
    """The Envoy path (Decider.decide_one) on a worker's loop: consecutive checks are one run, written by _jsonl,
    and the lines with a shadow difference end with the field."""
    from authz.compiler import compile_with_shadow
    from authz.server.decider import Decider
    from authz.server.decisionlog import DecisionLog
    from authz.server.metrics import NullMetrics
    from authz.server.shadow import Shadow

    (tmp_path / "p.cedar").write_text(SHADOWED)
    compile_with_shadow([str(tmp_path / "p.cedar")], str(tmp_path / "db"), str(tmp_path / "shadow"))

    async def run():
        dlog = DecisionLog(str(tmp_path / "d.jsonl"), loop=asyncio.get_running_loop())
        decider = Decider(str(tmp_path / "db"), dlog)
        assert decider.open_engine()
        decider.shadow = Shadow(authz.Engine(str(tmp_path / "shadow")), NullMetrics())
        for tool in ("ok", "rm", "ok", "new"):
            decider.decide_one({"principal": {"type": "Agent", "id": "a"}, "action": {"type": "Action", "id": "call"},
                                "resource": {"type": "Tool", "id": tool}, "context": {"n": 1}}, "envoy")
        decider.shadow = None  # no shadow set: nothing compared
        decider.decide_one({"principal": {"type": "Agent", "id": "a"}, "action": {"type": "Action", "id": "call"},
                            "resource": {"type": "Tool", "id": "rm"}}, "envoy")
        await asyncio.sleep(0)
        dlog.close()

    asyncio.run(run())
    lines = _lines(tmp_path / "d.jsonl")
    assert [(ln["resource"], ln.get("shadow")) for ln in lines] == [
        ('Tool::"ok"', None), ('Tool::"rm"', {"decision": "deny", "policies": ["shadow-no-rm"]}), ('Tool::"ok"', None),
        ('Tool::"new"', {"decision": "allow", "policies": ["shadow-new"]}), ('Tool::"rm"', None)]
    assert lines[1]["context"] == lines[0]["context"] == {"n": 1}
    assert list(lines[1]) == list(lines[0]) + ["shadow"]


def test_a_shadow_failure_never_reaches_the_answer(tmp_path):
    """An engine failure of the shadow set is counted and the enforced decision stands."""
    from authz.compiler import compile_with_shadow
    from authz.server.decider import Decider
    from authz.server.shadow import Shadow

    class Counting:
        enabled = False
        failures = 0

        def shadow_failures(self, api, count=1):
            Counting.failures += count

    (tmp_path / "p.cedar").write_text(SHADOWED)
    compile_with_shadow([str(tmp_path / "p.cedar")], str(tmp_path / "db"), str(tmp_path / "shadow"))
    decider = Decider(str(tmp_path / "db"))
    assert decider.open_engine()
    engine = authz.Engine(str(tmp_path / "shadow"))
    decider.shadow = Shadow(engine, Counting())
    engine.close()  # a closed engine cannot decide: every shadow evaluation fails
    request = {"principal": {"type": "Agent", "id": "a"}, "action": {"type": "Action", "id": "call"},
               "resource": {"type": "Tool", "id": "rm"}}
    assert decider.decide_one(request, "envoy").allowed
    assert [o.allowed for o in decider.decide([request, request], "v1")] == [True, True]
    assert Counting.failures == 3


def test_a_task_state_request_is_compared_with_the_context_the_enforced_decision_saw(tmp_path):
    """A shadow limit on a task's writes: the shadow set sees context.task as the enforced decision did (the
    state before each call), so only the third write differs."""
    from google.protobuf import struct_pb2

    from authz._pb import tokens_pb2 as tpb
    from authz._pb import tokens_pb2_grpc as tpbg
    from harness import caller_metadata

    policies = tmp_path / "policies"
    policies.mkdir()
    (policies / "p.cedar").write_text('''
@id("issue")
permit(principal, action == Action::"authz::IssueToken", resource is Task);

@id("tools")
permit(principal, action == Action::"call", resource is Tool);

@id("shadow-write-limit")
@mode("shadow")
forbid(principal, action == Action::"call", resource == Tool::"db.write")
when { context has task && context.task.counts has write && context.task.counts.write >= 2 };
''')
    (policies / "entities.json").write_text('[{"uid": {"type": "Tool", "id": "db.write"}, "attrs": '
                                            '{"labels": ["write"]}, "parents": []}]')
    server = _serve(tmp_path, policies)
    log = tmp_path / "decisions.jsonl"
    try:
        with grpc.insecure_channel(server.address) as ch:
            tok = tpbg.TokensStub(ch).Issue(tpb.IssueRequest(
                task="t1", scope=tpb.TokenScope(actions=['Action::"call"'], resources=['Tool::"*"']), ttl_s=300),
                metadata=caller_metadata("a1"), timeout=10).token.access_token
            answers = []
            for _ in range(3):
                r = pbg.AuthorizerStub(ch).Check(pb.CheckRequest(
                    action=_uid("Action", "call"), resource=_uid("Tool", "db.write"), context=struct_pb2.Struct()),
                    metadata=[("authorization", f"Bearer {tok}")], timeout=10)
                answers.append((r.decision == pb.DECISION_ALLOW, list(r.policies)))
        assert answers == [(True, ["tools"])] * 3
        lines = [ln for ln in _logged(log, 4) if ln["resource"] == 'Tool::"db.write"']
        assert [ln["context"]["task"]["counts"].get("write", 0) for ln in lines] == [0, 1, 2]
        assert [ln.get("shadow") for ln in lines] == [None, None, {"decision": "deny",
                                                                   "policies": ["shadow-write-limit"]}]
    finally:
        assert server.stop() == 0


def _reader_pids(db):
    """The pids in an index's LMDB reader table."""
    import lmdb

    env = lmdb.open(str(db), readonly=True, lock=True, map_size=1 << 32)
    try:
        lines = env.readers().splitlines()
    finally:
        env.close()
    return {int(line.split()[0]) for line in lines if line.split() and line.split()[0].isdigit()}


def test_a_replaced_worker_evaluates_the_shadow_set_and_its_shadow_reader_slot_is_cleared(tmp_path):
    import os
    import signal

    policies = tmp_path / "policies"
    policies.mkdir()
    (policies / "p.cedar").write_text(SHADOWED)
    # Two workers: the survivor keeps both indexes open, so the replacement is not their first opener.
    server = _serve(tmp_path, policies, "--workers", "2")
    shadow_db = tmp_path / "data" / "shadow.lmdb"
    log = tmp_path / "decisions.jsonl"
    try:
        victim = server.pids[0]
        assert victim in _reader_pids(shadow_db)
        os.kill(victim, signal.SIGKILL)
        wait_until(lambda: f"(pid {victim}) exited with code -9; restarting it" in server.stderr(), 60,
                   "the worker replaced")
        server.wait_serving()
        assert victim not in _reader_pids(shadow_db)
        # Both workers (the new one too) log the shadow difference: checks on fresh connections until lines
        # with two decision id prefixes (one per worker process) are seen, at most 200.
        prefixes = set()
        for _ in range(200):
            result, line = _checked(server, log, "rm")
            assert result == (True, ["all"]) and line["shadow"] == {"decision": "deny", "policies": ["shadow-no-rm"]}
            prefixes.add(line["decision_id"][:12])
            if len(prefixes) == 2:
                break
        assert len(prefixes) == 2
    finally:
        assert server.stop() == 0
