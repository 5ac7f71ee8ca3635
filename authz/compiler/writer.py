"""Assembles a generation blob (layout.py) from lowered policies and entities, and publishes it to LMDB."""

import os
import struct
import zlib
from collections import Counter

import lmdb

from .. import _evaluator
from ..errors import CompileError, IndexUnavailableError
from . import layout as L
from .encode import U32, encode_value, pack_str

_UID_FIXED = struct.Struct("<IBIIIIII")
CURRENT_KEY = b"current"
DEFAULT_MAP_SIZE = 1 << 36  # 64 GiB of address space; the file grows only as needed


def generation_key(number):
    return b"gen/%016x" % number


def crc_key(number):
    return b"crc/%016x" % number


def _choose_keys(policy_keys):
    """Files each policy under the dimension whose bucket is smallest, so one request touches few policies."""
    counts = Counter()
    for keys in policy_keys:
        for dim in ("principal", "resource", "action"):
            key = keys[dim]
            if key is None:
                continue
            for k in _expand(dim, key):
                counts[k] += 1
    chosen = []
    for keys in policy_keys:
        best = None
        for dim in ("principal", "resource", "action"):
            key = keys[dim]
            if key is None:
                continue
            expanded = _expand(dim, key)
            if not expanded:  # `action in []` matches no request: file the policy nowhere
                best = (-1, None)
                break
            cost = max(counts[k] for k in expanded)
            if best is None or cost < best[0]:
                best = (cost, expanded)
        chosen.append(best[1] if best else ())
    # chosen[p]: the keys policy p is filed under; () = every request; None = no request.
    return chosen


def _expand(dim, key):
    kind, value = key
    if kind == "uids":
        return tuple((dim, "uid", v) for v in value)
    return ((dim, kind, value),)


def _hash_table(keys):
    """Open-addressing table: u32 slots holding index+1; size is a power of two >= 2 * len(keys)."""
    size = 1
    while size < 2 * len(keys):
        size <<= 1
    if not keys:
        return 0, b""
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
        if not items:
            return 0
        return self.add(struct.pack(f"<I{len(items)}I", len(items), *items))

    def add_block(self, mapping, symbols):
        """attrs/tags block: u32 count, then per entry str key, u32 value length, value."""
        if not mapping:
            return 0
        out = bytearray(U32.pack(len(mapping)))
        for key, value in mapping.items():
            pack_str(out, key)
            value_bytes = bytearray()
            encode_value(value_bytes, value, symbols)
            out += U32.pack(len(value_bytes))
            out += value_bytes
        return self.add(out)


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
    # Encoding attributes may intern more uids, so blocks are written before the uid table is final.
    blocks = {idx: (blob.add_block(e.attrs, symbols), blob.add_block(e.tags, symbols)) for idx, e in entity_data.items()}
    ancestors = {idx: sorted(symbols.uid_index(*a) for a in e.ancestors) for idx, e in entity_data.items()}

    chosen = _choose_keys([keys for _, keys in records])
    uid_lists = {}   # (dim, uid) -> [policy]
    type_lists = {}  # (dim, type) -> [policy]
    all_list = []
    for p, keys in enumerate(chosen):
        if keys is None:
            continue
        if not keys:
            all_list.append(p)
        for dim, kind, value in keys:
            (uid_lists if kind == "uid" else type_lists).setdefault((dim, value), []).append(p)

    policy_offsets = [blob.add(record) for record, _ in records]
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
        plist = blob.add_list(type_lists.get(("principal", t)))
        rlist = blob.add_list(type_lists.get(("resource", t)))
        out += struct.pack("<II", plist, rlist)
        type_offsets.append(blob.add(out))

    uid_keys = list(symbols.uids)
    uid_offsets = []
    for idx, (type_name, uid_id) in enumerate(uid_keys):
        entity = entity_data.get(idx)
        attrs, tags = blocks.get(idx, (0, 0))
        out = bytearray(_UID_FIXED.pack(
            symbols.types[type_name],
            L.UID_IS_ENTITY if entity is not None else 0,
            blob.add_list(ancestors.get(idx)),
            attrs, tags,
            blob.add_list(uid_lists.get(("principal", idx))),
            blob.add_list(uid_lists.get(("resource", idx))),
            blob.add_list(uid_lists.get(("action", idx))),
        ))
        pack_str(out, uid_id)
        uid_offsets.append(blob.add(out))

    def table(offsets):
        return blob.add(struct.pack(f"<{len(offsets)}I", *offsets)) if offsets else blob.here()

    header = {
        "n_types": len(type_names),
        "types_off": table(type_offsets),
        "n_uids": len(uid_keys),
        "uids_off": table(uid_offsets),
        "n_policies": len(records),
        "policies_off": table(policy_offsets),
        "policy_ids_off": table(id_offsets),
        "all_list_off": blob.add_list(all_list),
        "n_strings": len(symbols.strings),
        "strings_off": table(string_offsets),
    }
    size, data = _hash_table([(n.encode("utf-8", "surrogatepass"),) for n in type_names])
    header["type_hash_size"], header["type_hash_off"] = size, blob.add(data)
    size, data = _hash_table([(t.encode("utf-8", "surrogatepass"), i.encode("utf-8", "surrogatepass")) for t, i in uid_keys])
    header["uid_hash_size"], header["uid_hash_off"] = size, blob.add(data)
    if blob.here() >= 1 << 32:
        raise CompileError(["the compiled policy set is larger than 4 GiB"])
    struct.pack_into("<8sI", blob.buf, 0, L.MAGIC, L.FORMAT_VERSION)
    struct.pack_into(f"<{len(L.HEADER_FIELDS)}I", blob.buf, 12, *(header[f] for f in L.HEADER_FIELDS))
    return bytes(blob.buf)


# LMDB allows one environment per file per process: engines and compiles in one process share it.
# Keyed by (pid, path) so that a forked child never reuses its parent's environment.
_ENVS = {}


def open_env(db, create):
    """The process's LMDB environment at `db` (a directory), shared and reference-counted;
    IndexUnavailableError with one line if it can't be used. Pair with `release_env`."""
    if not create and not os.path.isdir(db):
        if os.path.exists(db):
            raise IndexUnavailableError(f"`{db}` is not an authz index (expected a directory)")
        raise IndexUnavailableError(f"no index at `{db}`: run `authz compile ... --db {db}` first")
    if create and os.path.exists(db) and not os.path.isdir(db):
        raise IndexUnavailableError(f"`{db}` is not an authz index (expected a directory)")
    if not create and not os.path.exists(os.path.join(db, "data.mdb")):
        raise IndexUnavailableError(f"`{db}` is not an authz index (no data.mdb)")
    key = (os.getpid(), os.path.realpath(db))
    entry = _ENVS.get(key)
    if entry is not None and (entry[0].flags()["readonly"] is False or not create):
        entry[1] += 1
        return entry[0]
    if entry is not None:
        raise IndexUnavailableError(f"`{db}` is open read-only in this process and cannot be written")
    try:
        if create:
            os.makedirs(db, exist_ok=True)
        writable = create or os.access(db, os.W_OK)
        env = lmdb.open(db, map_size=DEFAULT_MAP_SIZE, subdir=True, readonly=not writable,
                        create=create, max_dbs=0, max_readers=1024, lock=True)
    except lmdb.Error as err:
        raise IndexUnavailableError(f"cannot open index `{db}`: {err}") from None
    _ENVS[key] = [env, 1]
    return env


def release_env(env):
    """Drops one reference to a shared environment; the last one closes it."""
    for key, entry in list(_ENVS.items()):
        if entry[0] is env:
            entry[1] -= 1
            if entry[1] == 0:
                del _ENVS[key]
                env.close()
            return


def publish(db, blob):
    """Writes `blob` as the next generation and makes it current in one write transaction; returns its number."""
    env = open_env(db, create=True)
    try:
        with env.begin(write=True) as txn:
            raw = txn.get(CURRENT_KEY)
            if raw is not None and len(raw) != 8:
                raise IndexUnavailableError(f"`{db}` is not an authz index (bad current pointer)")
            previous = struct.unpack("<Q", raw)[0] if raw is not None else 0
            number = previous + 1
            txn.put(generation_key(number), blob)
            txn.put(crc_key(number), U32.pack(zlib.crc32(blob)))
            txn.put(CURRENT_KEY, struct.pack("<Q", number))
            # Readers still holding the previous generation keep their snapshot; LMDB reuses its pages later.
            if previous:
                txn.delete(generation_key(previous))
                txn.delete(crc_key(previous))
        return number
    except lmdb.Error as err:
        raise IndexUnavailableError(f"cannot write index `{db}`: {err}") from None
    finally:
        release_env(env)
