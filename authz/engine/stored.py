"""Stored entities read back from a compiled generation, in Cedar's JSON entity format: what a request that overlays a
few attributes of a stored entity sends as the whole entity (Engine.check's `entities` replace stored ones whole).

Read in Python from the generation blob (layout: authz/compiler/layout.py, written by compiler/writer.py),
never on the hot path: only for requests that bring attributes of an entity (AuthZEN `properties`).
"""
from __future__ import annotations

import struct

from ..compiler import layout as L
from ..errors import IndexUnavailableError
from .index import generation_key, open_env, release_env

_U32 = struct.Struct("<I")
_I64 = struct.Struct("<q")
_UID_FIXED = struct.Struct("<IBQQIIIII")  # type, flags, masks, then offsets: ancestors, attrs, tags, actions, keys
_EXTENSIONS = {number: name for name, (number, _arity) in L.EXTENSION_FUNCTIONS.items()}
_MAX_DEPTH = 64  # values nest no deeper than the compiler accepted; a deeper blob is damaged


class StoredEntities:
    """The entities of one generation blob, by uid; `entity(type, id)` is the stored entity or None."""

    def __init__(self, blob: bytes, number: int):
        if len(blob) < L.HEADER_SIZE or blob[:8] != L.MAGIC or _U32.unpack_from(blob, 8)[0] != L.FORMAT_VERSION:
            raise IndexUnavailableError(f"generation {number} is not in the format this authz reads")
        self.blob, self.number = blob, number
        header = struct.unpack_from(f"<{len(L.HEADER_FIELDS)}I", blob, 12)
        h = dict(zip(L.HEADER_FIELDS, header))
        self._types = [self._str(_U32.unpack_from(blob, h["types_off"] + 4 * t)[0])[0] for t in range(h["n_types"])]
        self._strings_off, self._n_strings = h["strings_off"], h["n_strings"]
        self._uids_off, self._n_uids = h["uids_off"], h["n_uids"]
        self._by_uid = None  # (type, id) -> uid index, built on first use

    def _str(self, off: int) -> tuple:
        n = _U32.unpack_from(self.blob, off)[0]
        start = off + 4
        if start + n > len(self.blob):
            raise IndexUnavailableError(f"generation {self.number}: a string runs past its end")
        return bytes(self.blob[start:start + n]).decode("utf-8", "surrogatepass"), start + n

    def _record(self, idx: int) -> int:
        return _U32.unpack_from(self.blob, self._uids_off + 4 * idx)[0]

    def _uid(self, idx: int) -> tuple:
        rec = self._record(idx)
        return self._types[_U32.unpack_from(self.blob, rec)[0]], self._str(rec + _UID_FIXED.size)[0]

    def _index(self) -> dict:
        if self._by_uid is None:
            self._by_uid = {self._uid(i): i for i in range(self._n_uids)}
        return self._by_uid

    def entity(self, type_name: str, uid_id: str) -> dict | None:
        """{"uid", "attrs", "parents", "tags"} of the stored entity, or None when it is not stored. `parents`
        lists all its ancestors (the stored closure: the same ancestry as its direct parents give)."""
        idx = self._index().get((type_name, uid_id))
        if idx is None:
            return None
        rec = self._record(idx)
        _t, flags, _pm, _rm, anc, attrs, tags, _alist, _akeys = _UID_FIXED.unpack_from(self.blob, rec)
        if not flags & L.UID_IS_ENTITY:
            return None
        out = {"uid": {"type": type_name, "id": uid_id}, "attrs": self._block(attrs), "parents": []}
        if anc:
            count = _U32.unpack_from(self.blob, anc)[0]
            for i in struct.unpack_from(f"<{count}I", self.blob, anc + 4):
                t, i_id = self._uid(i)
                out["parents"].append({"type": t, "id": i_id})
        if tags:
            out["tags"] = self._block(tags)
        return out

    def _block(self, off: int) -> dict:
        """An attrs/tags block: u32 count, then per entry u32 key string index, u32 value length, value."""
        out: dict = {}
        if not off:
            return out
        count = _U32.unpack_from(self.blob, off)[0]
        pos = off + 4
        for _ in range(count):
            key, length = struct.unpack_from("<II", self.blob, pos)
            if key >= self._n_strings:
                raise IndexUnavailableError(f"generation {self.number}: an attribute name is out of range")
            name = self._str(_U32.unpack_from(self.blob, self._strings_off + 4 * key)[0])[0]
            out[name], _end = self._value(pos + 8, 0)
            pos += 8 + length
        return out

    def _value(self, pos: int, depth: int) -> tuple:
        """(the Cedar JSON value at `pos`, the position after it)."""
        if depth > _MAX_DEPTH:
            raise IndexUnavailableError(f"generation {self.number}: a value nests too deeply")
        tag = self.blob[pos]
        pos += 1
        if tag == L.V_TRUE or tag == L.V_FALSE:
            return tag == L.V_TRUE, pos
        if tag == L.V_LONG:
            return _I64.unpack_from(self.blob, pos)[0], pos + 8
        if tag == L.V_STR:
            return self._str(pos)
        if tag == L.V_UID:
            t, i = self._uid(_U32.unpack_from(self.blob, pos)[0])
            return {"__entity": {"type": t, "id": i}}, pos + 4
        if tag == L.V_SET:
            count = _U32.unpack_from(self.blob, pos)[0]
            pos += 4
            items = []
            for _ in range(count):
                item, pos = self._value(pos, depth + 1)
                items.append(item)
            return items, pos
        if tag == L.V_RECORD:
            count = _U32.unpack_from(self.blob, pos)[0]
            pos += 4
            record = {}
            for _ in range(count):
                key, pos = self._str(pos)
                record[key], pos = self._value(pos, depth + 1)
            return record, pos
        if tag == L.V_EXT:
            fn, argc = self.blob[pos], self.blob[pos + 1]
            pos += 2
            args = []
            for _ in range(argc):
                arg, pos = self._value(pos, depth + 1)
                args.append(arg)
            name = _EXTENSIONS.get(fn)
            if name is None:
                raise IndexUnavailableError(f"generation {self.number}: unknown extension function {fn}")
            return {"__extn": {"fn": name, "arg": args[0]} if argc == 1 else {"fn": name, "args": args}}, pos
        raise IndexUnavailableError(f"generation {self.number}: unknown value tag {tag}")


class StoredEntityReader:
    """The stored entities of the generation an Engine serves, read from its index once per generation."""

    def __init__(self):
        self._current = None  # (index path, generation number, StoredEntities)

    def entity(self, engine, uid: dict) -> dict | None:
        """The stored entity `uid` ({type, id}) of `engine`'s generation (Cedar JSON), None when not stored;
        IndexUnavailableError when the generation cannot be read (it was replaced and removed, say)."""
        number = engine.generation
        cur = self._current
        if cur is None or cur[0] != engine.db or cur[1] != number:
            env = open_env(engine.db, create=False)
            try:
                with env.begin() as txn:
                    blob = txn.get(generation_key(number))
            finally:
                release_env(env)
            if blob is None:
                raise IndexUnavailableError(f"generation {number} is no longer in `{engine.db}`")
            cur = self._current = (engine.db, number, StoredEntities(blob, number))
        return cur[2].entity(uid["type"], uid["id"])
