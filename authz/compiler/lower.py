"""Cedar JSON policies (EST) -> compiled policy records: scope tests on interned ids plus condition bytecode.

A policy shape (its EST with string literals replaced by placeholders, see source.py) is lowered once
into a Template; each policy of that shape is the template with its literals' interned ids patched in.
"""


from ..errors import CompileError
from . import layout as L
from .encode import U32, encode_value
from .source import literal_slot

_HOLE_UID, _HOLE_STR = 0, 1
_VARS = {"principal": L.VAR_PRINCIPAL, "action": L.VAR_ACTION, "resource": L.VAR_RESOURCE, "context": L.VAR_CONTEXT}


def _no_slot(_text):
    return None


class _Unsupported(Exception):
    def __init__(self, construct, detail=""):
        self.construct = construct
        self.detail = detail


class Template:
    """A lowered policy shape: record bytes with u32 holes for the interned ids of its literals."""

    __slots__ = ("record", "holes", "keys", "policy_id", "record_keys", "annotations")

    def __init__(self, record, holes, keys, policy_id, record_keys=(), annotations=()):
        self.record = record
        self.holes = holes
        self.keys = keys
        self.policy_id = policy_id
        # The annotations other than @id: (name, value), the value a literal slot (int), a str or None.
        self.annotations = annotations
        # The key lists of record literals some of whose keys are holes: Cedar refuses a record literal
        # that names a key twice, which only the literals' values can tell.
        self.record_keys = record_keys

    def annotations_of(self, literals):
        """The policy's annotations other than @id, {name: value or None}, or None when it has none."""
        if not self.annotations:
            return None
        return {name: literals[value] if type(value) is int else value for name, value in self.annotations}

    def instantiate(self, literals, symbols):
        """(record, index keys, annotated id or None) for one policy with these literal values;
        CompileError (without a place) if a record literal names a key twice."""
        for names in self.record_keys:
            seen = set()
            for name in names:
                name = literals[name] if type(name) is int else name
                if name in seen:
                    raise CompileError([f"duplicate key `{name}` in record literal"])
                seen.add(name)
        record = self.record
        if self.holes:
            record = bytearray(record)
            for offset, kind, arg in self.holes:
                if kind == _HOLE_UID:
                    value = symbols.uid_index(arg[0], literals[arg[1]])
                else:
                    value = symbols.string_index(literals[arg])
                U32.pack_into(record, offset, value)
        keys = {dim: _resolve_key(key, literals, symbols) for dim, key in self.keys.items()}
        policy_id = self.policy_id
        if type(policy_id) is int:
            policy_id = literals[policy_id]
        return record, keys, policy_id


def _resolve_uid(spec, literals, symbols):
    return spec if type(spec) is int else symbols.uid_index(spec[0], literals[spec[1]])


def _resolve_key(key, literals, symbols):
    if key is None or key[0] == "type":
        return key
    if key[0] == "uids":
        return ("uids", tuple(_resolve_uid(s, literals, symbols) for s in key[1]))
    return ("uid", _resolve_uid(key[1], literals, symbols))


class PolicyLowering:
    """Lowers policy shapes into Templates, interning every constant uid, type and string in `symbols`."""

    def __init__(self, symbols):
        self.symbols = symbols

    def lower(self, est, where, placeholders=True):
        """The Template of one policy shape; raises CompileError naming the construct and `where`.
        With `placeholders` false, the EST holds its literals in place: no string is a hole, even one
        that looks like a placeholder."""
        self._holes = []
        self._record_keys = []
        self._slot = literal_slot if placeholders else _no_slot
        try:
            return self._lower(est)
        except _Unsupported as err:
            detail = f": {err.detail}" if err.detail else ""
            raise CompileError([f"{where}: unsupported construct `{err.construct}`{detail}"]) from None
        except RecursionError:
            raise CompileError([f"{where}: expression nested too deeply"]) from None
        except CompileError as err:
            raise CompileError([f"{where}: {d}" for d in err.diagnostics]) from None

    def _lower(self, est):
        out = bytearray()
        effect = est.get("effect")
        if effect not in ("permit", "forbid"):
            raise _Unsupported("effect", repr(effect))
        out.append(0 if effect == "permit" else 1)
        keys = {dim: self._scope(out, est[dim], dim) for dim in ("principal", "action", "resource")}
        # Cedar's condition: every `when` body true and every `unless` body false, in order.
        combined = None
        for cond in reversed(est.get("conditions") or []):
            if cond["kind"] == "when":
                part = cond["body"]
            elif cond["kind"] == "unless":
                part = {"!": {"arg": cond["body"]}}
            else:
                raise _Unsupported("condition kind", cond["kind"])
            combined = part if combined is None else {"&&": {"left": part, "right": combined}}
        at = len(out)
        out += b"\0\0\0\0"
        if combined is not None:
            self._expr(out, combined, 0)
        U32.pack_into(out, at, len(out) - at - 4)
        annotations = est.get("annotations") or {}
        # A bare `@id` names the policy "", as cedarpy does.
        annotated = (annotations["id"] or "") if "id" in annotations else None
        policy_id = None
        if isinstance(annotated, str):
            slot = self._slot(annotated)
            policy_id = annotated if slot is None else slot
        others = []
        for name, value in annotations.items():
            if name != "id":
                slot = self._slot(value) if isinstance(value, str) else None
                others.append((name, value if slot is None else slot))
        return Template(bytes(out), tuple(self._holes), keys, policy_id, tuple(self._record_keys), tuple(others))

    # -- interned fields (u32), possibly holes --
    def _uid_field(self, out, entity):
        if "__entity" in entity:
            entity = entity["__entity"]
        type_name, uid_id = entity["type"], entity["id"]
        slot = self._slot(uid_id)
        if slot is None:
            index = self.symbols.uid_index(type_name, uid_id)
            out += U32.pack(index)
            return index
        self.symbols.type_index(type_name)
        self._holes.append((len(out), _HOLE_UID, (type_name, slot)))
        out += b"\0\0\0\0"
        return (type_name, slot)

    def _str_field(self, out, text):
        slot = self._slot(text)
        if slot is None:
            out += U32.pack(self.symbols.string_index(text))
        else:
            self._holes.append((len(out), _HOLE_STR, slot))
            out += b"\0\0\0\0"

    def _scope(self, out, scope, var):
        op = scope.get("op")
        if "slot" in scope or ("in" in scope and "slot" in scope["in"]):
            raise _Unsupported("template slot", "templates are not supported yet")
        if op == "All":
            out += bytes((L.S_ALL, 0, 0, 0, 0, 0, 0, 0, 0))
            return None
        if op in ("==", "in") and "entity" in scope:
            out.append(L.S_EQ if op == "==" else L.S_IN)
            uid = self._uid_field(out, scope["entity"])
            out += b"\0\0\0\0"
            return ("uid", uid)
        if op == "in" and "entities" in scope:
            out.append(L.S_IN_LIST)
            out += U32.pack(len(scope["entities"]))
            out += b"\0\0\0\0"
            uids = tuple(self._uid_field(out, e) for e in scope["entities"])
            return ("uids", uids)
        if op == "is":
            type_index = self.symbols.type_index(scope["entity_type"])
            if "in" in scope:
                out.append(L.S_IS_IN)
                uid = self._uid_field(out, scope["in"]["entity"])
                out += U32.pack(type_index)
                return ("uid", uid)
            out.append(L.S_IS)
            out += b"\0\0\0\0"
            out += U32.pack(type_index)
            return ("type", type_index)
        raise _Unsupported(f"{var} scope", repr(op))

    def _lazy(self, out, expr, depth):
        """Appends a u32 byte length then the expression, so the evaluator can skip it."""
        at = len(out)
        out += b"\0\0\0\0"
        self._expr(out, expr, depth)
        U32.pack_into(out, at, len(out) - at - 4)

    def _expr(self, out, expr, depth):
        if depth > L.MAX_EXPR_DEPTH:
            raise RecursionError
        depth += 1
        if not isinstance(expr, dict) or len(expr) != 1:
            raise _Unsupported("expression", repr(expr)[:60])
        (key, arg), = expr.items()
        if key == "Value":
            if isinstance(arg, str):
                out.append(L.OP_STR)
                self._str_field(out, arg)
            elif isinstance(arg, dict) and "__entity" in arg:
                out.append(L.OP_LIT)
                out.append(L.V_UID)
                self._uid_field(out, arg)
            else:
                out.append(L.OP_LIT)
                encode_value(out, arg, self.symbols)
        elif key == "Var":
            out.append(L.OP_VAR)
            out.append(_VARS[arg])
        elif key in (".", "has"):
            out.append(L.OP_GETATTR if key == "." else L.OP_HAS)
            self._expr(out, arg["left"], depth)
            self._str_field(out, arg["attr"])
        elif key in ("&&", "||"):
            out.append(L.OP_AND if key == "&&" else L.OP_OR)
            self._expr(out, arg["left"], depth)
            self._lazy(out, arg["right"], depth)
        elif key in L.BINARY_OPS:
            out.append(L.BINARY_OPS[key])
            self._expr(out, arg["left"], depth)
            self._expr(out, arg["right"], depth)
        elif key in L.UNARY_OPS:
            out.append(L.UNARY_OPS[key])
            self._expr(out, arg["arg"], depth)
        elif key == "if-then-else":
            out.append(L.OP_IF)
            self._expr(out, arg["if"], depth)
            self._lazy(out, arg["then"], depth)
            self._lazy(out, arg["else"], depth)
        elif key == "like":
            out.append(L.OP_LIKE)
            self._expr(out, arg["left"], depth)
            self._pattern(out, arg["pattern"])
        elif key == "is":
            if "in" in arg:
                # `e is T in E` is `e is T && e in E`, as Cedar desugars it.
                out.append(L.OP_AND)
                self._is(out, arg, depth)
                self._lazy(out, {"in": {"left": arg["left"], "right": arg["in"]}}, depth)
            else:
                self._is(out, arg, depth)
        elif key == "Set":
            out.append(L.OP_SET)
            out += U32.pack(len(arg))
            for item in arg:
                self._expr(out, item, depth)
        elif key == "Record":
            names = tuple(self._slot(name) if self._slot(name) is not None else name for name in arg)
            if any(type(name) is int for name in names):
                self._record_keys.append(names)
            out.append(L.OP_RECORD)
            out += U32.pack(len(arg))
            for name, item in arg.items():
                self._str_field(out, name)
                self._expr(out, item, depth)
        elif key in L.EXTENSION_FUNCTIONS and isinstance(arg, list):
            out.append(L.OP_CALL)
            out.append(L.EXTENSION_FUNCTIONS[key][0])
            out.append(len(arg))
            for item in arg:
                self._expr(out, item, depth)
        elif key in ("Slot", "Unknown"):
            raise _Unsupported(key, "templates and partial evaluation are not supported yet")
        else:
            raise _Unsupported(key)

    def _is(self, out, arg, depth):
        out.append(L.OP_IS)
        self._expr(out, arg["left"], depth)
        out += U32.pack(self.symbols.type_index(arg["entity_type"]))

    def _pattern(self, out, pattern):
        segments = []
        for item in pattern:
            if item == "Wildcard":
                if not segments or segments[-1] is not None:
                    segments.append(None)
            elif isinstance(item, dict) and "Literal" in item:
                if segments and segments[-1] is not None:
                    segments[-1] += item["Literal"]
                else:
                    segments.append(item["Literal"])
            else:
                raise _Unsupported("like pattern", repr(item))
        out += U32.pack(len(segments))
        for seg in segments:
            if seg is None:
                out.append(0)
            else:
                out.append(1)
                self._str_field(out, seg)
