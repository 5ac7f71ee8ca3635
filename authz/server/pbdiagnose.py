"""explain(): why protobuf refused a request message, naming the first bad field it can find.

protobuf says only "wire format was corrupt" or "exceeded the maximum depth". This walks the same
bytes by the message's descriptor, bounded in steps and depth, and reports what a client can fix:
`principal.type` is not valid UTF-8, the message ends inside `items[3]`, or — as a context that
parses does — `context.a.b` is nested deeper than the context depth limit.
"""
from __future__ import annotations

from google.protobuf.descriptor import FieldDescriptor

from authz.server.logthrottle import printable

PROTOBUF_MAX_NESTING = 100  # upb's limit on nested messages (a context level is three: Value, Struct, entry)
MAX_STEPS = 20_000  # fields looked at before giving up on naming one (the walk runs in Python)
_STRUCT, _VALUE, _LIST = "google.protobuf.Struct", "google.protobuf.Value", "google.protobuf.ListValue"
_MESSAGE, _STRING = FieldDescriptor.TYPE_MESSAGE, FieldDescriptor.TYPE_STRING


class _Bad(Exception):
    """What is wrong, said after "cannot parse the <message>: "."""


class _TooDeep(Exception):
    """A context nested too deeply, said exactly as for a context that parses (authz.server.records)."""


class _GiveUp(Exception):
    """The step budget ran out."""


def explain(data: bytes, descriptor, max_context_depth: int) -> str:
    """The answer to a `descriptor` message that protobuf could not parse from `data`."""
    try:
        _Walk(data, max_context_depth).message(0, len(data), descriptor, "", 1)
    except _TooDeep as e:
        return str(e)
    except _Bad as e:
        return f"cannot parse the {descriptor.name}: {e}"
    except _GiveUp:
        pass
    return f"cannot parse the {descriptor.name}"


def _at(path: str) -> str:
    if not path:
        return "the message"
    if len(path) > 200:
        path = path[:80] + "…" + path[-110:]
    return f"`{path}`"


def _cut(path: str) -> str:
    return f"the message ends inside {_at(path)}" if path else "the message ends in the middle of a field"


class _Walk:
    def __init__(self, data: bytes, max_context_depth: int):
        self.data = data
        self.max_depth = max_context_depth
        self.steps = 0

    def _varint(self, pos: int, end: int, path: str) -> tuple:
        data = self.data
        value = shift = 0
        while True:
            if pos >= end:
                raise _Bad(_cut(path))
            byte = data[pos]
            pos += 1
            value |= (byte & 0x7F) << shift
            if byte < 0x80:
                return value, pos
            shift += 7
            if shift >= 70:
                raise _Bad(f"{_at(path)} holds a number longer than 10 bytes")

    def _fields(self, start: int, end: int, path: str, names=None):
        """(number, wire type, start, end) of each field of the message in data[start:end] at `path`;
        `names` (fields by number) names a field cut short."""
        pos = start
        while pos < end:
            self.steps += 1
            if self.steps > MAX_STEPS:
                raise _GiveUp
            key, pos = self._varint(pos, end, path)
            number, wire = key >> 3, key & 7
            if number == 0:
                raise _Bad(f"{_at(path)} holds a field numbered 0")
            if wire == 0:
                _, after = self._varint(pos, end, path)
            elif wire == 1:
                after = pos + 8
            elif wire == 5:
                after = pos + 4
            elif wire == 2:
                length, pos = self._varint(pos, end, path)
                after = pos + length
            else:  # groups (3, 4) are not proto3; 6 and 7 are no wire type
                raise _Bad(f"{_at(path)} holds a field of wire type {wire} (not proto3)")
            if after > end:
                field = names.get(number) if names is not None else None
                raise _Bad(_cut(path if field is None else f"{path}.{field.name}" if path else field.name))
            yield number, wire, pos, after
            pos = after

    def _string(self, start: int, end: int, path: str) -> str:
        try:
            return self.data[start:end].decode("utf-8")
        except UnicodeDecodeError:
            raise _Bad(f"{_at(path)} is not valid UTF-8") from None

    def message(self, start: int, end: int, descriptor, path: str, level: int) -> None:
        if level > PROTOBUF_MAX_NESTING:
            raise _Bad(f"{_at(path)} is nested deeper than protobuf allows")
        name = descriptor.full_name
        if name == _STRUCT:
            return self._struct(start, end, path, level, 1)
        if name == _VALUE:
            return self._value(start, end, path, level, 1)
        by_number = descriptor.fields_by_number
        seen: dict = {}
        for number, wire, s, e in self._fields(start, end, path, by_number):
            field = by_number.get(number)
            if field is None or wire != 2:  # unknown, or not length-delimited: protobuf skips it
                continue
            field_path = f"{path}.{field.name}" if path else field.name
            if field.is_repeated:
                i = seen[number] = seen.get(number, -1) + 1
                field_path += f"[{i}]"
            if field.type == _MESSAGE:
                self.message(s, e, field.message_type, field_path, level + 1)
            elif field.type == _STRING:
                self._string(s, e, field_path)

    def _struct(self, start: int, end: int, path: str, level: int, depth: int) -> None:
        """A Struct whose values are `depth` levels deep (a context's own values: 1)."""
        for number, wire, s, e in self._fields(start, end, path):
            if number != 1 or wire != 2:
                continue
            key, value = "", None
            for n, w, vs, ve in self._fields(s, e, path):  # a map entry: key = 1, value = 2
                if n == 1 and w == 2:
                    key = self._string(vs, ve, f"{path}.<key>")
                elif n == 2 and w == 2:
                    value = (vs, ve)
            if value is not None:
                self._value(*value, f"{path}.{printable(key, 60)}", level + 2, depth)

    def _value(self, start: int, end: int, path: str, level: int, depth: int) -> None:
        if depth > self.max_depth:
            raise _TooDeep(f"{_at(path)} is nested deeper than {self.max_depth} levels")
        if level > PROTOBUF_MAX_NESTING:
            raise _Bad(f"{_at(path)} is nested deeper than protobuf allows")
        for number, wire, s, e in self._fields(start, end, path):
            if wire != 2:
                continue
            if number == 3:
                self._string(s, e, path)
            elif number == 5:
                self._struct(s, e, path, level + 1, depth + 1)
            elif number == 6:
                i = -1
                for n, w, vs, ve in self._fields(s, e, path):  # a ListValue: values = 1
                    if n == 1 and w == 2:
                        i += 1
                        self._value(vs, ve, f"{path}[{i}]", level + 2, depth + 1)
