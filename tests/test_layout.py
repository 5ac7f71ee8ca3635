"""The byte layout constants the compiler writes agree with the ones the Cython evaluator reads."""

from authz import _evaluator
from authz.compiler import layout


def test_layout_constants_match_the_evaluator():
    exported = dict(_evaluator.LAYOUT)
    fn_ids = exported.pop("FN_IDS")
    for name, value in exported.items():
        assert getattr(layout, name) == value, name
    assert fn_ids == {name: fid for name, (fid, _arity) in layout.EXTENSION_FUNCTIONS.items()}
    assert len([n for n in exported if n.startswith("OP_")]) == len([n for n in vars(layout) if n.startswith("OP_")])
    assert _evaluator.MAGIC == layout.MAGIC
    assert _evaluator.FORMAT_VERSION == layout.FORMAT_VERSION


def test_extension_function_ids_are_dense_and_unique():
    ids = sorted(fid for fid, _ in layout.EXTENSION_FUNCTIONS.values())
    assert ids == list(range(len(ids)))


def test_uid_record_shape_matches_the_writer():
    from authz.compiler import writer
    assert writer._UID_FIXED.size == layout.UID_FIXED
    # type u32, flags u8, then the two partner masks
    assert layout.UID_MASKS == 5 and writer._MASKS.size == 16
