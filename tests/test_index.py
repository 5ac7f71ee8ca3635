"""The policy index: requests find the policies filed under any of their keys, however many keys they have."""

import json

import cedarpy

import authz


def test_principal_with_more_ancestors_than_the_stack_buffer(tmp_path):
    # 100 nested groups: more index keys than the evaluator keeps on its stack (64).
    depth = 100
    entities = [{"uid": {"type": "User", "id": "u"}, "attrs": {}, "parents": [{"type": "Group", "id": "g0"}]}]
    entities += [{"uid": {"type": "Group", "id": f"g{i}"}, "attrs": {},
                  "parents": [{"type": "Group", "id": f"g{i + 1}"}] if i + 1 < depth else []} for i in range(depth)]
    policies = "".join(f'permit(principal in Group::"g{i}", action, resource in Folder::"f{i % 3}");\n'
                       for i in range(0, depth, 7))
    (tmp_path / "p.cedar").write_text(policies)
    (tmp_path / "entities.json").write_text(json.dumps(entities))
    resources = [{"uid": {"type": "Doc", "id": f"d{k}"}, "attrs": {}, "parents": [{"type": "Folder", "id": f"f{k}"}]}
                 for k in range(3)]
    (tmp_path / "r.entities.json").write_text(json.dumps(resources))
    authz.compile([str(tmp_path)], db=str(tmp_path / "db"))
    with authz.Engine(str(tmp_path / "db")) as engine:
        for k in range(3):
            request = {"principal": 'User::"u"', "action": 'Action::"a"', "resource": f'Doc::"d{k}"', "context": {}}
            ours = engine.check(**request)
            theirs = cedarpy.is_authorized(request, policies, json.dumps(entities + resources))
            assert ours.allowed == theirs.allowed
            assert sorted(ours.policies) == sorted(f"p.cedar:{int(r[len('policy'):])}" for r in theirs.diagnostics.reasons)
            assert len(ours.policies) >= 4
