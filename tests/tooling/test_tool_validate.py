"""`authz validate` and `authz compile --schema`: cedarpy's validator through the real CLI, every problem as
FILE:LINE:COL pointing into the user's files (policies over several files and folders, the schema, entities)."""
import json

import pytest
from click.testing import CliRunner

from authz.cli import main

SCHEMA = """\
entity Team;
entity Agent in [Team] { clearance: Long };
entity Tool { sensitivity: Long };
action call appliesTo { principal: Agent, resource: Tool, context: { env: String } };
"""
SCHEMA_JSON = {"": {
    "entityTypes": {
        "Team": {},
        "Agent": {"memberOfTypes": ["Team"], "shape": {"type": "Record", "attributes": {
            "clearance": {"type": "Long"}}}},
        "Tool": {"shape": {"type": "Record", "attributes": {"sensitivity": {"type": "Long"}}}},
    },
    "actions": {"call": {"appliesTo": {"principalTypes": ["Agent"], "resourceTypes": ["Tool"], "context": {
        "type": "Record", "attributes": {"env": {"type": "String"}}}}}},
}}
GOOD = """\
// agents call tools up to their clearance
@id("cleared")
permit(principal in Team::"ops", action == Action::"call", resource)
when { resource.sensitivity <= principal.clearance && context.env == "prod" };
"""
ENTITIES = [
    {"uid": {"type": "Team", "id": "ops"}, "attrs": {}, "parents": []},
    {"uid": {"type": "Agent", "id": "a"}, "attrs": {"clearance": 2}, "parents": [{"type": "Team", "id": "ops"}]},
    {"uid": {"type": "Tool", "id": "t"}, "attrs": {"sensitivity": 1}, "parents": []},
]


@pytest.fixture(autouse=True)
def _in_tmp_path(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # messages name files relative to the current directory


def run(*args):
    result = CliRunner().invoke(main, list(args))
    return result.exit_code, result.stdout, result.stderr


def policies(tmp_path, files):
    root = tmp_path / "policies"
    for name, text in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(text)
    return "policies"


def test_valid_policies_and_entities_pass(tmp_path):
    (tmp_path / "schema.cedarschema").write_text(SCHEMA)
    src = policies(tmp_path, {"a.cedar": GOOD, "entities.json": json.dumps(ENTITIES)})
    code, _, err = run("validate", "--schema", "schema.cedarschema", src)
    assert (code, err) == (0, "policies are valid against the schema\n")


def test_json_schema_is_taken_too(tmp_path):
    (tmp_path / "schema.json").write_text(json.dumps(SCHEMA_JSON))
    src = policies(tmp_path, {"a.cedar": GOOD})
    assert run("validate", "--schema", "schema.json", src)[0] == 0
    (tmp_path / "p2.cedar").write_text('permit(principal, action == Action::"call", resource) '
                                       'when { resource.size > 1 };')
    code, _, err = run("validate", "--schema", "schema.json", src, "p2.cedar")
    assert code == 2
    assert err.splitlines() == ["p2.cedar:1:71: policy `p2.cedar:0`: attribute `size` on entity type `Tool` not found"]


def test_errors_point_into_each_file_across_folders(tmp_path):
    (tmp_path / "schema.cedarschema").write_text(SCHEMA)
    src = policies(tmp_path, {
        "a.cedar": GOOD,
        "team/b.cedar": "// two policies\n\n"
                        'permit(principal, action == Action::"call", resource)\n'
                        "when { resource.sensitivty <= 1 };\n"
                        '@id("writes")\n'
                        'permit(principal, action == Action::"write", resource);\n',
        "team/c.cedar": 'forbid(principal, action, resource) when { context.env > 3 };\n',
    })
    code, _, err = run("validate", "--schema", "schema.cedarschema", src)
    assert code == 2
    assert err.splitlines() == [
        "policies/team/b.cedar:4:17: policy `team/b.cedar:0`: attribute `sensitivty` on entity type `Tool` not found",
        'policies/team/b.cedar:6:29: policy `writes`: unrecognized action `Action::"write"`',
        "policies/team/b.cedar:5:1: policy `writes`: unable to find an applicable action given the policy scope "
        "constraints",
        "policies/team/c.cedar:1:1: policy `team/c.cedar:0`: unexpected type: expected Long but saw String",
    ]


def test_syntax_errors_are_reported_as_compile_reports_them(tmp_path):
    (tmp_path / "schema.cedarschema").write_text(SCHEMA)
    src = policies(tmp_path, {"a.cedar": GOOD + "permit(principal, action, resource) when { 1 + };\n"})
    code, _, err = run("validate", "--schema", "schema.cedarschema", src)
    assert code == 2
    assert err.startswith("policies/a.cedar:5:") and "unexpected token" in err


@pytest.mark.parametrize("schema, where", [
    ("entity Team;\nentity Agent in [Team] { clearance: Lon };\n", "schema.cedarschema:2:37: invalid schema: "
                                                                        "failed to resolve type: Lon"),
    ("entity Team;\nentity Agent { x: Long }\naction call;\n", "schema.cedarschema:3:1: invalid schema: "
                                                             "error parsing schema: unexpected token `action`"),
])
def test_schema_errors_point_into_the_schema(tmp_path, schema, where):
    (tmp_path / "schema.cedarschema").write_text(schema)
    src = policies(tmp_path, {"a.cedar": GOOD})
    code, _, err = run("validate", "--schema", "schema.cedarschema", src)
    assert (code, err.strip()) == (2, where)


def test_json_schema_errors_have_their_line_and_column(tmp_path):
    (tmp_path / "schema.json").write_text('{"": {\n  "entityTypes": {},\n  "actions": {"call": {"appliesTo": '
                                          '{"principalTypes": []}}}}}\n')
    code, _, err = run("validate", "--schema", "schema.json", policies(tmp_path, {"a.cedar": GOOD}))
    assert code == 2 and err.startswith("schema.json:3:") and "resourceTypes" in err
    (tmp_path / "broken.json").write_text('{"": {\n  "entityTypes": {,\n')
    code, _, err = run("validate", "--schema", "broken.json", "policies")
    assert code == 2 and err.startswith("broken.json:2:19: ")


def test_entities_that_do_not_conform_are_named(tmp_path):
    (tmp_path / "schema.cedarschema").write_text(SCHEMA)
    bad = ENTITIES[:2] + [{"uid": {"type": "Tool", "id": "t"}, "attrs": {"sensitivity": "high"}, "parents": []}]
    src = policies(tmp_path, {"a.cedar": GOOD, "entities.json": json.dumps(bad, indent=1)})
    code, _, err = run("validate", "--schema", "schema.cedarschema", src)
    assert code == 2
    line = err.strip()
    assert line.startswith('policies/entities.json:25:2: entity `Tool::"t"`: ') and "schema.cedarschema" in line


def test_missing_files(tmp_path):
    policies(tmp_path, {"a.cedar": GOOD})
    code, _, err = run("validate", "--schema", "nope.cedarschema", "policies")
    assert (code, err) == (2, "nope.cedarschema: cannot read schema file: No such file or directory\n")
    (tmp_path / "schema.cedarschema").write_text(SCHEMA)
    code, _, err = run("validate", "--schema", "schema.cedarschema", "missing")
    assert (code, err) == (2, "missing: no such file or folder\n")


def test_compile_with_schema_refuses_invalid_policies_and_writes_nothing(tmp_path):
    (tmp_path / "schema.cedarschema").write_text(SCHEMA)
    src = policies(tmp_path, {"a.cedar": GOOD, "b.cedar": 'permit(principal, action == Action::"nope", resource);\n',
                              "entities.json": json.dumps(ENTITIES)})
    code, _, err = run("compile", src, "--db", "db", "--schema", "schema.cedarschema")
    assert code == 2
    assert err.splitlines()[0] == 'policies/b.cedar:1:29: policy `b.cedar:0`: unrecognized action `Action::"nope"`'
    assert not (tmp_path / "db").exists()
    (tmp_path / "policies" / "b.cedar").unlink()
    code, _, err = run("compile", src, "--db", "db", "--schema", "schema.cedarschema")
    assert code == 0, err
    code, out, _ = run("check", "--db", "db", "--request", json.dumps(
        {"principal": 'Agent::"a"', "action": 'Action::"call"', "resource": 'Tool::"t"', "context": {"env": "prod"}}))
    assert json.loads(out)["decision"] == "allow"
