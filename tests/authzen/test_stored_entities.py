"""authz.engine.stored reads back what the compiler stored: every kind of value, tags, the ancestors (closure), and None
for a uid that is only named (in a policy or as a parent) or not there at all."""
from __future__ import annotations

import json

import authz
from authz.engine.stored import StoredEntityReader

ENTITIES = [
    {"uid": {"type": "User", "id": "alice"}, "parents": [{"type": "Group", "id": "eng"}], "tags": {"t": "v"},
     "attrs": {"n": -5, "big": 2**63 - 1, "s": "é\u2028x", "yes": True, "no": False, "empty": {}, "none": [],
               "set": [1, "two", {"__entity": {"type": "Group", "id": "eng"}}, [3]],
               "rec": {"ip": {"__extn": {"fn": "ip", "arg": "10.0.0.0/8"}},
                       "d": {"__extn": {"fn": "decimal", "arg": "1.5"}}, "nested": {"k": ["v"]}}}},
    {"uid": {"type": "Group", "id": "eng"}, "attrs": {}, "parents": [{"type": "Group", "id": "all"}]},
    {"uid": {"type": "Group", "id": "all"}, "attrs": {"name": "everyone"}, "parents": []},
]


def test_stored_entities_read_back(tmp_path):
    (tmp_path / "p.cedar").write_text('permit(principal == User::"bob", action, resource in Group::"named");')
    (tmp_path / "entities.json").write_text(json.dumps(ENTITIES))
    authz.compile([str(tmp_path / "p.cedar"), str(tmp_path / "entities.json")], str(tmp_path / "db"))
    reader = StoredEntityReader()
    with authz.Engine(str(tmp_path / "db")) as engine:
        alice = reader.entity(engine, {"type": "User", "id": "alice"})
        assert alice == {**ENTITIES[0], "parents": [{"type": "Group", "id": "eng"}, {"type": "Group", "id": "all"}]}
        assert reader.entity(engine, {"type": "Group", "id": "all"}) == ENTITIES[2]
        for named in ({"type": "User", "id": "bob"}, {"type": "Group", "id": "named"}, {"type": "User", "id": "x"}):
            assert reader.entity(engine, named) is None
