"""Cedar JSON policies (EST) -> compiled policy records: scope tests on interned ids plus condition bytecode."""

import struct

from ..errors import CompileError
from . import layout as L
from .encode import U32, encode_value, pack_str

_SCOPE = struct.Struct("<BII")


class _Unsupported(Exception):
    def __init__(self, construct, detail=""):
        self.construct = construct
        self.detail = detail


class PolicyLowering:
    """Lowers one policy at a time; remembers the index keys each policy could be filed under."""

    def __init__(self, symbols):
        self.symbols = symbols

    def lower(self, source):
        """(record bytes, scope keys) for a PolicySource; raises CompileError naming the construct and place."""
        try:
            return self._lower(source.est)
        except _Unsupported as err:
            detail = f": {err.detail}" if err.detail else ""
            raise CompileError([f"{source.where}: unsupported construct `{err.construct}`{detail}"]) from None
        except RecursionError:
            raise CompileError([f"{source.where}: expression nested too deeply"]) from None
        except CompileError as err:
            raise CompileError([f"{source.where}: {d}" for d in err.diagnostics]) from None

    def _lower(self, est):
        out = bytearray()
        effect = est.get("effect")
        if effect not in ("permit", "forbid"):
            raise _Unsupported("effect", repr(effect))
        out.append(0 if effect == "permit" else 1)
        keys = {}
        keys["principal"] = self._scope(out, est["principal"], "principal")
        keys["action"] = self._scope(out, est["action"], "action")
        keys["resource"] = self._scope(out, est["resource"], "resource")
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
        body = bytearray()
        if combined is not None:
            self._expr(body, combined, 0)
        out += U32.pack(len(body))
        out += body
        return bytes(out), keys

    def _scope(self, out, scope, var):
        op = scope.get("op")
        sym = self.symbols
        if "slot" in scope or ("in" in scope and "slot" in scope["in"]):
            raise _Unsupported("template slot", "templates are not supported yet")
        if op == "All":
            out += _SCOPE.pack(L.S_ALL, 0, 0)
            return None
        if op == "==":
            uid = sym.uid_of(scope["entity"])
            out += _SCOPE.pack(L.S_EQ, uid, 0)
            return ("uid", uid)
        if op == "in" and "entities" in scope:
            uids = [sym.uid_of(e) for e in scope["entities"]]
            out += _SCOPE.pack(L.S_IN_LIST, len(uids), 0)
            for uid in uids:
                out += U32.pack(uid)
            return ("uids", tuple(uids))
        if op == "in":
            uid = sym.uid_of(scope["entity"])
            out += _SCOPE.pack(L.S_IN, uid, 0)
            return ("uid", uid)
        if op == "is":
            type_index = sym.type_index(scope["entity_type"])
            if "in" in scope:
                uid = sym.uid_of(scope["in"]["entity"])
                out += _SCOPE.pack(L.S_IS_IN, uid, type_index)
                return ("uid", uid)
            out += _SCOPE.pack(L.S_IS, 0, type_index)
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
                out += U32.pack(self.symbols.string_index(arg))
            else:
                out.append(L.OP_LIT)
                encode_value(out, arg, self.symbols)
        elif key == "Var":
            out.append(L.OP_VAR)
            out.append(("principal", "action", "resource", "context").index(arg))
        elif key in (".", "has"):
            out.append(L.OP_GETATTR if key == "." else L.OP_HAS)
            self._expr(out, arg["left"], depth)
            out += U32.pack(self.symbols.string_index(arg["attr"]))
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
            out.append(L.OP_RECORD)
            out += U32.pack(len(arg))
            for name, item in arg.items():
                pack_str(out, name)
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

    @staticmethod
    def _pattern(out, pattern):
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
                pack_str(out, seg)
