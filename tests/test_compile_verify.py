"""The publish-time check (authz/compiler/verify.py): a compile whose records say something other than their
policies' own parse is refused, naming the policy, and nothing is published.

The faults are injected into the lowering side only (the side the check must not trust): a template cache
that confuses shapes, as the one keyed by id() did, a flipped effect byte, literals patched into the wrong
holes. Each must be caught; an honest compile of the same files must pass.
"""

import pytest
from click.testing import CliRunner

import authz
import authz.compiler as compiler
from authz.cli import main as cli
from authz.compiler.lower import Template
from authz.errors import CompileError

REQUEST = dict(principal='Agent::"p1_3"', action='Action::"x"', resource='Tool::"y"', context={})


def _policies(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    (src / "000_all.cedar").write_text('@id("allow-all")\npermit(principal, action, resource);\n')
    for i in range(3):
        eff = "forbid" if i % 2 else "permit"
        (src / f"f{i}.cedar").write_text("".join(
            f'@id("{eff}-{i}-{j}")\n{eff}(principal == Agent::"p{i}_{j}", action, resource) '
            f'when {{ context has "k{i}_{j}" || {i} < {j} }};\n' for j in range(5)))
    return src


def _published(tmp_path, src):
    """A db holding an honest generation of `src`, and its engine."""
    db = str(tmp_path / "db")
    authz.compile([str(src)], db=db)
    engine = authz.Engine(db)
    assert engine.check(**REQUEST).decision == "deny"
    return db, engine


def _confused_cache(monkeypatch):
    """Every policy with the same number of literals gets the first such shape's template."""
    real, by_count = compiler._template_of, {}

    def confused(lowering, source):
        n = len(source.literals)
        if n not in by_count:
            by_count[n] = real(lowering, source)
        return by_count[n]

    monkeypatch.setattr(compiler, "_template_of", confused)


def _assert_refused(tmp_path, src, db, engine, match):
    generation = engine.generation
    with pytest.raises(CompileError) as err:
        authz.compile([str(src)], db=db)
    text = str(err.value)
    assert "internal compiler error" in text and "nothing was published" in text
    assert match in text
    engine.refresh()
    assert engine.generation == generation
    assert engine.check(**REQUEST).decision == "deny"


def test_a_template_of_another_shape_is_refused(tmp_path, monkeypatch):
    src = _policies(tmp_path)
    db, engine = _published(tmp_path, src)
    _confused_cache(monkeypatch)
    _assert_refused(tmp_path, src, db, engine, "forbid-1-")


def test_a_flipped_effect_is_refused(tmp_path, monkeypatch):
    src = _policies(tmp_path)
    db, engine = _published(tmp_path, src)
    real = Template.instantiate

    def flipped(self, literals, symbols):
        record, keys, policy_id = real(self, literals, symbols)
        if policy_id == "forbid-1-3":
            record = bytes([record[0] ^ 1]) + bytes(record[1:])
        return record, keys, policy_id

    monkeypatch.setattr(Template, "instantiate", flipped)
    _assert_refused(tmp_path, src, db, engine, "`forbid-1-3` compiled into something else (a permit, not a forbid)")


def test_literals_in_the_wrong_holes_are_refused(tmp_path, monkeypatch):
    src = _policies(tmp_path)
    db, engine = _published(tmp_path, src)
    real = Template.instantiate

    def shuffled(self, literals, symbols):
        if len(literals) > 2:
            literals = (literals[0], literals[2], literals[1]) + tuple(literals[3:])
        return real(self, literals, symbols)

    monkeypatch.setattr(Template, "instantiate", shuffled)
    _assert_refused(tmp_path, src, db, engine, "internal compiler error")


def test_wrong_index_keys_are_refused(tmp_path, monkeypatch):
    src = _policies(tmp_path)
    db, engine = _published(tmp_path, src)
    real = Template.instantiate

    def unscoped(self, literals, symbols):
        record, keys, policy_id = real(self, literals, symbols)
        return record, dict(keys, principal=None), policy_id

    monkeypatch.setattr(Template, "instantiate", unscoped)
    _assert_refused(tmp_path, src, db, engine, "its index keys are not its scope's")


def test_the_cli_exits_2_naming_the_policy(tmp_path, monkeypatch):
    src = _policies(tmp_path)
    db, engine = _published(tmp_path, src)
    _confused_cache(monkeypatch)
    result = CliRunner().invoke(cli, ["compile", str(src), "--db", db])
    assert result.exit_code == 2, result.output
    assert "internal compiler error: policy `forbid-1-" in result.output


def test_an_honest_compile_of_every_construct_passes(tmp_path):
    """The check accepts what the compiler makes of each construct (no false alarm)."""
    (tmp_path / "p.cedar").write_text('''
@id("all-constructs")
permit(principal is User in Group::"g", action in [Action::"read", Action::"write"], resource is Doc)
when { context.n + 1 > -2 * 3 && context.s like "a*b\\*c*" && ["x", User::"u", {a: 1, "b c": [true]}].contains(context.s) }
when { if principal has team then principal.team == "t" else !(resource in Folder::"f") }
unless { ip("10.0.0.1").isInRange(ip("10.0.0.0/8")) || decimal("1.5").lessThan(decimal("2.0")) || principal is Admin in Group::"g" }
when { resource.hasTag("env") && resource.getTag("env") != "prod" && context.set.isEmpty() && context.set.containsAll([1]) }
when { datetime("2024-01-01").offset(duration("1h")) > datetime("2023-01-01") && context["@@x"] == {} };
forbid(principal == User::"@@authz:0@@", action == Action::"x", resource in Folder::"@@authz:1@@");
''')
    authz.compile([str(tmp_path / "p.cedar")], db=str(tmp_path / "db"))
