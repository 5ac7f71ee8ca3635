"""The byte layout constants the compiler writes agree with the ones the Cython evaluator reads."""

from authz.engine import _evaluator
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


def test_layout_constants_match_the_record_reader():
    from authz.compiler import _records
    for name, value in _records.CONSTANTS.items():
        assert getattr(layout, name) == value, name
    assert {n for n in _records.CONSTANTS if n.startswith("OP_")} == {n for n in vars(layout) if n.startswith("OP_")}


def test_extension_function_ids_are_dense_and_unique():
    ids = sorted(fid for fid, _ in layout.EXTENSION_FUNCTIONS.values())
    assert ids == list(range(len(ids)))


def test_uid_record_shape_matches_the_writer():
    from authz.compiler import writer
    assert writer._UID_FIXED.size == layout.UID_FIXED
    # type u32, flags u8, then the two partner masks
    assert layout.UID_MASKS == 5 and writer._MASKS.size == 16
    assert writer._ANCESTOR_KEY.size == layout.ANCESTOR_KEY


def test_ancestor_keys_carry_roles_and_masks(tmp_path):
    # A uid's ancestor keys list exactly its ancestors that are index keys, with their flags and masks.
    import json
    import struct

    from authz.compiler import compile_generation
    (tmp_path / "p.cedar").write_text('permit(principal in Group::"g", action, resource in Folder::"f");\n')
    (tmp_path / "entities.json").write_text(json.dumps([
        {"uid": {"type": "User", "id": "u"}, "attrs": {}, "parents": [{"type": "Group", "id": "g"}, {"type": "Team", "id": "t"}]},
        {"uid": {"type": "Group", "id": "g"}, "attrs": {}, "parents": []},
        {"uid": {"type": "Team", "id": "t"}, "attrs": {}, "parents": []}]))
    blob = compile_generation([str(tmp_path)])
    header = dict(zip(layout.HEADER_FIELDS, struct.unpack_from(f"<{len(layout.HEADER_FIELDS)}I", blob, 12)))
    records = {}
    for i in range(header["n_uids"]):
        rec = struct.unpack_from("<I", blob, header["uids_off"] + 4 * i)[0]
        n = struct.unpack_from("<I", blob, rec + layout.UID_FIXED)[0]
        records[blob[rec + layout.UID_FIXED + 4:rec + layout.UID_FIXED + 4 + n].decode()] = (i, rec)
    g_index, g_rec = records["g"]
    akeys = struct.unpack_from("<I", blob, records["u"][1] + layout.UID_FIXED - 4)[0]
    assert struct.unpack_from("<I", blob, akeys)[0] == 1  # Team::"t" is no index key
    key, flags, pmask, rmask = struct.unpack_from("<IBQQ", blob, akeys + 4)
    assert (key, flags) == (g_index, layout.KEY_IS_PRINCIPAL)
    assert (pmask, rmask) == struct.unpack_from("<QQ", blob, g_rec + layout.UID_MASKS) and pmask

