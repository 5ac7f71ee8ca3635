"""Assembles a generation blob (layout.py) from lowered policies and entities (authz.engine.index publishes it)."""

import struct

from ..engine import _evaluator
from ..errors import CompileError
from . import layout as L
from .encode import U32, encode_value, pack_str

_UID_FIXED = struct.Struct("<IBQQIIIII")
_ANCESTOR_KEY = struct.Struct("<IBQQ")
_MASKS = struct.Struct("<QQ")
def _scope_key(key):
    """A principal/resource scope as an index key: a uid index, TYPE_KEY | type index, or ANY_KEY."""
    if key is None:
        return L.ANY_KEY
    if key[0] == "type":
        return L.TYPE_KEY | key[1]
    return key[1]


def file_policies(policy_keys):
    """The index: (principal key, resource key) -> policies; for policies with neither, action uid ->
    policies, or the list every request evaluates. A request probes each pair of its keys (its uid,
    each ancestor, its type, ANY), so it only evaluates policies whose scope can match it."""
    pairs, by_action, everyone = {}, {}, []
    for p, keys in enumerate(policy_keys):
        pk, rk = _scope_key(keys["principal"]), _scope_key(keys["resource"])
        if pk != L.ANY_KEY or rk != L.ANY_KEY:
            pairs.setdefault((pk, rk), []).append(p)
            continue
        action = keys["action"]
        if action is None:
            everyone.append(p)
        else:
            # `action in []` matches no request: the policy is filed nowhere.
            for uid in (action[1] if action[0] == "uids" else (action[1],)):
                by_action.setdefault(uid, []).append(p)
    return pairs, by_action, everyone


def partner_masks(pairs):
    """Per index key of the pair index: its KEY_IS_* role flags (a request skips keys with no role),
    and its partner masks (principal mask, resource mask) as layout.py describes them."""
    roles, masks = {}, {}
    bit = _evaluator.key_bit
    for pk, rk in pairs:
        roles[pk] = roles.get(pk, 0) | L.KEY_IS_PRINCIPAL
        roles[rk] = roles.get(rk, 0) | L.KEY_IS_RESOURCE
        pm, rm = masks.get(pk, (0, 0))
        masks[pk] = (pm | bit(rk), rm)
        pm, rm = masks.get(rk, (0, 0))
        masks[rk] = (pm, rm | bit(pk))
    return roles, masks


def _table_size(n):
    size = 1
    while size < 2 * n:
        size <<= 1
    return size


def _pair_table(pairs, blob):
    """Open-addressing table of (principal key u32, resource key u32, list offset u32) entries;
    `pairs` maps each key pair to its policies' body offsets."""
    if not pairs:
        return 0, b""
    size = _table_size(len(pairs))
    entries = [None] * size
    mask = size - 1
    for (pk, rk), bodies in pairs.items():
        slot = _evaluator.pair_hash(pk, rk) & mask
        while entries[slot] is not None:
            slot = (slot + 1) & mask
        entries[slot] = (pk, rk, blob.add_list(bodies))
    out = bytearray(12 * size)
    for slot, entry in enumerate(entries):
        if entry is not None:
            struct.pack_into("<III", out, 12 * slot, *entry)
    return size, bytes(out)


def _hash_table(keys):
    """Open-addressing table: u32 slots holding index+1; size is a power of two >= 2 * len(keys)."""
    if not keys:
        return 0, b""
    size = _table_size(len(keys))
    slots = [0] * size
    mask = size - 1
    for index, key in enumerate(keys):
        slot = _evaluator.hash_key(*key) & mask
        while slots[slot]:
            slot = (slot + 1) & mask
        slots[slot] = index + 1
    return size, struct.pack(f"<{size}I", *slots)


class _Blob:
    def __init__(self):
        self.buf = bytearray(L.HEADER_SIZE)

    def here(self):
        return len(self.buf)

    def add(self, data):
        at = len(self.buf)
        self.buf += data
        return at

    def add_list(self, items):
        return self.add(_list_bytes(items)) if items else 0


def encode_block(mapping, symbols):
    """An attrs/tags block: u32 count, then per entry u32 key (its string index), u32 value length, value
    (b"" when empty)."""
    if not mapping:
        return b""
    out = bytearray(U32.pack(len(mapping)))
    for key, value in mapping.items():
        out += U32.pack(symbols.string_index(key))
        value_bytes = bytearray()
        encode_value(value_bytes, value, symbols)
        out += U32.pack(len(value_bytes))
        out += value_bytes
    return bytes(out)


def _ancestor_keys(ancestors, key_roles, masks):
    """The ancestors that are index keys, with their roles and partner masks (layout.py)."""
    keys = [a for a in ancestors or () if key_roles.get(a)]
    if not keys:
        return b""
    out = bytearray(U32.pack(len(keys)))
    for a in keys:
        out += _ANCESTOR_KEY.pack(a, key_roles[a], *masks[a])
    return bytes(out)


def _list_bytes(items):
    return struct.pack(f"<I{len(items)}I", len(items), *items) if items else b""


def parents_table(entities, symbols):
    """The direct parents of every entity, for request entities (Engine.check's `entities`) that replace a
    stored entity: its descendants' ancestors are then recomputed from these, which the generation's
    transitively closed ancestor lists cannot give. Published beside the generation (index.parents_key):
    u32 uid count N, then N u32 offsets from the table's start (0: no parents), each at a u32 list of
    parent uid indices. Call after build_generation (the uid table is final then)."""
    n = len(symbols.uids)
    lists, offsets, at = bytearray(), [0] * n, 4 + 4 * n
    for uid, entity in entities.items():
        if entity.parents:
            parents = sorted({symbols.uid_index(*p) for p in entity.parents})
            offsets[symbols.uid_index(*uid)] = at + len(lists)
            lists += _list_bytes(parents)
    if len(symbols.uids) != n:
        raise CompileError(["internal error: the uid table changed after the generation was built"])
    return struct.pack(f"<I{n}I", n, *offsets) + bytes(lists)


def build_generation(records, ids, entities, symbols):
    """The generation blob. `records`/`ids`: lowered policies in order; `entities`: uid -> Entity."""
    for entity in entities.values():
        symbols.uid_index(*entity.uid)
        for uid in entity.parents:
            symbols.uid_index(*uid)
    entity_data = {}
    blob = _Blob()
    for uid, entity in entities.items():
        index = symbols.uid_index(*uid)
        entity_data[index] = entity
    # Encoding attributes may intern more uids, so blocks are encoded before the uid table is final.
    blocks = {idx: (encode_block(e.attrs, symbols), encode_block(e.tags, symbols)) for idx, e in entity_data.items()}
    ancestors = {idx: sorted(symbols.uid_index(*a) for a in e.ancestors) for idx, e in entity_data.items()}

    if len(symbols.uids) >= L.TYPE_KEY or len(symbols.types) >= L.TYPE_KEY:
        raise CompileError(["too many entity uids or types for one generation"])
    pairs, by_action, all_list = file_policies([keys for _, keys in records])
    key_roles, masks = partner_masks(pairs)

    bodies = [blob.add(U32.pack(p) + record) for p, (record, _) in enumerate(records)]
    # The index's lists hold body offsets (layout.py), not policy indexes.
    pairs = {key: [bodies[p] for p in ps] for key, ps in pairs.items()}
    by_action = {uid: [bodies[p] for p in ps] for uid, ps in by_action.items()}
    all_list = [bodies[p] for p in all_list]
    id_offsets = []
    for policy_id in ids:
        out = bytearray()
        pack_str(out, policy_id)
        id_offsets.append(blob.add(out))

    string_offsets = []
    for text in symbols.strings:
        out = bytearray()
        pack_str(out, text)
        string_offsets.append(blob.add(out))

    type_names = list(symbols.types)
    type_offsets = []
    for t, name in enumerate(type_names):
        out = bytearray()
        pack_str(out, name)
        out.append(key_roles.get(L.TYPE_KEY | t, 0))
        out += _MASKS.pack(*masks.get(L.TYPE_KEY | t, (0, 0)))
        type_offsets.append(blob.add(out))

    uid_keys = list(symbols.uids)
    uid_offsets = []
    for idx, (type_name, uid_id) in enumerate(uid_keys):
        entity = entity_data.get(idx)
        id_bytes = bytearray()
        pack_str(id_bytes, uid_id)
        # A uid's record is followed by its parts, in the order a request reads them: ancestor keys
        # (gathering index keys), ancestors (scopes), attrs, tags.
        parts = {"akeys": _ancestor_keys(ancestors.get(idx), key_roles, masks), "anc": _list_bytes(ancestors.get(idx))}
        parts["attrs"], parts["tags"] = blocks.get(idx, (b"", b""))
        parts["alist"] = _list_bytes(by_action.get(idx))
        at = blob.here() + _UID_FIXED.size + len(id_bytes)
        offsets = {}
        for name, part in parts.items():
            offsets[name] = at if part else 0
            at += len(part)
        out = bytearray(_UID_FIXED.pack(
            symbols.types[type_name],
            (L.UID_IS_ENTITY if entity is not None else 0) | key_roles.get(idx, 0),
            *masks.get(idx, (0, 0)),
            *(offsets[name] for name in ("anc", "attrs", "tags", "alist", "akeys")),
        ))
        out += id_bytes
        for part in parts.values():
            out += part
        uid_offsets.append(blob.add(out))

    def table(offsets):
        return blob.add(struct.pack(f"<{len(offsets)}I", *offsets)) if offsets else blob.here()

    header = {
        "n_types": len(type_names),
        "types_off": table(type_offsets),
        "n_uids": len(uid_keys),
        "uids_off": table(uid_offsets),
        "n_policies": len(records),
        "policy_ids_off": table(id_offsets),
        "all_list_off": blob.add_list(all_list),
        "n_strings": len(symbols.strings),
        "strings_off": table(string_offsets),
    }
    any_pmask, any_rmask = masks.get(L.ANY_KEY, (0, 0))
    header["any_pmask_lo"], header["any_pmask_hi"] = any_pmask & 0xFFFFFFFF, any_pmask >> 32
    header["any_rmask_lo"], header["any_rmask_hi"] = any_rmask & 0xFFFFFFFF, any_rmask >> 32
    header["pair_hash_size"], header["pair_hash_off"] = 0, 0
    size, data = _pair_table(pairs, blob)
    if size:
        header["pair_hash_size"], header["pair_hash_off"] = size, blob.add(data)
    size, data = _hash_table([(n.encode("utf-8", "surrogatepass"),) for n in type_names])
    header["type_hash_size"], header["type_hash_off"] = size, blob.add(data)
    size, data = _hash_table([(t.encode("utf-8", "surrogatepass"), i.encode("utf-8", "surrogatepass")) for t, i in uid_keys])
    header["uid_hash_size"], header["uid_hash_off"] = size, blob.add(data)
    if blob.here() >= 1 << 32:
        raise CompileError(["the compiled policy set is larger than 4 GiB"])
    struct.pack_into("<8sI", blob.buf, 0, L.MAGIC, L.FORMAT_VERSION)
    struct.pack_into(f"<{len(L.HEADER_FIELDS)}I", blob.buf, 12, *(header[f] for f in L.HEADER_FIELDS))
    return bytes(blob.buf)
