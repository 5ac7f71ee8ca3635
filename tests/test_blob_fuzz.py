"""A damaged generation blob never crashes the evaluator: it raises IndexFormatError or decides.

The CRC refuses damaged blobs at load; this checks the bounds checks behind it, byte by byte.
"""

import json

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from authz import _evaluator
from authz.compiler import compile_generation

POLICIES = '''@id("p")
permit(principal in Group::"g", action in [Action::"read", Action::"write"], resource is Doc in Folder::"f")
when { context.level > 2 && principal.tags.contains("x") && resource.owner == principal };
forbid(principal, action, resource) when { resource.hasTag("secret") || context.s like "a*b" };
permit(principal == User::"u", action, resource) when { ip("10.0.0.1").isInRange(ip("10.0.0.0/8")) };
'''
ENTITIES = [
    {"uid": {"type": "User", "id": "u"}, "attrs": {"tags": ["x"]}, "parents": [{"type": "Group", "id": "g"}]},
    {"uid": {"type": "Doc", "id": "d"}, "attrs": {"owner": {"__entity": {"type": "User", "id": "u"}}},
     "parents": [{"type": "Folder", "id": "f"}], "tags": {"secret": False}},
]
REQUEST = ('User::"u"', 'Action::"read"', 'Doc::"d"', {"level": 3, "s": "axb"})


def _blob():
    import tempfile
    from pathlib import Path

    folder = Path(tempfile.mkdtemp())
    (folder / "p.cedar").write_text(POLICIES)
    (folder / "entities.json").write_text(json.dumps(ENTITIES))
    return compile_generation([str(folder)])


BLOB = _blob()


class _Core(_evaluator.EngineCore):
    def _poll(self):
        pass


def decide(blob):
    core = _Core()
    core._install(_evaluator.Generation(blob, 1), 3600.0)
    return core.check(*REQUEST)


def test_the_undamaged_blob_decides():
    d = decide(BLOB)
    assert (d.decision, d.policies, d.errors) == ("deny", ["p.cedar:1"], [])


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.tuples(st.integers(0, len(BLOB) - 1), st.integers(0, 255)), min_size=1, max_size=8))
def test_damaged_blobs_fail_cleanly(flips):
    damaged = bytearray(BLOB)
    for offset, value in flips:
        damaged[offset] = value
    try:
        decide(bytes(damaged))
    except (_evaluator.IndexFormatError, _evaluator.EvalError):
        pass
    except (ValueError, TypeError, KeyError, IndexError, MemoryError, UnicodeDecodeError, OverflowError):
        # Damage that lands in a value or a name surfaces as an ordinary Python error, never a crash.
        pass


@settings(max_examples=200, deadline=None)
@given(st.integers(0, len(BLOB) - 1))
def test_truncated_blobs_fail_cleanly(length):
    try:
        decide(BLOB[:length])
    except (_evaluator.IndexFormatError, ValueError, TypeError, KeyError, IndexError, UnicodeDecodeError):
        pass
