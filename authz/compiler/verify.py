"""The check a compile passes before it is published: every compiled policy record, decoded back from its
bytes, must say what that policy's own parse says.

The compiler lowers each policy shape once and patches literals into a copy per policy (lower.py). A
policy that picked up another shape's template would be compiled into something else: another effect,
another scope, literals in the wrong places. This module shares nothing with that path: it reads the
record bytes as the evaluator does (layout.py) into a canonical tree, builds the same tree straight from
the policy's EST with its literals put back, and compares the two, together with the policy's index keys
and its id. A difference refuses the whole generation.
"""

from ..errors import CompileError
from . import layout as L
from ._records import RecordError, record_tokens
from .source import literal_slot

_VARS = {"principal": L.VAR_PRINCIPAL, "action": L.VAR_ACTION, "resource": L.VAR_RESOURCE, "context": L.VAR_CONTEXT}
_SCOPE_OPS = {"==": L.S_EQ, "in": L.S_IN}


class _Mismatch(Exception):
    pass


class _Shape:
    """The token stream (_records.pyx) one parsed policy EST must compile to, with the places its literals
    go: `fills` holds (position, literal slot, entity type or None). Also its scope keys and id, likewise."""

    __slots__ = ("est", "tokens", "fills", "keys", "policy_id", "placeholders", "annotations")

    def __init__(self, est, placeholders):
        self.est, self.placeholders = est, placeholders
        self.tokens, self.fills = [], []
        self.keys = {}
        self._policy(est)

    def bind(self, literals):
        """(tokens, keys spec, id) with this policy's literals in place."""
        tokens = self.tokens
        if self.fills:
            tokens = list(tokens)
            for pos, slot, type_name in self.fills:
                tokens[pos] = literals[slot] if type_name is None else (type_name, literals[slot])
        return tokens

    # -- building --
    def _slot(self, text):
        return literal_slot(text) if self.placeholders else None

    def _text(self, text):
        slot = self._slot(text)
        if slot is not None:
            self.fills.append((len(self.tokens), slot, None))
        self.tokens.append(text)

    def _uid(self, entity):
        entity = entity.get("__entity", entity)
        slot = self._slot(entity["id"])
        if slot is not None:
            self.fills.append((len(self.tokens), slot, entity["type"]))
        self.tokens.append((entity["type"], entity["id"]))
        return entity["type"], entity["id"] if slot is None else slot

    def _scope(self, var, scope):
        out = self.tokens
        op = scope["op"]
        if op == "All":
            out.append(L.S_ALL)
            self.keys[var] = None
        elif op == "is" and "in" in scope:
            out.append(L.S_IS_IN)
            self.keys[var] = ("uid", self._uid(scope["in"]["entity"]))
            out.append(scope["entity_type"])
        elif op == "is":
            out += (L.S_IS, scope["entity_type"])
            self.keys[var] = ("type", scope["entity_type"])
        elif "entities" in scope:
            out += (L.S_IN_LIST, len(scope["entities"]))
            self.keys[var] = ("uids", tuple(self._uid(e) for e in scope["entities"]))
        else:
            out.append(_SCOPE_OPS[op])
            self.keys[var] = ("uid", self._uid(scope["entity"]))

    def _value(self, v):
        out = self.tokens
        if v is True or v is False:
            out.append(L.V_TRUE if v else L.V_FALSE)
        elif isinstance(v, int):
            out += (L.V_LONG, v)
        elif isinstance(v, str):
            out += (L.V_STR, v)
        elif isinstance(v, list):
            out += (L.V_SET, len(v))
            for item in v:
                self._value(item)
        elif len(v) == 1 and isinstance(v.get("__entity"), dict):
            out.append(L.V_UID)
            out.append((v["__entity"]["type"], v["__entity"]["id"]))
        elif len(v) == 1 and isinstance(v.get("__extn"), dict):
            extn = v["__extn"]
            args = [extn["arg"]] if "arg" in extn else extn["args"]
            out += (L.V_EXT, L.EXTENSION_FUNCTIONS[extn["fn"]][0], len(args))
            for arg in args:
                self._value(arg)
        else:
            out += (L.V_RECORD, len(v))
            for key, item in v.items():
                out.append(key)
                self._value(item)

    def _expr(self, e):
        out = self.tokens
        (key, arg), = e.items()
        if key == "Value":
            if isinstance(arg, str):
                out.append(L.OP_STR)
                self._text(arg)
            elif isinstance(arg, dict) and "__entity" in arg:
                out += (L.OP_LIT, L.V_UID)
                self._uid(arg)
            else:
                out.append(L.OP_LIT)
                self._value(arg)
        elif key == "Var":
            out += (L.OP_VAR, _VARS[arg])
        elif key in (".", "has"):
            out.append(L.OP_GETATTR if key == "." else L.OP_HAS)
            self._expr(arg["left"])
            self._text(arg["attr"])
        elif key in ("&&", "||"):
            out.append(L.OP_AND if key == "&&" else L.OP_OR)
            self._expr(arg["left"])
            self._expr(arg["right"])
        elif key in L.BINARY_OPS:
            out.append(L.BINARY_OPS[key])
            self._expr(arg["left"])
            self._expr(arg["right"])
        elif key in L.UNARY_OPS:
            out.append(L.UNARY_OPS[key])
            self._expr(arg["arg"])
        elif key == "if-then-else":
            out.append(L.OP_IF)
            for part in ("if", "then", "else"):
                self._expr(arg[part])
        elif key == "like":
            out.append(L.OP_LIKE)
            self._expr(arg["left"])
            segments = []
            for item in arg["pattern"]:
                if item == "Wildcard":
                    if not segments or segments[-1] is not None:
                        segments.append(None)
                elif segments and segments[-1] is not None:
                    segments[-1] += item["Literal"]
                else:
                    segments.append(item["Literal"])
            out.append(len(segments))
            out += segments
        elif key == "is":
            if "in" in arg:  # `e is T in E` is `e is T && e in E`
                out.append(L.OP_AND)
            out.append(L.OP_IS)
            self._expr(arg["left"])
            out.append(arg["entity_type"])
            if "in" in arg:
                out.append(L.OP_IN)
                self._expr(arg["left"])
                self._expr(arg["in"])
        elif key == "Set":
            out += (L.OP_SET, len(arg))
            for item in arg:
                self._expr(item)
        elif key == "Record":
            out += (L.OP_RECORD, len(arg))
            for name, item in arg.items():
                self._text(name)
                self._expr(item)
        else:
            out += (L.OP_CALL, L.EXTENSION_FUNCTIONS[key][0], len(arg))
            for item in arg:
                self._expr(item)

    def _policy(self, est):
        self.tokens.append(0 if est["effect"] == "permit" else 1)
        for var in ("principal", "action", "resource"):
            self._scope(var, est[var])
        condition = None
        for cond in reversed(est.get("conditions") or []):
            part = cond["body"] if cond["kind"] == "when" else {"!": {"arg": cond["body"]}}
            condition = part if condition is None else {"&&": {"left": part, "right": condition}}
        if condition is not None:
            self._expr(condition)
        annotations = self.est.get("annotations") or {}
        self.policy_id = None
        if "id" in annotations:
            text = annotations["id"] or ""
            slot = self._slot(text)
            self.policy_id = ("text", text) if slot is None else ("slot", slot)
        self.annotations = [(name, value, self._slot(value) if isinstance(value, str) else None)
                            for name, value in annotations.items() if name != "id"]

    def bind_annotations(self, literals):
        """The annotations besides @id with this policy's literals in place, or None."""
        if not self.annotations:
            return None
        return {name: value if slot is None else literals[slot] for name, value, slot in self.annotations}


def _resolve_keys(spec, literals, symbols):
    """The index keys (lower.py's form) of a keys spec whose uid ids may be literal slots."""
    uids, types = symbols.uids, symbols.types

    def uid(pair):
        type_name, uid_id = pair
        return uids[(type_name, literals[uid_id] if type(uid_id) is int else uid_id)]

    keys = {}
    for var, key in spec.items():
        if key is None:
            keys[var] = None
        elif key[0] == "type":
            keys[var] = ("type", types[key[1]])
        elif key[0] == "uids":
            keys[var] = ("uids", tuple(uid(u) for u in key[1]))
        else:
            keys[var] = ("uid", uid(key[1]))
    return keys


def verify_policies(sources, compiled, symbols):
    """Raises CompileError naming each policy whose record, index keys or id differ from its own parse.

    `sources[k]` is policy k's PolicySource; `compiled[k]` its (record, keys, policy id, annotations)."""
    strings, uids, types = list(symbols.strings), list(symbols.uids), list(symbols.types)
    # One _Shape per parsed EST object. The EST is kept in its _Shape, so while this dict lives no other
    # object can take its id(): the key cannot be reused (unlike a key to an object that was freed).
    shapes = {}
    problems = []
    for source, (record, keys, policy_id, annotations) in zip(sources, compiled):
        try:
            shape = shapes.get(id(source.est))
            if shape is None or shape.est is not source.est or shape.placeholders != source.placeholders:
                shape = shapes[id(source.est)] = _Shape(source.est, source.placeholders)
            got = record_tokens(record, strings, uids, types)
            want = shape.bind(source.literals)
            if got != want:
                raise _Mismatch(_first_difference(got, want))
            if keys != _resolve_keys(shape.keys, source.literals, symbols):
                raise _Mismatch("its index keys are not its scope's")
            if shape.policy_id is None:
                want_id = f"{source.name}:{source.index}"
            else:
                kind, value = shape.policy_id
                want_id = value if kind == "text" else source.literals[value]
            if policy_id != want_id:
                raise _Mismatch(f"its id is `{policy_id}`, not `{want_id}`")
            if annotations != shape.bind_annotations(source.literals):
                raise _Mismatch("its annotations differ")
        except (_Mismatch, RecordError, IndexError, KeyError) as err:
            problems.append(f"{source.where}: internal compiler error: policy `{policy_id}` compiled into "
                            f"something else ({err}); nothing was published")
    if problems:
        raise CompileError(problems)


def _first_difference(got, want):
    if got[0] != want[0]:
        return "a %s, not a %s" % (("permit", "forbid")[got[0]], ("permit", "forbid")[want[0]])
    for at, (a, b) in enumerate(zip(got, want)):
        if a != b:
            return f"token {at}: {a!r}, not {b!r}"
    return f"{len(got)} tokens, not {len(want)}"
