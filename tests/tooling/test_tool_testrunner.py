"""`authz test`: test files run through the real CLI, compiler and engine; the bundled examples' tests pass and
cover every example policy; failures show a diff; bad input is reported with its place."""
import json
import pathlib
import re
import subprocess
import sys
import xml.etree.ElementTree as ET

import pytest
from click.testing import CliRunner

from authz.cli import main

ROOT = pathlib.Path(__file__).resolve().parents[2]
EXAMPLES = ROOT / "authz" / "examples"
POLICIES = """\
@id("read")
permit(principal in Team::"eng", action == Action::"read", resource) when { context.env == "prod" };
@id("secret")
forbid(principal, action, resource) when { resource has secret && resource.secret };
"""
ENTITIES = [
    {"uid": {"type": "Team", "id": "eng"}, "attrs": {}, "parents": []},
    {"uid": {"type": "User", "id": "alice"}, "attrs": {}, "parents": [{"type": "Team", "id": "eng"}]},
    {"uid": {"type": "Doc", "id": "s"}, "attrs": {"secret": True}, "parents": []},
]


@pytest.fixture(autouse=True)
def _in_tmp_path(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)


@pytest.fixture
def project(tmp_path):
    pol = tmp_path / "policies"
    pol.mkdir()
    (pol / "p.cedar").write_text(POLICIES)
    (pol / "entities.json").write_text(json.dumps(ENTITIES))
    (tmp_path / "tests").mkdir()
    return tmp_path


def run(*args):
    result = CliRunner().invoke(main, ["test", *map(str, args)])
    return result.exit_code, result.stdout, result.stderr


def write(path, text):
    path.write_text(text)
    return path


def test_bundled_examples_pass_with_junit(tmp_path):
    code, out, err = run(EXAMPLES / "tests", "--junit", tmp_path / "junit.xml")
    assert code == 0, out + err
    lines = out.splitlines()
    assert re.fullmatch(r"\d+ passed, 0 failed", lines[-1])
    assert all(re.fullmatch(r"\S+\.test\.(yaml|json) \.+", line) for line in lines[:-2])
    suites = ET.parse(tmp_path / "junit.xml").getroot()
    assert suites.get("failures") == "0" and suites.get("errors") == "0"
    assert int(suites.get("tests")) == int(lines[-1].split()[0]) == len(suites.findall("./testsuite/testcase"))


def test_bundled_examples_cover_every_example_policy():
    """Each policy of authz/examples/policies is named as a determining policy by some case."""
    ids = set()
    for path in (EXAMPLES / "policies").glob("*.cedar"):
        ids |= set(re.findall(r'^@id\("([^"]+)"\)', path.read_text(), re.M))
    named = set()
    for path in (EXAMPLES / "tests").iterdir():
        import yaml

        doc = json.loads(path.read_text()) if path.suffix == ".json" else yaml.safe_load(path.read_text())
        for case in doc["cases"]:
            named |= set(case.get("policies") or ())
    assert ids and ids <= named, sorted(ids - named)


def test_a_failure_shows_what_was_expected_and_what_happened(project):
    write(project / "tests" / "docs.test.yaml", """\
policies: ../policies
cases:
  - name: alice reads in prod
    request: {principal: User::"alice", action: Action::"read", resource: Doc::"d", context: {env: prod}}
    expect: allow
    policies: [read]
  - name: alice reads the secret
    request: {principal: User::"alice", action: Action::"read", resource: Doc::"s", context: {env: prod}}
    expect: allow
  - name: wrong reason
    request: {principal: User::"alice", action: Action::"read", resource: Doc::"d", context: {env: dev}}
    expect: deny
    reason: forbidden_by_policy
""")
    code, out, _ = run("tests", "--junit", "j.xml")
    assert code == 1
    assert out == """\
tests/docs.test.yaml .FF

FAILED tests/docs.test.yaml::alice reads the secret (tests/docs.test.yaml:7)
  request: {"action": "Action::\\"read\\"", "context": {"env": "prod"}, "principal": "User::\\"alice\\"", \
"resource": "Doc::\\"s\\""}
- decision: allow
+ decision: deny
  policies: ["secret"]
  errors: []
FAILED tests/docs.test.yaml::wrong reason (tests/docs.test.yaml:10)
  request: {"action": "Action::\\"read\\"", "context": {"env": "dev"}, "principal": "User::\\"alice\\"", \
"resource": "Doc::\\"d\\""}
- reason: forbidden_by_policy
+ reason: no_permitting_policy
  policies: []
  errors: []

1 passed, 2 failed
"""
    suite = ET.parse(project / "j.xml").getroot().find("testsuite")
    assert (suite.get("name"), suite.get("tests"), suite.get("failures")) == ("tests/docs.test.yaml", "3", "2")
    failure = suite.findall("testcase")[1].find("failure")
    assert failure.get("message") == "- decision: allow" and "+ decision: deny" in failure.text


def test_policies_compared_as_a_set_and_errors_shown(project):
    write(project / "policies" / "q.cedar", '@id("odd")\npermit(principal, action, resource) when { context.n > 1 };\n')
    write(project / "tests" / "t.test.json", json.dumps({"policies": "../policies", "cases": [
        {"name": "errors", "request": {"principal": 'User::"alice"', "action": 'Action::"read"',
                                       "resource": 'Doc::"d"', "context": {"env": "prod", "n": "x"}},
         "expect": "allow", "policies": ["odd", "read"]}]}))
    code, out, _ = run("tests/t.test.json")
    assert code == 1
    assert '- policies: ["odd", "read"]\n+ policies: ["read"]' in out
    assert '  errors: [{"message": ' in out and '"policy": "odd"' in out


def test_case_entities_replace_stored_ones_for_that_case_only(project):
    write(project / "tests" / "e.test.yaml", """\
policies: ../policies
cases:
  - name: a secret made public
    request: {principal: User::"alice", action: Action::"read", resource: Doc::"s", context: {env: prod}}
    entities: [{uid: {type: Doc, id: s}, attrs: {secret: false}, parents: []}]
    expect: allow
  - name: bob joins eng for this case
    request: {principal: User::"bob", action: Action::"read", resource: Doc::"d", context: {env: prod}}
    entities: [{uid: {type: User, id: bob}, attrs: {}, parents: [{type: Team, id: eng}]}]
    expect: allow
    policies: read
  - name: the secret is still secret in the next case
    request: {principal: User::"alice", action: Action::"read", resource: Doc::"s", context: {env: prod}}
    expect: deny
    policies: [secret]
""")
    code, out, _ = run("tests")
    assert (code, out.splitlines()[-1]) == (0, "3 passed, 0 failed")


def test_flags_name_the_policies_and_entities(project, tmp_path):
    (project / "policies" / "entities.json").rename(project / "people.entities.json")
    write(project / "tests" / "f.test.yaml", """\
cases:
  - name: reads in prod
    request: {principal: User::"alice", action: Action::"read", resource: Doc::"d", context: {env: prod}}
    expect: allow
""")
    code, out, _ = run("tests")
    assert code == 2 and "tests/f.test.yaml: names no policies: add `policies:` to it or pass --policies" in out
    code, out, _ = run("tests", "--policies", "policies", "--entities", "people.entities.json")
    assert (code, out.splitlines()[-1]) == (0, "1 passed, 0 failed")


@pytest.mark.parametrize("text, message", [
    ("cases: [\n  {name: x\n", "tests/bad.test.yaml:3:1: invalid YAML: expected ',' or '}', but got '<stream end>'"),
    ("- 1\n- 2\n", "tests/bad.test.yaml:1:1: a test file is a mapping with `cases`, not a list"),
    ("policies: ../policies\ncases: []\n", "tests/bad.test.yaml: `cases` is a non-empty list of cases, not a list"),
    ("policies: ../policies\ncase: []\n", "tests/bad.test.yaml: unknown field `case`"),
    ("policies: ../missing\ncases: [{name: x, request: {principal: A::\"a\", action: A::\"b\", resource: A::\"c\"}, "
     "expect: deny}]\n", "missing: no such file or folder"),
    ('{"policies": "../policies", "cases": [}', "tests/bad.test.yaml:1:39: invalid YAML"),
])
def test_a_file_that_cannot_run_is_an_error(project, text, message):
    write(project / "tests" / "bad.test.yaml", text)
    code, out, _ = run("tests/bad.test.yaml")
    assert code == 2
    assert out.startswith("tests/bad.test.yaml E\n\nERROR tests/bad.test.yaml\n")
    assert message in out
    assert out.endswith("0 passed, 0 failed, 1 error\n")


def test_a_bad_case_is_an_error_and_the_others_run(project):
    write(project / "tests" / "c.test.yaml", """\
policies: ../policies
x-note: fields starting with x- are ignored
cases:
  - name: fine
    request: {principal: User::"alice", action: Action::"read", resource: Doc::"d", context: {env: prod}}
    expect: allow
  - name: unknown expect
    request: {principal: User::"alice", action: Action::"read", resource: Doc::"d"}
    expect: maybe
  - name: unknown field
    request: {principal: User::"alice", action: Action::"read", resource: Doc::"d"}
    expect: deny
    decision: deny
  - name: not a uid
    request: {principal: User::alice, action: Action::"read", resource: Doc::"d"}
    expect: deny
  - name: a date
    request: {principal: User::"alice", action: Action::"read", resource: Doc::"d", context: {day: 2026-01-02}}
    expect: deny
  - name: reason of an allow
    request: {principal: User::"alice", action: Action::"read", resource: Doc::"d"}
    expect: allow
    reason: no_permitting_policy
  - name: fine
    request: {principal: User::"alice", action: Action::"read", resource: Doc::"d"}
    expect: deny
  - name: bad entities
    request: {principal: User::"alice", action: Action::"read", resource: Doc::"d"}
    entities: [{uid: {type: Doc}}]
    expect: deny
  - request: {principal: User::"alice", action: Action::"read", resource: Doc::"d"}
    expect: deny
""")
    code, out, _ = run("tests/c.test.yaml", "--junit", "j.xml")
    assert code == 2
    assert out.splitlines()[0] == "tests/c.test.yaml .EEEEEEEE"
    for expected in [
        "ERROR tests/c.test.yaml::unknown expect (tests/c.test.yaml:7)\n  `expect` is `allow` or `deny`, not `maybe`",
        "ERROR tests/c.test.yaml::unknown field (tests/c.test.yaml:10)\n  unknown case field `decision`",
        "ERROR tests/c.test.yaml::not a uid (tests/c.test.yaml:14)\n  cannot decide: `principal`: expected an "
        'entity uid like `Type::"id"`, got `User::alice`',
        "ERROR tests/c.test.yaml::a date (tests/c.test.yaml:17)\n"
        "  `2026-01-02` is a YAML date, not a string (quote it)",
        "  `reason` is only for `expect: deny`",
        "ERROR tests/c.test.yaml::fine (tests/c.test.yaml:24)\n"
        "  duplicate case name `fine` (first at tests/c.test.yaml:4)",
        'ERROR tests/c.test.yaml::bad entities (tests/c.test.yaml:27)\n  tests/c.test.yaml:27: entities of case '
        '`bad entities`: entity: no "attrs"',
        "ERROR tests/c.test.yaml::case 9 (tests/c.test.yaml:31)\n  a case needs a `name`",
    ]:
        assert expected in out
    assert out.endswith("1 passed, 0 failed, 8 errors\n")
    assert len(ET.parse(project / "j.xml").getroot().findall("./testsuite/testcase/error")) == 8


def test_yaml_aliases_are_bounded(project):
    bomb = "x-a: &a [1, 1, 1, 1, 1, 1, 1, 1, 1, 1]\n" + "".join(
        f"x-{c}: &{c} [" + ", ".join([f"*{p}"] * 10) + "]\n" for p, c in zip("abcdefg", "bcdefgh"))
    write(project / "tests" / "bomb.test.yaml", "policies: ../policies\n" + bomb + """\
cases:
  - name: bomb
    request: {principal: User::"alice", action: Action::"read", resource: Doc::"d", context: {x: *h}}
    expect: deny
""")
    code, out, _ = run("tests")
    assert code == 2 and "  more than 100000 values" in out


def test_policies_that_do_not_compile_are_an_error(project):
    write(project / "policies" / "broken.cedar", "permit(principal, action, resource) when { 1 + };\n")
    write(project / "tests" / "t.test.yaml", """\
policies: ../policies
cases:
  - name: any
    request: {principal: User::"alice", action: Action::"read", resource: Doc::"d"}
    expect: deny
""")
    code, out, _ = run("tests")
    assert code == 2
    assert "  tests/t.test.yaml: its policies do not compile:\n  policies/broken.cedar:1:" in out


def test_usage_errors(project):
    code, _, err = run("nope.test.yaml")
    assert (code, err) == (2, "authz: nope.test.yaml: no such file or folder\n")
    code, _, err = run("policies")  # a folder without test files
    assert code == 2 and "no test files found" in err


def test_as_a_subprocess_the_exit_status_is_the_same(project):
    """The installed entry point: `python -m authz test`."""
    write(project / "tests" / "t.test.yaml", """\
policies: ../policies
cases:
  - name: deny expected, allowed
    request: {principal: User::"alice", action: Action::"read", resource: Doc::"d", context: {env: prod}}
    expect: deny
""")
    env = {"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"}
    result = subprocess.run([sys.executable, "-m", "authz", "test", "tests"], cwd=project, env=env,
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 1, result.stderr
    assert result.stdout.endswith("0 passed, 1 failed\n")


def test_json_test_files_are_read_as_json(project):
    """Indented with tabs (which YAML refuses), and with their syntax errors placed."""
    doc = {"policies": "../policies", "cases": [{"name": "reads in prod", "expect": "allow", "request": {
        "principal": 'User::"alice"', "action": 'Action::"read"', "resource": 'Doc::"d"', "context": {"env": "prod"}}}]}
    write(project / "tests" / "t.test.json", json.dumps(doc, indent="\t"))
    code, out, _ = run("tests")
    assert (code, out.splitlines()[-1]) == (0, "1 passed, 0 failed")
    write(project / "tests" / "t.test.json", '{"policies": "../policies",\n "cases": [,]}')
    code, out, _ = run("tests")
    assert code == 2 and "tests/t.test.json:2:12: invalid JSON: Expecting value" in out
