"""Hypothesis strategies for Cedar policy text, entity graphs and requests (differential tests vs cedarpy).

Everything is drawn from small pools (entity types, ids, attribute names, literal
values) so that generated requests actually hit scopes, attributes, hierarchies
and tags, and a good share of cases end in allow, deny and evaluation errors.

Families restrict the expression constructs a strategy draws from, so each test
function can focus on one area and stay fast:

* ``core``  - literals, entities, sets, records, access, has, like, ==/!=/</..,
  && || !, in, is, contains*, isEmpty, if-then-else, + - * and negation.
* ``ext``   - ip, decimal, datetime and duration and their methods (plus the
  bool/long glue needed to use them), including bad extension literals.
* ``graph`` - scopes, `in` over deep hierarchies, `is ... in`, action groups, tags.
* ``all``   - everything together.

Every generated policy set is valid Cedar (``cedarpy.policies_to_json_str``
accepts it): all compound sub-expressions are parenthesized, reserved words
never appear as bare identifiers, record literals never repeat a key.
"""

from __future__ import annotations

import json
import random
import re
import sys

import cedarpy
from hypothesis import strategies as st

# --------------------------------------------------------------------------- pools

I64_MAX = 2**63 - 1
I64_MIN = -(2**63)

ENTITY_TYPES = ("User", "Group", "Doc", "Folder", "NS::Res")
IDS = ("a", "b", "c")
# Rare ids that need escaping in Cedar text (used with the dict request form only).
ODD_IDS = ("", "a b", 'q"t', "\u00e9", "x\\y")
ACTION_TYPE = "Action"
ACTION_IDS = ("read", "write", "list", "admin", "all")

# Attribute names and the kind of value each usually holds (so accesses mostly type-check).
ATTR_KIND = {
    "n": "long",
    "m": "long",
    "s": "str",
    "b": "bool",
    "set": "set",
    "rec": "rec",
    "ref": "ent",
    "ip": "ip",
    "dec": "dec",
    "dt": "dt",
    "dur": "dur",
    "a b": "str",  # needs ["a b"] / has "a b"
    "if": "bool",  # reserved word: only ["if"] / has "if"
}
ATTR_NAMES = tuple(ATTR_KIND)
BRACKET_ONLY = frozenset({"a b", "if", ""})
KIND_ATTRS = {}
for _name, _kind in ATTR_KIND.items():
    KIND_ATTRS.setdefault(_kind, []).append(_name)
KIND_ATTRS = {k: tuple(v) for k, v in KIND_ATTRS.items()}

TAG_KEYS = ("t", "env", "a b", "")

LONGS = (
    0, 1, 2, 3, 5, 7, 10, 100, -1, -2, -7, -100,
    2**31, 2**32, 3037000499, 3037000500, 2**62, -(2**62),
    I64_MAX, I64_MAX - 1, I64_MIN, I64_MIN + 1,
)
SMALL_LONGS = (0, 1, 2, 3, 5, 7, 10, -1, -2)

STRINGS = ("", "a", "b", "ab", "aab", "ba", "abc", "a*b", "*", "x y", "\u00e9", "A", "a\\b", 'q"t', "tab\there", "line\nnext", "\u2603")

IP_LITS = (
    "127.0.0.1", "10.0.0.1", "10.1.2.3", "192.168.1.1", "224.0.0.1", "0.0.0.0",
    "10.0.0.0/8", "127.0.0.0/8", "192.168.0.0/16", "192.168.1.1/24", "0.0.0.0/0", "224.0.0.0/4",
    "::1", "::", "ff02::1", "fe80::1", "2001:db8::1", "::1/128", "::/0", "2001:db8::/32",
    "ff00::/8", "::1/127", "127.0.0.1/32",
    "0000::1", "FE80::1", "1:2:3:4:5:6:7:8", "255.255.255.255", "::ffff:0:0", "10.0.0.0/0",
)
IP_BAD = ("::ffff:10.0.0.1", "10.0.0.0/08", "10.0.0.0/+8", "::1/0128", "10.0.0.0/00", "00000::1", "127.1", "1.2.3", "256.0.0.1", "1.2.3.4/33", "::1/129", "01.2.3.4", "", "hello", "1.2.3.4 ", "::1%eth0")

DEC_LITS = (
    "0.0", "1.0", "1.5", "-1.5", "0.1", "0.10", "1.2345", "-0.0001", "12.34", "100.0",
    "922337203685477.5807", "-922337203685477.5808", "-0.0",
)
DEC_BAD = ("1.50000", "-.5", "1.5e2", "922337203685477.58070", "1", "1.23456", "922337203685477.5808", "-922337203685477.5809", ".5", "1.", "+1.0", "abc", "1.2.3", "")

DT_LITS = (
    "2024-01-01", "2024-01-01T00:00:00Z", "2024-01-01T12:34:56Z", "2024-01-01T12:34:56.789Z",
    "2024-01-01T12:34:56+0130", "2024-01-01T12:34:56-0130", "2024-01-01T00:00:00.001-2359",
    "2023-12-31T23:00:00-0100", "1969-12-31T23:59:59Z", "1969-12-31T23:59:59.999Z", "1965-06-15",
    "1965-06-15T12:00:00+0000", "1970-01-01", "0001-01-01", "9999-12-31T23:59:59.999Z", "2024-02-29",
    "0000-01-01", "2000-02-29", "2024-01-31T23:59:59.999-0000", "1969-12-31T12:00:00-1300",
)
DT_BAD = (
    "2024-13-01", "2024-01-01T24:00:00Z", "2024-01-01T23:59:60Z", "2024-1-1", "2024-01-01T00:00:00",
    "2024-01-01T00:00:00+2400", "2024-01-01 00:00:00Z", "2023-02-29", "+2024-01-01", "2024-01-01T00:00Z",
    "2024-01-01T00:00:00.1Z", "", "2100-02-29", "2024-01-01T00:00:00.999999Z", "2024-01-01T00:00:00+00:00",
    "2024-01-00", "12024-01-01",
)
DUR_LITS = (
    "0ms", "1ms", "1s", "1m", "1h", "1d", "-1h", "90m", "1d2h3m4s5ms", "-2d12h", "25h", "1h30m",
    "86400000ms", "9223372036854775807ms", "-9223372036854775808ms", "106751991167d", "-1d",
    "01h", "1m60s", "-106751991167d", "1d0h",
)
DUR_BAD = ("2562047788015215h", "-106751991167d23h", "1ms1s", "+1h", "1H", "1", "1h1d", "1x", "", "1.5h", "1h1h", "-", "9223372036854775808ms", "106751991168d", "1 h", "h", "--1h")

ALL_KINDS = ("bool", "long", "str", "set", "rec", "ent", "ip", "dec", "dt", "dur")
FAMILY_KINDS = {
    "core": ("bool", "long", "str", "set", "rec", "ent"),
    "ext": ("bool", "long", "ip", "dec", "dt", "dur"),
    "graph": ("bool", "long", "str", "set", "ent"),
    "all": ALL_KINDS,
}
EXT_KINDS = ("ip", "dec", "dt", "dur")


# --------------------------------------------------------------------------- text helpers

_ESC = {"\\": "\\\\", '"': '\\"', "\n": "\\n", "\t": "\\t", "\r": "\\r", "\0": "\\0"}


def cedar_str(s: str, unicode_escapes: bool = False) -> str:
    """A Cedar string literal for `s` (optionally spelling non-ASCII as \\u{..})."""
    out = []
    for ch in s:
        if ch in _ESC:
            out.append(_ESC[ch])
        elif ord(ch) < 32 or ord(ch) == 127 or (unicode_escapes and ord(ch) > 126):
            out.append("\\u{%x}" % ord(ch))
        else:
            out.append(ch)
    return '"' + "".join(out) + '"'


def uid_text(uid) -> str:
    t, i = uid
    return "%s::%s" % (t, cedar_str(i))


def uid_json(uid) -> dict:
    return {"type": uid[0], "id": uid[1]}


def attr_access(base: str, name: str, bracket: bool) -> str:
    if bracket or name in BRACKET_ONLY:
        return "%s[%s]" % (base, cedar_str(name))
    return "%s.%s" % (base, name)


def has_text(base: str, name: str, quoted: bool) -> str:
    if quoted or name in BRACKET_ONLY:
        return "%s has %s" % (base, cedar_str(name))
    return "%s has %s" % (base, name)


def p(s: str) -> str:
    """Parenthesize."""
    return "(" + s + ")"


# --------------------------------------------------------------------------- generator core


class ByteSource:
    """Turns one hypothesis-drawn byte string into choices (like a fuzzer's data provider).

    Drawing one `st.binary` per case instead of hundreds of small draws keeps generation
    an order of magnitude faster. Hypothesis still explores and shrinks it: zero bytes mean "first option /
    no", so a shrunk input tends towards leaves, plain values and fewer items. Past the
    end of the buffer every choice is zero.
    """

    SIZE = 1536

    def __init__(self, data: bytes):
        self.data = data
        self.pos = 0

    def byte(self) -> int:
        if self.pos >= len(self.data):
            return 0
        b = self.data[self.pos]
        self.pos += 1
        return b


BYTES = st.binary(min_size=ByteSource.SIZE, max_size=ByteSource.SIZE)


class _Draw:
    """Choice helpers over a shared ByteSource."""

    def __init__(self, src: ByteSource):
        self.src = src

    def num(self, lo: int, hi: int) -> int:
        span = hi - lo + 1
        if span <= 1:
            return lo
        b = self.src.byte()
        if span > 256:
            b = b * 256 + self.src.byte()
        return lo + b % span

    def pick(self, seq):
        return seq[self.num(0, len(seq) - 1)]

    def chance(self, percent: int) -> bool:
        """True with about `percent`% probability; a zero byte is False."""
        return self.src.byte() * 100 >= (100 - percent) * 256

    def subset(self, seq, max_size: int) -> list:
        """Distinct elements of `seq`, in a drawn order, at most max_size of them."""
        out = []
        n = self.num(0, max_size)
        pool = list(seq)
        for _ in range(min(n, len(pool))):
            out.append(pool.pop(self.num(0, len(pool) - 1)))
        return out


class ExprGen(_Draw):
    """Draws Cedar expressions (as text) of a wanted kind, occasionally of the wrong kind."""

    def __init__(self, src: ByteSource, family: str = "all", uids=None, existing=()):
        super().__init__(src)
        self.existing = tuple(existing)  # uids that are entities (non-Action)
        self.family = family
        self.kinds = FAMILY_KINDS[family]
        self.uids = uids or [(t, i) for t in ENTITY_TYPES for i in IDS]
        self.bad_ext = 6 if family in ("ext", "all") else 0  # percent of bad extension literals

    # ---- leaves -----------------------------------------------------------------------------

    def entity_lit(self) -> str:
        if self.chance(5):
            return uid_text((self.pick(ENTITY_TYPES), self.pick(ODD_IDS)))
        if self.chance(15):
            return uid_text((ACTION_TYPE, self.pick(ACTION_IDS)))
        if self.existing and self.chance(60):
            return uid_text(self.pick(self.existing))
        return uid_text(self.pick(self.uids))

    def long_lit(self) -> str:
        return str(self.pick(LONGS) if self.chance(40) else self.pick(SMALL_LONGS))

    def str_lit(self) -> str:
        return cedar_str(self.pick(STRINGS), unicode_escapes=self.chance(20))

    def ext_lit(self, kind: str) -> str:
        fn, good, bad = {
            "ip": ("ip", IP_LITS, IP_BAD),
            "dec": ("decimal", DEC_LITS, DEC_BAD),
            "dt": ("datetime", DT_LITS, DT_BAD),
            "dur": ("duration", DUR_LITS, DUR_BAD),
        }[kind]
        if self.chance(self.bad_ext):
            arg = cedar_str(self.pick(bad))
        elif self.chance(4):
            arg = self.access_of("str", 0)  # evaluation accepts any string expression
        else:
            arg = cedar_str(self.pick(good))
        return "%s(%s)" % (fn, arg)

    def base(self, d: int) -> str:
        """Something with attributes: a request variable, a nested ref/rec, an entity literal."""
        r = self.num(0, 11)
        if r <= 2:
            return "principal"
        if r <= 4:
            return "resource"
        if r <= 6:
            return "context"
        if r == 7:
            return "action"
        if r == 8:
            return attr_access(self.pick(("principal", "resource", "context")), "ref", self.chance(20))
        if r == 9:
            return attr_access(self.pick(("principal", "resource", "context")), "rec", self.chance(20))
        if r == 10 and d > 0:
            return p(self.expr(self.pick(("ent", "rec")), d - 1))
        return p(self.entity_lit())

    def attr_name(self, kind: str) -> str:
        if kind in KIND_ATTRS and self.chance(85):
            return self.pick(KIND_ATTRS[kind])
        return self.pick(ATTR_NAMES)

    def access_of(self, kind: str, d: int) -> str:
        return attr_access(self.base(d), self.attr_name(kind), self.chance(15))

    def guarded_access(self, kind: str, d: int) -> str:
        """`if B has a then B.a else <leaf>` - an attribute read that usually avoids errors."""
        b = self.base(0)
        a = self.attr_name(kind)
        return "if %s then %s else %s" % (
            p(has_text(b, a, self.chance(15))),
            attr_access(b, a, self.chance(15)),
            p(self.leaf(kind)),
        )

    def leaf(self, kind: str) -> str:
        if kind == "bool":
            return self.pick(("true", "false")) if self.chance(60) else self.access_of("bool", 0)
        if kind == "long":
            return self.long_lit() if self.chance(70) else self.access_of("long", 0)
        if kind == "str":
            return self.str_lit() if self.chance(70) else self.access_of("str", 0)
        if kind == "set":
            r = self.num(0, 3)
            if r == 0:
                return "[]"
            if r == 1:
                return "[%s]" % self.leaf(self.pick(("long", "str", "ent")))
            return self.access_of("set", 0)
        if kind == "rec":
            r = self.num(0, 3)
            if r == 0:
                return "context"
            if r == 1:
                return "{}"
            return self.access_of("rec", 0)
        if kind == "ent":
            r = self.num(0, 7)
            if r <= 1:
                return "principal"
            if r <= 3:
                return "resource"
            if r == 4:
                return "action"
            if r == 5:
                return self.access_of("ent", 0)
            return self.entity_lit()
        if kind in EXT_KINDS:
            return self.ext_lit(kind) if self.chance(70) else self.access_of(kind, 0)
        raise AssertionError(kind)

    def deep_compare(self) -> str:
        """Deeply nested set and record literals compared with each other or with `context.deep`
        (DEEP_CONTEXT_DEPTH levels when a request has it): each level of nesting once doubled the work."""
        leaf = self.pick(DEEP_LEAVES)
        a = deep_text(self.num(5, 60), leaf)
        r = self.num(0, 3)
        if r == 0:
            b = a if self.chance(60) else deep_text(self.num(5, 60), self.pick(DEEP_LEAVES))
            return "%s %s %s" % (a, self.pick(("==", "!=")), b)
        if r == 1:
            return "%s.contains(%s)" % (p("[%s]" % a if self.chance(50) else a), a)
        if r == 2:
            depth = DEEP_CONTEXT_DEPTH if self.chance(70) else self.num(1, DEEP_CONTEXT_DEPTH + 1)
            return "context has deep && context.deep %s %s" % (self.pick(("==", "!=")), deep_text(depth, leaf))
        return "[%s, %s].containsAll([%s])" % (a, a, a)

    # ---- compound ---------------------------------------------------------------------------

    def expr(self, kind: str, d: int) -> str:
        """An expression that is usually of `kind`; depth `d` more levels of nesting allowed."""
        if self.chance(2):  # ill-typed on purpose
            kind = self.pick(self.kinds)
        if d <= 0 or self.chance(20):
            if self.chance(20):
                return self.guarded_access(kind, d)
            return self.leaf(kind)
        fn = getattr(self, "g_" + kind)
        return fn(d)

    def sub(self, kind: str, d: int) -> str:
        return p(self.expr(kind, d - 1))

    def ite(self, kind: str, d: int) -> str:
        return "if %s then %s else %s" % (self.sub("bool", d), self.sub(kind, d), self.sub(kind, d))

    def cmp_kinds(self):
        if self.family == "ext":
            return ("long", "dt", "dur", "dt", "dur")
        if self.family == "all":
            return ("long", "long", "dt", "dur")
        return ("long",)

    def g_bool(self, d: int) -> str:
        options = ["and", "or", "not", "eq", "eq", "cmp", "cmp", "has", "ite"]
        if self.family in ("core", "graph", "all"):
            options += ["like", "in", "in", "is", "contains", "containsAll", "containsAny", "isEmpty"]
        if self.family in ("graph", "all"):
            options += ["hasTag", "getTagB", "in", "is"]
        if self.family in ("ext", "all"):
            options += ["ipm", "ipm", "inRange", "decm", "decm", "cmp"]
        if self.family in ("core", "all"):
            options += ["deep"]
        o = self.pick(tuple(options))
        if o == "deep":
            return self.deep_compare()
        if o == "and":
            return "%s && %s" % (self.sub("bool", d), self.sub("bool", d))
        if o == "or":
            return "%s || %s" % (self.sub("bool", d), self.sub("bool", d))
        if o == "not":
            return "!%s" % self.sub("bool", d)
        if o == "eq":
            k1 = self.pick(self.kinds)
            k2 = k1 if self.chance(85) else self.pick(self.kinds)
            return "%s %s %s" % (self.sub(k1, d), self.pick(("==", "==", "!=")), self.sub(k2, d))
        if o == "cmp":
            k = self.pick(self.cmp_kinds())
            return "%s %s %s" % (self.sub(k, d), self.pick(("<", "<=", ">", ">=")), self.sub(k, d))
        if o == "has":
            r = self.num(0, 5)
            if r == 0 and d > 1:
                b = self.sub(self.pick(("ent", "rec")), d)
            else:
                b = self.base(0)
            if r == 1:  # `has a.b` (desugars to a chain)
                return "%s has %s.%s" % (b, self.pick(("rec", "ref")), self.pick(("n", "s", "b", "rec")))
            return has_text(b, self.pick(ATTR_NAMES), self.chance(15))
        if o == "like":
            return "%s like %s" % (self.sub("str", d), self.like_pattern())
        if o == "in":
            lhs = self.sub("ent", d)
            r = self.num(0, 3)
            if r == 0:
                return "%s in [%s]" % (lhs, ", ".join(self.expr("ent", 0) for _ in range(self.num(0, 3))))
            if r == 1:
                return "%s in %s" % (lhs, self.sub("set", d))
            return "%s in %s" % (lhs, self.sub("ent", d))
        if o == "is":
            t = self.pick(ENTITY_TYPES + (ACTION_TYPE,))
            lhs = self.sub("ent", d)
            if self.chance(40):
                if self.chance(25):
                    return "%s is %s in [%s]" % (lhs, t, ", ".join(self.expr("ent", 0) for _ in range(self.num(0, 2))))
                return "%s is %s in %s" % (lhs, t, self.sub("ent", d))
            return "%s is %s" % (lhs, t)
        if o == "contains":
            k = self.pick(self.kinds)
            return "%s.contains(%s)" % (self.set_of(k, d), self.expr(k, d - 1))
        if o in ("containsAll", "containsAny"):
            k = self.pick(self.kinds)
            return "%s.%s(%s)" % (self.set_of(k, d), o, self.set_of(k, d))
        if o == "isEmpty":
            return "%s.isEmpty()" % self.sub("set", d)
        if o == "hasTag":
            return "%s.hasTag(%s)" % (self.sub("ent", d), self.tag_key(d))
        if o == "getTagB":
            e = self.sub("ent", d)
            k = self.tag_key(d)
            if self.chance(50):  # guarded
                return "%s.hasTag(%s) && (%s.getTag(%s) == %s)" % (e, k, e, k, self.sub(self.pick(self.kinds), d))
            return "%s.getTag(%s) == %s" % (e, k, self.sub(self.pick(self.kinds), d))
        if o == "ipm":
            return "%s.%s()" % (self.sub("ip", d), self.pick(("isIpv4", "isIpv6", "isLoopback", "isMulticast")))
        if o == "inRange":
            return "%s.isInRange(%s)" % (self.sub("ip", d), self.sub("ip", d))
        if o == "decm":
            m = self.pick(("lessThan", "lessThanOrEqual", "greaterThan", "greaterThanOrEqual"))
            return "%s.%s(%s)" % (self.sub("dec", d), m, self.sub("dec", d))
        return self.ite("bool", d)

    def set_of(self, k: str, d: int) -> str:
        if self.chance(30):
            return self.sub("set", d)
        return "[%s]" % ", ".join(self.expr(k, max(0, d - 2)) for _ in range(self.num(0, 3)))

    def tag_key(self, d: int) -> str:
        if self.chance(85):
            return cedar_str(self.pick(TAG_KEYS))
        return self.sub("str", d)

    def like_pattern(self) -> str:
        parts = []
        for _ in range(self.num(0, 4)):
            r = self.num(0, 5)
            if r <= 1:
                parts.append("*")
            elif r == 2:
                parts.append("\\*")  # a literal star
            else:
                parts.append(cedar_str(self.pick(("a", "b", "ab", "x y", "\u00e9", "\\", "\n")))[1:-1])
        return '"' + "".join(parts) + '"'

    def g_long(self, d: int) -> str:
        options = ["arith", "arith", "arith", "neg", "ite", "access"]
        if self.family in ("ext", "all"):
            options += ["durconv", "durconv"]
        if self.family in ("graph", "all"):
            options += ["getTag"]
        o = self.pick(tuple(options))
        if o == "arith":
            return "%s %s %s" % (self.sub("long", d), self.pick(("+", "-", "*")), self.sub("long", d))
        if o == "neg":
            if self.chance(30):
                return "-" + self.access_of("long", 0)
            return "-%s" % self.sub("long", d)
        if o == "durconv":
            return "%s.%s()" % (
                self.sub("dur", d),
                self.pick(("toMilliseconds", "toSeconds", "toMinutes", "toHours", "toDays")),
            )
        if o == "getTag":
            return "%s.getTag(%s)" % (self.sub("ent", d), self.tag_key(d))
        if o == "access":
            return self.guarded_access("long", d)
        return self.ite("long", d)

    def g_str(self, d: int) -> str:
        o = self.num(0, 3)
        if o == 0:
            return self.ite("str", d)
        if o == 1 and self.family in ("graph", "all"):
            return "%s.getTag(%s)" % (self.sub("ent", d), self.tag_key(d))
        if o == 2:
            return self.guarded_access("str", d)
        return self.leaf("str")

    def g_set(self, d: int) -> str:
        o = self.num(0, 5)
        if o == 0:
            return self.ite("set", d)
        if o <= 3:
            k = self.pick(self.kinds)
            items = [self.expr(k if self.chance(85) else self.pick(self.kinds), d - 1) for _ in range(self.num(0, 3))]
            return "[%s]" % ", ".join(items)
        return self.access_of("set", 0)

    def g_rec(self, d: int) -> str:
        o = self.num(0, 4)
        if o == 0:
            return self.ite("rec", d)
        if o <= 2:
            names = self.subset(ATTR_NAMES, 3)
            fields = []
            for name in names:
                key = cedar_str(name) if (name in BRACKET_ONLY or self.chance(20)) else name
                k = ATTR_KIND[name]
                if k not in self.kinds or self.chance(15):
                    k = self.pick(self.kinds)
                fields.append("%s: %s" % (key, self.expr(k, d - 1)))
            return "{%s}" % ", ".join(fields)
        return self.access_of("rec", 0)

    def g_ent(self, d: int) -> str:
        o = self.num(0, 3)
        if o == 0:
            return self.ite("ent", d)
        if o == 1:
            return self.guarded_access("ent", d)
        return self.leaf("ent")

    def g_ip(self, d: int) -> str:
        return self.ite("ip", d) if self.chance(15) else self.leaf("ip")

    def g_dec(self, d: int) -> str:
        return self.ite("dec", d) if self.chance(15) else self.leaf("dec")

    def g_dt(self, d: int) -> str:
        o = self.num(0, 4)
        if o == 0:
            return "%s.offset(%s)" % (self.sub("dt", d), self.sub("dur", d))
        if o == 1:
            return "%s.toDate()" % self.sub("dt", d)
        if o == 2 and self.chance(30):
            return self.ite("dt", d)
        return self.leaf("dt")

    def g_dur(self, d: int) -> str:
        o = self.num(0, 4)
        if o == 0:
            return "%s.durationSince(%s)" % (self.sub("dt", d), self.sub("dt", d))
        if o == 1:
            return "%s.toTime()" % self.sub("dt", d)
        if o == 2 and self.chance(30):
            return self.ite("dur", d)
        return self.leaf("dur")

    # ---- policies ---------------------------------------------------------------------------

    def scope_entity(self, var: str) -> str:
        r = self.num(0, 9)
        if r == 0:
            return ""
        if r <= 3:
            return " == " + self.entity_lit()
        if r <= 6:
            return " in " + self.entity_lit()
        t = self.pick(ENTITY_TYPES)
        if r <= 8:
            return " is " + t
        return " is %s in %s" % (t, self.entity_lit())

    def action_scope(self) -> str:
        r = self.num(0, 6)
        act = lambda: uid_text((ACTION_TYPE, self.pick(ACTION_IDS)))  # noqa: E731
        if r <= 2:
            return ""
        if r == 3:
            return " == " + act()
        if r == 4:
            return " in " + act()
        return " in [%s]" % ", ".join(act() for _ in range(self.num(0, 3)))

    def policy(self, max_depth: int = 3, annotation: str | None = None) -> str:
        eff = "forbid" if self.chance(30) else "permit"
        head = ""
        if annotation is not None:
            head = '@id(%s)\n' % cedar_str(annotation)
        if self.chance(5):
            head += '@advice("x")\n'
        scope_p = "principal" + (self.scope_entity("principal") if self.chance(50) else "")
        scope_a = "action" + (self.action_scope() if self.chance(50) else "")
        scope_r = "resource" + (self.scope_entity("resource") if self.chance(50) else "")
        conds = []
        for _ in range(self.num(0, 2)):
            kw = "unless" if self.chance(25) else "when"
            conds.append(" %s { %s }" % (kw, self.expr("bool", self.num(1, max_depth))))
        return "%s%s(\n  %s,\n  %s,\n  %s\n)%s;" % (head, eff, scope_p, scope_a, scope_r, "".join(conds))


# --------------------------------------------------------------------------- JSON values / entities


class ValueGen(_Draw):
    """Draws Cedar JSON values (entity attrs, tags, context)."""

    def __init__(self, src: ByteSource, family: str = "all"):
        super().__init__(src)
        self.kinds = FAMILY_KINDS[family]

    known = ()  # uids of the entities being generated: references prefer them

    def uid(self):
        if self.chance(10):
            return (ACTION_TYPE, self.pick(ACTION_IDS))
        if self.known and self.chance(70):
            return self.pick(self.known)
        return (self.pick(ENTITY_TYPES), self.pick(IDS))

    def value(self, kind: str, depth: int = 2):
        if kind == "long":
            return self.pick(LONGS) if self.chance(40) else self.pick(SMALL_LONGS)
        if kind == "str":
            return self.pick(STRINGS)
        if kind == "bool":
            return self.pick((True, False))
        if kind == "set":
            k = self.pick(("long", "str", "ent", "bool", "set", "rec") if depth > 0 else ("long", "str", "ent"))
            return [self.value(k if self.chance(85) else self.pick(self.kinds), depth - 1) for _ in range(self.num(0, 3))]
        if kind == "rec":
            if depth <= 0:
                return {}
            return self.record(depth - 1, max_size=3)
        if kind == "ent":
            if self.chance(8):  # a record that only looks like an entity reference
                return uid_json(self.uid())
            return {"__entity": uid_json(self.uid())}
        if kind in EXT_KINDS:
            fn, good = {
                "ip": ("ip", IP_LITS),
                "dec": ("decimal", DEC_LITS),
                "dt": ("datetime", DT_LITS),
                "dur": ("duration", DUR_LITS),
            }[kind]
            if self.chance(4):  # the list form; also how multi-argument functions are written
                if kind == "dt" and self.chance(50):
                    return {"__extn": {"fn": "offset", "args": [{"__extn": {"fn": "datetime", "arg": self.pick(DT_LITS)}},
                                                                {"__extn": {"fn": "duration", "arg": self.pick(DUR_LITS[:12])}}]}}
                return {"__extn": {"fn": fn, "args": [self.pick(good)]}}
            return {"__extn": {"fn": fn, "arg": self.pick(good)}}
        raise AssertionError(kind)

    def any_value(self, depth: int = 2):
        return self.value(self.pick(self.kinds), depth)

    def record(self, depth: int = 2, max_size: int = 6, dense: bool = False) -> dict:
        if dense:  # most attribute names present, so that accesses mostly succeed
            names = [n for n in ATTR_NAMES if not self.chance(15)]
        else:
            names = self.subset(ATTR_NAMES, max_size)
        out = {}
        for name in names:
            kind = ATTR_KIND[name]
            if kind not in self.kinds or self.chance(12):
                kind = self.pick(self.kinds)
            out[name] = self.value(kind, depth)
        return out


ALL_UIDS = tuple((t, i) for t in ENTITY_TYPES for i in IDS)


def uid_of(ent) -> tuple:
    """(type, id) of a JSON entity (either uid form)."""
    u = ent["uid"].get("__entity", ent["uid"])
    return (u["type"], u["id"])


def _graph(src: ByteSource, family: str, cycles: bool):
    """Entities as a list of Cedar JSON entity dicts, acyclic unless `cycles`."""
    v = ValueGen(src, family)
    max_ents = 10 if family == "graph" else 7
    uids = v.subset(ALL_UIDS, max_ents)
    if v.chance(8):
        odd = (v.pick(ENTITY_TYPES), v.pick(ODD_IDS))
        if odd not in uids:
            uids.append(odd)
    v.known = tuple(uids)
    ents = []
    for k, uid in enumerate(uids):
        later = uids[k + 1:]
        parents = []
        if later or v.chance(20):
            for _ in range(v.num(0, 3 if family == "graph" else 2)):
                if later and v.chance(80):
                    par = v.pick(tuple(later))
                else:
                    par = (v.pick(ENTITY_TYPES), v.pick(IDS))  # maybe not an entity at all
                if par != uid and par not in parents and not (par in uids and uids.index(par) < k):
                    parents.append(par)
        if cycles and k > 0 and v.chance(40):
            parents.append(uids[v.num(0, k - 1)] if v.chance(70) else uid)
        ent = {
            "uid": uid_json(uid) if v.chance(90) else {"__entity": uid_json(uid)},
            "attrs": v.record(2, dense=v.chance(70)),
            "parents": [uid_json(x) if v.chance(90) else {"__entity": uid_json(x)} for x in parents],
        }
        if family in ("graph", "all") and v.chance(50):
            tags = {}
            for key in v.subset(TAG_KEYS, 3):
                tags[key] = v.any_value(1)
            ent["tags"] = tags
        ents.append(ent)
    # Action entities with an (acyclic) action hierarchy: parents come later in ACTION_IDS.
    acts = v.subset(ACTION_IDS, len(ACTION_IDS))
    for a in acts:
        idx = ACTION_IDS.index(a)
        higher = ACTION_IDS[idx + 1:]
        pars = v.subset(higher, 2)
        attrs = v.record(1, max_size=2) if v.chance(20) else {}
        ents.append({"uid": uid_json((ACTION_TYPE, a)), "attrs": attrs, "parents": [uid_json((ACTION_TYPE, x)) for x in pars]})
    return ents


@st.composite
def entity_graphs(draw, family: str = "all", cycles: bool = False):
    return _graph(ByteSource(draw(BYTES)), family, cycles)


def _req_uid(v: _Draw, existing, pool):
    if existing and v.chance(85):
        return v.pick(tuple(existing))
    if v.chance(8):
        return (v.pick(ENTITY_TYPES), v.pick(ODD_IDS))
    return v.pick(pool)


def _uid_for_request(v: _Draw, uid):
    """String form for plain ids (exercises the parser), dict form otherwise."""
    if uid[1] in IDS and v.chance(60):
        return uid_text(uid)
    return uid_json(uid)


def _requests(src: ByteSource, family: str, ents, n_min=2, n_max=5):
    v = ValueGen(src, family)
    existing = [uid_of(e) for e in ents]
    non_action = [u for u in existing if u[0] != ACTION_TYPE]
    v.known = tuple(non_action)
    reqs = []
    for _ in range(v.num(n_min, n_max)):
        pr = _req_uid(v, non_action, ALL_UIDS)
        rs = _req_uid(v, non_action, ALL_UIDS)
        if v.chance(4):
            ac = (v.pick(ENTITY_TYPES), v.pick(IDS))  # not an Action at all
        else:
            ac = (ACTION_TYPE, v.pick(ACTION_IDS))
        ctx = v.record(2, dense=v.chance(60)) if v.chance(85) else {}
        if v.chance(10):
            ctx["deep"] = deep_value(DEEP_CONTEXT_DEPTH, v.pick((1, "a", True)))
        reqs.append(
            {
                "principal": _uid_for_request(v, pr),
                "action": _uid_for_request(v, ac),
                "resource": _uid_for_request(v, rs),
                "context": ctx,
            }
        )
    return reqs


@st.composite
def cases(draw, family: str = "all", max_policies: int = 6, max_depth: int = 3, ids: bool = False, split: bool = False):
    """A differential case: {"policies": [text...], "ids": [id per policy], "entities": [...], "requests": [...],
    "layout": [(policy file, number of policies)], "entity_split": N}.

    `ids` is the id authz must report for each policy: `@id` when the policy carries one
    (drawn only when `ids=True`), else `FILE:N`. With `split`, half of the cases spread the
    policies over policies.cedar + more.cedar and the entities over entities.json +
    more.entities.json (the first `entity_split` entities in entities.json).
    """
    size = ByteSource.SIZE if max_policies <= 6 else ByteSource.SIZE + 150 * (max_policies - 6)
    src = ByteSource(draw(BYTES if size == ByteSource.SIZE else st.binary(min_size=size, max_size=size)))
    ents = _graph(src, family, cycles=False)
    uids = [uid_of(e) for e in ents]
    pool = [u for u in uids if u[0] != ACTION_TYPE] + list(ALL_UIDS)
    g = ExprGen(src, family, uids=pool, existing=[u for u in uids if u[0] != ACTION_TYPE])
    n = g.num(0, max_policies) if g.chance(5) else g.num(1, max_policies)
    pols, anns = [], []
    for k in range(n):
        ann = None
        if ids and g.chance(30):
            ann = "pol-%d" % k if g.chance(80) else "custom id %d" % k
        pols.append(g.policy(max_depth, annotation=ann))
        anns.append(ann)
    reqs = _requests(src, family, ents)
    layout, entity_split = [(POLICY_FILE, n)], len(ents)
    if split and g.chance(50):  # two policy files and two entity files
        k = g.num(0, n)
        layout = [(POLICY_FILE, k), (SECOND_POLICY_FILE, n - k)]
        entity_split = g.num(0, len(ents))
    pids = [ann if ann is not None else "%s:%d" % pos for ann, pos in zip(anns, _positions(layout))]
    return {"policies": pols, "ids": pids, "entities": ents, "requests": reqs, "layout": layout, "entity_split": entity_split}


# --------------------------------------------------------------------------- policy repositories

_LITERAL_RE = re.compile(r'"(?:[^"\\\n]|\\.)*"')
_EXTENSION_CALL_RE = re.compile(r"(?:ip|decimal|datetime|duration)\($")
_EFFECT_RE = re.compile(r"^((?:@[^\n]*\n)*)(permit|forbid)\(")
LOOKALIKE_LITERALS = IDS + ("d", "") + STRINGS[1:6]


def _lookalike(g: _Draw, shape: str, pool, effect: str) -> str:
    """`shape` with `effect` and about half of its string literals (entity ids included) replaced from `pool`:
    another policy of the same shape, as a repository of one-policy-per-agent files has."""
    def swap(m):
        before = shape[max(0, m.start() - 12):m.start()]
        if _EXTENSION_CALL_RE.search(before) or not g.chance(50):
            return m.group()  # extension literals stay valid; half the literals stay as they are
        return cedar_str(g.pick(ACTION_IDS if before.endswith("Action::") else pool))
    text = _LITERAL_RE.sub(swap, shape)
    return _EFFECT_RE.sub(lambda m: m.group(1) + effect + "(", text, count=1)


def _extra_entities(v: "ValueGen", base, n: int) -> list:
    """`n` more entities (ids e0, e1, ...) whose parents are earlier extras or base entities: a large store."""
    out, made = [], []
    base_uids = [uid_of(e) for e in base if uid_of(e)[0] != ACTION_TYPE]
    for k in range(n):
        uid = (ENTITY_TYPES[k % len(ENTITY_TYPES)], "e%d" % k)
        parents = []
        for _ in range(v.num(0, 2)):
            pool = made if made and v.chance(70) else base_uids
            if pool:
                par = pool[v.num(0, len(pool) - 1)]
                if par not in parents:
                    parents.append(par)
        out.append({"uid": uid_json(uid), "attrs": v.record(1, max_size=3), "parents": [uid_json(x) for x in parents]})
        made.append(uid)
    return out


@st.composite
def repo_cases(draw, min_files: int = 5, max_files: int = 40, max_per_file: int = 12, min_policies: int = 0,
               extra_entities: int = 0, requests: tuple = (4, 10)):
    """A differential case shaped like a policy repository: `min_files`..`max_files` files of look-alike
    policies (a few shapes, each repeated with other literals), permits and forbids alternating between
    files, `@id`s in some files, an allow-all file now and then (so forbids matter), and optionally
    `extra_entities` more entities in a hierarchy. Same dict as `cases`; the file names sort in layout order."""
    # Hypothesis draws the first bytes (it explores and shrinks them); a seeded stream extends them to the
    # size a large repository needs, which is past what one hypothesis draw may hold.
    head, seed = draw(BYTES), draw(st.integers(0, 2**32 - 1))
    size = 24 * max(min_policies, max_files * max_per_file) + 8 * extra_entities
    src = ByteSource(head + random.Random(seed).randbytes(size))
    ents = _graph(src, "graph", cycles=False)
    v = ValueGen(src, "all")
    v.known = tuple(uid_of(e) for e in ents if uid_of(e)[0] != ACTION_TYPE)
    extras = _extra_entities(v, ents, extra_entities)
    uids = [uid_of(e) for e in ents + extras]
    pool = [u for u in uids if u[0] != ACTION_TYPE] + list(ALL_UIDS)
    g = ExprGen(src, "all", uids=pool, existing=[u for u in uids if u[0] != ACTION_TYPE][:64])
    shapes = [g.policy(g.num(1, 2)) for _ in range(g.num(1, 5))]
    literals = LOOKALIKE_LITERALS + tuple(u[1] for u in uids[len(ents):len(ents) + 32])
    n_files = g.num(min_files, max_files)
    per_file = max(1, -(-min_policies // n_files))
    pols, pids, layout = [], [], []
    if g.chance(40):
        pols.append('@id("allow-all")\npermit(principal, action, resource);')
        pids.append("allow-all")
        layout.append(("000-all.cedar", 1))
    for f in range(n_files):
        name = "f%03d.cedar" % f
        effect = "forbid" if f % 2 else "permit"
        annotated = g.chance(30)
        count = max(per_file, g.num(1, max_per_file))
        for j in range(count):
            text = _lookalike(g, g.pick(shapes), literals, effect if g.chance(85) else ("permit", "forbid")[f % 2 == 0])
            if annotated:
                pid = "pol-%d-%d" % (f, j)
                text = "@id(%s)\n%s" % (cedar_str(pid), text)
            else:
                pid = "%s:%d" % (name, j)
            pols.append(text)
            pids.append(pid)
        layout.append((name, count))
    reqs = _requests(src, "all", ents + extras, *requests)
    return {"policies": pols, "ids": pids, "entities": ents + extras, "requests": reqs, "layout": layout,
            "entity_split": len(ents)}


DEEP_LEAVES = ("1", '"a"', "true")
DEEP_CONTEXT_DEPTH = 30


def deep_text(depth: int, leaf: str) -> str:
    """A literal nested `depth` levels: a set `[x]`, a record `{d: x}`, a pair set `[x, 1]`, in turn."""
    text = leaf
    for k in range(depth):
        text = ("[%s]", "{d: %s}", "[%s, 1]")[k % 3] % text
    return text


def deep_value(depth: int, leaf):
    """The Cedar JSON value of deep_text(depth, leaf), for a context."""
    value = leaf
    for k in range(depth):
        value = ([value], {"d": value}, [value, 1])[k % 3]
    return value


def _positions(layout):
    """(file, index in file) for each policy position of a layout [(file, count), ...]."""
    return [(f, i) for f, count in layout for i in range(count)]


def policy_files(case) -> list:
    """[(file name, text)] as authz compiles them."""
    out, pos = [], 0
    for name, count in case.get("layout", [(POLICY_FILE, len(case["policies"]))]):
        chunk = case["policies"][pos:pos + count]
        pos += count
        out.append((name, "\n\n".join(chunk) + ("\n" if chunk else "")))
    return out


def entity_files(case) -> list:
    """[(file name, entities)] as authz compiles them."""
    s = case.get("entity_split", len(case["entities"]))
    files = [(ENTITY_FILE, case["entities"][:s])]
    if s < len(case["entities"]) or len(case.get("layout", ())) > 1:
        files.append((SECOND_ENTITY_FILE, case["entities"][s:]))
    return files


# --------------------------------------------------------------------------- invalid inputs

BAD_CONTEXT_VALUES = (
    1.5, 2**63, -(2**63) - 1, None,
    {"__extn": {"fn": "ip", "arg": "nope"}},
    {"__extn": {"fn": "decimal", "arg": "1.23456"}},
    {"__extn": {"fn": "nosuchfn", "arg": "x"}},
    {"__entity": {"type": "User"}},
    [1, 2.5],
)
BAD_ENTITY_MUTATIONS = (
    "float_attr", "big_attr", "null_attr", "bad_ip", "bad_decimal", "bad_datetime", "bad_duration",
    "unknown_extn", "cycle", "self_parent", "dup_uid_diff", "missing_parents", "missing_attrs",
    "action_parent_non_action", "bad_uid",
)


@st.composite
def invalid_entity_cases(draw):
    """A case whose entities cedarpy rejects, or accepts (the oracle decides); policies are simple."""
    src = ByteSource(draw(BYTES))
    v = ValueGen(src, "all")
    ents = _graph(src, "all", cycles=False)
    user = {"uid": {"type": "User", "id": "a"}, "attrs": {"n": 1}, "parents": []}
    ents.insert(0, user)
    ents = [e for i, e in enumerate(ents) if i == 0 or e["uid"] != user["uid"]]
    m = v.pick(BAD_ENTITY_MUTATIONS)
    if m == "float_attr":
        user["attrs"]["x"] = 1.5
    elif m == "big_attr":
        user["attrs"]["x"] = 2**63
    elif m == "null_attr":
        user["attrs"]["x"] = None
    elif m in ("bad_ip", "bad_decimal", "bad_datetime", "bad_duration"):
        fn, bad = {"bad_ip": ("ip", IP_BAD), "bad_decimal": ("decimal", DEC_BAD), "bad_datetime": ("datetime", DT_BAD), "bad_duration": ("duration", DUR_BAD)}[m]
        user["attrs"]["x"] = {"__extn": {"fn": fn, "arg": v.pick(bad)}}
    elif m == "unknown_extn":
        user["attrs"]["x"] = {"__extn": {"fn": "nosuchfn", "arg": "1"}}
    elif m == "cycle":
        user["parents"] = [{"type": "Group", "id": "g"}]
        ents.append({"uid": {"type": "Group", "id": "g"}, "attrs": {}, "parents": [{"type": "User", "id": "a"}]})
    elif m == "self_parent":
        user["parents"] = [{"type": "User", "id": "a"}]
    elif m == "dup_uid_diff":
        ents.append({"uid": {"type": "User", "id": "a"}, "attrs": {"n": 2}, "parents": []})
    elif m == "missing_parents":
        del user["parents"]
    elif m == "missing_attrs":
        del user["attrs"]
    elif m == "action_parent_non_action":
        ents.append({"uid": {"type": "Action", "id": "zz"}, "attrs": {}, "parents": [{"type": "Group", "id": "g"}]})
    elif m == "bad_uid":
        user["uid"] = {"type": "", "id": "a"}
    pols = ['permit(principal, action, resource) when { principal has n };', 'forbid(principal == User::"b", action, resource);']
    reqs = [{"principal": 'User::"a"', "action": 'Action::"read"', "resource": 'Doc::"a"', "context": {}}]
    return {"policies": pols, "ids": ["policies.cedar:0", "policies.cedar:1"], "entities": ents, "requests": reqs, "mutation": m,
            "layout": [(POLICY_FILE, 2)], "entity_split": len(ents)}


# Uids in request form; cedarpy accepts some (escapes, odd but valid names) and rejects others.
ODD_STRING_UIDS = (
    'User::a', 'User', '"a"', 'User::"a" ', ' User::"a"', 'User ::"a"', 'User:: "a"', 'User::"a', "", 'a::b::"c"',
    'User::"\\u{61}"', 'User::"a\\"b"', 'User::"a\\nb"', 'NS::User::"a"', 'NS :: User::"a"', '__cedar::User::"a"',
    'if::"a"', 'User::""', 'User::"a"::"b"', 'user::"a"', '_x::"a"', '1User::"a"', 'User::"\u00e9"',
)
ODD_DICT_UIDS = (
    {"type": "User"}, {"id": "a"}, {"type": "", "id": "a"}, {"type": "User", "id": 1}, {"type": "User ", "id": "a"},
    {"type": "if", "id": "a"}, {"type": "NS::User", "id": "a"}, {"type": "User", "id": "a\nb"}, {"type": 1, "id": "a"},
    {"type": "User", "id": "a", "extra": 1},
)


@st.composite
def invalid_requests(draw):
    """A request whose context (or uid) cedarpy may reject."""
    v = ValueGen(ByteSource(draw(BYTES)), "all")
    r = v.num(0, 5)
    req = {"principal": 'User::"a"', "action": 'Action::"read"', "resource": 'Doc::"a"', "context": {"n": 1}}
    if r <= 2:
        ctx = v.record(1, max_size=2)
        key = v.pick(("n", "x", "rec"))
        bad = v.pick(BAD_CONTEXT_VALUES)
        if v.chance(30):
            ctx[key] = {"inner": bad}
        else:
            ctx[key] = bad
        req["context"] = ctx
    elif r == 3:
        req[v.pick(("principal", "action", "resource"))] = v.pick(ODD_STRING_UIDS)
    elif r == 4:
        req[v.pick(("principal", "action", "resource"))] = v.pick(ODD_DICT_UIDS)
    else:
        req["context"] = v.pick(([1], "x", 5))
    return req


def policy_text(case) -> str:
    return "\n\n".join(case["policies"]) + ("\n" if case["policies"] else "")


def entities_text(case) -> str:
    return json.dumps(case["entities"], ensure_ascii=False, indent=1)


# --------------------------------------------------------------------------- running both engines

_POLICY_REF = re.compile(r"^error while evaluating policy `([^`]*)`")

POLICY_FILE = "policies.cedar"
ENTITY_FILE = "entities.json"
SECOND_POLICY_FILE = "more.cedar"
SECOND_ENTITY_FILE = "more.entities.json"


class NoDecision(Exception):
    """cedarpy rejected the input (entities, request or policies): authz must reject it too."""

    def __init__(self, kind: str, messages):
        self.kind = kind  # "entities" | "request" | "policies"
        self.messages = list(messages)
        super().__init__("%s: %s" % (kind, "; ".join(m[:300] for m in self.messages)))


def policy_ids(text: str, layout=None) -> dict:
    """cedarpy's positional ids (`policyK`) -> authz ids (`@id` or `FILE:N`).

    `text` is all policy files concatenated in `layout` order ([(file name, policy count)];
    default: everything in policies.cedar).
    """
    est = _loads_deep(cedarpy.policies_to_json_str(text)) if text.strip() else {"staticPolicies": {}}
    pols = dict(est.get("staticPolicies", {}))
    pols.update(est.get("templates", {}))  # templates take positions too (policyK counts every policy)
    positions = _positions(layout) if layout else [(POLICY_FILE, k) for k in range(len(pols))]
    assert len(positions) == len(pols), "layout does not match the policy count"
    out = {}
    for pid, pol in pols.items():
        k = int(pid[len("policy"):])
        anns = pol.get("annotations") or {}
        if "id" in anns:  # a bare `@id` is `@id("")` (cedarpy's id_annotations_by_reason says so too)
            out[pid] = anns["id"] if anns["id"] is not None else ""
        else:
            out[pid] = "%s:%d" % positions[k]
    return out


def _loads_deep(s: str):
    """json.loads that copes with deeply nested policy ESTs (e.g. `1 + 1 + ... + 1`)."""
    old = sys.getrecursionlimit()
    sys.setrecursionlimit(max(old, 20000))
    try:
        return json.loads(s)
    finally:
        sys.setrecursionlimit(old)


def combine(policy_files, entity_files):
    """(all policy text, all entities, layout) for cedarpy, from authz's files [(name, text)], [(name, entities)]."""
    text, layout = "", []
    for name, t in policy_files:
        try:
            est = _loads_deep(cedarpy.policies_to_json_str(t)) if t.strip() else {}
            count = len(est.get("staticPolicies", {})) + len(est.get("templates", {}))
        except ValueError:  # a parse error: cedarpy_outcomes reports NoDecision("policies")
            count = 0
        layout.append((name, count))
        text += t if (not t or t.endswith("\n")) else t + "\n"
    entities = [e for _, ents in entity_files for e in ents]
    return text, entities, layout


def outcome(decision: str, reasons, errors) -> dict:
    return {"decision": decision, "reasons": sorted(set(reasons)), "errors": sorted(set(errors))}


def cedarpy_outcomes(text: str, entities, requests, layout=None) -> list:
    """One outcome dict per request, or a NoDecision instance where cedarpy gave no decision."""
    try:
        ids = policy_ids(text, layout)
    except ValueError as exc:
        return [NoDecision("policies", [str(exc)]) for _ in requests]
    ents = entities if isinstance(entities, str) else json.dumps(entities)
    try:
        results = cedarpy.is_authorized_batch(requests, text, ents)
    except Exception:  # cedarpy raises (not NoDecision) on e.g. a non-dict context: one by one
        results = []
        for rq in requests:
            try:
                results.append(cedarpy.is_authorized(rq, text, ents))
            except Exception as exc:
                results.append(exc)
    out = []
    for r in results:
        if isinstance(r, Exception):
            out.append(NoDecision("request", ["cedarpy raised %s: %s" % (type(r).__name__, r)]))
            continue
        errs = r.diagnostics.errors
        if r.decision == cedarpy.Decision.NoDecision:
            joined = " ".join(errs)
            if "failed to parse entities" in joined:
                kind = "entities"
            elif "policy parse errors" in joined or "failed to parse policies" in joined:
                kind = "policies"
            else:
                kind = "request"
            out.append(NoDecision(kind, errs))
            continue
        errored = []
        for e in errs:
            m = _POLICY_REF.match(e)
            assert m, "unexpected cedarpy error shape: %r" % e
            errored.append(ids[m.group(1)])
        dec = "allow" if r.decision == cedarpy.Decision.Allow else "deny"
        out.append(outcome(dec, [ids[x] for x in r.diagnostics.reasons], errored))
    return out


def decision_outcome(d) -> dict:
    """An authz Decision as an outcome dict."""
    assert d.decision in ("allow", "deny"), d.decision
    assert d.allowed == (d.decision == "allow")
    return outcome(d.decision, list(d.policies), [e["policy"] for e in d.errors])


def scenario_json(policy_files, entities, requests, outcomes) -> str:
    """A corpus scenario (tests/corpus format) for a case, with cedarpy's outcomes frozen in."""
    reqs = []
    for rq, oc in zip(requests, outcomes):
        item = dict(rq)
        if isinstance(oc, NoDecision):
            item["decision"] = "error"
        else:
            item.update(oc)
        reqs.append(item)
    sc = {"policies": policy_files[0][1] if len(policy_files) == 1 and policy_files[0][0] == POLICY_FILE else None,
          "entities": entities, "requests": reqs}
    if sc["policies"] is None:
        sc["policy_files"] = [list(pf) for pf in policy_files]
        del sc["policies"]
    return json.dumps(sc, indent=1, ensure_ascii=False)
