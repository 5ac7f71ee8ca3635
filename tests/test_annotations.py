"""Policy annotations besides @id are compiled with the generation and read back by policy id (the server's
approval, tripwire and label controls read them), and a Decision says whether some permit was satisfied
even when a forbid denies (an approval can only turn a would-be allow into approval_required)."""

import cedarpy
import pytest

import authz
import authz.compiler.lower as lower
from authz.errors import CompileError

POLICIES = "".join(
    f'@id("pay-{i}")\n@approval("q{i % 3}")\n@labels("payments,{"pii" if i % 2 else "public"}")\n'
    f'forbid(principal == Agent::"a{i}", action == Action::"pay", resource);\n'
    f'@id("ok-{i}")\npermit(principal == Agent::"a{i}", action, resource);\n' for i in range(6)
) + '@advice\npermit(principal, action == Action::"read", resource);\n'


def _engine(tmp_path, text=POLICIES):
    (tmp_path / "p.cedar").write_text(text)
    authz.compile([str(tmp_path / "p.cedar")], db=str(tmp_path / "db"))
    return authz.Engine(str(tmp_path / "db"))


def test_annotations_of_look_alike_policies(tmp_path):
    engine = _engine(tmp_path)
    for i in range(6):
        assert engine.annotations(f"pay-{i}") == {"approval": f"q{i % 3}",
                                                  "labels": "payments," + ("pii" if i % 2 else "public")}
        assert engine.annotations(f"ok-{i}") == {}
    assert engine.annotations("p.cedar:12") == {"advice": None}
    assert engine.annotations("no such policy") == {}
    engine.close()


def test_a_new_generation_brings_its_annotations(tmp_path):
    engine = _engine(tmp_path)
    _engine(tmp_path, '@id("pay-0")\n@approval("other")\nforbid(principal, action, resource);\n').close()
    engine.refresh()
    assert engine.annotations("pay-0") == {"approval": "other"}
    assert engine.annotations("pay-1") == {}
    engine.close()


def test_wrong_annotations_are_refused_at_publish(tmp_path, monkeypatch):
    real = lower.Template.annotations_of
    monkeypatch.setattr(lower.Template, "annotations_of",
                        lambda self, literals: (real(self, literals) or {}) | {"approval": "nobody"} or None)
    with pytest.raises(CompileError, match="its annotations differ"):
        _engine(tmp_path)


@pytest.mark.parametrize("principal, action", [("a1", "pay"), ("a1", "read"), ("zz", "pay"), ("zz", "read")])
def test_permitted_says_whether_a_permit_was_satisfied(tmp_path, principal, action):
    engine = _engine(tmp_path)
    request = dict(principal=f'Agent::"{principal}"', action=f'Action::"{action}"', resource='Tool::"t"', context={})
    d = engine.check(**request)
    permits_only = "".join(p + ";\n" for p in POLICIES.split(";\n") if "permit(" in p)
    expected = cedarpy.is_authorized(request, permits_only, "[]").decision == cedarpy.Decision.Allow
    assert d.permitted == expected
    engine.close()


def test_string_set_attribute_reads_a_resources_labels(tmp_path):
    import json

    (tmp_path / "p.cedar").write_text("permit(principal, action, resource);\n")
    (tmp_path / "entities.json").write_text(json.dumps([
        {"uid": {"type": "Tool", "id": "crm"}, "attrs": {"labels": ["pii", "customer", "pii", 3]}, "parents": []},
        {"uid": {"type": "Tool", "id": "web"}, "attrs": {"labels": "pii"}, "parents": []}]))
    authz.compile([str(tmp_path)], db=str(tmp_path / "db"))
    engine = authz.Engine(str(tmp_path / "db"))
    assert engine.string_set_attribute('Tool::"crm"', "labels") == ["pii", "customer"]
    assert engine.string_set_attribute({"type": "Tool", "id": "web"}, "labels") == []  # not a set
    assert engine.string_set_attribute('Tool::"absent"', "labels") == []
    assert engine.string_set_attribute('Tool::"crm"', "other") == []
    engine.close()
