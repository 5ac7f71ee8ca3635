# cython: language_level=3
"""The Cedar evaluator: walks a compiled generation in place (a memoryview of the LMDB map) and decides requests.

Layout constants repeat authz/compiler/layout.py (tests/test_layout.py checks they agree). Values met
during evaluation are Python objects: bool, int (Long), str, Uid, CedarSet, dict (record) and Ext.
Policies, scopes, the index and entities are never turned into Python objects: they are read from the map.
"""

cimport cython
from libc.stdint cimport uint8_t, uint32_t, uint64_t, int64_t, uintptr_t
from libc.string cimport memcpy, memcmp
from libc.stdlib cimport malloc, calloc, free
from cpython.unicode cimport PyUnicode_DecodeUTF8
from cpython.ref cimport PyObject, Py_XINCREF, Py_XDECREF
from authz.engine._hash cimport bytes_hash

import re as _re
import ipaddress as _ipaddress
from authz.jsonterms import kind as _kind

cdef extern from *:
    void prefetch "__builtin_prefetch"(const void* p) noexcept nogil

cdef extern from "Python.h":
    const char* PyUnicode_AsUTF8AndSize(object s, Py_ssize_t* size) except NULL
    const char* utf8_or_null "PyUnicode_AsUTF8AndSize"(object s, Py_ssize_t* size) noexcept  # NULL: see PyErr
    void PyErr_Clear() noexcept
    void PyObject_GC_UnTrack(object o)

# ---- layout constants (mirror of authz/compiler/layout.py) ----
MAGIC = b"AUTHZGEN"
cdef bytes MAGIC_C = MAGIC
DEF FORMAT_VERSION_C = 4
FORMAT_VERSION = FORMAT_VERSION_C
DEF N_HEADER = 19
DEF HEADER_SIZE = 8 + 4 + 4 * N_HEADER
DEF TYPE_KEY = 0x80000000     # index keys: a uid index, TYPE_KEY | a type index, or ANY_KEY
DEF ANY_KEY = 0xFFFFFFFF
DEF KEY_IS_PRINCIPAL = 2      # flags: the key is used as a principal / resource key in the index
DEF KEY_IS_RESOURCE = 4
# A key's partner masks (u64): as a principal key, the OR of key_bit(rk) over the resource keys it is
# paired with; as a resource key, the OR of key_bit(pk) over its principal keys. A request probes the
# pair (pk, rk) only if each key's mask holds the other's bit: a filter with no false negatives.
# A uid record: type u32 @0, flags u8 @4, partner masks u64 @5 (as principal) and @13 (as resource),
# then u32 offsets: ancestors @21, attrs @25, tags @29, policies filed under it as an action @33,
# ancestor keys @37; then the id str @41. A type record: name str, flags u8, then the same two masks.
# An ancestor key: uid index u32 @0, flags u8 @4, masks u64 @5 and @13.
DEF UID_MASKS = 5
DEF UID_ANC = 21
DEF UID_ATTRS = 25
DEF UID_TAGS = 29
DEF UID_ALIST = 33
DEF UID_AKEYS = 37
DEF UID_FIXED = 41
DEF ANCESTOR_KEY = 21

cdef enum:
    V_FALSE, V_TRUE, V_LONG, V_STR, V_UID, V_SET, V_RECORD, V_EXT
cdef enum:
    S_ALL, S_EQ, S_IN, S_IS, S_IS_IN, S_IN_LIST
cdef enum:
    OP_LIT, OP_VAR, OP_GETATTR, OP_HAS, OP_EQ, OP_NE, OP_LT, OP_LE, OP_GT, OP_GE, OP_ADD, OP_SUB, OP_MUL, OP_IN, OP_CONTAINS, OP_CONTAINS_ALL, OP_CONTAINS_ANY, OP_HAS_TAG, OP_GET_TAG, OP_AND, OP_OR, OP_NOT, OP_NEG, OP_IS_EMPTY, OP_IF, OP_LIKE, OP_IS, OP_SET, OP_RECORD, OP_CALL, OP_STR
cdef enum:
    F_IP, F_IS_IPV4, F_IS_IPV6, F_IS_LOOPBACK, F_IS_MULTICAST, F_IS_IN_RANGE, F_DECIMAL, F_LT, F_LE, F_GT, F_GE, F_DATETIME, F_DURATION, F_OFFSET, F_DURATION_SINCE, F_TO_DATE, F_TO_TIME, F_TO_MS, F_TO_S, F_TO_MIN, F_TO_H, F_TO_D
cdef enum:
    EXT_IP = 1, EXT_DECIMAL = 2, EXT_DATETIME = 3, EXT_DURATION = 4

LAYOUT = {
    "FORMAT_VERSION": FORMAT_VERSION_C, "HEADER_SIZE": HEADER_SIZE, "UID_IS_ENTITY": 1,
    "KEY_IS_PRINCIPAL": KEY_IS_PRINCIPAL, "KEY_IS_RESOURCE": KEY_IS_RESOURCE, "TYPE_KEY": TYPE_KEY, "ANY_KEY": ANY_KEY,
    "UID_MASKS": UID_MASKS, "UID_FIXED": UID_FIXED, "ANCESTOR_KEY": ANCESTOR_KEY,
    "OP_LIT": OP_LIT, "OP_VAR": OP_VAR, "OP_GETATTR": OP_GETATTR, "OP_HAS": OP_HAS, "OP_EQ": OP_EQ, "OP_NE": OP_NE, "OP_LT": OP_LT, "OP_LE": OP_LE, "OP_GT": OP_GT, "OP_GE": OP_GE, "OP_ADD": OP_ADD, "OP_SUB": OP_SUB, "OP_MUL": OP_MUL, "OP_IN": OP_IN, "OP_CONTAINS": OP_CONTAINS, "OP_CONTAINS_ALL": OP_CONTAINS_ALL, "OP_CONTAINS_ANY": OP_CONTAINS_ANY, "OP_HAS_TAG": OP_HAS_TAG, "OP_GET_TAG": OP_GET_TAG, "OP_AND": OP_AND, "OP_OR": OP_OR, "OP_NOT": OP_NOT, "OP_NEG": OP_NEG, "OP_IS_EMPTY": OP_IS_EMPTY, "OP_IF": OP_IF, "OP_LIKE": OP_LIKE, "OP_IS": OP_IS, "OP_SET": OP_SET, "OP_RECORD": OP_RECORD, "OP_CALL": OP_CALL, "OP_STR": OP_STR,
    "V_FALSE": V_FALSE, "V_TRUE": V_TRUE, "V_LONG": V_LONG, "V_STR": V_STR, "V_UID": V_UID, "V_SET": V_SET, "V_RECORD": V_RECORD, "V_EXT": V_EXT,
    "S_ALL": S_ALL, "S_EQ": S_EQ, "S_IN": S_IN, "S_IS": S_IS, "S_IS_IN": S_IS_IN, "S_IN_LIST": S_IN_LIST,
    "FN_IDS": {"ip": F_IP, "isIpv4": F_IS_IPV4, "isIpv6": F_IS_IPV6, "isLoopback": F_IS_LOOPBACK,
               "isMulticast": F_IS_MULTICAST, "isInRange": F_IS_IN_RANGE, "decimal": F_DECIMAL, "lessThan": F_LT,
               "lessThanOrEqual": F_LE, "greaterThan": F_GT, "greaterThanOrEqual": F_GE, "datetime": F_DATETIME,
               "duration": F_DURATION, "offset": F_OFFSET, "durationSince": F_DURATION_SINCE, "toDate": F_TO_DATE,
               "toTime": F_TO_TIME, "toMilliseconds": F_TO_MS, "toSeconds": F_TO_S, "toMinutes": F_TO_MIN,
               "toHours": F_TO_H, "toDays": F_TO_D},
}

cdef int64_t I64_MAX = 9223372036854775807
cdef int64_t I64_MIN = -9223372036854775807 - 1
cdef int64_t DAY_MS = 86400000


class IndexFormatError(Exception):
    """The mapped generation is not what the compiler writes (truncated or corrupted)."""


# The wording of the Cedar errors that both evaluation paths report (Generation.ev and cv_error_message).
cdef inline str no_entity_message(u):
    return f"entity `{u!r}` does not exist"


cdef inline str no_part_message(u, str what, str key):
    """`what` is "attribute" or "tag"."""
    return f"`{u!r}` does not have the {what} `{key}`"


cdef inline str no_member_message(str key):
    return f"record does not have the attribute `{key}`"


class EvalError(Exception):
    """A Cedar evaluation error: the policy is skipped and reported."""


# ---- FNV-1a, shared with the compiler for the uid and type hash tables ----

cdef inline uint64_t fnv1a(const unsigned char* p, Py_ssize_t n, uint64_t h) noexcept nogil:
    cdef Py_ssize_t i
    for i in range(n):
        h = (h ^ p[i]) * 1099511628211ULL
    return h

cdef uint64_t FNV_OFFSET = 14695981039346656037ULL


cdef inline uint64_t uid_hash(const unsigned char* t, Py_ssize_t tn, const unsigned char* i, Py_ssize_t inn) noexcept nogil:
    cdef unsigned char sep = 0xFF
    cdef uint64_t h = fnv1a(t, tn, FNV_OFFSET)
    h = fnv1a(&sep, 1, h)
    return fnv1a(i, inn, h)


cdef inline bint implied_by_pair(uint8_t op) noexcept:
    """A principal/resource scope that holds for every policy found under a request's key pair."""
    return op == S_IN or op == S_IS


cdef inline uint64_t pair_hash_c(uint32_t pk, uint32_t rk) noexcept nogil:
    cdef uint64_t h = (<uint64_t>pk * 0x9E3779B97F4A7C15ULL) ^ (<uint64_t>rk * 0xC2B2AE3D27D4EB4FULL)
    return h ^ (h >> 29)


cdef inline uint64_t key_bit_c(uint32_t k) noexcept nogil:
    """The bit of an index key in a partner mask: the top 6 bits of murmur3's fmix32 of the key."""
    k ^= k >> 16
    k *= 0x85EBCA6BU
    k ^= k >> 13
    k *= 0xC2B2AE35U
    k ^= k >> 16
    return (<uint64_t>1) << (k >> 26)


def key_bit(uint32_t k):
    """The partner-mask bit (a power of two below 2**64) of an index key: the compiler builds with this."""
    return key_bit_c(k)


def pair_hash(uint32_t pk, uint32_t rk):
    """The slot hash of a (principal key, resource key) pair in the index: the compiler builds with this."""
    return pair_hash_c(pk, rk)


def hash_key(bytes type_name, bytes uid_id=None):
    """FNV-1a of a type name, or of a uid (type, 0xFF, id): the compiler builds its tables with this."""
    if uid_id is None:
        return fnv1a(<const unsigned char*>type_name, len(type_name), FNV_OFFSET)
    return uid_hash(<const unsigned char*>type_name, len(type_name), <const unsigned char*>uid_id, len(uid_id))


# ---- Cedar values ----

DEF UID_SLOTS = 16384       # the uid text cache: direct-mapped slots (1 MiB, touched as used), per generation
DEF UID_SLOT_TEXT = 44      # longer uid texts skip it


cdef struct UidSlot:
    # A request uid text (`Type::"id"`) and the Uid it resolved to (an owned reference, or NULL): one
    # cache line, so that a hit reads nothing else before the Uid.
    uint64_t hash
    PyObject* uid
    uint32_t n
    char text[UID_SLOT_TEXT]


cdef struct IndexKey:
    uint32_t key     # a uid index, TYPE_KEY | a type index, or ANY_KEY
    uint64_t mask    # its partner mask in the role it was gathered for
    uint64_t bit     # key_bit_c(key)


@cython.final
@cython.no_gc
cdef class Uid:
    """An entity uid; `idx` is its interned index in the generation it was resolved against, or -1."""
    cdef readonly str type
    cdef readonly str id
    cdef int idx
    cdef int type_idx
    cdef Py_ssize_t rec   # when idx >= 0: the offset of its record in that generation (no table read per use)
    # Its index keys as a principal and as a resource in that generation, made on first use (index_keys).
    cdef IndexKey* principal_keys
    cdef IndexKey* resource_keys
    cdef int n_principal_keys
    cdef int n_resource_keys

    def __dealloc__(self):
        free(self.principal_keys)
        free(self.resource_keys)

    def __eq__(self, other):
        return isinstance(other, Uid) and (<Uid>other).type == self.type and (<Uid>other).id == self.id

    def __hash__(self):
        return hash((self.type, self.id))

    def __repr__(self):
        """Cedar's text of the uid (the id escaped as Cedar prints it), as its error messages show it."""
        return f'{self.type}::"{_normal_form(self.id)}"'


@cython.final
cdef class CedarSet:
    """A Cedar set; equality and membership use Cedar equality (order and duplicates ignored).
    `index`, `others` and `bools` are made by index_set when a large set is first searched."""
    cdef list items
    cdef set index
    cdef dict others
    cdef int bools

    def __repr__(self):
        return f"CedarSet({self.items!r})"


@cython.final
@cython.no_gc
cdef class Ext:
    """An extension value: ip (version, addr, prefix), decimal (value x 10^4), datetime or duration (ms)."""
    cdef int kind
    cdef object a      # ip: the address as int; decimal/datetime/duration: int64 as int
    cdef int version   # ip only: 4 or 6
    cdef int prefix    # ip only

    def __repr__(self):
        return f"Ext({self.kind}, {self.a!r}, {self.version}, {self.prefix})"


cdef inline Ext make_ext(int kind, object a, int version=0, int prefix=0):
    cdef Ext e = Ext.__new__(Ext)
    e.kind = kind
    e.a = a
    e.version = version
    e.prefix = prefix
    return e


cdef inline CedarSet make_set(list items):
    cdef CedarSet s = CedarSet.__new__(CedarSet)
    s.items = items
    return s


# The work of one policy's evaluation is bounded: each expression node and each comparison inside a
# set or record costs a step from the request's budget (Request.steps), reset before each policy. A
# policy that runs out fails with an evaluation error, as any Cedar error does, instead of hanging a
# worker. Legitimate policies stay far below it: sets are compared through hash indexes (below), so
# the steps grow with the size of the values, never exponentially with their nesting.
DEF DEFAULT_EVAL_BUDGET = 2000000
DEF MAX_EVAL_DEPTH = 4016   # the compiler's MAX_EXPR_DEPTH (layout.py), and a margin
cdef int64_t eval_budget = DEFAULT_EVAL_BUDGET
# Sets of up to SMALL_SET items are compared item by item; larger ones through a hash index of their
# items (built once per set, when first needed), so comparing sets costs steps in proportion to their
# sizes, as Cedar's own hash sets do.
DEF SMALL_SET = 8

cdef str BUDGET_MESSAGE = ("evaluation budget exhausted: the policy needs more steps (expression nodes "
                           "and set comparisons) for this request than one policy may take")


def set_eval_budget(steps=DEFAULT_EVAL_BUDGET):
    """Sets the steps one policy's evaluation may take in this process (default 2,000,000: a typical
    policy takes under 100); returns the previous value."""
    global eval_budget
    if not 1 <= steps <= 1 << 62:
        raise ValueError("the evaluation budget must be a positive number of steps")
    previous, eval_budget = eval_budget, steps
    return previous


cdef inline int spend(int64_t* steps, int64_t n) except -1:
    steps[0] -= n
    if steps[0] < 0:
        raise EvalError(BUDGET_MESSAGE)
    return 0


cdef bint cedar_eq(object a, object b, int64_t* steps) except -1:
    cdef type ta = type(a)
    if ta is not type(b):
        return False
    if ta is str or ta is int or ta is bool:
        return a == b
    if ta is Uid:
        return (<Uid>a).type == (<Uid>b).type and (<Uid>a).id == (<Uid>b).id
    spend(steps, 1)
    if ta is CedarSet:
        return set_eq(<CedarSet>a, <CedarSet>b, steps)
    if ta is dict:
        if len(<dict>a) != len(<dict>b):
            return False
        for k, v in (<dict>a).items():
            if k not in <dict>b or not cedar_eq(v, (<dict>b)[k], steps):
                return False
        return True
    if ta is Ext:
        return ((<Ext>a).kind == (<Ext>b).kind and (<Ext>a).a == (<Ext>b).a
                and (<Ext>a).version == (<Ext>b).version and (<Ext>a).prefix == (<Ext>b).prefix)
    return False


cdef Py_hash_t cedar_hash(object v, int64_t* steps) except? -1:
    """A hash consistent with cedar_eq (equal values hash alike), for values Python can't hash the
    Cedar way: sets (order and duplicates ignored), records and extension values."""
    cdef type t = type(v)
    if t is str or t is int or t is bool or t is Uid:
        return hash(v)
    spend(steps, 1)
    if t is CedarSet:
        return hash(frozenset([cedar_hash(item, steps) for item in (<CedarSet>v).items]))
    if t is dict:
        return hash(frozenset([(k, cedar_hash(item, steps)) for k, item in (<dict>v).items()]))
    if t is Ext:
        return hash(((<Ext>v).kind, (<Ext>v).a, (<Ext>v).version, (<Ext>v).prefix))
    return 0


cdef int index_set(CedarSet s, int64_t* steps) except -1:
    """Indexes a large set's items: strings, Longs and entities in a Python set (Python's equality is
    Cedar's on those, and no two of different kinds are equal), bools as bits, and the rest (sets,
    records, extension values) by cedar_hash, each hash to the items that have it."""
    cdef set index = set()
    cdef dict others = {}
    cdef int bools = 0
    cdef type t
    spend(steps, len(s.items))
    for item in s.items:
        t = type(item)
        if t is bool:
            bools |= 2 if item else 1
        elif t is str or t is int or t is Uid:
            index.add(item)
        else:
            others.setdefault(cedar_hash(item, steps), []).append(item)
    s.index, s.others, s.bools = index, others, bools
    return 0


cdef bint set_has(CedarSet s, object x, int64_t* steps) except -1:
    cdef type t
    if len(s.items) <= SMALL_SET:
        spend(steps, len(s.items))
        for item in s.items:
            if cedar_eq(item, x, steps):
                return True
        return False
    if s.index is None:
        index_set(s, steps)
    t = type(x)
    if t is bool:
        return (s.bools >> (1 if x else 0)) & 1
    if t is str or t is int or t is Uid:
        return x in s.index
    same_hash = s.others.get(cedar_hash(x, steps))
    if same_hash is None:
        return False
    spend(steps, len(<list>same_hash))
    for item in <list>same_hash:
        if cedar_eq(item, x, steps):
            return True
    return False


cdef bint set_subset(CedarSet small, CedarSet big, int64_t* steps) except -1:
    for item in small.items:
        if not set_has(big, item, steps):
            return False
    return True


cdef bint set_eq(CedarSet a, CedarSet b, int64_t* steps) except -1:
    """Cedar set equality: each side contains the other. For small sets, the items of `b` matched while
    checking `a` ⊆ `b` are not looked for again in `a` (equality is symmetric): comparing nested sets
    twice per level was 2^depth comparisons for `[[..[1]..]] == [[..[1]..]]`."""
    cdef list ai = a.items, bi = b.items
    cdef Py_ssize_t na = len(ai), nb = len(bi), i, j
    cdef unsigned char matched[SMALL_SET]
    if na == 0 or nb == 0:
        return na == nb
    if na > SMALL_SET or nb > SMALL_SET:
        return set_subset(a, b, steps) and set_subset(b, a, steps)
    for j in range(nb):
        matched[j] = 0
    for i in range(na):
        for j in range(nb):
            spend(steps, 1)
            if cedar_eq(ai[i], bi[j], steps):
                matched[j] = 1
                break
        else:
            return False
    for j in range(nb):
        if not matched[j]:
            for i in range(na):
                spend(steps, 1)
                if cedar_eq(bi[j], ai[i], steps):
                    break
            else:
                return False
    return True


cdef str type_name(object v):
    cdef type t = type(v)
    if t is bool: return "bool"
    if t is int: return "long"
    if t is str: return "string"
    if t is Uid: return "entity"
    if t is CedarSet: return "set"
    if t is dict: return "record"
    if t is Ext: return ("", "ipaddr", "decimal", "datetime", "duration")[(<Ext>v).kind]
    return _kind(v)


cdef type_error(str expected, object got):
    raise EvalError(f"type error: expected {expected}, got {type_name(got)}")


cdef extern from "Python.h":
    long long PyLong_AsLongLongAndOverflow(object v, int* overflow) except? -1
    long long int_and_overflow "PyLong_AsLongLongAndOverflow"(object v, int* overflow) noexcept  # for an int: cannot fail

cdef extern from *:
    bint add_overflow "__builtin_add_overflow"(int64_t a, int64_t b, int64_t* out) noexcept nogil
    bint sub_overflow "__builtin_sub_overflow"(int64_t a, int64_t b, int64_t* out) noexcept nogil
    bint mul_overflow "__builtin_mul_overflow"(int64_t a, int64_t b, int64_t* out) noexcept nogil


cdef inline int64_t as_long(object v) except? -1:
    """A Python int that is a Cedar Long -> int64; EvalError("integer overflow") if it is out of range."""
    cdef int overflow = 0
    cdef int64_t x = PyLong_AsLongLongAndOverflow(v, &overflow)
    if overflow:
        raise EvalError("integer overflow")
    return x


cdef inline object check_long(object v):
    as_long(v)
    return v


cdef object long_arith(uint8_t op, object left, object right):
    """`+`, `-` or `*` of two Longs, with Cedar's overflow error."""
    cdef int64_t a = as_long(left), b = as_long(right), out
    cdef bint overflow
    if op == OP_ADD:
        overflow = add_overflow(a, b, &out)
    elif op == OP_SUB:
        overflow = sub_overflow(a, b, &out)
    else:
        overflow = mul_overflow(a, b, &out)
    if overflow:
        raise EvalError("integer overflow")
    return out


# ---- extension constructors (Cedar's parsing rules) ----

_DECIMAL_RE = _re.compile(r"(-?\d+)\.(\d+)")
_DURATION_RE = _re.compile(r"-?(([0-9]+)d)?(([0-9]+)h)?(([0-9]+)m)?(([0-9]+)s)?(([0-9]+)ms)?")
_DATE_RE = _re.compile(r"([0-9]{4})-([0-9]{2})-([0-9]{2})")
_HMS_RE = _re.compile(r"T([0-9]{2}):([0-9]{2}):([0-9]{2})")
_MS_OFFSET_RE = _re.compile(r"(\.([0-9]{3}))?(Z|((\+|-)([0-9]{2})([0-9]{2})))")
_SUBNET_RE = _re.compile(r"0|[1-9][0-9]{0,2}")  # Cedar 4.12: plain decimal, no sign, no leading zeros
_ASCII_DIGITS = _re.compile(r"-?[0-9]+")
_MISSING = object()
_POW10 = (1, 10, 100, 1000, 10000)
_ONE = 1  # a Python int, so that shifts below are arbitrary-precision


cdef object parse_ip_addr(str s):
    """A Rust std::net::IpAddr parse: plain dotted-quad or IPv6 text, nothing else."""
    if "%" in s or not s or not s.isascii() or s != s.strip():
        return None
    try:
        if ":" in s:
            return _ipaddress.IPv6Address(s)
        return _ipaddress.IPv4Address(s)
    except ValueError:
        return None


cdef Ext parse_ip(str s):
    if s.count(":") >= 2 and s.count(".") >= 2:
        raise EvalError(f"error parsing IP address from string `{s}`: IPv4 embedded in IPv6 is not accepted")
    addr = parse_ip_addr(s)
    cdef int prefix
    if addr is not None:
        return make_ext(EXT_IP, int(addr), addr.version, 32 if addr.version == 4 else 128)
    head, sep, tail = s.partition("/")
    if not sep:
        raise EvalError(f"invalid IP address `{s}`")
    addr = parse_ip_addr(head)
    if addr is None:
        raise EvalError(f"error parsing IP address from the string `{head}`")
    if not tail.isascii() or _SUBNET_RE.fullmatch(tail) is None or int(tail) > 255:
        raise EvalError(f"error parsing subnet from the string `{tail}`")
    prefix = int(tail)
    if prefix > (32 if addr.version == 4 else 128):
        raise EvalError(f"invalid subnet: {prefix}")
    return make_ext(EXT_IP, int(addr), addr.version, prefix)


cdef Ext parse_decimal(str s):
    m = _DECIMAL_RE.fullmatch(s)
    if m is None:
        raise EvalError(f"`{s}` is not a well-formed decimal value")
    left, right = m.group(1), m.group(2)
    if _ASCII_DIGITS.fullmatch(left) is None:
        raise EvalError("overflow when converting to decimal")
    l = int(left)
    if not (I64_MIN <= l <= I64_MAX):
        raise EvalError("overflow when converting to decimal")
    l = l * 10000
    if not (I64_MIN <= l <= I64_MAX):
        raise EvalError("overflow when converting to decimal")
    if len(right.encode("utf-8")) > 4:
        raise EvalError(f"too many digits after the decimal in `{s}`")
    if _ASCII_DIGITS.fullmatch(right) is None:
        raise EvalError("overflow when converting to decimal")
    r = int(right) * _POW10[4 - len(right)]
    v = l - r if left.startswith("-") else l + r   # the sign applies to the fraction too, even for `-0.x`
    if not (I64_MIN <= v <= I64_MAX):
        raise EvalError("overflow when converting to decimal")
    return make_ext(EXT_DECIMAL, v)


cdef Ext parse_duration(str s):
    if s == "" or s == "-":
        raise EvalError("invalid duration pattern")
    m = _DURATION_RE.fullmatch(s)
    if m is None:
        raise EvalError("invalid duration pattern")
    neg = s.startswith("-")
    nums = []
    for g in (2, 4, 6, 8, 10):
        text = m.group(g)
        n = 0 if text is None else int(text)
        if n > 18446744073709551615:
            raise EvalError("duration overflows internal representation")
        nums.append(n)
    d, h, mi, sec, ms = nums
    total = -ms if neg else ms
    if not (I64_MIN <= total <= I64_MAX):
        raise EvalError("duration overflows internal representation")
    for amount, mul in ((sec, 1000), (mi, 60000), (h, 3600000), (d, 86400000)):
        if amount > I64_MAX:
            raise EvalError("duration overflows internal representation")
        step = amount * mul
        if step > I64_MAX:
            raise EvalError("duration overflows internal representation")
        total = total - step if neg else total + step
        if not (I64_MIN <= total <= I64_MAX):
            raise EvalError("duration overflows internal representation")
    return make_ext(EXT_DURATION, total)


cdef inline bint is_leap(long y):
    return (y % 4 == 0 and y % 100 != 0) or y % 400 == 0


cdef long days_from_civil(long y, long m, long d):
    """Days since 1970-01-01 of a proleptic Gregorian date (Howard Hinnant's algorithm)."""
    y -= m <= 2
    cdef long era = (y if y >= 0 else y - 399) // 400
    cdef long yoe = y - era * 400
    cdef long doy = (153 * (m + (-3 if m > 2 else 9)) + 2) // 5 + d - 1
    cdef long doe = yoe * 365 + yoe // 4 - yoe // 100 + doy
    return era * 146097 + doe - 719468


cdef Ext parse_datetime(str s):
    m = _DATE_RE.match(s)
    if m is None:
        raise EvalError("invalid date pattern")
    cdef long year = int(m.group(1)), month = int(m.group(2)), day = int(m.group(3))
    cdef int mdays[13]
    mdays[:] = [0, 31, 28, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31]
    date_ok = 1 <= month <= 12 and 1 <= day <= (29 if month == 2 and is_leap(year) else mdays[month])
    rest = s[m.end():]
    if not rest:
        if not date_ok:
            raise EvalError(f"invalid date: {m.group(0)}")
        return make_ext(EXT_DATETIME, days_from_civil(year, month, day) * DAY_MS)
    hms = _HMS_RE.match(rest)
    if hms is None:
        raise EvalError("invalid hour/minute/second pattern")
    hh, mm, ss = int(hms.group(1)), int(hms.group(2)), int(hms.group(3))
    tail = _MS_OFFSET_RE.fullmatch(rest[hms.end():])
    if tail is None:
        raise EvalError("invalid millisecond and/or offset pattern")
    millis = int(tail.group(2)) if tail.group(1) is not None else 0
    if not date_ok:
        raise EvalError(f"invalid date: {m.group(0)}")
    if hh >= 24 or mm >= 60 or ss >= 60:
        raise EvalError("invalid hour/minute/second")
    offset = 0
    if tail.group(4) is not None:
        oh, om = int(tail.group(6)), int(tail.group(7))
        if oh >= 24 or om >= 60:
            raise EvalError(f"invalid offset range: {oh}{om}")
        offset = (oh * 3600 + om * 60) * (1 if tail.group(5) == "+" else -1)
    epoch = (days_from_civil(year, month, day) * 86400 + hh * 3600 + mm * 60 + ss - offset) * 1000 + millis
    return make_ext(EXT_DATETIME, epoch)


cdef Ext construct_ext(int fn, object arg):
    if type(arg) is not str:
        type_error("string", arg)
    if fn == F_IP:
        return parse_ip(<str>arg)
    if fn == F_DECIMAL:
        return parse_decimal(<str>arg)
    if fn == F_DATETIME:
        return parse_datetime(<str>arg)
    if fn == F_DURATION:
        return parse_duration(<str>arg)
    raise EvalError("not an extension constructor")


cdef Ext as_ext(object v, int kind, str name):
    if type(v) is not Ext or (<Ext>v).kind != kind:
        type_error(name, v)
    return <Ext>v


cdef object call_ext(int fn, list args):
    cdef int arity = 2 if fn in (F_IS_IN_RANGE, F_LT, F_LE, F_GT, F_GE, F_OFFSET, F_DURATION_SINCE) else 1
    cdef Ext a, b
    if len(args) != arity:
        raise EvalError(f"wrong number of arguments: expected {arity}, got {len(args)}")
    if fn == F_IP or fn == F_DECIMAL or fn == F_DATETIME or fn == F_DURATION:
        return construct_ext(fn, args[0])
    if F_IS_IPV4 <= fn <= F_IS_IN_RANGE:
        a = as_ext(args[0], EXT_IP, "ipaddr")
        if fn == F_IS_IPV4:
            return a.version == 4
        if fn == F_IS_IPV6:
            return a.version == 6
        if fn == F_IS_LOOPBACK:
            # Every address of the range must be loopback: 127.0.0.0/8, or exactly ::1.
            if a.version == 4:
                return (a.a >> 24) == 127 and a.prefix >= 8
            return a.a == 1 and a.prefix == 128
        if fn == F_IS_MULTICAST:
            if a.version == 4:
                return (a.a >> 28) == 0xE and a.prefix >= 4
            return (a.a >> 120) == 0xFF and a.prefix >= 8
        b = as_ext(args[1], EXT_IP, "ipaddr")
        return ip_in_range(a, b)
    if F_LT <= fn <= F_GE:
        a = as_ext(args[0], EXT_DECIMAL, "decimal")
        b = as_ext(args[1], EXT_DECIMAL, "decimal")
        if fn == F_LT: return a.a < b.a
        if fn == F_LE: return a.a <= b.a
        if fn == F_GT: return a.a > b.a
        return a.a >= b.a
    if fn == F_OFFSET:
        a = as_ext(args[0], EXT_DATETIME, "datetime")
        b = as_ext(args[1], EXT_DURATION, "duration")
        r = a.a + b.a
        if not (I64_MIN <= r <= I64_MAX):
            raise EvalError("overflow when adding an offset")
        return make_ext(EXT_DATETIME, r)
    if fn == F_DURATION_SINCE:
        a = as_ext(args[0], EXT_DATETIME, "datetime")
        b = as_ext(args[1], EXT_DATETIME, "datetime")
        r = a.a - b.a
        if not (I64_MIN <= r <= I64_MAX):
            raise EvalError("overflow when computing a duration")
        return make_ext(EXT_DURATION, r)
    if fn == F_TO_DATE:
        a = as_ext(args[0], EXT_DATETIME, "datetime")
        r = a.a - (a.a % DAY_MS)   # Python % is Euclidean for a positive divisor
        if not (I64_MIN <= r <= I64_MAX):
            raise EvalError("overflow when computing a date")
        return make_ext(EXT_DATETIME, r)
    if fn == F_TO_TIME:
        a = as_ext(args[0], EXT_DATETIME, "datetime")
        return make_ext(EXT_DURATION, a.a % DAY_MS)
    a = as_ext(args[0], EXT_DURATION, "duration")
    cdef int64_t ms = a.a
    if fn == F_TO_MS: return ms
    ms = ms / 1000
    if fn == F_TO_S: return ms
    ms = ms / 60
    if fn == F_TO_MIN: return ms
    ms = ms / 60
    if fn == F_TO_H: return ms
    return ms / 24


cdef bint ip_in_range(Ext a, Ext b):
    if a.version != b.version:
        return False
    cdef int width = 32 if a.version == 4 else 128
    host_a = (_ONE << (width - a.prefix)) - 1
    host_b = (_ONE << (width - b.prefix)) - 1
    return (b.a & ~host_b) <= (a.a & ~host_a) and (a.a | host_a) <= (b.a | host_b)


cdef Py_ssize_t find_bytes(const char* s, Py_ssize_t start, Py_ssize_t end, const char* p, Py_ssize_t m) noexcept:
    cdef Py_ssize_t k
    for k in range(start, end - m + 1):
        if memcmp(s + k, p, m) == 0:
            return k
    return -1


cdef bint like_bytes(const char* s, Py_ssize_t n, const char** seg, Py_ssize_t* seg_n, int count) noexcept:
    """Cedar `like` over UTF-8 bytes: literal segments and wildcards (seg_n[i] < 0). UTF-8 is
    self-synchronising, so a literal found at a byte offset starts and ends on code points: the same
    matches as over code points."""
    cdef Py_ssize_t pos = 0, end = n, k
    cdef int i, lo = 0, hi = count
    if count == 0:
        return n == 0
    if seg_n[0] >= 0:
        if seg_n[0] > n or memcmp(s, seg[0], seg_n[0]) != 0:
            return False
        pos = seg_n[0]
        if count == 1:
            return n == pos
        lo = 1
    if seg_n[count - 1] >= 0 and count > 1:
        if n - seg_n[count - 1] < pos or memcmp(s + n - seg_n[count - 1], seg[count - 1], seg_n[count - 1]) != 0:
            return False
        end = n - seg_n[count - 1]
        hi = count - 1
    for i in range(lo, hi):
        if seg_n[i] < 0:
            continue
        k = find_bytes(s, pos, end, seg[i], seg_n[i])
        if k < 0:
            return False
        pos = k + seg_n[i]
    return pos <= end


# ---- the mapped generation ----

cdef extern from "time.h" nogil:
    ctypedef long time_t
    struct timespec:
        time_t tv_sec
        long tv_nsec
    int clock_gettime(int clk, timespec* ts)
    int CLOCK_MONOTONIC


cdef inline int64_t monotonic_ns() noexcept nogil:
    cdef timespec ts
    clock_gettime(CLOCK_MONOTONIC, &ts)
    return <int64_t>ts.tv_sec * 1000000000 + ts.tv_nsec


DEF STACK_KEYS = 64
DEF MAX_CONTEXT_DEPTH = 126   # cedarpy refuses a context nested 128 deep (serde_json's limit)
DEF STACK_CANDIDATES = 256
DEF PROBE_BATCH = 16         # pair-index probes whose cache misses are overlapped
DEF PREFETCH_CANDIDATES = 32 # candidate bodies prefetched before evaluation
DEF STACK_SEGS = 32          # `like` segments kept on the stack
DEF UID_CACHE_SIZE = 65536   # request uid text -> resolved Uid, per generation
DEF UID_CACHE_TYPES = 1024   # entity types in the {type, id} uid cache, per generation


@cython.final
@cython.no_gc
@cython.freelist(8)
cdef class Request:
    """A resolved request: principal/action/resource uids and the context record."""
    cdef Uid principal
    cdef Uid action
    cdef Uid resource
    cdef dict raw_context   # the caller's context, validated; values are converted when read
    cdef dict context       # the whole context as a Cedar record, built only if a policy needs it
    cdef int64_t steps      # what is left of the budget of the policy being evaluated (eval_budget)
    cdef int depth          # how deep the evaluation of that policy is in nodes with operands
    cdef object ov          # the call's request entities (an Overlay: _overlay.pxi), or None


@cython.final
@cython.no_gc
@cython.freelist(1024)
cdef class Decision:
    """The answer to one request: `allowed`, `decision`, `policies` (the determining ids) and `errors`;
    `permitted` says whether some permit was satisfied, also when a forbid denies. Its fields are
    declared in _evaluator.pxd."""

    @property
    def errors(self):
        """The policies that errored, each {"policy": id, "message": text}, in policy order."""
        if self._errors is None:
            self._errors = []
        return self._errors

    @property
    def decision(self):
        return "allow" if self.allowed else "deny"

    def to_dict(self):
        return {"decision": self.decision, "policies": list(self.policies), "errors": [dict(e) for e in self.errors]}

    def __repr__(self):
        return f"Decision({self.decision!r}, policies={self.policies!r}, errors={self.errors!r})"

    def __eq__(self, other):
        return isinstance(other, Decision) and self.to_dict() == other.to_dict()


cdef extern from "Python.h":
    void PyErr_SetString(object exc_type, const char* message)


cdef object INDEX_FORMAT_ERROR = IndexFormatError


cdef int format_error(const char* message) noexcept:
    """Sets IndexFormatError(message); returns -1 (the error value of the readers below)."""
    PyErr_SetString(INDEX_FORMAT_ERROR, message)
    return -1


cdef inline int out_of_bounds() noexcept:
    return format_error(b"read past the end of the generation")


@cython.final
cdef class Generation:
    """One compiled generation read in place; `owner` keeps the mapped buffer (and its read txn) alive."""
    cdef object owner
    cdef const unsigned char[::1] view
    cdef const unsigned char* base
    cdef Py_ssize_t size
    cdef readonly object number
    cdef uint32_t n_types, types_off, type_hash_off, type_hash_size
    cdef uint32_t n_uids, uids_off, uid_hash_off, uid_hash_size
    cdef uint32_t n_policies, policy_ids_off, all_list_off, n_strings, strings_off
    cdef uint32_t pair_hash_off, pair_hash_size
    cdef uint64_t any_pmask, any_rmask   # ANY's partner masks (it has no record: they are in the header)
    cdef uint32_t* seen
    cdef uint32_t stamp
    cdef list type_names
    cdef list uid_objects
    cdef list policy_ids
    cdef list strings
    cdef dict uid_cache
    cdef UidSlot* uid_slots      # aligned to a cache line, in uid_slots_mem
    cdef void* uid_slots_mem
    cdef dict uid_by_type
    cdef Py_ssize_t uid_by_type_n
    cdef object parents_owner        # the entities' direct parents (index.parents_key), or None
    cdef const unsigned char* pbase  # ... read in place (request entities only: _overlay.pxi)
    cdef Py_ssize_t psize

    def __cinit__(self, buffer, number, owner=None):
        self.owner = owner
        self.view = buffer
        self.size = self.view.shape[0]
        self.number = number
        if self.size < HEADER_SIZE:
            raise IndexFormatError("generation is truncated")
        self.base = &self.view[0]
        if memcmp(self.base, <const char*>MAGIC_C, 8) != 0:
            raise IndexFormatError("not an authz generation (bad magic)")
        if self.u32(8) != FORMAT_VERSION_C:
            raise IndexFormatError(f"format version {self.u32(8)}, this authz reads version {FORMAT_VERSION_C}: "
                                   "compile the policies again with this authz")
        cdef uint32_t h[N_HEADER]
        cdef int i
        for i in range(N_HEADER):
            h[i] = self.u32(12 + 4 * i)
        (self.n_types, self.types_off, self.type_hash_off, self.type_hash_size,
         self.n_uids, self.uids_off, self.uid_hash_off, self.uid_hash_size,
         self.n_policies, self.policy_ids_off, self.all_list_off,
         self.n_strings, self.strings_off, self.pair_hash_off, self.pair_hash_size) = (
            h[0], h[1], h[2], h[3], h[4], h[5], h[6], h[7], h[8], h[9], h[10], h[11], h[12], h[13], h[14])
        self.any_pmask = (<uint64_t>h[16] << 32) | h[15]
        self.any_rmask = (<uint64_t>h[18] << 32) | h[17]
        if self.pair_hash_size & (self.pair_hash_size - 1) or self.type_hash_size & (self.type_hash_size - 1) \
                or self.uid_hash_size & (self.uid_hash_size - 1):
            raise IndexFormatError("hash table sizes must be powers of two")
        # Every policy, uid, type and string has a u32 offset in the map, so none can outnumber its words.
        if max(self.n_policies, self.n_uids, self.n_types, self.n_strings) > self.size // 4:
            raise IndexFormatError("generation header counts exceed its size")
        self.seen = <uint32_t*>malloc((self.n_policies + 1) * sizeof(uint32_t))
        self.uid_slots_mem = calloc(UID_SLOTS + 1, sizeof(UidSlot))
        self.uid_slots = <UidSlot*>((<uintptr_t>self.uid_slots_mem + 63) & ~(<uintptr_t>63))
        if self.seen == NULL or self.uid_slots_mem == NULL:
            raise MemoryError()
        for i in range(self.n_policies + 1):
            self.seen[i] = 0
        self.stamp = 0
        self.type_names = [self.read_str_at(self.u32(self.types_off + 4 * i)) for i in range(self.n_types)]
        self.uid_objects = [None] * self.n_uids
        self.policy_ids = [None] * self.n_policies
        self.uid_cache = {}
        self.uid_by_type = {}
        self.strings = [None] * self.n_strings

    def __dealloc__(self):
        free(self.seen)
        cdef int i
        if self.uid_slots_mem != NULL:
            for i in range(UID_SLOTS):
                Py_XDECREF(self.uid_slots[i].uid)
            free(self.uid_slots_mem)

    # -- bounds-checked readers --
    # Each is a few instructions that inline: nothing in them raises as far as Cython knows, so it
    # emits no error path; a read out of bounds sets IndexFormatError through format_error (a C
    # call Cython does not see raising) and returns the declared error value, which the caller's
    # `except?` check then sees. The bounds are one unsigned comparison: a negative offset becomes
    # a huge size_t and fails it too, and `size` is at least HEADER_SIZE (__cinit__), so `size - 8`
    # is not negative.
    cdef inline uint32_t u32(self, Py_ssize_t off) except? 0xFFFFFFFF:
        cdef uint32_t v
        if <size_t>off > <size_t>(self.size - 4):
            return <uint32_t>out_of_bounds()
        memcpy(&v, self.base + off, 4)
        return v

    cdef inline uint64_t u64(self, Py_ssize_t off) except? 0xFFFFFFFFFFFFFFFF:
        cdef uint64_t v
        if <size_t>off > <size_t>(self.size - 8):
            return <uint64_t>out_of_bounds()
        memcpy(&v, self.base + off, 8)
        return v

    cdef inline int64_t i64(self, Py_ssize_t off) except? -1:
        cdef int64_t v
        if <size_t>off > <size_t>(self.size - 8):
            return out_of_bounds()
        memcpy(&v, self.base + off, 8)
        return v

    cdef inline uint8_t u8(self, Py_ssize_t off) except? 0xFF:
        if <size_t>off >= <size_t>self.size:
            return <uint8_t>out_of_bounds()
        return self.base[off]

    cdef inline Py_ssize_t str_span(self, Py_ssize_t off, Py_ssize_t* n) except -1:
        """The start of the str at `off` (u32 length, then UTF-8); its length in n[0]."""
        cdef uint32_t v
        if <size_t>off > <size_t>(self.size - 4):
            return out_of_bounds()
        memcpy(&v, self.base + off, 4)
        n[0] = v
        if off + 4 + n[0] > self.size:
            return out_of_bounds()
        return off + 4

    cdef str read_str_at(self, Py_ssize_t off):
        cdef Py_ssize_t n
        cdef Py_ssize_t start = self.str_span(off, &n)
        try:
            return PyUnicode_DecodeUTF8(<const char*>self.base + start, n, "surrogatepass")
        except UnicodeDecodeError:
            raise IndexFormatError("a name in the generation is not UTF-8") from None

    cdef str read_str(self, Py_ssize_t* pos):
        cdef Py_ssize_t n
        cdef Py_ssize_t start = self.str_span(pos[0], &n)
        pos[0] = start + n
        try:
            return PyUnicode_DecodeUTF8(<const char*>self.base + start, n, "surrogatepass")
        except UnicodeDecodeError:
            raise IndexFormatError("a string in the generation is not UTF-8") from None

    # -- symbols --
    cdef inline str type_name(self, uint32_t t):
        # INVARIANT: lists indexed with numbers read from the map are checked first (boundscheck is off).
        if t >= self.n_types:
            raise IndexFormatError("type index out of range")
        return <str>self.type_names[t]

    cdef inline Py_ssize_t table_entry(self, Py_ssize_t table, uint32_t idx, uint32_t count,
                                       const char* out_of_range) noexcept:
        """Entry `idx` (u32) of the offset table at `table`, which has `count` entries; -1 with
        IndexFormatError set when it is not there (its callers' error value, checked by theirs)."""
        if idx >= count:
            return format_error(out_of_range)
        cdef Py_ssize_t off = table + 4 * <Py_ssize_t>idx
        cdef uint32_t v
        if off + 4 > self.size:
            return out_of_bounds()
        memcpy(&v, self.base + off, 4)
        return v

    cdef inline Py_ssize_t uid_record(self, uint32_t idx) except -1:
        return self.table_entry(self.uids_off, idx, self.n_uids, b"uid index out of range")

    cdef Uid uid_at(self, uint32_t idx):
        cached = self.uid_objects[idx] if idx < self.n_uids else None
        if cached is not None:
            return <Uid>cached
        cdef Py_ssize_t rec = self.uid_record(idx)
        cdef Uid u = Uid.__new__(Uid)
        u.type_idx = self.u32(rec)
        u.type = self.type_name(u.type_idx)
        u.id = self.read_str_at(rec + UID_FIXED)
        u.idx = idx
        u.rec = rec
        self.uid_objects[idx] = u
        return u

    cdef int find_type(self, str name) except -2:
        cdef Py_ssize_t n
        cdef const char* p = PyUnicode_AsUTF8AndSize(name, &n)
        cdef uint64_t h = fnv1a(<const unsigned char*>p, n, FNV_OFFSET)
        cdef uint32_t mask = self.type_hash_size - 1, slot = h & mask, entry
        cdef Py_ssize_t soff, sn
        cdef uint32_t probe
        if self.type_hash_size == 0:
            return -1
        # INVARIANT: the compiler leaves at least half of every hash table empty, so a probe sequence
        # ends; a damaged table that has no empty slot is refused instead of looping.
        for probe in range(self.type_hash_size):
            entry = self.u32(self.type_hash_off + 4 * <Py_ssize_t>slot)
            if entry == 0:
                return -1
            soff = self.str_span(self.u32(self.types_off + 4 * <Py_ssize_t>(entry - 1)), &sn)
            if sn == n and memcmp(self.base + soff, p, n) == 0:
                return entry - 1
            slot = (slot + 1) & mask
        raise IndexFormatError("type hash table has no empty slot")

    cdef int find_uid(self, const char* tp, Py_ssize_t tn, const char* ip, Py_ssize_t idn) except -2:
        """The index of the uid (type, id) given as UTF-8, or -1 if this generation does not know it."""
        cdef uint64_t h = uid_hash(<const unsigned char*>tp, tn, <const unsigned char*>ip, idn)
        cdef uint32_t mask, slot, entry, probe
        cdef Py_ssize_t rec, soff, sn, toff
        if self.uid_hash_size == 0:
            return -1
        mask = self.uid_hash_size - 1
        slot = h & mask
        for probe in range(self.uid_hash_size):
            entry = self.u32(self.uid_hash_off + 4 * <Py_ssize_t>slot)
            if entry == 0:
                return -1
            rec = self.uid_record(entry - 1)
            soff = self.str_span(rec + UID_FIXED, &sn)
            if sn == idn and memcmp(self.base + soff, ip, idn) == 0:
                toff = self.table_entry(self.types_off, self.u32(rec), self.n_types, b"type index out of range")
                if toff < 0:
                    return -2
                soff = self.str_span(toff, &sn)
                if sn == tn and memcmp(self.base + soff, tp, tn) == 0:
                    return entry - 1
            slot = (slot + 1) & mask
        raise IndexFormatError("uid hash table has no empty slot")

    cdef Uid resolve(self, str type_name, str uid_id):
        """The Uid for (type, id), interned if this generation knows it, else with idx -1."""
        cdef Py_ssize_t tn, idn
        cdef const char* tp = utf8_or_null(type_name, &tn)
        cdef const char* ip = utf8_or_null(uid_id, &idn)
        if tp == NULL or ip == NULL:
            PyErr_Clear()
            raise RequestError("entity uid is not valid Unicode (it holds a lone surrogate)")
        cdef int idx = self.find_uid(tp, tn, ip, idn)
        if idx >= 0:
            return self.uid_at(idx)
        return self.unknown_uid(type_name, uid_id)

    cdef Uid unknown_uid(self, str type_name, str uid_id):
        """A Uid this generation has no entity for (idx -1; its type's index if the type is known)."""
        cdef Uid u = Uid.__new__(Uid)
        u.type = type_name
        u.id = uid_id
        u.idx = -1
        u.rec = -1
        u.type_idx = self.find_type(type_name)
        return u

    cdef bint has_ancestor(self, int idx, int target) except -1:
        """`target` is in the transitive ancestors of uid `idx`."""
        if idx < 0 or target < 0:
            return False
        return self.has_ancestor_at(self.uid_record(idx), target)

    cdef bint has_ancestor_at(self, Py_ssize_t rec, int target) except -1:
        """`target` is in the transitive ancestors of the uid whose record is at `rec` (sorted: binary search)."""
        if target < 0:
            return False
        cdef Py_ssize_t lst = self.u32(rec + UID_ANC)
        if lst == 0:
            return False
        cdef Py_ssize_t lo = 0, hi = <Py_ssize_t>self.u32(lst) - 1, mid
        cdef uint32_t v
        while lo <= hi:
            mid = (lo + hi) >> 1
            v = self.u32(lst + 4 + 4 * mid)
            if v == <uint32_t>target:
                return True
            if v < <uint32_t>target:
                lo = mid + 1
            else:
                hi = mid - 1
        return False

    def _set_parents(self, buffer):
        """The entities' direct parents published beside this generation (a buffer that stays valid as
        long as this generation's read transaction: `owner`); request entities read them (stored_parents)."""
        cdef const unsigned char[::1] view = buffer
        cdef uint32_t n
        if view.shape[0] < 4:
            raise IndexFormatError("the entity parents table is truncated")
        memcpy(&n, &view[0], 4)
        if n != self.n_uids or view.shape[0] < 4 + 4 * <Py_ssize_t>n:
            raise IndexFormatError("the entity parents table does not match its generation")
        self.parents_owner = view
        self.pbase = &view[0]
        self.psize = view.shape[0]

    cdef inline uint32_t p32(self, Py_ssize_t off) except? 0xFFFFFFFF:
        cdef uint32_t v
        if off < 0 or off + 4 > self.psize:
            format_error(b"read past the end of the entity parents table")
            return 0xFFFFFFFF
        memcpy(&v, self.pbase + off, 4)
        return v

    cdef list stored_parents(self, int idx):
        """The direct parents (Uids) of stored uid `idx`, from the parents table."""
        if idx < 0:
            return []
        if self.parents_owner is None:
            raise RequestError("the index holds no entity parents (compiled by an older authz): compile it "
                               "again to replace stored entities that have descendants")
        if <uint32_t>idx >= self.n_uids:
            raise IndexFormatError("uid index out of range")
        cdef Py_ssize_t lst = self.p32(4 + 4 * <Py_ssize_t>idx)
        if lst == 0:
            return []
        cdef uint32_t count = self.p32(lst), i
        if count > (self.psize - lst) // 4:
            raise IndexFormatError("the entity parents table is truncated")
        return [self.uid_at(self.p32(lst + 4 + 4 * <Py_ssize_t>i)) for i in range(count)]

    cdef int add_ancestors(self, Py_ssize_t rec, set out) except -1:
        """Adds the (closed) stored ancestors of the uid whose record is at `rec` to `out`."""
        cdef Py_ssize_t lst = self.u32(rec + UID_ANC)
        if lst == 0:
            return 0
        cdef uint32_t count = self.u32(lst), i
        for i in range(count):
            out.add(self.u32(lst + 4 + 4 * <Py_ssize_t>i))
        return 0

    cdef inline bint is_entity(self, Uid u) except -1:
        return u.idx >= 0 and (self.u8(u.rec + 4) & 1)

    cdef Py_ssize_t find_in_block(self, Py_ssize_t block, uint32_t key) except -2:
        """Offset of the value of key `key` (a string index) in an attrs/tags block, or -1. A block: u32
        count, then per entry u32 key, u32 value length, value. The strings table holds each text once,
        so a key is found by its index."""
        if block == 0:
            return -1
        cdef uint32_t count = self.u32(block), i
        cdef Py_ssize_t pos = block + 4
        for i in range(count):
            if self.u32(pos) == key:
                return pos + 8
            pos += 8 + <Py_ssize_t>self.u32(pos + 4)
        return -1

    cdef Py_ssize_t find_text_in_block(self, Py_ssize_t block, const char* key, Py_ssize_t kn) except -2:
        """find_in_block for a key known by its text only (one computed while evaluating)."""
        if block == 0:
            return -1
        cdef uint32_t count = self.u32(block), i
        cdef Py_ssize_t pos = block + 4, soff, sn
        for i in range(count):
            soff = self.str_span(self.string_offset(self.u32(pos)), &sn)
            if sn == kn and memcmp(self.base + soff, key, kn) == 0:
                return pos + 8
            pos += 8 + <Py_ssize_t>self.u32(pos + 4)
        return -1

    # -- values --
    cdef object decode(self, Py_ssize_t* pos):
        cdef uint8_t tag = self.u8(pos[0])
        cdef uint32_t count, i
        cdef list items
        cdef dict rec
        pos[0] += 1
        if tag == V_TRUE:
            return True
        if tag == V_FALSE:
            return False
        if tag == V_LONG:
            pos[0] += 8
            return self.i64(pos[0] - 8)
        if tag == V_STR:
            return self.read_str(pos)
        if tag == V_UID:
            pos[0] += 4
            return self.uid_at(self.u32(pos[0] - 4))
        if tag == V_SET:
            count = self.u32(pos[0])
            pos[0] += 4
            items = [self.decode(pos) for i in range(count)]
            return make_set(items)
        if tag == V_RECORD:
            count = self.u32(pos[0])
            pos[0] += 4
            rec = {}
            for i in range(count):
                key = self.read_str(pos)
                rec[key] = self.decode(pos)
            return rec
        if tag == V_EXT:
            fn = self.u8(pos[0])
            count = self.u8(pos[0] + 1)
            pos[0] += 2
            return call_ext(fn, [self.decode(pos) for i in range(count)])
        raise IndexFormatError(f"unknown value tag {tag}")

    cdef object entity_value(self, Uid u, uint32_t key):
        """The attribute `key` (a string index) of entity `u`; errors as Cedar does."""
        if not self.is_entity(u):
            raise EvalError(no_entity_message(u))
        cdef Py_ssize_t at = self.find_in_block(self.u32(u.rec + UID_ATTRS), key)
        if at < 0:
            raise EvalError(no_part_message(u, "attribute", self.string_at(key)))
        return self.decode(&at)

    cdef object tag_value(self, Uid u, str key, bint want_value):
        cdef Py_ssize_t kn
        cdef const char* kp = PyUnicode_AsUTF8AndSize(key, &kn)
        if not self.is_entity(u):
            if want_value:
                raise EvalError(no_entity_message(u))
            return False
        cdef Py_ssize_t at = self.find_text_in_block(self.u32(u.rec + UID_TAGS), kp, kn)
        if not want_value:
            return at >= 0
        if at < 0:
            raise EvalError(no_part_message(u, "tag", key))
        return self.decode(&at)

    # -- expressions --
    cdef object ev(self, Py_ssize_t* pos, Request r):
        """Evaluates the expression at pos[0] (moving past it): a dispatcher without Python locals of
        its own (their set-up and clean-up cost every call), each kind of node in its own method."""
        cdef uint8_t op = self.u8(pos[0])
        r.steps -= 1
        if r.steps < 0:
            raise EvalError(BUDGET_MESSAGE)
        pos[0] += 1
        if op == OP_STR:
            pos[0] += 4
            return self.string_at(self.u32(pos[0] - 4))
        if op == OP_LIT:
            return self.decode(pos)
        if op == OP_VAR:
            return self.ev_var(pos, r)
        # Nodes with operands recurse: the compiler nests no deeper than MAX_EXPR_DEPTH, and a generation
        # that does (only written bytes can) is refused before it overflows the C stack.
        r.depth += 1
        if r.depth > MAX_EVAL_DEPTH:
            raise IndexFormatError("an expression is nested deeper than the compiler writes")
        if op == OP_GETATTR or op == OP_HAS:
            v = self.ev_attr(op, pos, r)
        elif op == OP_AND or op == OP_OR:
            v = self.ev_and_or(op, pos, r)
        elif OP_EQ <= op <= OP_GET_TAG:
            v = self.ev_binary(op, pos, r)
        else:
            v = self.ev_other(op, pos, r)
        r.depth -= 1
        return v

    cdef object ev_var(self, Py_ssize_t* pos, Request r):
        cdef uint8_t var = self.u8(pos[0])
        pos[0] += 1
        if var == 0: return r.principal
        if var == 1: return r.action
        if var == 2: return r.resource
        if r.context is None:
            r.context = to_value(self, r.raw_context, 0)
        return r.context

    cdef object ev_attr(self, uint8_t op, Py_ssize_t* pos, Request r):
        """`e.x` and `e has x`."""
        cdef uint8_t var
        cdef uint32_t n
        cdef Py_ssize_t kn, koff
        if self.u8(pos[0]) == OP_VAR and self.u8(pos[0] + 1) == 3:
            # `context.x` / `context has x`: read the one value, don't convert the whole context.
            n = self.u32(pos[0] + 2)
            pos[0] += 6
            key = self.string_at(n)
            if op == OP_HAS:
                return key in r.raw_context
            # r.context: the context as a Cedar record, when built or when the caller's is one (make_request).
            value = (r.raw_context if r.context is None else r.context).get(key, _MISSING)
            if value is _MISSING:
                raise EvalError(no_member_message(key))
            return value if r.context is not None else to_value(self, value, 1)
        var = self.u8(pos[0] + 1) if self.u8(pos[0]) == OP_VAR else 3
        if var < 3:
            # `principal.x`, `action.x`, `resource.x`: the variable is read here, not by a call.
            left = r.principal if var == 0 else (r.action if var == 1 else r.resource)
            pos[0] += 2
        else:
            left = self.ev(pos, r)
        n = self.u32(pos[0])
        pos[0] += 4
        if type(left) is Uid:
            if r.ov is not None and (<Overlay>r.ov).entity(<Uid>left) is not None:
                return overlay_attr((<Overlay>r.ov).entity(<Uid>left), op, self.string_at(n))
            if op == OP_GETATTR:
                return self.entity_value(<Uid>left, n)
            if not self.is_entity(<Uid>left):
                return False
            return self.find_in_block(self.u32((<Uid>left).rec + UID_ATTRS), n) >= 0
        if type(left) is dict:
            key = self.string_at(n)
            if op == OP_HAS:
                return key in <dict>left
            if key not in <dict>left:
                raise EvalError(no_member_message(key))
            return (<dict>left)[key]
        type_error("entity or record", left)

    cdef object ev_and_or(self, uint8_t op, Py_ssize_t* pos, Request r):
        left = self.ev(pos, r)
        if type(left) is not bool:
            type_error("bool", left)
        cdef Py_ssize_t skip = self.u32(pos[0])
        pos[0] += 4
        if (op == OP_AND and not left) or (op == OP_OR and left):
            pos[0] += skip
            return left
        right = self.ev(pos, r)
        if type(right) is not bool:
            type_error("bool", right)
        return right

    cdef object ev_binary(self, uint8_t op, Py_ssize_t* pos, Request r):
        # both operands are always evaluated, left first
        left = self.ev(pos, r)
        right = self.ev(pos, r)
        return self.binary(op, left, right, r)

    cdef object ev_other(self, uint8_t op, Py_ssize_t* pos, Request r):
        """if-then-else, the unary operators, `is`, `like`, set and record literals, extension calls."""
        cdef uint8_t kind, fn
        cdef uint32_t n, i, t
        cdef Py_ssize_t skip
        if op == OP_IF:
            cond = self.ev(pos, r)
            if type(cond) is not bool:
                type_error("bool", cond)
            skip = self.u32(pos[0])
            pos[0] += 4
            if cond:
                res = self.ev(pos, r)
                pos[0] += 4 + self.u32(pos[0])
                return res
            pos[0] += skip
            pos[0] += 4
            return self.ev(pos, r)
        if op == OP_NOT:
            v = self.ev(pos, r)
            if type(v) is not bool:
                type_error("bool", v)
            return not v
        if op == OP_NEG:
            v = self.ev(pos, r)
            if type(v) is not int:
                type_error("long", v)
            return check_long(-v)
        if op == OP_IS_EMPTY:
            v = self.ev(pos, r)
            if type(v) is not CedarSet:
                type_error("set", v)
            return len((<CedarSet>v).items) == 0
        if op == OP_IS:
            v = self.ev(pos, r)
            t = self.u32(pos[0])
            pos[0] += 4
            if type(v) is not Uid:
                type_error("entity", v)
            return (<Uid>v).type == self.type_name(t)
        if op == OP_LIKE:
            v = self.ev(pos, r)
            if type(v) is not str:
                type_error("string", v)
            text = (<str>v).encode("utf-8", "surrogatepass")  # as the map stores the pattern's literals
            return self.like(pos, text, len(text))
        if op == OP_SET:
            n = self.u32(pos[0])
            pos[0] += 4
            return make_set([self.ev(pos, r) for i in range(n)])
        if op == OP_RECORD:
            n = self.u32(pos[0])
            pos[0] += 4
            rec = {}
            for i in range(n):
                pos[0] += 4
                key = self.string_at(self.u32(pos[0] - 4))
                rec[key] = self.ev(pos, r)
            return rec
        if op == OP_CALL:
            fn = self.u8(pos[0])
            n = self.u8(pos[0] + 1)
            pos[0] += 2
            args = [self.ev(pos, r) for i in range(n)]
            return call_ext(fn, args)
        return self.ev_binary(op, pos, r)  # an unknown opcode: binary() refuses it after its operands

    cdef bint like(self, Py_ssize_t* pos, const char* s, Py_ssize_t n) except -1:
        """Matches UTF-8 `s` against the `like` pattern at pos[0] (u32 count, then per segment a u8 kind
        and, for a literal, its string index), moving past it."""
        cdef const char* stack_seg[STACK_SEGS]
        cdef Py_ssize_t stack_n[STACK_SEGS]
        cdef const char** seg = stack_seg
        cdef Py_ssize_t* seg_n = stack_n
        cdef uint32_t count = self.u32(pos[0]), i
        pos[0] += 4
        if count > self.size - pos[0]:  # each segment takes a byte at least
            raise IndexFormatError("a like pattern's segment count is out of range")
        if count > STACK_SEGS:
            seg = <const char**>malloc(count * sizeof(const char*))
            seg_n = <Py_ssize_t*>malloc(count * sizeof(Py_ssize_t))
            if seg == NULL or seg_n == NULL:
                free(seg)
                free(seg_n)
                raise MemoryError()
        try:
            for i in range(count):
                if self.u8(pos[0]):
                    seg[i] = <const char*>self.base + self.str_span(self.string_offset(self.u32(pos[0] + 1)), &seg_n[i])
                    pos[0] += 5
                else:
                    seg_n[i] = -1
                    pos[0] += 1
            return like_bytes(s, n, seg, seg_n, count)
        finally:
            if seg != stack_seg:
                free(seg)
                free(seg_n)

    cdef object binary(self, uint8_t op, object left, object right, Request r):
        cdef type tl = type(left), tr = type(right)
        cdef int64_t x, y
        if op == OP_EQ:
            return cedar_eq(left, right, &r.steps)
        if op == OP_NE:
            return not cedar_eq(left, right, &r.steps)
        if OP_LT <= op <= OP_GE:
            if tl is int and tr is int:
                x = as_long(left)
                y = as_long(right)
                if op == OP_LT: return x < y
                if op == OP_LE: return x <= y
                if op == OP_GT: return x > y
                return x >= y
            if (tl is Ext and tr is Ext and (<Ext>left).kind == (<Ext>right).kind
                  and ((<Ext>left).kind == EXT_DATETIME or (<Ext>left).kind == EXT_DURATION)):
                a, b = (<Ext>left).a, (<Ext>right).a
            else:
                if tl is int or (tl is Ext and ((<Ext>left).kind == EXT_DATETIME or (<Ext>left).kind == EXT_DURATION)):
                    type_error(type_name(left), right)
                type_error("long, datetime or duration", left)
            if op == OP_LT: return a < b
            if op == OP_LE: return a <= b
            if op == OP_GT: return a > b
            return a >= b
        if OP_ADD <= op <= OP_MUL:
            if tl is not int:
                type_error("long", left)
            if tr is not int:
                type_error("long", right)
            return long_arith(op, left, right)
        if op == OP_IN:
            if tl is not Uid:
                type_error("entity", left)
            if tr is Uid:
                return self.uid_in_ov(<Uid>left, <Uid>right, r.ov)
            if tr is CedarSet:
                spend(&r.steps, len((<CedarSet>right).items))
                for item in (<CedarSet>right).items:
                    if type(item) is not Uid:
                        type_error("entity", item)
                for item in (<CedarSet>right).items:
                    if self.uid_in_ov(<Uid>left, <Uid>item, r.ov):
                        return True
                return False
            type_error("entity or set", right)
        if op == OP_CONTAINS:
            if tl is not CedarSet:
                type_error("set", left)
            return set_has(<CedarSet>left, right, &r.steps)
        if op == OP_CONTAINS_ALL or op == OP_CONTAINS_ANY:
            if tl is not CedarSet:
                type_error("set", left)
            if tr is not CedarSet:
                type_error("set", right)
            if op == OP_CONTAINS_ALL:
                return set_subset(<CedarSet>right, <CedarSet>left, &r.steps)
            for item in (<CedarSet>right).items:
                if set_has(<CedarSet>left, item, &r.steps):
                    return True
            return False
        if op == OP_HAS_TAG or op == OP_GET_TAG:
            if tl is not Uid:
                type_error("entity", left)
            if tr is not str:
                type_error("string", right)
            if r.ov is not None and (<Overlay>r.ov).entity(<Uid>left) is not None:
                return overlay_tag((<Overlay>r.ov).entity(<Uid>left), <str>right, op == OP_GET_TAG)
            return self.tag_value(<Uid>left, <str>right, op == OP_GET_TAG)
        raise IndexFormatError(f"unknown opcode {op}")

    cdef bint uid_in(self, Uid a, Uid b) except -1:
        if a.idx >= 0 and b.idx >= 0:
            return self.uid_matches(a, b.idx)
        return a.type == b.type and a.id == b.id

    cdef inline bint uid_in_ov(self, Uid a, Uid b, object ov) except -1:
        """uid_in, over the request's entities when it brings some (`ov`: an Overlay or None)."""
        if ov is None:
            return self.uid_in(a, b)
        return (<Overlay>ov).uid_in(a, b)

    # -- scopes, candidates, decisions --
    cdef inline bint uid_matches(self, Uid u, uint32_t target) except -1:
        return u.idx >= 0 and (<uint32_t>u.idx == target or self.has_ancestor_at(u.rec, target))

    cdef inline bint matches(self, Uid u, uint32_t target, PyObject* ov) except -1:
        """uid_matches, over the request's entities when it brings some (`ov`: borrowed, an Overlay or None)."""
        if ov == <PyObject*>None:
            return self.uid_matches(u, target)
        return (<Overlay><object>ov).matches(u, target)

    cdef bint scope(self, Py_ssize_t* pos, Uid u, PyObject* ov) except -1:
        cdef Py_ssize_t at = pos[0]
        cdef uint32_t a, b, i
        if at < 0 or at + 9 > self.size:
            return out_of_bounds()
        cdef uint8_t op = self.base[at]
        pos[0] = at + 9
        if op == S_ALL:
            return True
        memcpy(&a, self.base + at + 1, 4)
        memcpy(&b, self.base + at + 5, 4)
        if op == S_EQ:
            return u.idx >= 0 and <uint32_t>u.idx == a
        if op == S_IN:
            return self.matches(u, a, ov)
        if op == S_IS:
            return u.type_idx >= 0 and <uint32_t>u.type_idx == b
        if op == S_IS_IN:
            return u.type_idx >= 0 and <uint32_t>u.type_idx == b and self.matches(u, a, ov)
        if op == S_IN_LIST:
            pos[0] += 4 * <Py_ssize_t>a
            for i in range(a):
                if self.matches(u, self.u32(pos[0] - 4 * <Py_ssize_t>a + 4 * <Py_ssize_t>i), ov):
                    return True
            return False
        raise IndexFormatError(f"unknown scope operator {op}")

    cdef inline bint skip_scope(self, Py_ssize_t* pos, bint from_pair) noexcept:
        """Moves past the scope at pos[0] without a call when it needs no test: unconstrained (S_ALL), or
        implied for a candidate from the pair index (see `evaluate`). False: scope() must test it (and
        checks the bounds)."""
        cdef Py_ssize_t at = pos[0]
        if at < self.size and (self.base[at] == S_ALL or (from_pair and implied_by_pair(self.base[at]))):
            pos[0] = at + 9
            return True
        return False

    cdef int add_list(self, Py_ssize_t lst, uint32_t* out, int n, int cap, bint dedupe) except -1:
        """Appends the policies of list `lst` (their body offsets) to out (up to cap; returns the count
        past it). Only the action lists need `dedupe` (a policy of `action in [A, B]` is filed under A and
        B, and a request's action may reach both): each policy is filed under one index pair or in the
        list of all, so that part needs no `seen` table, whose random reads grow with the policy count."""
        if lst == 0:
            return n
        cdef uint32_t count = self.u32(lst), i, body, p
        for i in range(count):
            body = self.u32(lst + 4 + 4 * <Py_ssize_t>i)
            if dedupe:
                p = self.u32(body)
                if p >= self.n_policies:
                    raise IndexFormatError("policy index out of range")
                if self.seen[p] == self.stamp:
                    continue
                self.seen[p] = self.stamp
            if n < cap:
                out[n] = body
            n += 1
        return n

    cdef int keys_of(self, Uid u, uint8_t role, IndexKey* keys, int cap, bint ancestors=True) except -1:
        """The index keys a request uid matches in `role` (principal or resource), each with its
        partner mask in that role and its own bit: ANY first, then its type, itself and its
        ancestors, each only if some index pair uses it in that role. The ancestors' roles and masks
        are in the uid's own ancestor keys: no ancestor record is read. Without `ancestors`: ANY, its type
    and itself only (an overlay adds the ancestors it recomputed)."""
        cdef int n = 1
        cdef Py_ssize_t at, rec, sn, akeys
        cdef uint32_t count, i, a
        # The mask of a key in `role` is at +0 of its masks (principal) or +8 (resource).
        cdef Py_ssize_t which = 0 if role == KEY_IS_PRINCIPAL else 8
        keys[0].key = ANY_KEY
        keys[0].mask = self.any_pmask if role == KEY_IS_PRINCIPAL else self.any_rmask
        keys[0].bit = key_bit_c(ANY_KEY)
        if u.type_idx >= 0:
            rec = self.u32(self.types_off + 4 * <Py_ssize_t>u.type_idx)
            at = self.str_span(rec, &sn) + sn
            if self.u8(at) & role:
                a = TYPE_KEY | <uint32_t>u.type_idx
                keys[n].key = a
                keys[n].mask = self.u64(at + 1 + which)
                keys[n].bit = key_bit_c(a)
                n += 1
        if u.idx >= 0:
            rec = u.rec
            if self.u8(rec + 4) & role:
                keys[n].key = u.idx
                keys[n].mask = self.u64(rec + UID_MASKS + which)
                keys[n].bit = key_bit_c(u.idx)
                n += 1
            akeys = self.u32(rec + UID_AKEYS) if ancestors else 0
            if akeys:
                count = self.u32(akeys)
                at = akeys + 4
                for i in range(count):
                    if self.u8(at + 4) & role:
                        if n < cap:
                            a = self.u32(at)
                            keys[n].key = a
                            keys[n].mask = self.u64(at + 5 + which)
                            keys[n].bit = key_bit_c(a)
                        n += 1
                    at += ANCESTOR_KEY
        return n

    cdef IndexKey* index_keys(self, Uid u, uint8_t role, int* count) except NULL:
        """keys_of `u` in `role`, made once per Uid: a Uid belongs to the generation that resolved it."""
        cdef IndexKey stack[STACK_KEYS]
        cdef IndexKey* keys = u.principal_keys if role == KEY_IS_PRINCIPAL else u.resource_keys
        cdef int n
        if keys == NULL:
            n = self.keys_of(u, role, stack, STACK_KEYS)  # at least ANY
            keys = <IndexKey*>malloc(n * sizeof(IndexKey))
            if keys == NULL:
                raise MemoryError()
            if n <= STACK_KEYS:
                memcpy(keys, stack, n * sizeof(IndexKey))
            else:
                try:
                    self.keys_of(u, role, keys, n)
                except BaseException:
                    free(keys)
                    raise
            if role == KEY_IS_PRINCIPAL:
                u.principal_keys, u.n_principal_keys = keys, n
            else:
                u.resource_keys, u.n_resource_keys = keys, n
        count[0] = u.n_principal_keys if role == KEY_IS_PRINCIPAL else u.n_resource_keys
        return keys

    cdef Py_ssize_t pair_list(self, uint32_t pk, uint32_t rk) except -1:
        """Offset of the policy list filed under (pk, rk), or 0."""
        if self.pair_hash_size == 0:
            return 0
        cdef uint32_t mask = self.pair_hash_size - 1
        cdef uint32_t slot = pair_hash_c(pk, rk) & mask
        cdef Py_ssize_t entry
        cdef uint32_t lst, probe
        for probe in range(self.pair_hash_size):
            entry = self.pair_hash_off + 12 * <Py_ssize_t>slot
            lst = self.u32(entry + 8)
            if lst == 0:
                return 0
            if self.u32(entry) == pk and self.u32(entry + 4) == rk:
                return lst
            slot = (slot + 1) & mask
        raise IndexFormatError("pair hash table has no empty slot")

    cdef int add_pair_lists(self, uint32_t* pk, uint32_t* rk, int count, uint32_t* out, int n, int cap) except -1:
        """add_list for the lists of `count` pairs (their slots prefetched): finds them all, prefetching
        each, then adds them."""
        cdef Py_ssize_t lists[PROBE_BATCH]
        cdef int k
        for k in range(count):
            lists[k] = self.pair_list(pk[k], rk[k])
            if lists[k]:
                prefetch(self.base + lists[k])
        for k in range(count):
            n = self.add_list(lists[k], out, n, cap, False)
        return n

    cdef int collect(self, Request r, uint32_t* out, int cap, int* n_pairs) except -1:
        """The candidate policies of a request (their body offsets, each once); returns how many there are,
        even past `cap`. The first `n_pairs[0]` came from the pair index: their principal and resource
        scopes of `in` and `is` hold already (see `evaluate`)."""
        cdef IndexKey* pkeys
        cdef IndexKey* rkeys
        cdef uint64_t pmask, pbit
        cdef int np, nr, n, i, j
        cdef Py_ssize_t anc
        cdef uint32_t count, k
        self.stamp += 1
        if self.stamp == 0:
            for i in range(self.n_policies + 1):
                self.seen[i] = 0
            self.stamp = 1
        if r.ov is None:
            pkeys = self.index_keys(r.principal, KEY_IS_PRINCIPAL, &np)
            rkeys = self.index_keys(r.resource, KEY_IS_RESOURCE, &nr)
        else:
            pkeys = (<Overlay>r.ov).keys(r.principal, KEY_IS_PRINCIPAL, &np)
            rkeys = (<Overlay>r.ov).keys(r.resource, KEY_IS_RESOURCE, &nr)
        n = 0
        # Pairs with a specific principal or resource key (ANY is keys[0], so skip (0, 0)); a pair
        # is probed only if both keys' partner masks admit it (most pairs are not in the index).
        # The admitted pairs are probed PROBE_BATCH at a time, in three passes (prefetch their slots,
        # read them and prefetch their lists, add the lists), so that their cache misses overlap.
        cdef uint32_t probe_pk[PROBE_BATCH]
        cdef uint32_t probe_rk[PROBE_BATCH]
        cdef int n_probes = 0
        for i in range(np):
            pmask = pkeys[i].mask
            pbit = pkeys[i].bit
            for j in range(1 if i == 0 else 0, nr):
                if (pmask & rkeys[j].bit) and (rkeys[j].mask & pbit):
                    if n_probes == PROBE_BATCH:
                        n = self.add_pair_lists(probe_pk, probe_rk, n_probes, out, n, cap)
                        n_probes = 0
                    probe_pk[n_probes] = pkeys[i].key
                    probe_rk[n_probes] = rkeys[j].key
                    n_probes += 1
                    if self.pair_hash_size:
                        prefetch(self.base + self.pair_hash_off
                                 + 12 * <Py_ssize_t>(pair_hash_c(pkeys[i].key, rkeys[j].key) & (self.pair_hash_size - 1)))
        n = self.add_pair_lists(probe_pk, probe_rk, n_probes, out, n, cap)
        n_pairs[0] = n
        n = self.add_list(self.all_list_off, out, n, cap, False)
        # Policies constrained by their action only.
        if r.ov is not None and (<Overlay>r.ov).affected(r.action):
            n = (<Overlay>r.ov).add_action_lists(r.action, out, n, cap)
        elif r.action.idx >= 0:
            n = self.add_list(self.u32(r.action.rec + UID_ALIST), out, n, cap, True)
            anc = self.u32(r.action.rec + UID_ANC)
            if anc:
                count = self.u32(anc)
                for k in range(count):
                    n = self.add_list(self.u32(self.uid_record(self.u32(anc + 4 + 4 * <Py_ssize_t>k)) + UID_ALIST), out, n, cap, True)
        return n

    cdef inline Py_ssize_t string_offset(self, uint32_t idx) except -1:
        return self.table_entry(self.strings_off, idx, self.n_strings, b"string index out of range")

    cdef str string_at(self, uint32_t idx):
        cached = self.strings[idx] if idx < self.n_strings else None
        if cached is None:
            cached = self.strings[idx] = self.read_str_at(self.string_offset(idx))
        return cached

    cdef str policy_id(self, uint32_t p):
        cached = self.policy_ids[p]
        if cached is None:
            cached = self.policy_ids[p] = self.read_str_at(self.u32(self.policy_ids_off + 4 * <Py_ssize_t>p))
        return cached

    cdef inline void prefetch_parts(self, Uid u) noexcept:
        """Prefetches the attrs and tags blocks of an entity of the request (the record is in cache)."""
        cdef uint32_t attrs, tags
        if u.idx < 0 or u.rec + UID_FIXED > self.size:
            return
        memcpy(&attrs, self.base + u.rec + UID_ATTRS, 4)
        memcpy(&tags, self.base + u.rec + UID_TAGS, 4)
        if attrs and attrs < self.size:
            prefetch(self.base + attrs)
        if tags and tags < self.size:
            prefetch(self.base + tags)

    cdef Decision decide(self, Request r):
        cdef uint32_t stack_buf[2 * STACK_CANDIDATES]
        cdef uint32_t* cands = stack_buf
        cdef int n_pairs
        cdef int n = self.collect(r, cands, STACK_CANDIDATES, &n_pairs)
        if n > STACK_CANDIDATES:
            cands = <uint32_t*>malloc(2 * n * sizeof(uint32_t))
            if cands == NULL:
                raise MemoryError()
            self.collect(r, cands, n, &n_pairs)
        # Let the candidates' bodies and the request entities' attributes come in together.
        cdef int i
        for i in range(min(n, PREFETCH_CANDIDATES)):
            prefetch(self.base + cands[i])
        self.prefetch_parts(r.principal)
        self.prefetch_parts(r.resource)
        try:
            return self.evaluate(r, cands, cands + n, n, n_pairs)
        finally:
            if cands != stack_buf:
                free(cands)

    cdef Decision evaluate(self, Request r, uint32_t* cands, uint32_t* satisfied, int n, int n_pairs):
        """Cedar's authorizer: forbids win, then permits, default deny; errored policies are skipped.

        The first `n_pairs` candidates were found under one of the request's (principal, resource) key
        pairs, and each policy is filed under its own scopes' keys alone (`file_policies`): for them a
        principal or resource scope `in E` (key E: the uid is E or has E as an ancestor) or `is T`
        (key: the uid's type) holds already, and is skipped. `== E` is still tested (E's key is also
        reached from E's descendants), and so is the type of `is T in E`."""
        cdef list errors = None
        cdef Py_ssize_t pos
        cdef uint32_t p, cond_len
        cdef uint8_t effect
        cdef int i, outcome, n_sat = 0, n_forbid = 0
        cdef Py_ssize_t start
        cdef CVal cv
        for i in range(n):
            pos = cands[i]
            p = self.u32(pos)
            if p >= self.n_policies:
                raise IndexFormatError("policy index out of range")
            effect = self.u8(pos + 4)
            pos += 5
            # (r.ov is passed borrowed: no reference counting per candidate.)
            if not (self.skip_scope(&pos, i < n_pairs) or self.scope(&pos, r.principal, <PyObject*>r.ov)):
                continue
            if not (self.skip_scope(&pos, False) or self.scope(&pos, r.action, <PyObject*>r.ov)):
                continue
            if not (self.skip_scope(&pos, i < n_pairs) or self.scope(&pos, r.resource, <PyObject*>r.ov)):
                continue
            cond_len = self.u32(pos)
            pos += 4
            if cond_len:
                start = pos
                # The scalar path reads entities in the map only: with request entities, the general one.
                outcome = cv_eval(self, &pos, r, &cv, 0) if r.ov is None else 0
                if outcome == 1 and cv.kind == CV_BOOL:
                    if not cv.i:
                        continue
                    satisfied[n_sat] = p | (<uint32_t>(effect == 1) << 31)
                    n_sat += 1
                    n_forbid += effect
                    continue
                if outcome == 2:
                    if errors is None:
                        errors = []
                    errors.append((p, cv_error_message(self, r, &cv)))
                    continue
                pos = start
                r.steps = eval_budget
                r.depth = 0
                try:
                    v = self.ev(&pos, r)
                    if type(v) is not bool:
                        type_error("bool", v)
                except EvalError as err:
                    if errors is None:
                        errors = []
                    errors.append((p, str(err)))
                    continue
                except RecursionError:
                    if errors is None:
                        errors = []
                    errors.append((p, "evaluation nested too deeply"))
                    continue
                if not v:
                    continue
            satisfied[n_sat] = p | (<uint32_t>(effect == 1) << 31)
            n_sat += 1
            n_forbid += effect
        cdef Decision d = Decision.__new__(Decision)
        d.allowed = n_forbid == 0 and n_sat > 0
        d.permitted = n_sat > n_forbid
        # The reasons: the satisfied forbids if any, else the satisfied permits, in policy order, each once
        # (a well-formed index yields each candidate once; a policy filed twice is still reported once).
        cdef int n_reasons = 0, j, k
        for i in range(n_sat):
            # A satisfied entry: the policy index, with bit 31 set for a forbid.
            p = satisfied[i] & 0x7FFFFFFF
            if (n_forbid > 0) == (satisfied[i] >> 31 == 1):
                j = n_reasons
                while j > 0 and satisfied[j - 1] > p:
                    j -= 1
                if j > 0 and satisfied[j - 1] == p:
                    continue
                k = n_reasons
                while k > j:
                    satisfied[k] = satisfied[k - 1]
                    k -= 1
                satisfied[j] = p
                n_reasons += 1
        d.policies = [self.policy_id(satisfied[i]) for i in range(n_reasons)]
        # Lists of strings (and of records of strings) cannot be part of a cycle: keep them out of the GC.
        PyObject_GC_UnTrack(d.policies)
        if errors is not None:
            errors.sort()
            d._errors = [{"policy": self.policy_id(errors[i][0]), "message": errors[i][1]}
                         for i in range(len(errors)) if i == 0 or errors[i][0] != errors[i - 1][0]]
            PyObject_GC_UnTrack(d._errors)
        return d


include "_scalar.pxi"


# ---- requests ----

from authz.errors import RequestError

_ESCAPE_RE = _re.compile(r"\\(u\{([0-9a-fA-F]{1,6})\}|.)", _re.S)
_SIMPLE_ESCAPES = {"n": "\n", "r": "\r", "t": "\t", "\\": "\\", "0": "\0", "'": "'", '"': '"'}
_NEEDS_ESCAPE = _re.compile(r"[\\\"'\x00-\x1f\x7f]")
_NORMAL_ESCAPES = {"\t": "\\t", "\r": "\\r", "\n": "\\n", "\\": "\\\\", '"': '\\"', "'": "\\'", "\0": "\\0"}


def _normal_form(text):
    """A uid id as Cedar prints it (escape_debug): cedarpy accepts a string uid only in this form.
    Non-ASCII characters are taken to be printable (kept as they are)."""
    return _NEEDS_ESCAPE.sub(lambda m: _NORMAL_ESCAPES.get(m.group(), "\\u{%x}" % ord(m.group())), text)


def _unescape_one(m):
    if m.group(2) is not None:
        code = int(m.group(2), 16)
        if code > 0x10FFFF or 0xD800 <= code <= 0xDFFF:
            raise RequestError(f"invalid unicode escape `{m.group(0)}`")
        return chr(code)
    c = m.group(1)
    if c not in _SIMPLE_ESCAPES:
        raise RequestError(f"invalid escape `\\{c}`")
    return _SIMPLE_ESCAPES[c]


cdef inline bint is_ident_start(unsigned char c) noexcept:
    return c == 95 or (97 <= c <= 122) or (65 <= c <= 90)  # _ a-z A-Z


cdef inline bint is_ident_char(unsigned char c) noexcept:
    return is_ident_start(c) or (48 <= c <= 57)  # and 0-9


cdef bint reserved_segment(const char* p, Py_ssize_t n) noexcept:
    """The segment is an identifier Cedar reserves (not allowed as a segment of an entity type name)."""
    if n == 2:
        return memcmp(p, b"if", 2) == 0 or memcmp(p, b"in", 2) == 0 or memcmp(p, b"is", 2) == 0
    if n == 3:
        return memcmp(p, b"has", 3) == 0
    if n == 4:
        return (memcmp(p, b"true", 4) == 0 or memcmp(p, b"then", 4) == 0 or memcmp(p, b"else", 4) == 0
                or memcmp(p, b"like", 4) == 0)
    if n == 5:
        return memcmp(p, b"false", 5) == 0
    return n == 7 and memcmp(p, b"__cedar", 7) == 0


cdef bint valid_type_utf8(const char* p, Py_ssize_t n) noexcept:
    """An entity type name's UTF-8 is `::`-separated identifiers ([_a-zA-Z][_a-zA-Z0-9]*), none of
    them reserved."""
    cdef Py_ssize_t i = 0, start
    while True:
        start = i
        if i >= n or not is_ident_start(p[i]):
            return False
        i += 1
        while i < n and is_ident_char(p[i]):
            i += 1
        if reserved_segment(p + start, i - start):
            return False
        if i == n:
            return True
        if i + 1 < n and p[i] == 58 and p[i + 1] == 58:  # `::`
            i += 2
        else:
            return False


cdef bint valid_type_name(str name):
    """valid_type_utf8 over a str (False for one with no UTF-8 form)."""
    cdef Py_ssize_t n
    cdef const char* p = utf8_or_null(name, &n)
    if p == NULL:
        PyErr_Clear()
        return False
    return valid_type_utf8(p, n)


cdef Uid uid_from_plain_text(Generation g, str s, const char* p, Py_ssize_t n):
    """parse_uid_text + g.resolve for the common `Type::"id"` whose id has nothing to unescape, over
    its UTF-8 `p` (no regex, no substrings for a known entity); None for any other text, which
    parse_uid_text then reads (and reports, if it is malformed)."""
    cdef Py_ssize_t q = 0, k
    cdef unsigned char c
    while q < n and p[q] != 34:  # the first `"`
        q += 1
    if q < 3 or q + 2 > n or p[q - 1] != 58 or p[q - 2] != 58 or p[n - 1] != 34:
        return None
    if not valid_type_utf8(p, q - 2):
        return None
    for k in range(q + 1, n - 1):
        c = p[k]
        if c < 32 or c == 127 or c == 34 or c == 39 or c == 92:  # _NEEDS_ESCAPE: controls, " ' \\
            return None
    cdef int idx = g.find_uid(p, q - 2, p + q + 1, n - q - 2)
    if idx >= 0:
        return g.uid_at(idx)
    # INVARIANT: the type part is ASCII, so byte offsets up to the first quote are character offsets.
    return g.unknown_uid(s[:q - 2], s[q + 1:len(s) - 1])


cdef tuple parse_uid_text(str s, str field):
    """`Type::"id"` (namespaces allowed, Cedar string escapes in the id) -> (type, id)."""
    cdef Py_ssize_t q = s.find('"')
    if q < 3 or s[q - 2:q] != "::" or len(s) < q + 2 or s[len(s) - 1] != '"':
        raise RequestError(f"`{field}`: expected an entity uid like `Type::\"id\"`, got `{s[:100]}`")
    type_part = s[:q - 2]
    if not valid_type_name(type_part):
        raise RequestError(f"`{field}`: invalid entity type `{type_part[:100]}`")
    lit = s[q + 1:len(s) - 1]
    if _NEEDS_ESCAPE.search(lit) is None:
        return type_part, lit
    if '"' in _ESCAPE_RE.sub("", lit):
        raise RequestError(f"`{field}`: unescaped quote in entity id")
    value = _ESCAPE_RE.sub(_unescape_one, lit)
    if _normal_form(value) != lit:
        raise RequestError(f"`{field}`: entity uid must be written in normalized form (`{type_part}::\"{_normal_form(value)[:100]}\"`)")
    return type_part, value


cdef Uid resolve_cached(Generation g, str t, str i, str field):
    """g.resolve(t, i) through the per-generation cache of {type, id} uids (type -> id -> Uid);
    a type name is validated once, when its first uid is cached."""
    cdef dict by_id = g.uid_by_type.get(t)
    if by_id is None:
        if not valid_type_name(t):
            raise RequestError(f"`{field}`: invalid entity type `{t[:100]}`")
        if len(g.uid_by_type) >= UID_CACHE_TYPES:
            g.uid_by_type.clear()
            g.uid_by_type_n = 0
        by_id = g.uid_by_type[t] = {}
    cached = by_id.get(i)
    if cached is not None:
        return <Uid>cached
    cdef Uid u = g.resolve(t, i)
    if g.uid_by_type_n >= UID_CACHE_SIZE:
        for d in g.uid_by_type.values():
            (<dict>d).clear()
        g.uid_by_type_n = 0
    by_id[i] = u
    g.uid_by_type_n += 1
    return u


cdef inline void prefetch_uid(Generation g, Uid u) noexcept:
    """Starts loading what deciding reads first of a request's uid: its index keys and its record."""
    if u.principal_keys != NULL:
        prefetch(u.principal_keys)
    if u.resource_keys != NULL:
        prefetch(u.resource_keys)
    if u.idx >= 0 and u.rec < g.size:
        prefetch(g.base + u.rec)


cdef Uid to_uid(Generation g, object v, str field):
    cdef Py_ssize_t n
    cdef const char* p
    cdef UidSlot* slot = NULL
    cdef uint64_t h
    if type(v) is str:
        # The text cache first (no Python hash or dict), then the dict of all texts seen.
        p = utf8_or_null(v, &n)
        if p == NULL:
            PyErr_Clear()  # no UTF-8 form (a lone surrogate): parse_uid_text says what is wrong
        elif n <= UID_SLOT_TEXT:
            h = bytes_hash(p, n, 0)
            slot = &g.uid_slots[h & (UID_SLOTS - 1)]
            if slot.uid != NULL and slot.hash == h and slot.n == n and memcmp(slot.text, p, n) == 0:
                prefetch_uid(g, <Uid>slot.uid)
                return <Uid>slot.uid
        cached = g.uid_cache.get(v)
        if cached is not None:
            u = <Uid>cached
        else:
            u = uid_from_plain_text(g, <str>v, p, n) if p != NULL else None
            if u is None:
                t, i = parse_uid_text(<str>v, field)
                u = g.resolve(t, i)
            if len(g.uid_cache) >= UID_CACHE_SIZE:
                g.uid_cache.clear()
            g.uid_cache[v] = u
        if slot != NULL:
            Py_XDECREF(slot.uid)
            slot.uid = <PyObject*>u
            Py_XINCREF(slot.uid)
            slot.hash = h
            slot.n = <uint32_t>n
            memcpy(slot.text, p, n)
        return u
    if isinstance(v, dict):
        if len(<dict>v) == 1 and "__entity" in <dict>v:
            v = (<dict>v)["__entity"]
        if isinstance(v, dict):
            t = (<dict>v).get("type")
            i = (<dict>v).get("id")
            if type(t) is str and type(i) is str:
                return resolve_cached(g, <str>t, <str>i, field)
    if isinstance(v, Uid):
        return g.resolve((<Uid>v).type, (<Uid>v).id)
    raise RequestError(f"`{field}`: expected an entity uid (`Type::\"id\"` or {{\"type\": …, \"id\": …}}), not {_kind(v)}")


cdef object to_value(Generation g, object v, int depth):
    """A JSON-shaped context value -> a Cedar value (`__entity` and `__extn` escapes as cedarpy reads them)."""
    return convert_value(g, v, depth, True)


cdef inline bint fits_long(object v) noexcept:
    """An int is within a Cedar Long (int64)."""
    cdef int overflow = 0
    int_and_overflow(v, &overflow)
    return overflow == 0


cdef extern from "Python.h":
    void* type_of "Py_TYPE"(PyObject* o) noexcept
    bint unicode_is_compact_ascii "PyUnicode_IS_COMPACT_ASCII"(object s) noexcept
    Py_ssize_t unicode_length "PyUnicode_GET_LENGTH"(object s) noexcept
    void* unicode_data "PyUnicode_DATA"(object s) noexcept
    bint dict_next "PyDict_Next"(object d, Py_ssize_t* pos, PyObject** key, PyObject** value) noexcept
    Py_ssize_t list_size "PyList_GET_SIZE"(object l) noexcept
    PyObject* list_item "PyList_GET_ITEM"(object l, Py_ssize_t i) noexcept


cdef inline int scalar_check(PyObject* v) except -1:
    """is_scalar over a borrowed reference (validate_value walks the caller's context without taking any)."""
    cdef void* t = type_of(v)
    if t == <void*>str or t == <void*>bool:
        return 1
    if t == <void*>int:
        return is_scalar(<object>v)
    return 0


cdef inline bint is_escape(dict v) noexcept:
    """A record of one member may be an `__entity` or `__extn` escape (convert_value reads those)."""
    cdef PyObject* key
    cdef PyObject* item
    cdef Py_ssize_t i = 0
    if not dict_next(v, &i, &key, &item) or type_of(key) != <void*>str:
        return True  # not a record convert_value would pass: it says what is wrong
    return <object>key == "__entity" or <object>key == "__extn"


cdef int validate_value(Generation g, object v, int depth) except -1:
    """Raises RequestError where `to_value` would, building nothing (cedarpy checks the whole context);
    returns whether `v` is already its own Cedar value (1: records of strings, bools, Longs and such
    records: no sets, no escapes), which the evaluator may then read as it is, or not (0)."""
    cdef void* t = type_of(<PyObject*>v)
    cdef PyObject* key
    cdef PyObject* item
    cdef Py_ssize_t i = 0
    cdef int plain = 1
    if scalar_check(<PyObject*>v):
        return 1
    if t == <void*>list and depth <= MAX_CONTEXT_DEPTH:
        # A set (never its own Cedar value): its strings, bools and Longs are checked here, the rest by
        # convert_value, which raises where to_value would.
        for i in range(list_size(v)):
            item = list_item(v, i)
            if not scalar_check(item):
                convert_value(g, <object>item, depth + 1, False)
        return 0
    if t != <void*>dict or depth > MAX_CONTEXT_DEPTH or (len(<dict>v) == 1 and is_escape(<dict>v)):
        # tuples, escapes and errors
        return convert_value(g, v, depth, False) is True
    while dict_next(v, &i, &key, &item):
        if type_of(key) != <void*>str:
            raise RequestError("context: record keys must be strings")
        if not scalar_check(item):
            plain &= validate_value(g, <object>item, depth + 1)
    return plain


cdef inline bint is_scalar(object v) except -1:
    """`v` is a str, a bool or an int, and if an int, a Long (RequestError if it is out of range)."""
    cdef type t = type(v)
    if t is str or t is bool:
        return True
    if t is int:
        if not fits_long(v):
            raise RequestError("context: integer does not fit in a 64-bit Long")
        return True
    return False


_EXTENSION_FUNCTIONS = LAYOUT["FN_IDS"]


cdef object convert_value(Generation g, object v, int depth, bint build):
    """to_value (build) or validate_value (not build: True for a value that is its own Cedar value)."""
    if is_scalar(v):
        return v if build else True
    cdef type t = type(v)
    if depth > MAX_CONTEXT_DEPTH:
        raise RequestError("context: nested too deeply")
    if t is list or t is tuple:
        if build:
            return make_set([convert_value(g, item, depth + 1, True) for item in v])
        for item in v:
            convert_value(g, item, depth + 1, False)
        return False
    if t is not dict:
        raise RequestError(f"context: {_kind(v)} is not a Cedar value")
    if len(<dict>v) == 1:
        inner = (<dict>v).get("__entity")
        if isinstance(inner, dict) and type(inner.get("type")) is str and type(inner.get("id")) is str:
            u = to_uid(g, inner, "context")
            return u if build else False
        extn = (<dict>v).get("__extn")
        if isinstance(extn, dict) and "fn" in extn and ("arg" in extn or "args" in extn):
            # An extension call: `arg` for one argument, `args` for several (values, possibly calls).
            fn = _EXTENSION_FUNCTIONS.get(extn["fn"])
            args = [extn["arg"]] if "arg" in extn else extn["args"]
            if fn is None or type(args) is not list:
                raise RequestError("context: unsupported `__extn` value")
            try:
                value = call_ext(fn, [convert_value(g, a, depth + 1, True) for a in args])
            except EvalError as err:
                raise RequestError(f"context: {err}") from None
            return value if build else False
    cdef bint plain = True
    cdef dict out = None
    for key, item in (<dict>v).items():
        if type(key) is not str:
            raise RequestError("context: record keys must be strings")
        converted = convert_value(g, item, depth + 1, build)
        if not build:
            if converted is not True:
                plain = False
        elif out is not None:
            out[key] = converted
        elif converted is not item:
            # The first member that changes: the record is copied from here on (the ones before are as they are).
            out = {}
            for earlier, same in (<dict>v).items():
                if earlier is key:
                    break
                out[earlier] = same
            out[key] = converted
    if build:
        return v if out is None else out  # a record with nothing to convert is its own Cedar value
    return plain


cdef bint validate_context(Generation g, object context) except -1:
    """Checks a request's context (None or a record); returns whether it is its own Cedar value."""
    if context is None:
        return True
    if type(context) is not dict:
        raise RequestError("`context`: expected a record (JSON object)")
    return validate_value(g, context, 0)


cdef Request new_request(Uid principal, Uid action, Uid resource, object context, bint plain, Request r=None):
    """A request of resolved uids and a context checked by validate_context (`plain`: its result),
    written into `r` when given (check_batch reuses one Request for its items)."""
    if r is None:
        r = Request.__new__(Request)
    r.ov = None
    r.principal = principal
    r.action = action
    r.resource = resource
    if context is None:
        r.raw_context = r.context = {}
    elif plain:
        # INVARIANT: the evaluator never changes a record, so it may read the caller's as it is.
        r.raw_context = r.context = <dict>context
    else:
        r.raw_context = <dict>context
        r.context = None
    return r


@cython.final
cdef class BatchReader:
    """Reads the items of a batch into Requests. Items often share objects (authz.v1 BatchCheck's principal,
    action and context): what was made of an item's object is reused for the same object in the next."""
    cdef Generation g
    cdef object last_p, last_a, last_r, last_c, last_e
    cdef Uid p, a, r
    cdef bint plain
    cdef object ov   # the Overlay of last_e, an item's `entities` (_overlay.pxi)

    def __cinit__(self, Generation g):
        self.g = g
        self.last_p = self.last_a = self.last_r = self.last_c = self.last_e = _MISSING

    cdef Request read(self, Py_ssize_t n, object req, Request into):
        if type(req) is not dict:
            raise RequestError(f"request {n}: expected an object")
        # One pass over the item's members instead of four lookups: its keys (from json.loads, say) are
        # not the objects of these literals, and four dict lookups by value cost more than the pass.
        cdef PyObject* key
        cdef PyObject* value
        cdef Py_ssize_t i = 0, kn
        cdef const char* kp
        cdef bint other_keys = False
        principal = action = resource = context = entities = None
        while dict_next(req, &i, &key, &value):
            if type_of(key) != <void*>str:
                other_keys = True  # a str subclass may equal one of ours: the lookups below decide
                continue
            if not unicode_is_compact_ascii(<object>key):
                continue  # not ASCII: none of ours
            kn = unicode_length(<object>key)
            kp = <const char*>unicode_data(<object>key)
            if kn == 9 and memcmp(kp, b"principal", 9) == 0:
                principal = <object>value
            elif kn == 6 and memcmp(kp, b"action", 6) == 0:
                action = <object>value
            elif kn == 8 and memcmp(kp, b"resource", 8) == 0:
                resource = <object>value
            elif kn == 7 and memcmp(kp, b"context", 7) == 0:
                context = <object>value
            elif kn == 8 and memcmp(kp, b"entities", 8) == 0:  # only keys none of the above: no cost to them
                entities = <object>value
        if other_keys:
            principal, action, resource = (<dict>req).get("principal"), (<dict>req).get("action"), (<dict>req).get("resource")
            context, entities = (<dict>req).get("context"), (<dict>req).get("entities")
        try:
            if principal is not self.last_p:
                self.p, self.last_p = to_uid(self.g, principal, "principal"), principal
            if action is not self.last_a:
                self.a, self.last_a = to_uid(self.g, action, "action"), action
            if resource is not self.last_r:
                self.r, self.last_r = to_uid(self.g, resource, "resource"), resource
            if context is not self.last_c:
                self.plain, self.last_c = validate_context(self.g, context), context
            if entities is not None and entities is not self.last_e:
                self.ov, self.last_e = overlay_for(self.g, entities), entities
        except RequestError as err:
            raise RequestError(f"request {n}: {err}") from None
        into = new_request(self.p, self.a, self.r, context, self.plain, into)
        if entities is not None:
            into.ov = self.ov
        return into


include "_overlay.pxi"


cdef class EngineCore:
    """Decides requests against the current generation; the Python subclass (authz.Engine) keeps it current."""
    cdef Generation _gen
    cdef int64_t _next_poll_ns
    cdef int64_t _poll_ns

    def _install(self, Generation gen, double poll_interval_s):
        """Makes `gen` current and schedules the next check for a newer generation."""
        self._gen = gen
        self._poll_ns = <int64_t>(poll_interval_s * 1e9)
        self._next_poll_ns = monotonic_ns() + self._poll_ns

    def _reschedule(self):
        """Defers the next check for a newer generation by one poll interval."""
        self._next_poll_ns = monotonic_ns() + self._poll_ns

    def _poll(self):
        raise NotImplementedError

    @property
    def generation(self):
        """The number of the generation decisions are made against."""
        return self._gen.number if self._gen is not None else None

    cdef inline Generation current(self):
        cdef int64_t now = monotonic_ns()
        if now >= self._next_poll_ns:
            self._next_poll_ns = now + self._poll_ns
            self._poll()
        if self._gen is None:
            raise RequestError("no policy generation is loaded")
        return self._gen

    cdef Request make_request(self, Generation g, object principal, object action, object resource, object context):
        cdef Uid p = to_uid(g, principal, "principal")
        cdef Uid a = to_uid(g, action, "action")
        cdef Uid r = to_uid(g, resource, "resource")
        return new_request(p, a, r, context, validate_context(g, context))

    def string_set_attribute(self, entity, str name):
        """The strings of attribute `name` of `entity` (a uid text or {type, id}) when it is a set, in
        order, each once; [] when the entity or the attribute is absent or the value is not a set (a
        call's data labels are its resource's `labels`)."""
        cdef Generation g = self.current()
        cdef Uid u = to_uid(g, entity, "entity")
        cdef Py_ssize_t kn
        cdef const char* kp = PyUnicode_AsUTF8AndSize(name, &kn)
        if not g.is_entity(u):
            return []
        cdef Py_ssize_t at = g.find_text_in_block(g.u32(u.rec + UID_ATTRS), kp, kn)
        if at < 0:
            return []
        v = g.decode(&at)
        if type(v) is not CedarSet:
            return []
        out = []
        for item in (<CedarSet>v).items:
            if type(item) is str and item not in out:
                out.append(item)
        return out

    def check(self, principal, action, resource, context=None, entities=None):
        """Decides one request; raises RequestError if it is malformed. `entities`: see authz.Engine."""
        cdef Generation g = self.current()
        cdef Request r = self.make_request(g, principal, action, resource, context)
        if entities is not None:
            r.ov = overlay_for(g, entities)
        return g.decide(r)

    def entity(self, uid):
        """The stored entity `uid` (a uid text or {type, id}) in Cedar's JSON entity format ({uid, attrs,
        parents, tags}), or None when the current generation has no such entity: what a caller that
        overlays some attributes starts from (see authz.Engine)."""
        cdef Generation g = self.current()
        return stored_entity(g, to_uid(g, uid, "entity"))

    def request_entities(self, entities):
        """`entities` (Cedar JSON entities) checked and resolved once, for check / check_batch to take as
        their `entities` (see authz.Engine); RequestError naming what is wrong."""
        cdef Generation g = self.current()
        return make_overlay(g, entities)

    def check_batch(self, requests, entities=None):
        """Decides each request (a dict with principal, action, resource and optional context and
        entities), in order. `entities`: see authz.Engine; they apply to every request of the batch
        that brings none of its own (a request's own `entities` replace them whole)."""
        cdef Generation g = self.current()
        cdef Overlay ov = overlay_for(g, entities) if entities is not None else None
        cdef list items = requests if type(requests) is list else list(requests)
        cdef Py_ssize_t count = len(items), n
        cdef list out = []
        if count == 0:
            return out
        cdef BatchReader reader = BatchReader.__new__(BatchReader, g)
        # Two Requests, this item's and the next's: nothing keeps one past decide(), and they are this call's.
        cdef Request current = reader.read(0, items[0], Request.__new__(Request))
        cdef Request following = Request.__new__(Request)
        for n in range(count):
            if n + 1 < count:
                # The next item is read before this one is decided, so that what its uid lookups prefetch
                # (index keys, records) arrives while this one is decided.
                following = reader.read(n + 1, items[n + 1], following)
            if ov is not None and current.ov is None:
                current.ov = ov
            out.append(g.decide(current))
            current, following = following, current
        return out
