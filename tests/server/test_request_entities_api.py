"""Request entities over authz.v1 (CheckRequest / BatchCheckRequest `entities_json`) on a real `authz serve`:
they replace stored entities for that call only, ancestors recomputed; bad ones fail the call with
INVALID_ARGUMENT naming what is wrong; a caller that is not a PEP may not bring them."""
import json
import pathlib
import sys

import grpc
import pytest

from authz._pb import authz_pb2 as pb
from authz._pb import authz_pb2_grpc as pbg
from harness import AuthzServer

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1] / "identity"))
import material as m  # noqa: E402

POLICIES = r'''
@id("staff-read")
permit(principal in Group::"staff", action == Action::"read", resource) when { principal.level >= 2 };

@id("owner-edit")
permit(principal, action == Action::"edit", resource) when { resource has owner && resource.owner == principal };

@id("blocked")
forbid(principal, action, resource) when { principal has blocked && principal.blocked };
'''

ENTITIES = [
    {"uid": {"type": "User", "id": "alice"}, "attrs": {"level": 1}, "parents": [{"type": "Team", "id": "eng"}]},
    {"uid": {"type": "User", "id": "bob"}, "attrs": {"level": 5}, "parents": [{"type": "Team", "id": "eng"}]},
    {"uid": {"type": "Team", "id": "eng"}, "attrs": {}, "parents": [{"type": "Group", "id": "staff"}]},
    {"uid": {"type": "Doc", "id": "d1"}, "attrs": {"owner": {"__entity": {"type": "User", "id": "alice"}}},
     "parents": []},
]


def uid(t, i):
    return pb.EntityUid(type=t, id=i)


def entity(t, i, attrs=None, parents=()):
    return {"uid": {"type": t, "id": i}, "attrs": attrs or {}, "parents": [{"type": pt, "id": pi} for pt, pi in parents]}


def _setup(tmp, toml=None):
    pol = tmp / "policies"
    pol.mkdir()
    (pol / "policies.cedar").write_text(POLICIES)
    (pol / "entities.json").write_text(json.dumps(ENTITIES))
    args = ["--listen", "127.0.0.1:0", "--policies", str(pol), "--data-dir", str(tmp / "data"), "--workers", "1"]
    if toml is not None:
        (tmp / "authz.toml").write_text(toml)
        args = ["--config", str(tmp / "authz.toml")] + args
    return args


@pytest.fixture(scope="module")
def stub(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("entities-srv")
    server = AuthzServer(tmp, _setup(tmp)).start()
    try:
        with grpc.insecure_channel(server.address) as ch:
            yield pbg.AuthorizerStub(ch)
    finally:
        server.stop()


def check(stub, principal, action, resource, entities=None, **kw):
    text = "" if entities is None else (entities if isinstance(entities, str) else json.dumps(entities))
    return stub.Check(pb.CheckRequest(principal=uid(*principal), action=uid("Action", action), resource=uid(*resource),
                                      entities_json=text), timeout=10, **kw)


ALICE, BOB, CAROL, DOC = ("User", "alice"), ("User", "bob"), ("User", "carol"), ("Doc", "d1")


def test_check_replaces_stored_entities_for_that_request_only(stub):
    assert check(stub, ALICE, "read", DOC).decision == pb.DECISION_DENY  # level 1
    promoted = [entity("User", "alice", {"level": 3}, [("Team", "eng")])]
    r = check(stub, ALICE, "read", DOC, promoted)
    assert r.decision == pb.DECISION_ALLOW and list(r.policies) == ["staff-read"]
    # Whole replacement: without its parents alice is not staff any more.
    assert check(stub, ALICE, "read", DOC, [entity("User", "alice", {"level": 3})]).decision == pb.DECISION_DENY
    # Nothing leaks into the next request.
    assert check(stub, ALICE, "read", DOC).decision == pb.DECISION_DENY
    # An entity that is not stored; its parent is another request entity.
    carol = [entity("User", "carol", {"level": 2}, [("Team", "new")]), entity("Team", "new", {}, [("Group", "staff")])]
    assert check(stub, CAROL, "read", DOC, carol).decision == pb.DECISION_ALLOW
    assert check(stub, CAROL, "read", DOC).decision == pb.DECISION_DENY


def test_stored_descendants_see_a_replaced_ancestor(stub):
    assert check(stub, BOB, "read", DOC).decision == pb.DECISION_ALLOW  # bob -> eng -> staff
    cut = [entity("Team", "eng")]  # eng, no parents: bob (stored) is no longer staff
    assert check(stub, BOB, "read", DOC, cut).decision == pb.DECISION_DENY
    moved = [entity("Team", "eng", {}, [("Team", "other")]), entity("Team", "other", {}, [("Group", "staff")])]
    assert check(stub, BOB, "read", DOC, moved).decision == pb.DECISION_ALLOW


def test_attributes_referencing_request_entities(stub):
    doc = [{"uid": {"type": "Doc", "id": "d1"}, "attrs": {"owner": {"__entity": {"type": "User", "id": "bob"}}},
            "parents": []}]
    assert check(stub, ALICE, "edit", DOC).decision == pb.DECISION_ALLOW
    assert check(stub, ALICE, "edit", DOC, doc).decision == pb.DECISION_DENY
    r = check(stub, BOB, "edit", DOC, doc + [entity("User", "bob", {"level": 5, "blocked": True})])
    assert r.decision == pb.DECISION_DENY and list(r.policies) == ["blocked"]


def test_batch_check_entities_apply_to_every_item(stub):
    promoted = json.dumps([entity("User", "alice", {"level": 3}, [("Team", "eng")]), entity("Team", "eng")])
    req = pb.BatchCheckRequest(action=uid("Action", "read"), resource=uid(*DOC), entities_json=promoted,
                               items=[pb.BatchCheckItem(principal=uid(*ALICE)), pb.BatchCheckItem(principal=uid(*BOB))])
    out = stub.BatchCheck(req, timeout=10)
    # eng replaced without parents: neither is staff; the same batch without entities allows bob.
    assert [x.decision for x in out.results] == [pb.DECISION_DENY, pb.DECISION_DENY]
    req.entities_json = json.dumps([entity("User", "alice", {"level": 3}, [("Team", "eng")])])
    out = stub.BatchCheck(req, timeout=10)
    assert [x.decision for x in out.results] == [pb.DECISION_ALLOW, pb.DECISION_ALLOW]
    req.entities_json = ""  # the wire fast path: stored entities only
    out = stub.BatchCheck(req, timeout=10)
    assert [x.decision for x in out.results] == [pb.DECISION_DENY, pb.DECISION_ALLOW]


def _too_many_values():
    return [entity("User", "x", {f"a{k}": k for k in range(10001)})]


@pytest.mark.parametrize("entities, message", [
    ("[", "`entities_json`: not JSON"),
    ('{"uid": {}}', "expected a JSON array of Cedar entities, not a record"),
    ("[" * 140000 + "]" * 140000, "bytes, more than the 262,144"),
    ("[" + ",".join(["1"] * 140000) + "]", "bytes, more than"),
    ("[" * 50000 + "]" * 50000, "`entities_json`: nested too deeply"),
    (json.dumps([entity("User", str(k)) for k in range(101)]), "101 entities, more than the 100"),
    (json.dumps(_too_many_values()), "more than 10000 JSON values"),
    (json.dumps([{"uid": {"type": "User", "id": "a"}, "attrs": {}}]), '`entities[0]`: no "parents"'),
    (json.dumps([entity("User", "a"), entity("User", "a")]), "`entities[1].uid`: entity `User::\"a\"` is given twice"),
    (json.dumps([entity("Action", "read")]), "`entities[0].uid`: `Action::\"read\"` is an action"),
    (json.dumps([entity("NS::Action", "read")]), "is an action"),
    (json.dumps([entity("User", "a", {"x": 1.5})]), "`entities[0].attrs.x`: a number with a fraction"),
    (json.dumps([entity("User", "a", {"x": {"__extn": {"fn": "ip", "arg": "nope"}}})]), "`entities[0].attrs.x`"),
    (json.dumps([{"uid": {"type": "", "id": "a"}, "attrs": {}, "parents": []}]), "`entities[0].uid`: invalid entity type"),
    (json.dumps([entity("User", "a", parents=[("Team", "t")]), entity("Team", "t", parents=[("User", "a")])]),
     "make a cycle"),
    (json.dumps([entity("Team", "eng", parents=[("User", "bob")])]), "make a cycle"),  # bob -> eng (stored) -> bob
    (json.dumps([{**entity("User", "a"), "tag": {}}]), "unknown field `tag`"),
])
def test_bad_entities_are_invalid_argument(stub, entities, message):
    with pytest.raises(grpc.RpcError) as e:
        check(stub, ALICE, "read", DOC, entities)
    assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert message in e.value.details(), e.value.details()
    with pytest.raises(grpc.RpcError) as e:
        stub.BatchCheck(pb.BatchCheckRequest(principal=uid(*ALICE), action=uid("Action", "read"), resource=uid(*DOC),
                                             entities_json=entities, items=[pb.BatchCheckItem()] * 2), timeout=10)
    assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert message in e.value.details(), e.value.details()


JWT_TOML = f'''
[[identity.jwt]]
issuer = "{m.ISSUER}"
audiences = ["{m.AUDIENCE}"]
jwks_file = "jwks.json"
algorithms = ["RS256"]
'''


def test_only_a_pep_may_bring_entities(tmp_path):
    """A caller known by its own bearer token (not a PEP) could rewrite its own attributes and groups."""
    key = m.SigningKey("RS256", "entities-test")
    (tmp_path / "jwks.json").write_text(json.dumps(m.jwks(key)))
    server = AuthzServer(tmp_path, _setup(tmp_path, JWT_TOML)).start()
    try:
        metadata = (("authorization", f"Bearer {key.sign(m.claims(sub='alice'))}"),)
        with grpc.insecure_channel(server.address) as ch:
            stub = pbg.AuthorizerStub(ch)
            r = stub.Check(pb.CheckRequest(action=uid("Action", "read"), resource=uid(*DOC)), metadata=metadata,
                           timeout=10)
            assert r.decision == pb.DECISION_DENY  # the token's principal is not staff
            promoted = json.dumps([entity("User", "alice", {"level": 9}, [("Group", "staff")])])
            for call in (lambda: stub.Check(pb.CheckRequest(action=uid("Action", "read"), resource=uid(*DOC),
                                                            entities_json=promoted), metadata=metadata, timeout=10),
                         lambda: stub.BatchCheck(pb.BatchCheckRequest(action=uid("Action", "read"), resource=uid(*DOC),
                                                                      entities_json=promoted),
                                                 metadata=metadata, timeout=10)):
                with pytest.raises(grpc.RpcError) as e:
                    call()
                assert e.value.code() == grpc.StatusCode.PERMISSION_DENIED
                assert "only a PEP" in e.value.details()
    finally:
        server.stop()
