# Request entities: included by _evaluator.pyx, after the request readers.
#
# A call to Engine.check / check_batch may bring entities of its own (Cedar's JSON entity format). For that call
# they replace the stored entities with the same uid, whole: attributes, tags and parents. The Overlay holds them,
# resolved against the generation, and answers what the evaluator asks of an entity when a request has one
# (Request.ov; None on every other request, which then reads the map as before):
#   * attributes and tags of an entity it replaces or adds (Generation.ev_attr, binary, via `entity`);
#   * `in` and the scopes' ancestor tests (`uid_in`, `matches`), and the index keys of the principal and the
#     resource (`keys`), from ancestors recomputed over the new graph: an entity of the request has its own
#     parents (stored entities or other request entities); a stored entity whose stored ancestors hold none of
#     the replaced stored entities keeps its closed ancestor list; any other stored entity is walked through its
#     direct parents (published beside the generation: compiler.writer.parents_table).
# Conditions are evaluated by the general evaluator (the scalar path reads the map only). What the overlay
# works out (ancestors, keys) is kept in it: it serves one call (or the calls it is passed to), never the next.

MAX_REQUEST_ENTITIES = 100          # entities one call may bring
MAX_REQUEST_ENTITY_VALUES = 10000   # JSON values (every object, array, string, number...) in them, in total
_ENTITY_FIELDS = ("uid", "attrs", "parents", "tags")


@cython.final
cdef class OEntity:
    """An entity of the request: its uid, attributes and tags (Cedar values) and direct parents (Uids)."""
    cdef Uid uid
    cdef dict attrs
    cdef dict tags
    cdef list parents


cdef inline bint is_action_type(str t):
    return t == "Action" or t.endswith("::Action")


cdef Py_ssize_t count_values(object v, Py_ssize_t left, int depth, str field) except -2:
    """`left` less the JSON values in `v`; RequestError when that goes below 0 or `v` nests too deep."""
    left -= 1
    if left < 0:
        raise RequestError(f"`entities`: more than {MAX_REQUEST_ENTITY_VALUES} JSON values in the request's "
                           "entities")
    if depth > MAX_CONTEXT_DEPTH:
        raise RequestError(f"`{field}`: nested too deeply")
    cdef type t = type(v)
    if t is dict:
        for item in (<dict>v).values():
            left = count_values(item, left, depth + 1, field)
    elif t is list or t is tuple:
        for item in v:
            left = count_values(item, left, depth + 1, field)
    return left


cdef Uid entity_ref(Generation g, object ref, str field):
    """A Cedar JSON entity reference ({"type", "id"} or {"__entity": {...}}) as a Uid of `g`."""
    inner = ref
    if type(inner) is dict and len(<dict>inner) == 1 and "__entity" in <dict>inner:
        inner = (<dict>inner)["__entity"]
    if type(inner) is not dict:
        raise RequestError(f'`{field}`: an entity reference is {{"type": …, "id": …}}, not {_kind(inner)}')
    t, i = (<dict>inner).get("type"), (<dict>inner).get("id")
    if type(t) is not str or type(i) is not str or len(<dict>inner) != 2:
        raise RequestError(f'`{field}`: an entity reference is {{"type": …, "id": …}} with two strings')
    return resolve_cached(g, <str>t, <str>i, field)


cdef str without_context_prefix(str message):
    """A message of the context readers, which name `context`, for another field."""
    for prefix in ("context: ", "`context`: "):
        if message.startswith(prefix):
            return message[len(prefix):]
    return message


cdef dict record_of(Generation g, object v, str field):
    """An entity's attrs or tags (a JSON object of Cedar JSON values) as a record of Cedar values."""
    if type(v) is not dict:
        raise RequestError(f"`{field}`: expected a JSON object, not {_kind(v)}")
    cdef dict out = {}
    for key, item in (<dict>v).items():
        if type(key) is not str:
            raise RequestError(f"`{field}`: keys must be strings")
        try:
            out[key] = convert_value(g, item, 1, True)
        except RequestError as err:
            raise RequestError(f"`{field}.{key}`: {without_context_prefix(str(err))}") from None
    return out


@cython.final
cdef class Overlay:
    """The entities a call brings (see the top of _overlay.pxi), resolved against generation `g`.
    Made by Engine.request_entities; check and check_batch take it as `entities`."""
    cdef Generation g
    cdef readonly object source   # the entity list it was made of (made again for another generation)
    cdef dict entities            # Uid -> OEntity
    cdef list replaced            # the stored uid indices it replaces
    cdef dict affected_memo       # stored uid index -> whether its stored ancestors hold a replaced one
    cdef dict ancestors_memo      # Uid -> (set of stored uid indices, set of Uids that are not stored)
    cdef dict keys_memo           # (Uid, role) -> (bytearray of IndexKeys, count)

    def __len__(self):
        return len(self.entities)

    cdef inline OEntity entity(self, Uid u):
        return <OEntity>self.entities.get(u)

    cdef bint affected(self, Uid u) except -1:
        """`u` is one of the request's entities, or stored with a replaced entity among its stored ancestors:
        its ancestors are then the recomputed ones."""
        if u in self.entities:
            return True
        return u.idx >= 0 and self.affected_stored(u.idx, u.rec)

    cdef bint affected_stored(self, int idx, Py_ssize_t rec) except -1:
        if not self.replaced:
            return False
        memo = self.affected_memo.get(idx)
        if memo is not None:
            return memo
        cdef bint found = False
        for t in self.replaced:
            if self.g.has_ancestor_at(rec, <int>t):
                found = True
                break
        self.affected_memo[idx] = found
        return found

    cdef tuple ancestors(self, Uid u):
        """The ancestors of an affected `u` over the new graph: (stored uid indices, Uids not stored)."""
        cached = self.ancestors_memo.get(u)
        if cached is not None:
            return <tuple>cached
        cdef Generation g = self.g
        cdef set ints = set(), others = set()
        cdef OEntity e = self.entity(u)
        cdef list stack = list(e.parents) if e is not None else g.stored_parents(u.idx)
        cdef Uid p
        while stack:
            p = <Uid>stack.pop()
            if p.idx >= 0:
                if p.idx in ints:
                    continue
                ints.add(p.idx)
            else:
                if p in others:
                    continue
                others.add(p)
            e = self.entity(p)
            if e is not None:
                stack.extend(e.parents)
            elif p.idx >= 0:
                if self.affected_stored(p.idx, p.rec):
                    stack.extend(g.stored_parents(p.idx))
                else:
                    g.add_ancestors(p.rec, ints)
        result = (ints, others)
        self.ancestors_memo[u] = result
        return result

    cdef bint matches(self, Uid u, uint32_t target) except -1:
        """Generation.uid_matches over the new graph: `u` is the stored uid `target` or has it as an ancestor."""
        if u.idx >= 0 and <uint32_t>u.idx == target:
            return True
        if not self.affected(u):
            return self.g.uid_matches(u, target)
        return <int>target in <set>self.ancestors(u)[0]

    cdef bint uid_in(self, Uid a, Uid b) except -1:
        """Cedar's `a in b` over the new graph."""
        if a.type == b.type and a.id == b.id:
            return True
        if not self.affected(a):
            return self.g.uid_in(a, b)
        anc = self.ancestors(a)
        return b.idx in <set>anc[0] if b.idx >= 0 else b in <set>anc[1]

    cdef int add_action_lists(self, Uid a, uint32_t* out, int n, int cap) except -1:
        """Generation.collect's policies filed under an affected action (a request whose action is not an
        Action, say, and is one of the request's entities): those of the action and its recomputed ancestors."""
        cdef Generation g = self.g
        if a.idx >= 0:
            n = g.add_list(g.u32(a.rec + UID_ALIST), out, n, cap, True)
        for t in sorted(self.ancestors(a)[0]):
            n = g.add_list(g.u32(g.uid_record(<uint32_t>t) + UID_ALIST), out, n, cap, True)
        return n

    cdef IndexKey* keys(self, Uid u, uint8_t role, int* count) except NULL:
        """Generation.index_keys over the new graph (an affected uid's keys are its own, kept here)."""
        if not self.affected(u):
            return self.g.index_keys(u, role, count)
        cached = self.keys_memo.get((u, role))
        if cached is None:
            cached = self.keys_memo[(u, role)] = self.make_keys(u, role)
        count[0] = <int>(<tuple>cached)[1]
        return <IndexKey*><char*>(<bytearray>(<tuple>cached)[0])

    cdef tuple make_keys(self, Uid u, uint8_t role):
        cdef Generation g = self.g
        cdef IndexKey stack[STACK_KEYS]
        cdef int n = g.keys_of(u, role, stack, STACK_KEYS, False)  # ANY, its type, itself
        cdef list ancestors = sorted(self.ancestors(u)[0])
        cdef bytearray buf = bytearray((n + len(ancestors)) * sizeof(IndexKey))
        cdef IndexKey* keys = <IndexKey*><char*>buf
        cdef Py_ssize_t which = 0 if role == KEY_IS_PRINCIPAL else 8, rec
        cdef uint32_t a
        memcpy(keys, stack, n * sizeof(IndexKey))
        for item in ancestors:
            a = <uint32_t>item
            if u.idx >= 0 and <uint32_t>u.idx == a:
                continue  # a cycle back to itself: its key is there already
            rec = g.uid_record(a)
            if g.u8(rec + 4) & role:
                keys[n].key = a
                keys[n].mask = g.u64(rec + UID_MASKS + which)
                keys[n].bit = key_bit_c(a)
                n += 1
        return (buf, n)


cdef Overlay make_overlay(Generation g, object entities):
    """The Overlay of a call's `entities` (a list of Cedar JSON entities); RequestError naming what is wrong."""
    if type(entities) is not list and type(entities) is not tuple:
        raise RequestError(f"`entities`: expected an array of Cedar entities, not {_kind(entities)}")
    if len(entities) > MAX_REQUEST_ENTITIES:
        raise RequestError(f"`entities`: {len(entities)} entities, more than the {MAX_REQUEST_ENTITIES} a request "
                           "may bring")
    cdef Overlay ov = Overlay.__new__(Overlay)
    ov.g, ov.source, ov.entities = g, entities, {}
    ov.affected_memo, ov.ancestors_memo, ov.keys_memo = {}, {}, {}
    cdef Py_ssize_t left = MAX_REQUEST_ENTITY_VALUES
    cdef dict first = {}
    cdef OEntity e
    cdef str field
    for k, item in enumerate(entities):
        field = f"entities[{k}]"
        if type(item) is not dict:
            raise RequestError(f'`{field}`: an entity is a JSON object with "uid", "attrs" and "parents", '
                               f"not {_kind(item)}")
        for key in <dict>item:
            if key not in _ENTITY_FIELDS:
                raise RequestError(f'`{field}`: unknown field `{str(key)[:100]}` (an entity has "uid", "attrs", '
                                   '"parents" and optionally "tags")')
        for key in ("uid", "attrs", "parents"):
            if key not in <dict>item:
                raise RequestError(f'`{field}`: no "{key}"' + ("" if key == "uid" else
                                   f' (write "{key}": {"{}" if key == "attrs" else "[]"} for none)'))
        left = count_values(item, left, 0, field)
        e = OEntity.__new__(OEntity)
        e.uid = entity_ref(g, (<dict>item)["uid"], field + ".uid")
        if is_action_type(e.uid.type):
            raise RequestError(f"`{field}.uid`: `{e.uid!r}` is an action: actions and their groups come from the "
                               "compiled policies and entities, not from a request")
        if e.uid in first:
            raise RequestError(f"`{field}.uid`: entity `{e.uid!r}` is given twice (also entities[{first[e.uid]}])")
        first[e.uid] = k
        e.attrs = record_of(g, (<dict>item)["attrs"], field + ".attrs")
        tags = (<dict>item).get("tags")
        e.tags = {} if tags is None and "tags" not in <dict>item else record_of(g, tags, field + ".tags")
        parents = (<dict>item)["parents"]
        if type(parents) is not list:
            raise RequestError(f"`{field}.parents`: expected an array of entity references, not {_kind(parents)}")
        e.parents = [entity_ref(g, p, f"{field}.parents[{j}]") for j, p in enumerate(<list>parents)]
        ov.entities[e.uid] = e
    ov.replaced = sorted([(<Uid>u).idx for u in ov.entities if (<Uid>u).idx >= 0])
    # Cedar refuses an entity hierarchy with a cycle. The stored one has none (the compiler refuses them), so
    # a cycle passes through an entity of the request: one that is its own ancestor.
    cdef Uid u
    for item in ov.entities:
        u = <Uid>item
        anc = ov.ancestors(u)
        if (u.idx in <set>anc[0]) if u.idx >= 0 else (u in <set>anc[1]):
            raise RequestError(f"`entities[{first[u]}].parents`: the parents make a cycle through `{u!r}` (Cedar's "
                               "entity hierarchy has none)")
    return ov


cdef Overlay overlay_for(Generation g, object entities):
    """The overlay a call uses: None for none (no entities, or an empty list); an Overlay made for another
    generation is made again for `g` from its source."""
    if entities is None:
        return None
    cdef Overlay ov
    if type(entities) is Overlay:
        ov = <Overlay>entities
        if ov.g is not g:
            ov = make_overlay(g, ov.source)
    else:
        ov = make_overlay(g, entities)
    return ov if ov.entities else None


cdef object overlay_attr(OEntity e, uint8_t op, str key):
    """`e.key` / `e has key` on an entity of the request."""
    if op == OP_HAS:
        return key in e.attrs
    value = e.attrs.get(key, _MISSING)
    if value is _MISSING:
        raise EvalError(no_part_message(e.uid, "attribute", key))
    return value


cdef object overlay_tag(OEntity e, str key, bint want_value):
    """`e.getTag(key)` / `e.hasTag(key)` on an entity of the request."""
    if not want_value:
        return key in e.tags
    value = e.tags.get(key, _MISSING)
    if value is _MISSING:
        raise EvalError(no_part_message(e.uid, "tag", key))
    return value


_FN_NAMES = {number: name for name, number in LAYOUT["FN_IDS"].items()}


cdef object json_value_at(Generation g, Py_ssize_t* pos):
    """The value at pos[0] in the map in Cedar's JSON form (moving past it); an extension value as the
    `__extn` call it is stored as."""
    cdef uint8_t tag = g.u8(pos[0])
    cdef uint32_t count, i
    if tag == V_UID:
        pos[0] += 5
        u = g.uid_at(g.u32(pos[0] - 4))
        return {"__entity": {"type": u.type, "id": u.id}}
    if tag == V_SET:
        count = g.u32(pos[0] + 1)
        pos[0] += 5
        return [json_value_at(g, pos) for i in range(count)]
    if tag == V_RECORD:
        count = g.u32(pos[0] + 1)
        pos[0] += 5
        out = {}
        for i in range(count):
            key = g.read_str(pos)
            out[key] = json_value_at(g, pos)
        return out
    if tag == V_EXT:
        fn = _FN_NAMES.get(g.u8(pos[0] + 1))
        count = g.u8(pos[0] + 2)
        pos[0] += 3
        if fn is None:
            raise IndexFormatError("unknown extension function in a value")
        args = [json_value_at(g, pos) for i in range(count)]
        return {"__extn": {"fn": fn, "arg": args[0]} if count == 1 else {"fn": fn, "args": args}}
    return g.decode(pos)  # a bool, a Long or a string: its own JSON form


cdef dict json_block(Generation g, Py_ssize_t block):
    """An attrs/tags block (Generation.find_in_block) as a JSON object of Cedar JSON values."""
    cdef dict out = {}
    if block == 0:
        return out
    cdef uint32_t count = g.u32(block), i
    cdef Py_ssize_t pos = block + 4, at
    for i in range(count):
        at = pos + 8
        out[g.string_at(g.u32(pos))] = json_value_at(g, &at)
        pos += 8 + <Py_ssize_t>g.u32(pos + 4)
    return out


cdef object stored_entity(Generation g, Uid u):
    """The stored entity `u` in Cedar's JSON entity format, or None when the generation has none. Its parents
    are its direct parents, or where the index has no parents table its closed ancestors (the same
    ancestry for every `in`)."""
    if not g.is_entity(u):
        return None
    cdef set closed
    if g.parents_owner is not None:
        parents = g.stored_parents(u.idx)
    else:
        closed = set()
        g.add_ancestors(u.rec, closed)
        parents = [g.uid_at(a) for a in sorted(closed)]
    return {"uid": {"type": u.type, "id": u.id},
            "attrs": json_block(g, g.u32(u.rec + UID_ATTRS)),
            "parents": [{"type": (<Uid>p).type, "id": (<Uid>p).id} for p in parents],
            "tags": json_block(g, g.u32(u.rec + UID_TAGS))}
