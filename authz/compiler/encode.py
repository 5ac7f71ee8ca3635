"""Interning of entity types and uids, and the byte encoding of Cedar values (layout.py's value tags)."""

import struct

from ..errors import CompileError
from ..jsonterms import shown
from . import layout as L

U32 = struct.Struct("<I")
I64 = struct.Struct("<q")
I64_MIN, I64_MAX = -(1 << 63), (1 << 63) - 1


def pack_str(out, text):
    """Appends a str (u32 length + UTF-8)."""
    data = text.encode("utf-8", "surrogatepass")
    out += U32.pack(len(data))
    out += data


class Symbols:
    """Interns entity types and uids into dense indexes shared by policies, entities and the index."""

    def __init__(self):
        self.types = {}
        self.uids = {}
        self.strings = {}

    def type_index(self, name):
        index = self.types.get(name)
        if index is None:
            index = self.types[name] = len(self.types)
        return index

    def uid_index(self, type_name, uid_id):
        key = (type_name, uid_id)
        index = self.uids.get(key)
        if index is None:
            self.type_index(type_name)
            index = self.uids[key] = len(self.uids)
        return index

    def string_index(self, text):
        """Index of a bytecode string (attribute name or string literal) in the generation's string table."""
        index = self.strings.get(text)
        if index is None:
            index = self.strings[text] = len(self.strings)
        return index

    def uid_of(self, obj):
        """Index of `{"type","id"}` or `{"__entity": {...}}`."""
        if isinstance(obj, dict) and "__entity" in obj:
            obj = obj["__entity"]
        if not (isinstance(obj, dict) and isinstance(obj.get("type"), str) and isinstance(obj.get("id"), str)):
            raise CompileError([f"not an entity reference: {shown(obj)}"])
        return self.uid_index(obj["type"], obj["id"])


def is_entity_escape(value):
    """`{"__entity": {"type": .., "id": ..}}`; an incomplete escape is an ordinary record, as cedarpy reads it."""
    inner = value.get("__entity") if len(value) == 1 else None
    return isinstance(inner, dict) and isinstance(inner.get("type"), str) and isinstance(inner.get("id"), str)


def is_extension_escape(value):
    """`{"__extn": {"fn": .., "arg": ..}}` or `{"__extn": {"fn": .., "args": [..]}}`; an incomplete
    escape is an ordinary record."""
    inner = value.get("__extn") if len(value) == 1 else None
    return isinstance(inner, dict) and "fn" in inner and ("arg" in inner or "args" in inner)


def encode_value(out, value, symbols):
    """Appends a Cedar value given in Cedar's JSON value syntax (`__entity` and `__extn` escapes)."""
    if value is True:
        out.append(L.V_TRUE)
    elif value is False:
        out.append(L.V_FALSE)
    elif isinstance(value, int):
        if not I64_MIN <= value <= I64_MAX:
            raise CompileError([f"integer `{value}` does not fit in a 64-bit Long"])
        out.append(L.V_LONG)
        out += I64.pack(value)
    elif isinstance(value, str):
        out.append(L.V_STR)
        pack_str(out, value)
    elif isinstance(value, list):
        out.append(L.V_SET)
        out += U32.pack(len(value))
        for item in value:
            encode_value(out, item, symbols)
    elif isinstance(value, dict):
        if is_entity_escape(value):
            out.append(L.V_UID)
            out += U32.pack(symbols.uid_of(value))
        elif is_extension_escape(value):
            extn = value["__extn"]
            fn = L.EXTENSION_FUNCTIONS.get(extn["fn"])
            args = [extn["arg"]] if "arg" in extn else extn["args"]
            if fn is None or not isinstance(args, list) or len(args) != fn[1]:
                raise CompileError([f"unsupported extension value {shown(value)}"])
            out.append(L.V_EXT)
            out.append(fn[0])
            out.append(len(args))
            for arg in args:
                encode_value(out, arg, symbols)
        else:
            out.append(L.V_RECORD)
            out += U32.pack(len(value))
            for key, item in value.items():
                pack_str(out, key)
                encode_value(out, item, symbols)
    else:
        raise CompileError([f"not a Cedar value: {shown(value)}"])
