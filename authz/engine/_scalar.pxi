# The scalar path of conditions: included by _evaluator.pyx, after class Generation.
#
# Most conditions compare strings, Longs, bools and entities: `context.env == "prod"`,
# `resource.sensitivity <= principal.clearance`, `resource.hasTag("pii")`, `context.tags.containsAny([...])`.
# cv_eval evaluates such a condition on C values (a CVal), reading strings as UTF-8 spans in the map or in
# the request's str objects, without making a Python object. It answers only when it is sure of Cedar's
# result: anything else (a value that is not a scalar, a missing attribute or entity, a type error, an
# overflow, a construct it leaves out) returns 0 and the caller evaluates the condition again from its start
# with the general evaluator (Generation.ev), which gives Cedar's answer and errors. Evaluation has no side
# effects, so evaluating again is safe; the differential tests against cedarpy check both paths.
#
# The commonest errors (a missing attribute or tag, a missing entity) are answered here too: cv_eval then
# returns 2 with the error in its CVal (kind CV_ERR_*), and the caller reports it as the general path would
# (cv_error_message), without raising. cv_eval evaluates in Cedar's order and short-circuits as Cedar does,
# and gives up (0) before anything it is not sure of, so an error it meets is the one Cedar meets.

cdef enum:
    CV_BOOL = 1
    CV_LONG = 2
    CV_STR = 3
    CV_UID = 4    # an interned uid: i is its index (uids that are not interned take the general path)
    # errors (cv_eval returned 2): i is the attribute's or tag's string index; n the variable (0, 1, 2)
    CV_ERR_NO_ENTITY = 5    # the entity of variable n does not exist
    CV_ERR_NO_ATTR = 6      # the entity of variable n has no attribute i
    CV_ERR_NO_TAG = 7       # the entity of variable n has no tag i
    CV_ERR_NO_MEMBER = 8    # a record of the context has no attribute i

DEF CV_MAX_DEPTH = 48   # deeper expressions take the general path
DEF CV_MAX_SET = 16     # as do set literals of more elements


cdef struct CVal:
    int kind
    int64_t i           # a Long, a bool (0 or 1), a uid index, or a string's index in the strings table
                        # (-1 for a string that is not one of the table's)
    const char* s       # a string's UTF-8 (in the map or in a str of the request) ...
    Py_ssize_t n        # ... and its length in bytes


cdef inline bint cv_equal(CVal* a, CVal* b) noexcept:
    """Cedar's `==` on scalars: values of different kinds are different."""
    if a.kind != b.kind:
        return False
    if a.kind == CV_STR:
        return a.n == b.n and memcmp(a.s, b.s, a.n) == 0
    return a.i == b.i


cdef int cv_of_object(object v, CVal* out) noexcept:
    """A value of the request as a scalar: 1; 0 when it is not one (a record, a set, an extension value or
    a uid that is not interned: never equal to a scalar or an interned uid); -1 when it cannot tell (a str
    with no UTF-8 form, such as a lone surrogate)."""
    cdef type t = type(v)
    cdef int overflow = 0
    if t is str:
        out.s = utf8_or_null(v, &out.n)
        if out.s == NULL:
            PyErr_Clear()
            return -1
        out.kind = CV_STR
        out.i = -1
        return 1
    if t is bool:
        out.kind = CV_BOOL
        out.i = v is True
        return 1
    if t is int:
        out.i = int_and_overflow(v, &overflow)
        if overflow:
            return -1
        out.kind = CV_LONG
        return 1
    if t is Uid and (<Uid>v).idx >= 0:
        out.kind = CV_UID
        out.i = (<Uid>v).idx
        return 1
    return 0


cdef int cv_value_at(Generation g, Py_ssize_t* pos, CVal* out) except -2:
    """The value (tag, then its bytes) at pos[0] in the map as a scalar, moving past it: 1, or 0."""
    cdef uint8_t tag = g.u8(pos[0])
    pos[0] += 1
    if tag == V_TRUE or tag == V_FALSE:
        out.kind = CV_BOOL
        out.i = tag == V_TRUE
        return 1
    if tag == V_LONG:
        out.kind = CV_LONG
        out.i = g.i64(pos[0])
        pos[0] += 8
        return 1
    if tag == V_STR:
        out.kind = CV_STR
        out.i = -1
        out.s = <const char*>g.base + g.str_span(pos[0], &out.n)
        pos[0] = (out.s - <const char*>g.base) + out.n
        return 1
    if tag == V_UID:
        out.kind = CV_UID
        out.i = g.u32(pos[0])
        if out.i >= g.n_uids:
            format_error(b"uid index out of range")
            return -2
        pos[0] += 4
        return 1
    return 0


cdef inline Uid request_var(Request r, uint8_t var):
    return r.principal if var == 0 else (r.action if var == 1 else r.resource)


cdef object cv_record_path(Generation g, Py_ssize_t* pos, Request r, int depth, CVal* err):
    """The request's value of the operand at pos[0] when it is `context` or `context.a.b...` (moving past
    it), as the request holds it; None when the operand is something else; _MISSING when a record on the
    path has no such member (the error is then in `err`)."""
    cdef uint8_t op = g.u8(pos[0])
    cdef uint32_t n
    if op == OP_VAR:
        if g.u8(pos[0] + 1) != 3:
            return None
        pos[0] += 2
        return r.context if r.context is not None else r.raw_context
    if op != OP_GETATTR or depth > CV_MAX_DEPTH:
        return None
    pos[0] += 1
    parent = cv_record_path(g, pos, r, depth + 1, err)
    if parent is _MISSING:
        return parent
    n = g.u32(pos[0])
    pos[0] += 4
    if not cv_is_record(parent, r):
        return None
    value = (<dict>parent).get(g.string_at(n), _MISSING)
    if value is _MISSING:
        cv_error(err, CV_ERR_NO_MEMBER, 3, n)
    return value


cdef inline bint cv_is_record(object v, Request r) noexcept:
    """`v` is a record. In a context not converted yet, a dict of one member may be an `__entity` or
    `__extn` escape; that one is left to the general path (the context itself is always a record)."""
    return type(v) is dict and (r.context is not None or v is r.raw_context or len(<dict>v) != 1)


cdef int cv_attr(Generation g, uint8_t op, Py_ssize_t* pos, Request r, CVal* out, int depth) except -2:
    """`e.x` and `e has x` on an entity variable (read in the map) or a context path."""
    cdef uint8_t var = g.u8(pos[0] + 1) if g.u8(pos[0]) == OP_VAR else 3
    cdef uint32_t n
    cdef Py_ssize_t at
    cdef Uid u
    if var < 3:
        u = request_var(r, var)
        n = g.u32(pos[0] + 2)
        pos[0] += 6
        out.kind = CV_BOOL
        if not g.is_entity(u):
            out.i = 0
            if op == OP_HAS:
                return 1  # a missing entity has no attributes; reading one is an error
            return cv_error(out, CV_ERR_NO_ENTITY, var, n)
        at = g.find_in_block(g.u32(u.rec + UID_ATTRS), n)
        if op == OP_HAS:
            out.i = at >= 0
            return 1
        if at < 0:
            return cv_error(out, CV_ERR_NO_ATTR, var, n)
        return cv_value_at(g, &at, out) == 1
    record = cv_record_path(g, pos, r, depth + 1, out)
    if record is _MISSING:
        return 2
    n = g.u32(pos[0])
    pos[0] += 4
    if not cv_is_record(record, r):
        return 0
    if op == OP_HAS:
        out.kind = CV_BOOL
        out.i = g.string_at(n) in <dict>record
        return 1
    value = (<dict>record).get(g.string_at(n), _MISSING)
    if value is _MISSING:
        return cv_error(out, CV_ERR_NO_MEMBER, 3, n)
    return cv_of_object(value, out) == 1


cdef int cv_set_literal(Generation g, Py_ssize_t* pos, Request r, CVal* items, int depth) except -2:
    """A set literal `[a, b, ...]` (after its opcode) of scalars into items: their number, or -1."""
    cdef uint32_t n = g.u32(pos[0]), i
    pos[0] += 4
    if n > CV_MAX_SET:
        return -1
    for i in range(n):
        if cv_eval(g, pos, r, &items[i], depth + 1) != 1:
            return -1
    return n


cdef int cv_contains(Generation g, uint8_t op, Py_ssize_t* pos, Request r, CVal* out, int depth) except -2:
    """`s.contains(x)`, `s.containsAny([...])` and `s.containsAll([...])` where s is a set literal of
    scalars (contains) or a set in the context, and the argument a scalar or a set literal of scalars."""
    cdef CVal wanted[CV_MAX_SET]
    cdef CVal item
    cdef int n_wanted, i, k
    cdef uint32_t found = 0, all_found
    cdef list items
    if g.u8(pos[0]) == OP_SET:
        if op != OP_CONTAINS:
            return 0
        pos[0] += 1
        n_wanted = cv_set_literal(g, pos, r, wanted, depth)
        if n_wanted < 0 or cv_eval(g, pos, r, out, depth + 1) != 1:
            return 0
        for i in range(n_wanted):
            if cv_equal(&wanted[i], out):
                found = 1
                break
        out.kind = CV_BOOL
        out.i = found
        return 1
    s = cv_record_path(g, pos, r, depth + 1, out)
    if s is _MISSING:
        return 2
    if type(s) is list and r.context is None:
        items = <list>s
    elif type(s) is CedarSet:
        items = (<CedarSet>s).items
    else:
        return 0
    if op == OP_CONTAINS:
        if cv_eval(g, pos, r, &wanted[0], depth + 1) != 1:
            return 0
        n_wanted = 1
    else:
        if g.u8(pos[0]) != OP_SET:
            return 0
        pos[0] += 1
        n_wanted = cv_set_literal(g, pos, r, wanted, depth)
        if n_wanted < 0:
            return 0
    all_found = (1u << n_wanted) - 1
    for element in items:
        if r.context is None and type(element) is dict:
            return 0  # maybe an `__entity` escape: a uid once converted
        k = cv_of_object(element, &item)
        if k < 0:
            return 0
        if k == 0:
            continue
        for i in range(n_wanted):
            if cv_equal(&wanted[i], &item):
                found |= 1u << i
    out.kind = CV_BOOL
    out.i = found == all_found if op == OP_CONTAINS_ALL else found != 0
    return 1


cdef int cv_tag(Generation g, uint8_t op, Py_ssize_t* pos, Request r, CVal* out, int depth) except -2:
    """`e.hasTag(k)` and `e.getTag(k)` on an entity variable."""
    cdef CVal key
    cdef Py_ssize_t at
    cdef Uid u
    if g.u8(pos[0]) != OP_VAR or g.u8(pos[0] + 1) >= 3:
        return 0
    cdef uint8_t var = g.u8(pos[0] + 1)
    u = request_var(r, var)
    pos[0] += 2
    if cv_eval(g, pos, r, &key, depth + 1) != 1 or key.kind != CV_STR:
        return 0
    out.kind = CV_BOOL
    if not g.is_entity(u):
        out.i = 0
        if op == OP_HAS_TAG:
            return 1  # a missing entity has no tags; reading one is an error
        return cv_error(out, CV_ERR_NO_ENTITY, var, 0)
    if key.i >= 0:
        at = g.find_in_block(g.u32(u.rec + UID_TAGS), <uint32_t>key.i)
    else:
        at = g.find_text_in_block(g.u32(u.rec + UID_TAGS), key.s, key.n)
    if op == OP_HAS_TAG:
        out.i = at >= 0
        return 1
    if at < 0:
        # the message names the tag: known by its string index only when it is one of the table's
        return cv_error(out, CV_ERR_NO_TAG, var, key.i) if key.i >= 0 else 0
    return cv_value_at(g, &at, out) == 1


cdef int cv_like(Generation g, Py_ssize_t* pos, Request r, CVal* out, int depth) except -2:
    cdef int k = cv_eval(g, pos, r, out, depth + 1)
    if k != 1:
        return k
    if out.kind != CV_STR:
        return 0
    out.i = g.like(pos, out.s, out.n)
    out.kind = CV_BOOL
    return 1


cdef int cv_binary(Generation g, uint8_t op, CVal* a, CVal* b) except -2:
    """`==` `!=` `<` `<=` `>` `>=` `+` `-` `*` and `in` of two scalars into a."""
    cdef bint result
    cdef int64_t x = a.i, y = b.i
    if op == OP_EQ or op == OP_NE:
        result = cv_equal(a, b) == (op == OP_EQ)
    elif a.kind != b.kind:
        return 0
    elif a.kind == CV_LONG and OP_LT <= op <= OP_GE:
        result = x < y if op == OP_LT else (x <= y if op == OP_LE else (x > y if op == OP_GT else x >= y))
    elif a.kind == CV_LONG and OP_ADD <= op <= OP_MUL:
        if op == OP_ADD:
            result = add_overflow(x, y, &a.i)
        elif op == OP_SUB:
            result = sub_overflow(x, y, &a.i)
        else:
            result = mul_overflow(x, y, &a.i)
        return not result  # an overflow is Cedar's error: the general path reports it
    elif a.kind == CV_UID and op == OP_IN:
        result = x == y or g.has_ancestor(<int>x, <int>y)
    else:
        return 0
    a.kind = CV_BOOL
    a.i = result
    return 1


cdef inline int cv_error(CVal* out, int kind, int var, int64_t key) noexcept:
    """Records a Cedar error in `out`; returns 2, cv_eval's answer for an error."""
    out.kind = kind
    out.n = var
    out.i = key
    return 2


cdef str cv_error_message(Generation g, Request r, CVal* err):
    """The message of an error cv_eval answered (2), worded as the general evaluator words it."""
    if err.kind == CV_ERR_NO_MEMBER:
        return no_member_message(g.string_at(<uint32_t>err.i))
    u = request_var(r, <uint8_t>err.n)
    if err.kind == CV_ERR_NO_ENTITY:
        return no_entity_message(u)
    return no_part_message(u, "attribute" if err.kind == CV_ERR_NO_ATTR else "tag", g.string_at(<uint32_t>err.i))


cdef int cv_eval(Generation g, Py_ssize_t* pos, Request r, CVal* out, int depth) except -2:
    """Evaluates the expression at pos[0] (moving past it) to a scalar in `out`: 1; 2 for a Cedar error
    (described in `out`); or 0 when it needs the general evaluator (pos[0] is then anywhere in the
    expression)."""
    cdef uint8_t op
    cdef uint32_t n
    cdef int k
    cdef CVal right
    if depth > CV_MAX_DEPTH:
        return 0
    op = g.u8(pos[0])
    pos[0] += 1
    if op == OP_STR:
        n = g.u32(pos[0])
        pos[0] += 4
        out.kind = CV_STR
        out.s = <const char*>g.base + g.str_span(g.string_offset(n), &out.n)
        out.i = n
        return 1
    if op == OP_GETATTR or op == OP_HAS:
        return cv_attr(g, op, pos, r, out, depth)
    if op == OP_AND or op == OP_OR:
        k = cv_eval(g, pos, r, out, depth + 1)
        if k != 1:
            return k
        if out.kind != CV_BOOL:
            return 0
        if (op == OP_AND) != (out.i != 0):  # false && ..., true || ...
            pos[0] += 4 + <Py_ssize_t>g.u32(pos[0])
            return 1
        pos[0] += 4
        k = cv_eval(g, pos, r, out, depth + 1)
        if k != 1:
            return k
        return out.kind == CV_BOOL
    if OP_EQ <= op <= OP_IN:
        # Cedar evaluates both operands, then applies the operator.
        k = cv_eval(g, pos, r, out, depth + 1)
        if k != 1:
            return k
        k = cv_eval(g, pos, r, &right, depth + 1)
        if k != 1:
            if k == 2:
                out[0] = right
            return k
        return cv_binary(g, op, out, &right)
    if op == OP_LIT:
        return cv_value_at(g, pos, out)
    if op == OP_VAR:
        pos[0] += 1
        return g.u8(pos[0] - 1) < 3 and cv_of_object(request_var(r, g.u8(pos[0] - 1)), out) == 1
    if op == OP_NOT:
        k = cv_eval(g, pos, r, out, depth + 1)
        if k != 1:
            return k
        if out.kind != CV_BOOL:
            return 0
        out.i = not out.i
        return 1
    if OP_CONTAINS <= op <= OP_CONTAINS_ANY:
        return cv_contains(g, op, pos, r, out, depth)
    if op == OP_HAS_TAG or op == OP_GET_TAG:
        return cv_tag(g, op, pos, r, out, depth)
    if op == OP_LIKE:
        return cv_like(g, pos, r, out, depth)
    return 0
