"""Differential tests on policy sets shaped like real repositories: many files of look-alike policies.

A forbid once compiled as a permit because the compiler's per-shape cache was keyed by the identity of a
parsed object that a later file's parse reused; every generated case then had at most two files, so no
test met the shape that triggers it. Here each case spreads its policies over 5-40 files (a few shapes,
each repeated with other literals, permits and forbids alternating between files) and is compiled both
as a folder and as a list of files in a shuffled order; the slow test compiles over 1,000 policies in
20+ files against over 1,000 entities. Every request is compared with cedarpy (decision, determining
policies, errored policies), and Engine.check with Engine.check_batch.

tests/test_hash_seeds.py runs this module again under several PYTHONHASHSEED values.
"""

import os

import pytest
from hypothesis import given

import cedar_gen as cg
from test_differential import SCALE, _settings, check_case

REPO_CASES = 120
FILE_LIST_CASES = 60
LARGE_CASES = 3


def test_repo_folder(authz_harness):
    """5-40 files of look-alike policies, compiled as a folder."""
    ran = []

    @_settings(REPO_CASES)
    @given(case=cg.repo_cases())
    def run(case):
        ran.append(1)
        check_case(authz_harness, cg.policy_files(case), cg.entity_files(case), case["requests"])

    run()
    assert len(ran) >= int(REPO_CASES * SCALE)


def test_repo_file_list(authz_harness):
    """The same shape of case, compiled as a list of files in a shuffled order."""
    ran = []

    @_settings(FILE_LIST_CASES)
    @given(case=cg.repo_cases(), order=cg.st.randoms(use_true_random=False))
    def run(case, order):
        ran.append(1)
        files = cg.policy_files(case)
        order.shuffle(files)
        check_case(authz_harness, files, cg.entity_files(case), case["requests"], as_files=True)

    run()
    assert len(ran) >= int(FILE_LIST_CASES * SCALE)


@pytest.mark.slow
def test_repo_large(authz_harness):
    """Over 1,000 policies in 20-40 files against over 1,000 entities, 20-40 requests a case."""
    ran = []

    @_settings(LARGE_CASES)
    @given(case=cg.repo_cases(min_files=20, max_files=40, max_per_file=60, min_policies=1000,
                              extra_entities=1000, requests=(20, 40)))
    def run(case):
        assert len(case["policies"]) >= 1000 and len(case["entities"]) >= 1000
        assert len(cg.policy_files(case)) >= 20
        ran.append(1)
        check_case(authz_harness, cg.policy_files(case), cg.entity_files(case), case["requests"])

    run()
    assert len(ran) >= max(1, int(LARGE_CASES * SCALE))


# -- the reproductions of the miscompile, as they were reported --------------------------------------

def _write(folder, name, text):
    path = os.path.join(folder, name)
    with open(path, "w", encoding="utf-8") as fh:
        fh.write(text)
    return path


def test_forbid_in_a_later_file_stays_a_forbid(tmp_path):
    """An allow-all file, then four files of ten look-alike policies, permits and forbids alternating:
    each forbid must deny its principal (it once compiled as a permit, or the compile died)."""
    import authz

    src = tmp_path / "q"
    src.mkdir()
    _write(src, "000_all.cedar", '@id("allow-all")\npermit(principal, action, resource);\n')
    for i in range(4):
        eff = "forbid" if i % 2 else "permit"
        _write(src, f"f{i:03d}.cedar", "".join(
            f'@id("{eff}-{i}-{j}")\n{eff}(principal == Agent::"p{i}_{j}", action, resource) '
            f'when {{ context has k{i}_{j} || true }};\n' for j in range(10)))
    for srcs in ([str(src)], sorted(str(p) for p in src.iterdir())[::-1]):
        db = str(tmp_path / f"db{len(srcs)}")
        authz.compile(srcs, db=db)
        engine = authz.Engine(db)
        for i in range(4):
            for j in range(10):
                d = engine.check(principal=f'Agent::"p{i}_{j}"', action='Action::"x"', resource='Tool::"y"', context={})
                if i % 2:
                    assert (d.decision, d.policies) == ("deny", [f"forbid-{i}-{j}"])
                else:
                    assert (d.decision, sorted(d.policies)) == ("allow", sorted(["allow-all", f"permit-{i}-{j}"]))
        engine.close()


def test_placeholder_lookalike_literal_is_an_ordinary_string(tmp_path):
    """A file whose literal looks like the compiler's own placeholder, next to a file whose shape has that
    placeholder: each keeps its own meaning, in either order."""
    import authz

    a = _write(tmp_path, "a.cedar", 'permit(principal == Agent::"@@authz:0@@", action, resource);\n')
    b = _write(tmp_path, "b.cedar", 'forbid(principal == Agent::"x", action, resource);\n'
                                    'permit(principal == Agent::"x", action, resource);\n')
    for n, order in enumerate(([a, b], [b, a])):
        db = str(tmp_path / f"db{n}")
        authz.compile(order, db=db)
        engine = authz.Engine(db)
        d = engine.check(principal='Agent::"@@authz:0@@"', action='Action::"x"', resource='Tool::"y"', context={})
        assert (d.decision, d.policies) == ("allow", ["a.cedar:0"])
        d = engine.check(principal='Agent::"x"', action='Action::"x"', resource='Tool::"y"', context={})
        assert (d.decision, d.policies) == ("deny", ["b.cedar:0"])
        engine.close()
