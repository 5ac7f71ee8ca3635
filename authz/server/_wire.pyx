# cython: language_level=3
"""Requests and responses of `authz serve`'s hot paths on the wire, without protobuf message objects.

`decode_batch_check` reads a serialized BatchCheckRequest straight into the engine's request
dicts. It is deliberately narrow: anything it does not take as given (an empty entity type, a
missing part, a null or fractional number in a context, a context nested too deeply, a repeated
singular message field, a map entry with a field besides its key and value, bad UTF-8, a malformed
message, request entities) makes it return None, and the caller then takes the protobuf path, which is exact about
every error and names the field.

`decode_envoy_check` reads what the Envoy mapping needs from a serialized ext_authz v3
CheckRequest, under the same rule: None sends the request to the protobuf path.

`encode_check_results` writes the BatchCheckResponse for a list of results. Fields go out in
field-number order and defaults are omitted, so the bytes are what protobuf's
SerializeToString() gives for the same message (tests/server/test_wire.py checks this).
"""
from libc.stdint cimport uint8_t, uint32_t, uint64_t, int64_t
from libc.string cimport memcmp, memcpy
from libc.stdlib cimport calloc, free
from libc.math cimport floor
from authz.server._buf cimport Buf, buf_free, buf_init, hex_seq, put, reserve
from authz.engine._evaluator cimport Decision
from authz.engine._hash cimport bytes_hash
from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_GET_SIZE, PyBytes_FromStringAndSize
from cpython.unicode cimport PyUnicode_DecodeUTF8, PyUnicode_AsUTF8AndSize


class _Unusual(Exception):
    """Not for the fast path: the caller decodes the message with protobuf instead."""


cdef struct Reader:
    const uint8_t* p
    const uint8_t* end


cdef int read_varint(Reader* r, uint64_t* out) except -1:
    cdef uint64_t v = 0
    cdef int shift = 0
    cdef uint8_t b
    while True:
        if r.p >= r.end or shift > 63:
            raise _Unusual()
        b = r.p[0]
        r.p += 1
        v |= (<uint64_t>(b & 0x7F)) << shift
        if b < 0x80:
            out[0] = v
            return 0
        shift += 7


cdef int read_sub(Reader* r, Reader* sub) except -1:
    """A length-delimited field's bytes as `sub`; `r` moves past them."""
    cdef uint64_t n
    read_varint(r, &n)
    if n > <uint64_t>(r.end - r.p):
        raise _Unusual()
    sub.p = r.p
    sub.end = r.p + n
    r.p += n
    return 0


cdef int skip_field(Reader* r, uint32_t wire_type) except -1:
    cdef uint64_t v
    cdef Reader sub
    if wire_type == 0:
        read_varint(r, &v)
    elif wire_type == 1 or wire_type == 5:
        v = 8 if wire_type == 1 else 4
        if v > <uint64_t>(r.end - r.p):
            raise _Unusual()
        r.p += v
    elif wire_type == 2:
        read_sub(r, &sub)
    else:  # groups (3, 4) and reserved wire types
        raise _Unusual()
    return 0


cdef inline int read_tag(Reader* r, uint32_t* field, uint32_t* wire_type) except -1:
    cdef uint64_t tag
    read_varint(r, &tag)
    if tag >> 3 == 0 or tag >> 3 > 0x1FFFFFFF:
        raise _Unusual()
    field[0] = <uint32_t>(tag >> 3)
    wire_type[0] = <uint32_t>(tag & 7)
    return 0


cdef inline str read_str(Reader* sub):
    return PyUnicode_DecodeUTF8(<const char*>sub.p, sub.end - sub.p, NULL)


# Short strings that recur from request to request (header names and common values, entity types,
# context keys) are decoded once and shared: the cached str also keeps its hash, which every dict
# insert and lookup of it needs. A direct-mapped cache of SHORT_SLOTS strs, replaced on collision.
DEF SHORT_SLOTS = 1024
DEF SHORT_MAX = 32
cdef list _short_strs = [None] * SHORT_SLOTS
cdef uint64_t _short_hashes[SHORT_SLOTS]


cdef str read_short_str(Reader* sub):
    """read_str, through the cache for strings of at most SHORT_MAX bytes."""
    cdef Py_ssize_t n = sub.end - sub.p, cn, i
    if n > SHORT_MAX or n == 0:
        return read_str(sub)
    cdef uint64_t h = 14695981039346656037ULL
    for i in range(n):
        h = (h ^ sub.p[i]) * 1099511628211ULL
    cdef Py_ssize_t slot = <Py_ssize_t>(h & (SHORT_SLOTS - 1))
    cached = _short_strs[slot]
    cdef const char* cp
    if cached is not None and _short_hashes[slot] == h:
        cp = PyUnicode_AsUTF8AndSize(cached, &cn)
        if cn == n and memcmp(cp, sub.p, n) == 0:
            return <str>cached
    text = read_str(sub)
    _short_strs[slot] = text
    _short_hashes[slot] = h
    return text


cdef inline bytes raw(Reader* sub):
    return PyBytes_FromStringAndSize(<const char*>sub.p, sub.end - sub.p)


# Parts repeated across the items of a batch (the same resource, the same context) are decoded
# once: a table of the encodings met in this batch, keyed by their bytes in the request (no copy).
DEF SEEN_SLOTS = 512     # a power of two
DEF SEEN_MAX = 384       # encodings remembered per batch; past that, parts are just decoded


cdef struct SeenEntry:
    const uint8_t* p
    Py_ssize_t n
    uint64_t h
    uint64_t kind        # KIND_UID or KIND_CONTEXT: the same bytes decode differently
    void* obj            # borrowed: Seen.keep holds it


cdef struct SeenTable:
    SeenEntry slots[SEEN_SLOTS]
    int count


cdef class Seen:
    """The encodings met in one batch and what each was decoded to."""
    cdef SeenTable* table
    cdef list keep

    def __cinit__(self):
        self.table = <SeenTable*>calloc(1, sizeof(SeenTable))
        if self.table == NULL:
            raise MemoryError()
        self.keep = []

    def __dealloc__(self):
        free(self.table)

    cdef object get(self, Reader* sub, uint64_t kind, SeenEntry** free_slot):
        """What the bytes of `sub` (a part of type `kind`) were decoded to, or None; then
        free_slot[0] is where to remember them (NULL when the table is full)."""
        cdef Py_ssize_t n = sub.end - sub.p
        cdef uint64_t h = bytes_hash(sub.p, n, kind)
        cdef uint32_t i = <uint32_t>h & (SEEN_SLOTS - 1), probe
        cdef SeenEntry* e
        free_slot[0] = NULL
        for probe in range(SEEN_SLOTS):
            e = &self.table.slots[i]
            if e.obj == NULL:
                if self.table.count < SEEN_MAX:
                    e.h = h
                    e.kind = kind
                    free_slot[0] = e
                return None
            if e.h == h and e.kind == kind and e.n == n and memcmp(e.p, sub.p, n) == 0:
                return <object>e.obj
            i = (i + 1) & (SEEN_SLOTS - 1)
        return None

    cdef void put(self, SeenEntry* slot, Reader* sub, object obj):
        if slot == NULL:
            return
        self.keep.append(obj)
        slot.p = sub.p
        slot.n = sub.end - sub.p
        slot.obj = <void*>obj
        self.table.count += 1


DEF KIND_UID = 1
DEF KIND_CONTEXT = 2


cdef dict decode_uid(Reader sub, Seen seen):
    """An EntityUid as {type, id}; one dict per distinct encoding in a batch (the engine only reads it)."""
    cdef SeenEntry* slot
    cached = seen.get(&sub, KIND_UID, &slot)
    if cached is not None:
        return <dict>cached
    cdef Reader whole = sub
    cdef uint32_t field, wt
    cdef Reader s
    cdef str type_name = "", uid_id = ""
    while sub.p < sub.end:
        read_tag(&sub, &field, &wt)
        if (field == 1 or field == 2) and wt == 2:
            read_sub(&sub, &s)
            if field == 1:
                type_name = read_short_str(&s)
            else:
                uid_id = read_short_str(&s)
        else:
            skip_field(&sub, wt)
    if not type_name:
        raise _Unusual()
    cdef dict d = {"type": type_name, "id": uid_id}
    seen.put(slot, &whole, d)
    return d


DEF INT64_LIMIT = 9223372036854775808.0   # 2**63


cdef object decode_value(Reader sub, int depth, int max_depth):
    """A google.protobuf.Value as a Cedar value, as authz.server.records.from_struct converts it."""
    if depth > max_depth:
        raise _Unusual()
    cdef uint32_t field, wt
    cdef uint64_t v
    cdef double n
    cdef Reader s
    cdef int kinds = 0
    result = None
    while sub.p < sub.end:
        read_tag(&sub, &field, &wt)
        if field == 2 and wt == 1:
            if sub.end - sub.p < 8:
                raise _Unusual()
            memcpy(&n, sub.p, 8)  # little-endian IEEE double, as on every platform we build for
            sub.p += 8
            if not (n >= -INT64_LIMIT and n < INT64_LIMIT) or n != floor(n):
                raise _Unusual()
            result = <int64_t>n
        elif field == 3 and wt == 2:
            read_sub(&sub, &s)
            result = read_short_str(&s)
        elif field == 4 and wt == 0:
            read_varint(&sub, &v)
            result = v != 0
        elif field == 5 and wt == 2:
            read_sub(&sub, &s)
            result = decode_struct(s, depth + 1, max_depth)
        elif field == 6 and wt == 2:
            read_sub(&sub, &s)
            result = decode_list(s, depth + 1, max_depth)
        elif 1 <= field <= 6:  # null_value, or a kind with an unexpected wire type
            raise _Unusual()
        else:
            skip_field(&sub, wt)
            continue
        kinds += 1
    if kinds != 1:  # no kind (null) or several on the wire (protobuf would merge them)
        raise _Unusual()
    return result


cdef list decode_list(Reader sub, int depth, int max_depth):
    cdef uint32_t field, wt
    cdef Reader s
    cdef list out = []
    while sub.p < sub.end:
        read_tag(&sub, &field, &wt)
        if field == 1 and wt == 2:
            read_sub(&sub, &s)
            out.append(decode_value(s, depth, max_depth))
        else:
            skip_field(&sub, wt)
    return out


cdef dict decode_struct(Reader sub, int depth, int max_depth):
    """A google.protobuf.Struct as a record; its values are at `depth`."""
    cdef uint32_t field, wt, efield, ewt
    cdef Reader entry, s, value
    cdef dict out = {}
    cdef str key
    cdef bint has_value
    while sub.p < sub.end:
        read_tag(&sub, &field, &wt)
        if field != 1 or wt != 2:
            skip_field(&sub, wt)
            continue
        read_sub(&sub, &entry)
        key = ""
        has_value = False
        while entry.p < entry.end:
            read_tag(&entry, &efield, &ewt)
            if efield == 1 and ewt == 2:
                read_sub(&entry, &s)
                key = read_short_str(&s)
            elif efield == 2 and ewt == 2:
                if has_value:  # protobuf would merge the two values
                    raise _Unusual()
                read_sub(&entry, &value)
                has_value = True
            else:
                # A key or value of another wire type, or another field (which protobuf keeps out of the map).
                raise _Unusual()
        if not has_value:
            raise _Unusual()
        out[key] = decode_value(value, depth, max_depth)  # a repeated key: the last one wins, as in protobuf
    return out


cdef dict decode_context(Reader sub, Seen seen, int max_depth):
    """An item's context Struct; one record per distinct encoding in a batch (the engine only reads it)."""
    cdef SeenEntry* slot
    cached = seen.get(&sub, KIND_CONTEXT, &slot)
    if cached is not None:
        return <dict>cached
    cdef dict d = decode_struct(sub, 1, max_depth)
    seen.put(slot, &sub, d)
    return d


def decode_batch_check(bytes data, int max_depth, bint principal_optional):
    """A serialized authz.v1.BatchCheckRequest -> (semantic, number of items, request dicts), or None
    when the request needs protobuf's exact handling (see the module docstring).

    With no items the one request is made of the batch's own parts. With `principal_optional`
    (a task token or a verified caller names the principal) a missing principal is None.
    """
    try:
        return _decode_batch_check(data, max_depth, principal_optional)
    except (_Unusual, UnicodeDecodeError):
        return None


cdef tuple _decode_batch_check(bytes data, int max_depth, bint principal_optional):
    cdef Reader r, s, item
    cdef uint32_t field, wt, ifield, iwt
    cdef uint64_t v
    cdef int semantic = 0, n_items = 0
    cdef Seen seen = Seen()
    cdef list defaults = [None, None, None, None]
    r.p = <const uint8_t*>PyBytes_AS_STRING(data)
    r.end = r.p + PyBytes_GET_SIZE(data)
    cdef Reader start = r
    # Pass 1: the batch's defaults and semantic (they may come after the items on the wire).
    while r.p < r.end:
        read_tag(&r, &field, &wt)
        if 1 <= field <= 4 and wt == 2:
            if defaults[field - 1] is not None:
                raise _Unusual()  # a repeated singular message: protobuf merges them
            read_sub(&r, &s)
            defaults[field - 1] = decode_uid(s, seen) if field <= 3 else decode_struct(s, 1, max_depth)
        elif field == 5 and wt == 2:
            read_sub(&r, &s)
            n_items += 1
        elif field == 6 and wt == 0:
            read_varint(&r, &v)
            semantic = <int>v if v < 0x80000000 else -1
        elif 1 <= field <= 7:
            # 7: entities_json (request entities): decoded on the protobuf path, which checks them once
            raise _Unusual()
        else:
            skip_field(&r, wt)
    if defaults[3] is None:
        defaults[3] = {}
    if n_items == 0:
        return semantic, 0, [_request(defaults[0], defaults[1], defaults[2], defaults[3], principal_optional)]
    # Pass 2: the items.
    cdef list requests = []
    cdef object principal, action, resource, context
    r = start
    while r.p < r.end:
        read_tag(&r, &field, &wt)
        if field != 5 or wt != 2:
            skip_field(&r, wt)
            continue
        read_sub(&r, &item)
        principal = action = resource = context = None
        while item.p < item.end:
            read_tag(&item, &ifield, &iwt)
            if 1 <= ifield <= 4 and iwt == 2:
                read_sub(&item, &s)
                if ifield == 1 and principal is None:
                    principal = decode_uid(s, seen)
                elif ifield == 2 and action is None:
                    action = decode_uid(s, seen)
                elif ifield == 3 and resource is None:
                    resource = decode_uid(s, seen)
                elif ifield == 4 and context is None:
                    context = decode_context(s, seen, max_depth)
                else:
                    raise _Unusual()
            elif 1 <= ifield <= 4:
                raise _Unusual()
            else:
                skip_field(&item, iwt)
        requests.append(_request(defaults[0] if principal is None else principal,
                                 defaults[1] if action is None else action,
                                 defaults[2] if resource is None else resource,
                                 defaults[3] if context is None else context, principal_optional))
    return semantic, n_items, requests


cdef dict _request(principal, action, resource, context, bint principal_optional):
    if action is None or resource is None or (principal is None and not principal_optional):
        raise _Unusual()
    return {"principal": principal, "action": action, "resource": resource, "context": context}


# ---- encoding ----

cdef inline int put_varint(Buf* b, uint64_t v) except -1:
    reserve(b, 10)
    while v >= 0x80:
        b.data[b.n] = <char>((v & 0x7F) | 0x80)
        b.n += 1
        v >>= 7
    b.data[b.n] = <char>v
    b.n += 1
    return 0


cdef inline Py_ssize_t varint_size(uint64_t v) noexcept:
    cdef Py_ssize_t n = 1
    while v >= 0x80:
        v >>= 7
        n += 1
    return n


cdef int put_bytes_field(Buf* b, uint32_t field, const char* p, Py_ssize_t n, bint keep_empty) except -1:
    """A length-delimited field; an empty one is skipped unless `keep_empty` (a repeated field's element),
    as proto3 does for singular strings."""
    if n == 0 and not keep_empty:
        return 0
    put_varint(b, (field << 3) | 2)
    put_varint(b, <uint64_t>n)
    reserve(b, n)
    memcpy(b.data + b.n, p, n)
    b.n += n
    return 0


cdef int put_str_field(Buf* b, uint32_t field, str text, bint keep_empty=False) except -1:
    cdef Py_ssize_t n
    cdef const char* p = PyUnicode_AsUTF8AndSize(text, &n)
    return put_bytes_field(b, field, p, n, keep_empty)


cdef Py_ssize_t str_field_size(uint32_t field, str text, bint keep_empty=False) except -1:
    cdef Py_ssize_t n
    PyUnicode_AsUTF8AndSize(text, &n)
    if n == 0 and not keep_empty:
        return 0
    return varint_size((field << 3) | 2) + varint_size(<uint64_t>n) + n


cdef int begin_message(Buf* b, uint32_t field, Py_ssize_t size) except -1:
    put_varint(b, (field << 3) | 2)
    put_varint(b, <uint64_t>size)
    return 0


cdef Py_ssize_t policy_error_size(dict e) except -1:
    cdef Py_ssize_t n = str_field_size(1, e.get("policy", "")) + str_field_size(2, e.get("message", ""))
    return n


cdef int encode_result(Buf* b, object result, const char* id_prefix, Py_ssize_t id_prefix_n, uint64_t seq,
                       uint64_t generation, frozenset plain_codes) except -1:
    """One CheckResponse (as results[k] of the BatchCheckResponse): field 1 of the outer message. Its
    decision id is id_prefix followed by `seq` in hex (hex_seq)."""
    cdef bint allowed
    cdef list policies
    cdef object errors
    cdef str reason, code = None, message = "", field = ""
    cdef Py_ssize_t size = 0, esize
    cdef char digits[16]
    cdef int n_digits = hex_seq(digits, seq)
    cdef Py_ssize_t id_n = id_prefix_n + n_digits
    if type(result) is tuple:
        code, message, field = result
        allowed = False
        policies = []
        errors = ()
        reason = code
    else:
        if type(result) is Decision:  # the engine's (fields read in C)
            allowed = (<Decision>result).allowed
            policies = (<Decision>result).policies
            errors = (<Decision>result)._errors or ()
        else:
            allowed = result.allowed
            policies = result.policies
            errors = result.errors
        reason = "" if allowed else ("forbidden_by_policy" if policies else "no_permitting_policy")
    cdef bint request_error = code is not None and code and code not in plain_codes
    # size first: the message is length-prefixed
    size += 2  # decision (tag 0x08, value 1 or 2)
    for p in policies:
        size += str_field_size(2, <str>p, True)
    for e in errors:
        esize = policy_error_size(<dict>e)
        size += 1 + varint_size(<uint64_t>esize) + esize
    size += 1 + varint_size(<uint64_t>id_n) + id_n  # decision_id (field 4, never empty)
    if generation:
        size += 1 + varint_size(generation)
    if request_error:
        esize = str_field_size(1, code) + str_field_size(2, field) + str_field_size(3, message)
        size += 1 + varint_size(<uint64_t>esize) + esize
    size += str_field_size(7, reason)
    begin_message(b, 1, size)
    put_varint(b, 0x08)
    put_varint(b, 1 if allowed else 2)
    for p in policies:
        put_str_field(b, 2, <str>p, True)
    for e in errors:
        begin_message(b, 3, policy_error_size(<dict>e))
        put_str_field(b, 1, (<dict>e).get("policy", ""))
        put_str_field(b, 2, (<dict>e).get("message", ""))
    put_varint(b, 0x22)
    put_varint(b, <uint64_t>id_n)
    put(b, id_prefix, id_prefix_n)
    put(b, digits + 16 - n_digits, n_digits)
    if generation:
        put_varint(b, 0x28)
        put_varint(b, generation)
    if request_error:
        begin_message(b, 6, str_field_size(1, code) + str_field_size(2, field) + str_field_size(3, message))
        put_str_field(b, 1, code)
        put_str_field(b, 2, field)
        put_str_field(b, 3, message)
    put_str_field(b, 7, reason)
    return 0


def encode_check_results(list results, str id_prefix, uint64_t first_seq, uint64_t generation,
                         frozenset plain_codes):
    """A serialized authz.v1.BatchCheckResponse for `results` (each the engine's Decision, or
    (code, message, field) for a request answered without one). results[k] gets the decision id
    id_prefix + first_seq + k as 10 hex digits; `plain_codes` are deny codes reported as the
    reason only, without a request_error."""
    cdef Buf b
    buf_init(&b)
    cdef Py_ssize_t k, prefix_n
    cdef const char* prefix = PyUnicode_AsUTF8AndSize(id_prefix, &prefix_n)
    try:
        reserve(&b, 64 * len(results) + 64)
        for k in range(len(results)):
            encode_result(&b, results[k], prefix, prefix_n, first_seq + k, generation, plain_codes)
        return PyBytes_FromStringAndSize(b.data, b.n)
    finally:
        buf_free(&b)


# ---- Envoy ext_authz v3 CheckRequest ----

cdef dict decode_peer(Reader sub):
    """AttributeContext.Peer as {address, port, principal} (socket address only)."""
    cdef uint32_t field, wt, afield, awt, sfield, swt
    cdef uint64_t v
    cdef Reader s, addr, sock
    address, port, principal = "", 0, ""
    while sub.p < sub.end:
        read_tag(&sub, &field, &wt)
        if field == 1 and wt == 2:  # Address
            read_sub(&sub, &addr)
            while addr.p < addr.end:
                read_tag(&addr, &afield, &awt)
                if afield == 1 and awt == 2:  # SocketAddress
                    read_sub(&addr, &sock)
                    while sock.p < sock.end:
                        read_tag(&sock, &sfield, &swt)
                        if sfield == 2 and swt == 2:
                            read_sub(&sock, &s)
                            address = read_short_str(&s)
                        elif sfield == 3 and swt == 0:
                            read_varint(&sock, &v)
                            port = <uint32_t>v
                        elif (sfield == 4 or sfield == 5 or sfield == 7) and swt == 2:
                            read_sub(&sock, &s)
                            read_str(&s)  # valid UTF-8, as protobuf requires
                        elif sfield <= 7 and not (swt == 0 and (sfield == 1 or sfield == 6)):
                            raise _Unusual()
                        else:
                            skip_field(&sock, swt)
                elif afield <= 3:  # a pipe or an internal address (or a bad wire type)
                    raise _Unusual()
                else:
                    skip_field(&addr, awt)
        elif field == 4 and wt == 2:
            read_sub(&sub, &s)
            principal = read_short_str(&s)
        elif (field == 2 or field == 5) and wt == 2:
            read_sub(&sub, &s)
            read_str(&s)  # valid UTF-8, as protobuf requires
        elif field == 3 and wt == 2:
            read_sub(&sub, &s)
            decode_string_map_entry(s, {})  # labels: checked, not used
        elif field <= 5:
            raise _Unusual()
        else:
            skip_field(&sub, wt)
    return {"address": address, "port": port, "principal": principal}


cdef int decode_string_map_entry(Reader entry, dict out) except -1:
    cdef uint32_t field, wt
    cdef Reader s
    key, value = "", ""
    while entry.p < entry.end:
        read_tag(&entry, &field, &wt)
        if (field == 1 or field == 2) and wt == 2:
            read_sub(&entry, &s)
            if field == 1:
                key = read_short_str(&s)
            else:
                value = read_short_str(&s)
        else:
            # A key or value of another wire type, or another field (which protobuf keeps out of the map).
            raise _Unusual()
    out[key] = value  # a repeated key: the last one wins, as in protobuf
    return 0


cdef int decode_header_value(Reader sub, dict out) except -1:
    """One HeaderValue of an encode_raw_headers header map, merged into `out` as the mapping does."""
    cdef uint32_t field, wt
    cdef Reader s
    cdef str key = "", value = ""
    raw_value = None
    while sub.p < sub.end:
        read_tag(&sub, &field, &wt)
        if 1 <= field <= 3 and wt == 2:
            read_sub(&sub, &s)
            if field == 1:
                key = read_short_str(&s)
            elif field == 2:
                value = read_short_str(&s)
            else:
                raw_value = raw(&s)
        elif field <= 3:
            raise _Unusual()
        else:
            skip_field(&sub, wt)
    if raw_value:
        value = (<bytes>raw_value).decode("utf-8", "replace")
    key = key.lower()
    out[key] = f"{out[key]},{value}" if key in out else value
    return 0


cdef int check_timestamp(Reader sub) except -1:
    """A google.protobuf.Timestamp as protobuf would parse it: seconds (1) and nanos (2) are varints."""
    cdef uint32_t field, wt
    while sub.p < sub.end:
        read_tag(&sub, &field, &wt)
        if field <= 2 and wt != 0:
            raise _Unusual()
        skip_field(&sub, wt)
    return 0


def decode_envoy_check(bytes data, Py_ssize_t max_headers):
    """A serialized ext_authz v3 CheckRequest -> (method, path, host, scheme, headers, number of
    headers, header bytes, body, source, destination, context_extensions), the parts the Envoy
    mapping reads (authz.server._envoy_map.check_view gives the same from a message), or None for the
    protobuf path. `header bytes` is the HttpRequest's size on the wire less its body: what
    protobuf's ByteSize() gives for the parsed message unless a field appears more than once (protobuf
    keeps the last, the wire holds each), so the limit on it is never looser here. With more than
    `max_headers` headers the answer is None (the protobuf path refuses the request)."""
    try:
        return _decode_envoy_check(data, max_headers)
    except (_Unusual, UnicodeDecodeError):
        return None


cdef tuple _decode_envoy_check(bytes data, Py_ssize_t max_headers):
    cdef Reader r, attrs, s, req, http, hm
    cdef uint32_t field, wt
    cdef int seen = 0
    cdef Py_ssize_t n_map = 0, n_raw = 0, header_bytes = 0, body_len = 0
    r.p = <const uint8_t*>PyBytes_AS_STRING(data)
    r.end = r.p + PyBytes_GET_SIZE(data)
    method = path = host = scheme = ""
    body = b""
    raw_body = b""
    source = destination = None
    cdef dict headers = {}, raw_headers = {}, extensions = {}
    # CheckRequest: attributes (1)
    attrs.p = attrs.end = r.p
    while r.p < r.end:
        read_tag(&r, &field, &wt)
        if field == 1 and wt == 2 and not seen & 1:
            read_sub(&r, &attrs)
            seen |= 1
        elif field == 1:
            raise _Unusual()
        else:
            skip_field(&r, wt)
    # AttributeContext: source (1), destination (2), request (4), context_extensions (10)
    http.p = http.end = attrs.p
    while attrs.p < attrs.end:
        read_tag(&attrs, &field, &wt)
        if field == 1 and wt == 2 and source is None:
            read_sub(&attrs, &s)
            source = decode_peer(s)
        elif field == 2 and wt == 2 and destination is None:
            read_sub(&attrs, &s)
            destination = decode_peer(s)
        elif field == 4 and wt == 2 and not seen & 2:
            read_sub(&attrs, &req)
            seen |= 2
            while req.p < req.end:  # Request: time (1), http (2)
                read_tag(&req, &field, &wt)
                if field == 2 and wt == 2 and not seen & 4:
                    read_sub(&req, &http)
                    seen |= 4
                elif field == 1 and wt == 2:  # Envoy sets it on every request; checked, not used
                    read_sub(&req, &s)
                    check_timestamp(s)
                elif field <= 2:
                    raise _Unusual()
                else:
                    skip_field(&req, wt)
        elif field == 10 and wt == 2:
            read_sub(&attrs, &s)
            decode_string_map_entry(s, extensions)
        elif 11 <= field <= 13 and wt == 2:
            read_sub(&attrs, &s)
            if s.p != s.end:  # metadata or TLS session details: not taken apart here
                raise _Unusual()
        elif field <= 2 or field == 4 or 10 <= field <= 13:
            raise _Unusual()
        else:
            skip_field(&attrs, wt)
    # HttpRequest
    header_bytes = http.end - http.p
    while http.p < http.end:
        read_tag(&http, &field, &wt)
        if wt != 2:
            if 1 <= field <= 13 and field != 9:
                raise _Unusual()
            skip_field(&http, wt)
            continue
        read_sub(&http, &s)
        if field == 2:
            method = read_short_str(&s)
        elif field == 3:
            n_map += 1
            if n_map > max_headers:
                raise _Unusual()
            decode_string_map_entry(s, headers)
        elif field == 4:
            path = read_short_str(&s)
        elif field == 5:
            host = read_short_str(&s)
        elif field == 6:
            scheme = read_short_str(&s)
        elif field == 11:
            body_len = len(read_str(&s))  # in characters, as len(http.body) counts
            body = raw(&s)
        elif field == 12:
            raw_body = raw(&s)
            header_bytes -= s.end - s.p
        elif field == 13:  # HeaderMap: repeated HeaderValue headers (1)
            hm = s
            while hm.p < hm.end:
                read_tag(&hm, &field, &wt)
                if field == 1 and wt == 2:
                    n_raw += 1
                    if n_raw > max_headers:
                        raise _Unusual()
                    read_sub(&hm, &s)
                    decode_header_value(s, raw_headers)
                elif field == 1:
                    raise _Unusual()
                else:
                    skip_field(&hm, wt)
        elif field in (1, 7, 8, 10):
            read_str(&s)  # valid UTF-8, as protobuf requires
        # other length-delimited fields: unknown, skipped
    header_bytes -= body_len
    if source is None:
        source = {"address": "", "port": 0, "principal": ""}
    if destination is None:
        destination = {"address": "", "port": 0, "principal": ""}
    if n_raw:
        headers, n_map = raw_headers, n_raw
    return (method, path, host, scheme, headers, n_map, header_bytes, raw_body or body, source, destination,
            extensions)
