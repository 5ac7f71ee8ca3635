"""Token scopes: Cedar entity uids and uid patterns (`Tool::"github.*"`), matching, containment and intersection.

A scope is two lists of uid patterns, `actions` and `resources`; a request is in scope when
its action matches one action pattern and its resource matches one resource pattern. A
pattern is `Type::"id"` in Cedar's uid syntax where an unescaped `*` in the id matches any
sequence of characters and `\\*` is a literal star (as in Cedar's `like`). Types match
exactly; entity hierarchy (`in`) is not consulted: the scope is a ceiling written in uids.
"""
from __future__ import annotations

import re

from authz.errors import AuthzError

STAR = None  # the wildcard item in a parsed id (every other item is a one-character str)

_TYPE = re.compile(r"[A-Za-z_][A-Za-z0-9_]*(?:::[A-Za-z_][A-Za-z0-9_]*)*\Z")
_SIMPLE_ESCAPES = {'"': '"', "\\": "\\", "*": "*", "'": "'", "n": "\n", "r": "\r", "t": "\t", "0": "\0"}
MAX_PATTERN_CHARS = 256
MAX_WILDCARDS = 4  # per pattern: bounds the cost of containment checks


class ScopeError(AuthzError):
    """A scope or uid pattern is malformed or beyond the bounds."""

    code = "invalid_scope"


class Pattern:
    """One parsed uid pattern: an entity type and an id made of characters and wildcards."""

    __slots__ = ("type", "items", "text", "exact", "_match")

    def __init__(self, type_: str, items: tuple):
        self.type = type_
        self.items = items
        self.exact = STAR not in items
        self.text = format_pattern(type_, items)
        self._match = _compile(items)

    def matches(self, type_: str, id_: str) -> bool:
        """Whether the uid Type::"id" is one of this pattern's uids."""
        return type_ == self.type and self._match(id_)

    def within(self, other: "Pattern") -> bool:
        """Whether every uid this pattern matches is matched by `other` (language containment)."""
        if self.type != other.type:
            return False
        if self.exact:
            return other._match("".join(self.items))
        return not other.exact and glob_match(other.items, self.items)

    def __eq__(self, other):
        return isinstance(other, Pattern) and self.text == other.text

    def __hash__(self):
        return hash(self.text)

    def __repr__(self):
        return f"Pattern({self.text})"


def _compile(items: tuple):
    """A fast matcher for an id: equality, prefix, suffix or the general glob."""
    stars = items.count(STAR)
    if stars == 0:
        literal = "".join(items)
        return literal.__eq__
    if stars == 1:
        k = items.index(STAR)
        head, tail = "".join(items[:k]), "".join(items[k + 1:])
        if not tail:
            return lambda s: s.startswith(head)
        if not head:
            return lambda s: s.endswith(tail)
        n = len(head) + len(tail)
        return lambda s: len(s) >= n and s.startswith(head) and s.endswith(tail)
    return lambda s: glob_match(items, s)


def glob_match(pattern, subject) -> bool:
    """Whether `subject` (a str, or a sequence of characters and STARs) matches `pattern` (characters and STARs).

    A STAR in the pattern matches any run of subject items; a STAR in the subject is matched
    only by a pattern STAR, so glob_match(q, p.items) decides L(p) <= L(q). Linear-space,
    O(len(pattern) * len(subject)) time: the classic two-pointer wildcard match.
    """
    p = s = 0
    star_p = -1
    star_s = 0
    np, ns = len(pattern), len(subject)
    while s < ns:
        if p < np and pattern[p] is not STAR and pattern[p] == subject[s] and subject[s] is not STAR:
            p += 1
            s += 1
        elif p < np and pattern[p] is STAR:
            star_p, star_s = p, s
            p += 1
        elif star_p >= 0:
            star_s += 1
            s = star_s
            p = star_p + 1
        else:
            return False
    while p < np and pattern[p] is STAR:
        p += 1
    return p == np


def parse_pattern(text: str, field: str = "scope") -> Pattern:
    """`Type::"id*"` -> Pattern; ScopeError naming `field` when malformed."""
    if not isinstance(text, str):
        raise ScopeError(f"`{field}`: expected a string")
    if len(text) > MAX_PATTERN_CHARS:
        raise ScopeError(f"`{field}`: longer than {MAX_PATTERN_CHARS} characters")
    sep = text.find('::"')
    if sep < 0 or not text.endswith('"') or len(text) < sep + 4:
        raise ScopeError(f'`{field}`: `{text}` is not an entity uid like Tool::"name" or a pattern like Tool::"github.*"')
    type_ = text[:sep]
    if not _TYPE.match(type_):
        raise ScopeError(f"`{field}`: `{type_}` is not a Cedar entity type")
    body = text[sep + 3:-1]
    items: list = []
    i, n = 0, len(body)
    while i < n:
        c = body[i]
        if c == "*":
            if not items or items[-1] is not STAR:  # `**` is `*`
                items.append(STAR)
            i += 1
        elif c == '"':
            raise ScopeError(f"`{field}`: unescaped `\"` in `{text}`")
        elif c == "\\":
            if i + 1 >= n:
                raise ScopeError(f"`{field}`: dangling `\\` in `{text}`")
            e = body[i + 1]
            if e in _SIMPLE_ESCAPES:
                items.append(_SIMPLE_ESCAPES[e])
                i += 2
            elif e == "u" and body[i + 2:i + 3] == "{":
                end = body.find("}", i + 3)
                digits = body[i + 3:end] if end > 0 else ""
                if not digits or len(digits) > 6 or any(ch not in "0123456789abcdefABCDEF" for ch in digits):
                    raise ScopeError(f"`{field}`: bad `\\u{{...}}` escape in `{text}`")
                code = int(digits, 16)
                if code > 0x10FFFF or 0xD800 <= code <= 0xDFFF:
                    raise ScopeError(f"`{field}`: bad `\\u{{...}}` escape in `{text}`")
                items.append(chr(code))
                i = end + 1
            else:
                raise ScopeError(f"`{field}`: unknown escape `\\{e}` in `{text}`")
        else:
            items.append(c)
            i += 1
    if items.count(STAR) > MAX_WILDCARDS:
        raise ScopeError(f"`{field}`: more than {MAX_WILDCARDS} `*` in `{text}`")
    return Pattern(type_, tuple(items))


def format_pattern(type_: str, items) -> str:
    """The canonical text of a pattern (inverse of parse_pattern)."""
    out = []
    for c in items:
        if c is STAR:
            out.append("*")
        elif c in '"\\*':
            out.append("\\" + c)
        elif c == "\n":
            out.append("\\n")
        elif c == "\r":
            out.append("\\r")
        elif c == "\t":
            out.append("\\t")
        elif c == "\0":
            out.append("\\0")
        elif not c.isprintable():
            out.append(f"\\u{{{ord(c):x}}}")
        else:
            out.append(c)
    return f'{type_}::"{"".join(out)}"'


def uid_text(type_: str, id_: str) -> str:
    """The exact pattern text of one uid (its id's stars escaped)."""
    return format_pattern(type_, tuple(id_))


class Scope:
    """The actions and resources a token may be used for."""

    __slots__ = ("actions", "resources", "_exact_actions", "_exact_resources", "_wild_actions", "_wild_resources")

    def __init__(self, actions, resources):
        self.actions = tuple(actions)
        self.resources = tuple(resources)
        self._exact_actions = frozenset((p.type, "".join(p.items)) for p in self.actions if p.exact)
        self._exact_resources = frozenset((p.type, "".join(p.items)) for p in self.resources if p.exact)
        self._wild_actions = tuple(p for p in self.actions if not p.exact)
        self._wild_resources = tuple(p for p in self.resources if not p.exact)

    @classmethod
    def parse(cls, actions, resources, max_entries: int, field: str = "scope") -> "Scope":
        """From lists of pattern texts; duplicates and patterns inside another entry are dropped."""
        parsed = []
        for name, texts in (("actions", actions), ("resources", resources)):
            texts = list(texts or ())
            if len(texts) > max_entries:
                raise ScopeError(f"`{field}.{name}`: more than {max_entries} entries")
            parsed.append(_minimal([parse_pattern(t, f"{field}.{name}[{i}]") for i, t in enumerate(texts)]))
        return cls(*parsed)

    def allows(self, action: dict, resource: dict) -> bool:
        """Whether the request's action and resource ({type, id} dicts) are both in scope."""
        return (_in(action, self._exact_actions, self._wild_actions)
                and _in(resource, self._exact_resources, self._wild_resources))

    def within(self, other: "Scope") -> bool:
        """Whether every request this scope allows, `other` allows too."""
        return (all(any(p.within(q) for q in other.actions) for p in self.actions)
                and all(any(p.within(q) for q in other.resources) for p in self.resources))

    def narrow(self, parent: "Scope") -> "Scope":
        """This (requested) scope intersected with `parent`'s; an empty side takes the parent's.

        Each requested pattern inside a parent pattern is kept; a parent pattern inside a
        requested one is kept in its place; partial overlaps (e.g. `a*` and `*b`) are dropped,
        so the result never allows what the parent does not (it may allow less than the exact
        intersection).
        """
        return Scope(_meet(self.actions, parent.actions), _meet(self.resources, parent.resources))

    @property
    def empty(self) -> bool:
        """True when no request is in scope."""
        return not self.actions or not self.resources

    def to_claim(self) -> dict:
        """The `scope` claim: {"actions": [...], "resources": [...]} of canonical pattern texts."""
        return {"actions": [p.text for p in self.actions], "resources": [p.text for p in self.resources]}

    def __eq__(self, other):
        return isinstance(other, Scope) and self.to_claim() == other.to_claim()

    def __repr__(self):
        return f"Scope({self.to_claim()})"


def _in(uid: dict, exact: frozenset, wild: tuple) -> bool:
    t, i = uid.get("type"), uid.get("id")
    if (t, i) in exact:
        return True
    for p in wild:
        if p.matches(t, i):
            return True
    return False


def _minimal(patterns: list) -> list:
    """Drop duplicates and patterns contained in another one, keeping the first spelling's order."""
    out: list = []
    for p in patterns:
        if any(p.within(q) for q in out):
            continue
        out = [q for q in out if not q.within(p)]
        out.append(p)
    return out


def _meet(requested: tuple, parent: tuple) -> list:
    if not requested:
        return list(parent)
    kept = []
    for p in requested:
        for q in parent:
            if p.within(q):
                kept.append(p)
            elif q.within(p):
                kept.append(q)
    return _minimal(kept)


def scope_from_claim(claim, max_entries: int) -> Scope:
    """The Scope of a verified token's `scope` claim; ScopeError when it is not one."""
    if not isinstance(claim, dict) or set(claim) != {"actions", "resources"}:
        raise ScopeError("`scope` claim: expected {actions, resources}")
    actions, resources = claim["actions"], claim["resources"]
    if not isinstance(actions, list) or not isinstance(resources, list):
        raise ScopeError("`scope` claim: expected lists")
    return Scope.parse(actions, resources, max_entries, "scope")
