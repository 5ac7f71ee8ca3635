"""The policy set's content digest (authz.compiler.digest): the same folder content gives the same digest
on every node, whatever the order files are listed in, the folder's path or PYTHONHASHSEED; any change
to a source changes it; the index keeps it beside its generation (Engine.policy_digest)."""
import json
import os
import shutil
import subprocess
import sys

import authz
from authz.engine.index import digest_key, open_env, release_env

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

FILES = {
    "a.cedar": 'permit(principal, action == Action::"read", resource);\n',
    "sub/b.cedar": 'forbid(principal == User::"eve", action, resource);\n',
    "sub/c.cedar": 'permit(principal in Group::"ops", action, resource);\n',
    "entities.json": json.dumps([{"uid": {"type": "User", "id": "bob"}, "attrs": {},
                                  "parents": [{"type": "Group", "id": "ops"}]},
                                 {"uid": {"type": "Group", "id": "ops"}, "attrs": {}, "parents": []}]),
}


def _write(folder, order):
    for name in order:
        path = os.path.join(folder, name)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "w") as fh:
            fh.write(FILES[name])


def _digest_in_child(folder, db, seed, cwd):
    """Compile `folder` into `db` in a fresh interpreter with PYTHONHASHSEED=`seed`; its digest."""
    code = ("import authz, sys; authz.compile([sys.argv[1]], db=sys.argv[2]); "
            "e = authz.Engine(sys.argv[2]); print(e.policy_digest); e.close()")
    env = dict(os.environ, PYTHONHASHSEED=str(seed), PYTHONPATH=ROOT)
    out = subprocess.run([sys.executable, "-c", code, folder, db], env=env, cwd=cwd, capture_output=True,
                         text=True, timeout=120, check=True)
    return out.stdout.strip()


def test_same_content_same_digest_across_file_order_paths_and_hash_seeds(tmp_path):
    one, two = tmp_path / "node1" / "policies", tmp_path / "node2" / "elsewhere" / "policies"
    _write(one, sorted(FILES))
    _write(two, sorted(FILES, reverse=True))
    first = _digest_in_child(str(one), str(tmp_path / "db1"), 1, str(tmp_path))
    second = _digest_in_child(str(two), str(tmp_path / "db2"), 4242, str(two))
    assert len(first) == 64 and int(first, 16) >= 0
    assert first == second


def test_any_change_changes_the_digest(tmp_path):
    folder = tmp_path / "policies"
    _write(folder, sorted(FILES))
    db = str(tmp_path / "db")
    seen = set()
    authz.compile([str(folder)], db=db)
    with authz.Engine(db) as engine:
        seen.add(engine.policy_digest)
        (folder / "sub" / "c.cedar").write_text(FILES["sub/c.cedar"] + "// a comment\n")  # a policy file
        engine.refresh(), authz.compile([str(folder)], db=db), engine.refresh()
        seen.add(engine.policy_digest)
        (folder / "entities.json").write_text(FILES["entities.json"] + "\n")  # an entity file
        authz.compile([str(folder)], db=db), engine.refresh()
        seen.add(engine.policy_digest)
        os.rename(folder / "sub" / "c.cedar", folder / "c.cedar")  # a file moved: its name is in the digest
        authz.compile([str(folder)], db=db), engine.refresh()
        seen.add(engine.policy_digest)
        generation = engine.generation
        assert engine.digest_of(generation) == engine.policy_digest
        assert engine.digest_of(generation - 3) in seen
    assert len(seen) == 4


def test_the_digest_key_goes_with_its_generation_and_old_indexes_have_none(tmp_path):
    folder = tmp_path / "policies"
    _write(folder, sorted(FILES))
    db = str(tmp_path / "db")
    authz.compile([str(folder)], db=db)
    authz.compile([str(folder)], db=db)
    env = open_env(db, create=False)
    try:
        with env.begin() as txn:
            assert txn.get(digest_key(1)) is None  # removed with generation 1
            assert len(txn.get(digest_key(2))) == 64
        with env.begin(write=True) as txn:  # as an index written before digests were
            txn.delete(digest_key(2))
    finally:
        release_env(env)
    with authz.Engine(db) as engine:
        assert engine.generation == 2 and engine.policy_digest == ""


def test_the_same_content_compiled_from_files_given_one_by_one(tmp_path):
    """Files given by name are named by their base name: a flat folder given as its files digests as the folder."""
    folder = tmp_path / "flat"
    folder.mkdir()
    (folder / "a.cedar").write_text(FILES["a.cedar"])
    (folder / "entities.json").write_text(FILES["entities.json"])
    authz.compile([str(folder)], db=str(tmp_path / "db1"))
    authz.compile([str(folder / "entities.json"), str(folder / "a.cedar")], db=str(tmp_path / "db2"))
    with authz.Engine(str(tmp_path / "db1")) as e1, authz.Engine(str(tmp_path / "db2")) as e2:
        assert e1.policy_digest == e2.policy_digest != ""
    shutil.rmtree(folder)
