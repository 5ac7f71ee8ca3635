"""An index removed and compiled again at the same path is another index, in the same process: nothing
that names an index by its path or by its generation number (both start over) may mistake the new one
for the old one."""

import shutil

import authz

REQUEST = dict(principal='A::"a"', action='Action::"x"', resource='R::"r"', context={})


def _compile(tmp_path, effect):
    (tmp_path / "p.cedar").write_text(f"{effect}(principal, action, resource);")
    authz.compile([str(tmp_path / "p.cedar")], db=str(tmp_path / "db"))


def test_a_new_engine_opens_the_new_index(tmp_path):
    _compile(tmp_path, "permit")
    old = authz.Engine(str(tmp_path / "db"))
    assert old.check(**REQUEST).decision == "allow"
    shutil.rmtree(tmp_path / "db")
    _compile(tmp_path, "forbid")
    new = authz.Engine(str(tmp_path / "db"))
    assert (new.generation, new.check(**REQUEST).decision) == (1, "deny")
    old.close()
    new.close()


def test_an_open_engine_follows_the_replacement(tmp_path):
    _compile(tmp_path, "permit")
    engine = authz.Engine(str(tmp_path / "db"))
    assert (engine.generation, engine.check(**REQUEST).decision) == (1, "allow")
    shutil.rmtree(tmp_path / "db")
    _compile(tmp_path, "forbid")  # generation 1 again, in another file
    engine.refresh()
    assert (engine.generation, engine.check(**REQUEST).decision) == (1, "deny")
    _compile(tmp_path, "permit")
    engine.refresh()
    assert (engine.generation, engine.check(**REQUEST).decision) == (2, "allow")
    engine.close()
