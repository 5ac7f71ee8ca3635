"""Bad policies, entities and index paths: clear one-line errors, exit 2, and no change to a stored index."""

import json
import os
import subprocess
import sys

import pytest

import authz
from authz.errors import CompileError, IndexUnavailableError

GOOD = 'permit(principal == User::"alice", action, resource);\n'


def run_cli(*args, stdin=None):
    return subprocess.run([sys.executable, "-m", "authz", *args], input=stdin, capture_output=True, text=True, timeout=60)


def write(path, text):
    path.write_text(text, encoding="utf-8")
    return str(path)


@pytest.fixture(autouse=True)
def _in_tmp_path(tmp_path, monkeypatch):
    """Messages name files relative to the current directory: here, the test's folder."""
    monkeypatch.chdir(tmp_path)


def test_malformed_cedar_reports_file_line_col_for_each_error(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    write(src / "bad.cedar", GOOD + "\npermit(principal, action, resource) when { 1 + };\n"
                                    "permit(principal, action, resource) when { foo(1) };\n")
    result = run_cli("compile", str(src), "--db", str(tmp_path / "db"))
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert lines[0].startswith("src/bad.cedar:3:") and "unexpected token" in lines[0]
    assert lines[1].startswith("src/bad.cedar:4:") and "foo" in lines[1]
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "db").exists() or not os.listdir(tmp_path / "db")


def test_error_column_points_at_the_offending_token(tmp_path):
    path = write(tmp_path / "p.cedar", "permit(principal, action, resource) when { 1 + };")
    with pytest.raises(CompileError) as err:
        authz.compile([path], db=str(tmp_path / "db"))
    (message,) = err.value.diagnostics
    # cedarpy's parser notices the dangling `+` at the `}` or the `;` right after it.
    assert message in ("p.cedar:1:48: unexpected token `}`", "p.cedar:1:49: unexpected token `}`")


def test_template_is_an_unsupported_construct_with_location(tmp_path):
    path = write(tmp_path / "t.cedar", GOOD + "permit(principal == ?principal, action, resource);\n")
    with pytest.raises(CompileError) as err:
        authz.compile([path], db=str(tmp_path / "db"))
    (message,) = err.value.diagnostics
    assert message.startswith("t.cedar:2:1: unsupported construct `template slot`")


def test_entities_cedarpy_rejects_are_rejected(tmp_path):
    write(tmp_path / "p.cedar", GOOD)
    dup = [{"uid": {"type": "User", "id": "a"}, "attrs": {}, "parents": []},
           {"uid": {"type": "User", "id": "a"}, "attrs": {"x": 1}, "parents": []}]
    write(tmp_path / "entities.json", json.dumps(dup))
    with pytest.raises(CompileError) as err:
        authz.compile([str(tmp_path)], db=str(tmp_path / "db"))
    assert err.value.diagnostics == ['entities.json: duplicate entity entry `User::"a"`']


def _entity(**fields):
    return {"uid": {"type": "User", "id": "a"}, "attrs": {}, "parents": [], **fields}


def _entity_diagnostics(tmp_path, entities):
    """The compile's diagnostics for a file of a good entity (line 2) then `entities`, one a line from line 3."""
    lines = [json.dumps(e) for e in [_entity(uid={"type": "Ok", "id": "x"})] + entities]
    write(tmp_path / "entities.json", "[\n" + ",\n ".join(lines) + "\n]")
    with pytest.raises(CompileError) as err:
        authz.compile([str(tmp_path / "entities.json")], db=str(tmp_path / "db"))
    return err.value.diagnostics


@pytest.mark.parametrize(("entity", "problem"), [
    (_entity(attrs={"x": 1.5}), 'entity `User::"a"`: attribute `x`: 1.5 is a number with a fraction or exponent; '
                                "Cedar numbers are integers"),
    (_entity(attrs={"x": None}), 'entity `User::"a"`: attribute `x`: null is not a Cedar value'),
    (_entity(attrs={"x": {"y": [1, None]}}), 'entity `User::"a"`: attribute `x.y[1]`: null is not a Cedar value'),
    (_entity(attrs={"x": 2**63}), 'entity `User::"a"`: attribute `x`: the integer 9223372036854775808 is outside'),
    (_entity(attrs={"x": {"__extn": {"fn": "ip", "arg": "zz"}}}),
     'entity `User::"a"`: attribute `x`: ip("zz"): Cedar cannot read "zz" as an IP address'),
    (_entity(attrs={"x": {"__extn": {"fn": "nope", "arg": "1"}}}),
     'entity `User::"a"`: attribute `x`: "nope" is not a Cedar extension function'),
    (_entity(tags={"t": 0.5}), 'entity `User::"a"`: tag `t`: 0.5 is a number with a fraction'),
    (_entity(attrs=[]), 'entity `User::"a"`: "attrs" must be a record (JSON object), not a set (JSON array)'),
    ({"uid": {"type": "User", "id": "a"}, "parents": []}, 'entity `User::"a"`: no "attrs"'),
    (_entity(parents=['Group::"g"']), 'entity `User::"a"`: parent "Group::\\"g\\"": an entity reference is a record'),
    (_entity(uid={"type": "User", "id": None}), 'entity: "uid": an entity reference needs "id", a string, not null'),
    (_entity(uid={"type": "if", "id": "a"}), 'entity: "uid": `if` is not a Cedar entity type name'),
    ([1], 'entity: an entity is a record (JSON object) with "uid", "attrs" and "parents", not a set (JSON array)'),
])
def test_an_entity_cedar_rejects_is_named_with_its_place_and_what_is_wrong(tmp_path, entity, problem):
    (message,) = _entity_diagnostics(tmp_path, [entity])
    assert message.startswith(f"entities.json:3:2: {problem}"), message
    assert not any(name in message for name in ("NoneType", "float", "dict", "list", "deserialization"))


def test_rejected_entities_are_listed_up_to_a_bound(tmp_path):
    from authz.compiler.entity_errors import MAX_REPORTED

    bad = [_entity(uid={"type": "User", "id": str(i)}, attrs={"x": None}) for i in range(MAX_REPORTED + 5)]
    diagnostics = _entity_diagnostics(tmp_path, bad)
    assert len(diagnostics) == MAX_REPORTED + 1 and "more entities are rejected" in diagnostics[-1]
    assert [d.split(": ")[1] for d in diagnostics[:3]] == ['entity `User::"0"`', 'entity `User::"1"`',
                                                           'entity `User::"2"`']


def test_a_key_named_twice_is_placed(tmp_path):
    write(tmp_path / "entities.json",
          '[\n{"uid": {"type": "User", "id": "a"}, "attrs": {"x": 1, "x": 2}, "parents": []}]')
    with pytest.raises(CompileError) as err:
        authz.compile([str(tmp_path / "entities.json")], db=str(tmp_path / "db"))
    assert err.value.diagnostics == ['entities.json:2:1: entity `User::"a"`: a JSON object in it names the same '
                                     'key twice']


def test_an_entity_defined_differently_in_two_files_names_both(tmp_path):
    write(tmp_path / "a.entities.json", json.dumps([_entity()]))
    write(tmp_path / "b.entities.json", json.dumps([_entity(attrs={"x": 1})]))
    with pytest.raises(CompileError) as err:
        authz.compile([str(tmp_path)], db=str(tmp_path / "db"))
    assert err.value.diagnostics == ['b.entities.json: entity `User::"a"` is also defined, differently, in '
                                     'a.entities.json']


def test_entity_file_that_is_not_json_is_placed(tmp_path):
    write(tmp_path / "p.cedar", GOOD)
    write(tmp_path / "a.entities.json", '[\n  {"uid": {"type": "User", "id": "a"},}\n]')
    write(tmp_path / "b.entities.json", '{"uid": {"type": "User", "id": "a"}}')
    with pytest.raises(CompileError) as err:
        authz.compile([str(tmp_path)], db=str(tmp_path / "db"))
    assert err.value.diagnostics == ["a.entities.json:2:39: Expecting property name enclosed in double quotes",
                                     "b.entities.json: an entity file is a JSON array of entities, not a record "
                                     "(JSON object)"]


def test_duplicate_policy_ids_are_an_error(tmp_path):
    path = write(tmp_path / "p.cedar", '@id("x")\n' + GOOD + '@id("x")\n' + GOOD)
    with pytest.raises(CompileError) as err:
        authz.compile([path], db=str(tmp_path / "db"))
    assert "duplicate policy id `x`" in err.value.diagnostics[0]


def test_missing_source_and_unknown_file_kind(tmp_path):
    other = write(tmp_path / "notes.txt", "hello")
    with pytest.raises(CompileError) as err:
        authz.compile([str(tmp_path / "nope"), other], db=str(tmp_path / "db"))
    assert len(err.value.diagnostics) == 2


def test_failed_compile_leaves_the_index_untouched(tmp_path):
    db = str(tmp_path / "db")
    good = write(tmp_path / "good.cedar", GOOD)
    assert authz.compile([good], db=db) == 1
    bad = write(tmp_path / "bad.cedar", "permit(")
    with pytest.raises(CompileError):
        authz.compile([good, bad], db=db)
    with authz.Engine(db) as engine:
        assert engine.generation == 1
        assert engine.check('User::"alice"', 'Action::"a"', 'R::"r"').allowed


@pytest.mark.parametrize("kind", ["missing", "file", "empty-dir", "not-lmdb"])
def test_unusable_index_path_is_one_line_without_traceback(tmp_path, kind):
    db = tmp_path / "db"
    if kind == "file":
        db.write_text("not an index")
    elif kind == "empty-dir":
        db.mkdir()
    elif kind == "not-lmdb":
        db.mkdir()
        (db / "data.mdb").write_bytes(b"\x00garbage" * 1000)
    result = run_cli("check", "--db", str(db), "--request", "{}")
    assert result.returncode == 2
    assert len(result.stderr.strip().splitlines()) == 1
    assert result.stderr.startswith("authz: ")
    with pytest.raises(IndexUnavailableError):
        authz.Engine(str(db))


def test_corrupted_generation_is_refused(tmp_path):
    import lmdb

    db = str(tmp_path / "db")
    authz.compile([write(tmp_path / "p.cedar", GOOD)], db=db)
    env = lmdb.open(db, subdir=True)
    with env.begin(write=True) as txn:
        key = b"gen/%016x" % 1
        blob = bytearray(txn.get(key))
        blob[len(blob) // 2] ^= 0xFF
        txn.put(key, bytes(blob))
    env.close()
    with pytest.raises(IndexUnavailableError, match="corrupted"):
        authz.Engine(db)
    result = run_cli("check", "--db", db, "--request", "{}")
    assert result.returncode == 2 and "corrupted" in result.stderr and "Traceback" not in result.stderr


def test_bad_string_escape_points_at_the_escape(tmp_path):
    path = write(tmp_path / "e.cedar", GOOD + 'permit(principal == User::"a\\qb", action, resource);\n')
    with pytest.raises(CompileError) as err:
        authz.compile([path], db=str(tmp_path / "db"))
    assert err.value.diagnostics == ["e.cedar:2:29: the input `\\q` is not a valid escape"]


def test_brackets_nested_past_cedarpys_parser_are_refused_not_crashed(tmp_path):
    # cedarpy's parser takes the whole process down near 680 levels; authz refuses before calling it.
    deep = "[" * 600 + "]" * 600
    path = write(tmp_path / "d.cedar", GOOD + f"permit(principal, action, resource) when {{ {deep} == [] }};\n")
    with pytest.raises(CompileError) as err:
        authz.compile([path], db=str(tmp_path / "db"))
    (message,) = err.value.diagnostics
    assert message.startswith("d.cedar:2:") and "nested too deeply" in message


def test_long_expression_chains_compile_and_evaluate(tmp_path):
    terms = 1500
    path = write(tmp_path / "c.cedar", "permit(principal, action, resource) when { "
                 + " + ".join(["1"] * terms) + f" == {terms} }};\n")
    authz.compile([path], db=str(tmp_path / "db"))
    with authz.Engine(str(tmp_path / "db")) as engine:
        assert engine.check('A::"a"', 'A::"a"', 'A::"a"').policies == ["c.cedar:0"]


@pytest.mark.parametrize("record", ['{"ab": 1, "ab": 2}', '{ab: 1, "ab": 2}', '{"x": {"ab": 1, ab: context}}'])
def test_a_record_literal_naming_a_key_twice_is_refused(tmp_path, record):
    """Quoted keys are literals the compiler parses as placeholders, so only their values show the
    duplicate cedarpy refuses; a look-alike policy with distinct keys beside it still compiles."""
    import cedarpy

    text = GOOD + 'permit(principal, action, resource) when { {"a": 1, "b": 2} != %s };\n' % record
    with pytest.raises(ValueError, match="duplicate key `ab`"):
        cedarpy.policies_to_json_str(text)
    with pytest.raises(CompileError, match=r"p.cedar:2:1: duplicate key `ab` in record literal"):
        authz.compile([write(tmp_path / "p.cedar", text)], db=str(tmp_path / "db"))


def test_messages_name_files_as_the_user_can_open_them_and_ids_stay_relative_to_the_folder(tmp_path):
    work, elsewhere = tmp_path / "work", tmp_path / "elsewhere"
    (work / "nested" / "sub").mkdir(parents=True)
    elsewhere.mkdir()
    write(work / "nested" / "sub" / "a.cedar", GOOD)
    write(work / "nested" / "sub" / "bad.cedar", "permit(principal, action, resource) when { 1 + };")
    write(work / "nested" / "sub" / "x.entities.json", "[")
    for cwd, src, shown in ((work, "nested/", "nested/sub/"), (work / "nested", ".", "sub/"),
                            (elsewhere, "../work/nested", f"{work}/nested/sub/")):
        result = subprocess.run([sys.executable, "-m", "authz", "compile", src, "--db", str(tmp_path / "db")],
                                cwd=cwd, capture_output=True, text=True, timeout=60)
        assert result.returncode == 2
        lines = result.stderr.splitlines()
        assert [line.split(":")[0] for line in lines] == [shown + "bad.cedar", shown + "x.entities.json"], lines
    (work / "nested" / "sub" / "bad.cedar").unlink()
    (work / "nested" / "sub" / "x.entities.json").unlink()
    authz.compile([str(work / "nested")], db=str(tmp_path / "db"))
    with authz.Engine(str(tmp_path / "db")) as engine:
        assert engine.check('User::"alice"', 'A::"a"', 'A::"a"').policies == ["sub/a.cedar:0"]
