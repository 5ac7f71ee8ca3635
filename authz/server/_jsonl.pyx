# cython: language_level=3
"""Decision events as JSON lines, written into one C buffer (the decision log's per-decision cost).

`format_events` writes the common event, whose uids are {type, id} dicts of strings (or None),
whose policies are strings and which has no task token, straight as UTF-8 JSON; `format_decisions`
and `format_checks` also write the `token` part of a request made with a task token (its context's
`token` and `delegation`, as the server sets them). Any other event is handed to the `fallback`
formatter (Python, authz.server.decisionlog), so the output is the same JSON either way.
"""
from libc.stdint cimport uint8_t
from libc.string cimport memcpy, memset, strlen
from authz.server._buf cimport Buf, buf_free, buf_init, hex_seq, put, reserve
from authz.engine._evaluator cimport Decision
from cpython.bytes cimport PyBytes_FromStringAndSize
from cpython.unicode cimport PyUnicode_AsUTF8AndSize, PyUnicode_DecodeUTF8
from cpython.long cimport PyLong_AsLongLongAndOverflow
from libc.math cimport floor, isfinite
from libc.stdio cimport snprintf
from libc.time cimport time_t, tm, strftime

cdef extern from "<time.h>" nogil:
    tm* gmtime_r(const time_t* timep, tm* result)

import json as _json
from authz.server import requestlog as _requestlog
from authz.server.requestlog import EMPTY as EMPTY_CONTEXT

cdef Py_ssize_t _CONTEXT_MAX_CHARS = _requestlog.MAX_CONTEXT_CHARS
cdef str _CONTEXT_TRUNCATED = _requestlog.TRUNCATED
cdef object _context_redacted = _requestlog._redacted
cdef object _context_part_py = _requestlog.context_part
cdef Py_ssize_t _ENTITIES_MAX_CHARS = _requestlog.MAX_ENTITIES_CHARS
cdef object _entities_part_py = _requestlog.entities_part
cdef object _last_entities = None  # as _last_context, for a request's own entities (a batch's items share them)
cdef str _last_entities_part = ""
# The last context written and its part: the items of a batch often share one context object.
# INVARIANT (as requestlog's): a context is not changed once decided, so the same object means the same text.
cdef object _last_context = None
cdef str _last_part = EMPTY_CONTEXT


cdef str context_part(object ctx):
    """requestlog.context_part(ctx), its JSON written by encode_json (the Python encoder for what it leaves)."""
    global _last_context, _last_part
    if not ctx:
        return EMPTY_CONTEXT
    if ctx is _last_context:
        return _last_part
    if type(ctx) is not dict:
        return _context_part_py(ctx)
    if "token" in <dict>ctx or "task" in <dict>ctx:
        # made with a task token (and decided with task state): its members' text is shared with the previous
        # one's (a token's `token` and `delegation` are one object per token, a task's views share lists)
        text = encode_task_context(_context_redacted(ctx), 4 * _CONTEXT_MAX_CHARS)
    else:
        text = encode_json(_context_redacted(ctx), 4 * _CONTEXT_MAX_CHARS)  # more bytes than 4x: more chars too
    if text is None:
        return _context_part_py(ctx)
    part = _CONTEXT_TRUNCATED if not text or len(<str>text) > _CONTEXT_MAX_CHARS else ',"context":' + <str>text
    _last_context, _last_part = ctx, part
    return part


# The members of the last context made with a task token that encode_task_context wrote: their values (held,
# so that no other object takes their identity) and where their text is in _members_text. The contexts of
# the calls made with one token share its `token` and `delegation` objects (authz.tokens.verify: one per
# verified token), and a BatchCheck's items with task state their own `task` and `agent` beside them
# (authz/state/_step.pyx); INVARIANT (as above): a decided context, and so each of its members, is not
# changed, so the same object means the same text.
cdef enum:
    MEMBERS_KEPT = 16
cdef list _member_values = []
cdef Buf _members_text
buf_init(&_members_text)
cdef Py_ssize_t _member_at[MEMBERS_KEPT]
cdef Py_ssize_t _member_n[MEMBERS_KEPT]


cdef object encode_task_context(dict ctx, Py_ssize_t max_bytes):
    """encode_json(ctx, max_bytes) for a context: the text of a member whose value is the object the last
    context written here had at that place is copied from it instead of written again."""
    global _member_values, _members_text
    cdef Buf b
    cdef Py_ssize_t j = 0, start, count = len(_member_values)
    cdef Py_ssize_t at[MEMBERS_KEPT]
    cdef Py_ssize_t n[MEMBERS_KEPT]
    cdef int r
    cdef list values = []
    cdef bint kept = False
    buf_init(&b)
    try:
        put(&b, b"{", 1)
        for key, item in ctx.items():
            # as put_json_value writes a record: each member's key and value checked against max_bytes first
            if type(key) is not str:
                return None
            if j:
                put(&b, b",", 1)
            if b.n > max_bytes:
                return ""
            try:
                put_json_str(&b, <str>key)
            except UnicodeEncodeError:
                return None
            put(&b, b":", 1)
            start = b.n
            if j < count and j < MEMBERS_KEPT and _member_values[j] is item:
                if b.n > max_bytes:
                    return ""
                put(&b, _members_text.data + _member_at[j], _member_n[j])
            else:
                try:
                    r = put_json_value(&b, item, 1, max_bytes)
                except UnicodeEncodeError:
                    return None
                if r == 1:
                    return None
                if r == 2:
                    return ""
            if j < MEMBERS_KEPT:
                at[j], n[j] = start, b.n - start
                values.append(item)
            j += 1
        put(&b, b"}", 1)
        if b.n > max_bytes:
            return ""
        text = PyUnicode_DecodeUTF8(b.data, b.n, NULL)
        buf_free(&_members_text)
        _members_text, kept = b, True
        _member_values = values
        for j in range(len(values)):
            _member_at[j], _member_n[j] = at[j], n[j]
        return text
    finally:
        if not kept:
            buf_free(&b)


cdef str entities_part(object ents):
    """requestlog.entities_part(ents), its JSON written by encode_json (the Python encoder for what it leaves)."""
    global _last_entities, _last_entities_part
    # Remembered by the entity list, not by what the engine made of it, which holds its generation.
    source = getattr(ents, "source", ents)
    if source is _last_entities:
        return _last_entities_part
    if type(source) is not list:
        return _entities_part_py(ents)
    if not source:
        return ""
    text = encode_json(source, 4 * _ENTITIES_MAX_CHARS)
    if text is None:
        return _entities_part_py(ents)
    part = _CONTEXT_TRUNCATED if not text or len(<str>text) > _ENTITIES_MAX_CHARS else ',"entities":' + <str>text
    _last_entities, _last_entities_part = source, part
    return part


cdef inline int put_str(Buf* b, str text) except -1:
    """`text` as it is (it is JSON already)."""
    cdef Py_ssize_t n
    cdef const char* p = PyUnicode_AsUTF8AndSize(text, &n)
    return put(b, p, n)


cdef const char* HEX = "0123456789abcdef"


cdef int put_escaped(Buf* b, const char* p, Py_ssize_t n, int levels) except -1:
    """The UTF-8 bytes p[:n] JSON-escaped `levels` times (1 or 2: a JSON string inside a JSON string)."""
    cdef Py_ssize_t i, k, m
    cdef uint8_t c
    cdef char once[6]
    reserve(b, n * (12 if levels == 2 else 6))
    for i in range(n):
        c = <uint8_t>p[i]
        if c >= 0x20 and c != 0x22 and c != 0x5C:
            b.data[b.n] = <char>c
            b.n += 1
            continue
        # the first escape, as json.dumps writes it: \" \\ \n \r \t \b \f or \u00XX
        once[0] = b'\\'
        m = 2
        if c == 0x22 or c == 0x5C:
            once[1] = <char>c
        elif c == 0x0A:
            once[1] = b'n'
        elif c == 0x0D:
            once[1] = b'r'
        elif c == 0x09:
            once[1] = b't'
        elif c == 0x08:
            once[1] = b'b'
        elif c == 0x0C:
            once[1] = b'f'
        else:
            once[1] = b'u'
            once[2] = b'0'
            once[3] = b'0'
            once[4] = HEX[c >> 4]
            once[5] = HEX[c & 15]
            m = 6
        if levels == 1:
            memcpy(b.data + b.n, once, m)
            b.n += m
        else:  # escape the escape: each \ and " of it gets a backslash
            for k in range(m):
                if once[k] == b'\\' or once[k] == b'"':
                    b.data[b.n] = b'\\'
                    b.n += 1
                b.data[b.n] = once[k]
                b.n += 1
    return 0


cdef int put_json_str(Buf* b, str text) except -1:
    cdef Py_ssize_t n
    cdef const char* p = PyUnicode_AsUTF8AndSize(text, &n)
    put(b, b'"', 1)
    put_escaped(b, p, n, 1)
    put(b, b'"', 1)
    return 0


cdef bint plain_uid(object uid):
    return uid is None or (type(uid) is dict and type((<dict>uid).get("type")) is str
                           and type((<dict>uid).get("id")) is str)


cdef int put_uid(Buf* b, object uid) except -1:
    """`Type::"id"` (its id JSON-quoted) as a JSON string, or null."""
    cdef Py_ssize_t n
    cdef const char* p
    if uid is None:
        return put(b, b"null", 4)
    put(b, b'"', 1)
    p = PyUnicode_AsUTF8AndSize((<dict>uid)["type"], &n)
    put_escaped(b, p, n, 1)
    put(b, b'::\\"', 4)
    p = PyUnicode_AsUTF8AndSize((<dict>uid)["id"], &n)
    put_escaped(b, p, n, 2)
    put(b, b'\\""', 3)
    return 0


cdef struct UidSlot:
    # the uid last written in one field of a batch (borrowed: the batch holds it) and where its text
    # is in the buffer, which only grows, so the next event with that same object copies the text
    void* uid
    Py_ssize_t at
    Py_ssize_t n


cdef int put_uid_memo(Buf* b, object uid, UidSlot* slot) except -1:
    """put_uid, copied from the buffer when `uid` is the object this field held last time (a batch's
    items share their principal and action objects)."""
    cdef Py_ssize_t at
    if slot != NULL and slot.uid == <void*>uid and slot.n > 0:
        at = slot.at
        reserve(b, slot.n)
        memcpy(b.data + b.n, b.data + at, slot.n)
        b.n += slot.n
        return 0
    at = b.n
    put_uid(b, uid)
    if slot != NULL:
        slot.uid = <void*>uid
        slot.at = at
        slot.n = b.n - at
    return 0


cdef struct Fields:
    # what the events of one batch share, as JSON text: `shared` follows the decision id, `tail` ends the line
    char shared[192]
    Py_ssize_t shared_n
    char tail[192]
    Py_ssize_t tail_n


cdef time_t last_second = -1  # the second whose UTC text is in last_when (lines are made under the GIL)
cdef char last_when[32]


cdef Py_ssize_t put_decimal(char* out, unsigned long long v, int min_digits) noexcept:
    """v in decimal, zero-padded to at least `min_digits`, at `out`; returns the length."""
    cdef char digits[24]
    cdef int n = 0
    while v or n < min_digits or n == 0:
        digits[23 - n] = <char>(48 + v % 10)
        v //= 10
        n += 1
    memcpy(out, digits + 24 - n, n)
    return n


cdef Py_ssize_t put_escaped_fixed(char* out, Py_ssize_t k, Py_ssize_t room, str text, str what) except -1:
    """`text` (at most 64 bytes of UTF-8) JSON-escaped at out + k, ending by out + room; returns the new end.
    ValueError naming `what` when it does not fit."""
    cdef Py_ssize_t n
    cdef const char* p = PyUnicode_AsUTF8AndSize(text, &n)
    cdef Buf b
    if n > 64:
        raise ValueError(f"{what} too long")
    buf_init(&b)
    try:
        put_escaped(&b, p, n, 1)
        if k + b.n > room:
            raise ValueError(f"{what} too long")
        memcpy(out + k, b.data, b.n)
        return k + b.n
    finally:
        buf_free(&b)


cdef int batch_fields(Fields* f, double t, str api, long long latency_ns, unsigned long long generation,
                      str digest) except -1:
    """"time":"<UTC, µs>Z","api":<api>,   and   "latency_us":<0.1 µs>,"generation":<n>,"policy_digest":<digest>
    (decisionlog's format).

    Each line of a busy server has its own batch (an Envoy Check), so this is written by hand, and
    a second's date text is made once."""
    global last_second
    cdef time_t second = <time_t>floor(t)
    cdef tm parts
    if second != last_second:
        if gmtime_r(&second, &parts) == NULL:
            raise ValueError("time out of range")
        strftime(last_when, sizeof(last_when), "%Y-%m-%dT%H:%M:%S", &parts)
        last_second = second
    cdef char* out = f.shared
    cdef Py_ssize_t k = 0, wn = strlen(last_when)
    memcpy(out, b'"time":"', 8)
    k = 8
    memcpy(out + k, last_when, wn)
    k += wn
    out[k] = b'.'
    k += 1
    k += put_decimal(out + k, <unsigned long long>((t - floor(t)) * 1e6), 6)
    memcpy(out + k, b'Z","api":"', 10)
    k = put_escaped_fixed(out, k + 10, <Py_ssize_t>sizeof(f.shared) - 2, api, "api name")
    memcpy(out + k, b'",', 2)
    f.shared_n = k + 2
    cdef long long tenths = (latency_ns + 50) // 100 if latency_ns > 0 else 0
    out = f.tail
    memcpy(out, b'"latency_us":', 13)
    k = 13
    k += put_decimal(out + k, <unsigned long long>(tenths // 10), 1)
    out[k] = b'.'
    k += 1
    k += put_decimal(out + k, <unsigned long long>(tenths % 10), 1)
    memcpy(out + k, b',"generation":', 14)
    k += 14
    k += put_decimal(out + k, generation, 1)
    memcpy(out + k, b',"policy_digest":"', 18)
    k = put_escaped_fixed(out, k + 18, <Py_ssize_t>sizeof(f.tail) - 1, digest, "policy digest")
    out[k] = b'"'
    f.tail_n = k + 1
    return 0


cdef bint plain_strings(object items):
    for p in items:
        if type(p) is not str:
            return False
    return True


cdef bint plain_event(tuple ev):
    if len(ev) != 9 or ev[8] is not None:  # a task token: the fallback writes its part
        return False
    if type(ev[0]) is not str or type(ev[4]) is not str:
        return False
    if not (plain_uid(ev[1]) and plain_uid(ev[2]) and plain_uid(ev[3])):
        return False
    if ev[7] is not None and type(ev[7]) is not str:
        return False
    return plain_strings(ev[5])


cdef int put_decision_id(Buf* b, str prefix, unsigned long long seq) except -1:
    """prefix + seq as (at least) 10 hex digits, a JSON string: what f"{prefix}{seq:010x}" gives."""
    cdef char digits[16]
    cdef int n = hex_seq(digits, seq)
    cdef Py_ssize_t pn
    cdef const char* pp = PyUnicode_AsUTF8AndSize(prefix, &pn)
    put(b, b'"', 1)
    put_escaped(b, pp, pn, 1)
    put(b, digits + 16 - n, n)
    put(b, b'"', 1)
    return 0


cdef bint plain_token(object ctx):
    """True when a request context's `token` and `delegation` are what the server sets for a task token
    (a jti and a task that are strings, a chain of {"__entity": {"id": str, ...}} entries): what
    put_token writes as decisionlog's token_of and _format_event would."""
    tok = (<dict>ctx).get("token")
    dlg = (<dict>ctx).get("delegation")
    if type(tok) is not dict or type(dlg) is not dict:
        return False
    if type((<dict>tok).get("jti")) is not str or type((<dict>tok).get("task")) is not str:
        return False
    chain = (<dict>dlg).get("chain", ())
    if type(chain) is not list and type(chain) is not tuple:
        return False
    for e in chain:
        if type(e) is not dict:
            return False
        ent = (<dict>e).get("__entity")
        if type(ent) is not dict or type((<dict>ent).get("id")) is not str:
            return False
    return True


cdef int put_token(Buf* b, dict ctx) except -1:
    """`,"token":{"jti":…,"task":…,"chain":[…]}` of a context plain_token accepted."""
    cdef dict tok = <dict>ctx["token"]
    cdef bint first = True
    put(b, b',"token":{"jti":', 16)
    put_json_str(b, <str>tok["jti"])
    put(b, b',"task":', 8)
    put_json_str(b, <str>tok["task"])
    put(b, b',"chain":[', 10)
    for e in (<dict>ctx["delegation"]).get("chain", ()):
        if not first:
            put(b, b',', 1)
        first = False
        put_json_str(b, <str>(<dict>(<dict>e)["__entity"])["id"])
    put(b, b']}', 2)
    return 0


cdef int put_line(Buf* b, str decision_id, str prefix, unsigned long long seq, Fields* f, principal, action,
                  resource, str decision, policies, errors, str reason, UidSlot* memo=NULL,
                  dict token_ctx=None, str context=None) except -1:
    """One event's line; its decision id is `decision_id`, or prefix + seq when that is None; with
    `token_ctx` (a context plain_token accepted), its token part; with `context` (requestlog.context_part),
    that last."""
    put(b, b'{"decision_id":', 15)
    if decision_id is not None:
        put_json_str(b, decision_id)
    else:
        put_decision_id(b, prefix, seq)
    put(b, b',', 1)
    put(b, f.shared, f.shared_n)
    put(b, b'"principal":', 12)
    put_uid_memo(b, principal, memo)
    put(b, b',"action":', 10)
    put_uid_memo(b, action, memo + 1 if memo != NULL else NULL)
    put(b, b',"resource":', 12)
    put_uid_memo(b, resource, memo + 2 if memo != NULL else NULL)
    put(b, b',"decision":', 12)
    put_json_str(b, decision)
    put(b, b',"policies":[', 13)
    cdef bint first = True
    for p in policies:
        if not first:
            put(b, b',', 1)
        first = False
        put_json_str(b, <str>p)
    put(b, b'],"errors":', 11)
    if errors:
        put_str(b, _json.dumps(list(errors), ensure_ascii=False, default=str))
    else:
        put(b, b'[]', 2)
    put(b, b',', 1)
    put(b, f.tail, f.tail_n)
    if reason:
        put(b, b',"reason":', 10)
        put_json_str(b, reason)
    if token_ctx is not None:
        put_token(b, token_ctx)
    if context is not None:
        put_str(b, context)
    put(b, b'}\n', 2)
    return 0


cdef enum:
    JSON_MAX_DEPTH = 64  # deeper values are left to the Python encoder (contexts are bounded at 32)


cdef int put_json_value(Buf* b, object v, int depth, Py_ssize_t max_bytes) except -1:
    """`v` as json.JSONEncoder(ensure_ascii=False, separators=(",", ":"), allow_nan=False) writes it.
    Returns 0 when written, 1 when `v` holds something this writer leaves to that encoder (another type,
    a key that is not a str, a lone surrogate, a deeper value), 2 when it cannot be JSON (a float that is
    not finite) or the text passed `max_bytes`."""
    cdef type t = type(v)
    cdef Py_ssize_t n
    cdef const char* p
    cdef bint first
    cdef int r
    cdef long long i
    cdef int overflow
    cdef double x
    if b.n > max_bytes:
        return 2
    if v is None:
        put(b, b"null", 4)
    elif v is True:
        put(b, b"true", 4)
    elif v is False:
        put(b, b"false", 5)
    elif t is str:
        p = PyUnicode_AsUTF8AndSize(v, &n)  # UnicodeEncodeError for a lone surrogate: encode_json says None
        put(b, b'"', 1)
        put_escaped(b, p, n, 1)
        put(b, b'"', 1)
    elif t is int:
        i = PyLong_AsLongLongAndOverflow(v, &overflow)
        if overflow:
            put_str(b, str(v))
        else:
            reserve(b, 24)
            b.n += snprintf(b.data + b.n, 24, "%lld", i)
    elif t is float:
        x = <double>v
        if not isfinite(x):
            return 2
        put_str(b, float.__repr__(v))
    elif t is dict:
        if depth >= JSON_MAX_DEPTH:
            return 1
        put(b, b"{", 1)
        first = True
        for key, item in (<dict>v).items():
            if type(key) is not str:
                return 1
            if not first:
                put(b, b",", 1)
            first = False
            r = put_json_value(b, key, depth + 1, max_bytes)
            if r:
                return r
            put(b, b":", 1)
            r = put_json_value(b, item, depth + 1, max_bytes)
            if r:
                return r
        put(b, b"}", 1)
    elif t is list or t is tuple:
        if depth >= JSON_MAX_DEPTH:
            return 1
        put(b, b"[", 1)
        first = True
        for item in v:
            if not first:
                put(b, b",", 1)
            first = False
            r = put_json_value(b, item, depth + 1, max_bytes)
            if r:
                return r
        put(b, b"]", 1)
    else:
        return 1
    return 0


def encode_json(object value, Py_ssize_t max_bytes):
    """`value` as compact JSON text (what json.JSONEncoder(ensure_ascii=False, separators=(",", ":"),
    allow_nan=False).encode gives), or "" when that encoder would refuse it (a float that is not finite)
    or the text passes `max_bytes` UTF-8 bytes, or None for a value this writer leaves to that encoder
    (types other than dict with str keys, list, tuple, str, int, float, bool and None; lone surrogates;
    nesting deeper than 64)."""
    cdef Buf b
    cdef int r
    buf_init(&b)
    try:
        try:
            r = put_json_value(&b, value, 0, max_bytes)
        except UnicodeEncodeError:
            return None
        if r == 1:
            return None
        if r == 2 or b.n > max_bytes:
            return ""
        return PyUnicode_DecodeUTF8(b.data, b.n, NULL)
    finally:
        buf_free(&b)


cdef inline int put_fallback(Buf* b, object line) except -1:
    data = (<str>line).encode("utf-8", "replace")
    return put(b, data, len(data))


def format_events(list events, double t, str api, long long latency_ns, unsigned long long generation,
                  object fallback, str digest=""):
    """The JSON lines of a batch of events, as UTF-8 bytes; the events share their time `t` (Unix
    seconds), `api`, latency, generation and its policy `digest`. `fallback(event)` gives the line (a
    str) of an event this writer does not take, or of one it cannot encode."""
    cdef Fields f
    batch_fields(&f, t, api, latency_ns, generation, digest)
    cdef Buf b
    buf_init(&b)
    cdef Py_ssize_t mark
    cdef tuple ev
    try:
        for item in events:
            mark = b.n
            if type(item) is tuple and plain_event(<tuple>item):
                ev = <tuple>item
                try:
                    put_line(&b, ev[0], None, 0, &f, ev[1], ev[2], ev[3], ev[4], ev[5], ev[6], ev[7])
                    continue
                except UnicodeEncodeError:  # a lone surrogate: the fallback replaces it
                    b.n = mark
            put_fallback(&b, fallback(item))
        return PyBytes_FromStringAndSize(b.data, b.n)
    finally:
        buf_free(&b)


cdef bint put_decided(Buf* b, str prefix, unsigned long long seq, Fields* f, object req, object d,
                      UidSlot* memo) except -1:
    """The line of the decided request `req` (results `d`), with the decision id prefix + seq, if it is
    a Decision on a request dict with plain uids (and, in its context, no task token or a plain one);
    False (nothing written) for the fallback to write. `memo`: principal, action and resource slots
    that items of a batch share."""
    if type(req) is not dict or type(d) is not Decision:
        return False
    cdef dict r = <dict>req
    cdef Decision dd = <Decision>d
    cdef Py_ssize_t mark = b.n
    ctx = r.get("context")
    p, a, res = r.get("principal"), r.get("action"), r.get("resource")
    cdef dict token_ctx = None
    if ctx and "delegation" in ctx:
        if type(ctx) is not dict or not plain_token(ctx):
            return False
        token_ctx = <dict>ctx
    # (a uid in a memo slot was checked when it was written)
    if (<void*>p == memo[0].uid or plain_uid(p)) \
            and (<void*>a == memo[1].uid or plain_uid(a)) and plain_uid(res) and plain_strings(dd.policies):
        try:
            part = EMPTY_CONTEXT if not ctx else context_part(ctx)
            ents = r.get("entities")
            if ents is not None:  # request entities (authz.Engine): replay needs them too
                part = part + entities_part(ents)
            put_line(b, None, prefix, seq, f, p, a, res, "allow" if dd.allowed else "deny", dd.policies,
                     dd._errors, None, memo, token_ctx, part)
            return True
        except UnicodeEncodeError:
            b.n = mark
            memset(memo, 0, 3 * sizeof(UidSlot))  # the text they point to is being overwritten
    return False


def format_decisions(str prefix, unsigned long long first, list requests, list results, double t, str api,
                     long long latency_ns, unsigned long long generation, object fallback, str digest=""):
    """format_events() of a decided batch, without event tuples: results[i] (an engine Decision, or a
    tuple for a request answered without one) of requests[i] (a request dict, or not), with the
    decision id prefix + (first + i). `fallback(i)` gives the line of any item but a Decision on a
    request dict with plain uids and no task token, or a plain one, in its context. `digest`: the
    generation's policy digest."""
    cdef Fields f
    batch_fields(&f, t, api, latency_ns, generation, digest)
    cdef Buf b
    buf_init(&b)
    cdef Py_ssize_t i
    cdef UidSlot memo[3]  # principal, action, resource: items of a batch share these objects
    memset(memo, 0, sizeof(memo))
    try:
        for i in range(len(results)):
            if not put_decided(&b, prefix, first + i, &f, requests[i], results[i], memo):
                put_fallback(&b, fallback(i))
        return PyBytes_FromStringAndSize(b.data, b.n)
    finally:
        buf_free(&b)


def format_checks(str prefix, str api, list checks, object fallback, object digest_of=None):
    """The lines of a run of requests decided one at a time (Envoy Checks), each its own batch: checks[k]
    is (time, latency_ns, generation, seq, request, result), with the decision id prefix + seq.
    `fallback(k)` gives the line of any check format_decisions would leave to its fallback;
    `digest_of(generation)` the policy digest of a generation (asked once per generation in the run)."""
    cdef Fields f
    cdef object generation = None
    cdef str digest = ""
    cdef Buf b
    buf_init(&b)
    cdef Py_ssize_t k
    cdef tuple c
    cdef UidSlot memo[3]  # (every check of the run is alive: a uid object's address is not reused meanwhile)
    memset(memo, 0, sizeof(memo))
    try:
        for k in range(len(checks)):
            c = <tuple>checks[k]
            if digest_of is not None and c[2] != generation:
                generation = c[2]
                digest = digest_of(generation)
            batch_fields(&f, c[0], api, c[1], c[2], digest)
            if not put_decided(&b, prefix, c[3], &f, c[4], c[5], memo):
                put_fallback(&b, fallback(k))
        return PyBytes_FromStringAndSize(b.data, b.n)
    finally:
        buf_free(&b)
