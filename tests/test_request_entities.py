"""Request entities (Engine.check / check_batch `entities`) against cedarpy, the oracle.

Each case compiles a generated policy set and entity store (tests/cedar_gen.py: expression families, and
repository-shaped cases with thousands of stored entities in hierarchies; and here, 2,000+ users and
documents under nested groups and folders with 200 policies scoped to them, where about a third of the
decisions change with the request's entities), then draws entities for the request: stored entities replaced (often in the middle of a hierarchy, so that stored descendants' ancestry
passes through them), uids only referenced as parents made entities, and new ones, with parents among
stored entities, each other and unknown uids. The oracle is cedarpy.is_authorized with the stored entities
whose uid the request does not bring, plus the request's. Compared per request: decision, determining
policies, erroring policies; where cedarpy refuses the entities (a cycle, a bad value), authz must raise
RequestError. Every request is decided by check (entities=), check_batch (entities=, and as each item's own
`entities`), and once more without entities against the stored-only oracle: nothing may leak.
"""

import json
import random

import pytest
from hypothesis import given, strategies as st

import cedar_gen as cg
from test_differential import SCALE, _fail, _settings

ACTION = cg.ACTION_TYPE


def _stored_ancestors(entities):
    """uid -> its stored ancestors (the stored graph is acyclic: the compiler refuses cycles)."""
    parents = {cg.uid_of(e): [cg.uid_of({"uid": p}) for p in e["parents"]] for e in entities}
    memo = {}

    def closure(u, depth=0):
        if u not in memo:
            out = set()
            for p in parents.get(u, ()):
                out.add(p)
                out |= closure(p, depth + 1)
            memo[u] = out
        return memo[u]

    return {u: closure(u) for u in parents}


def _reaches(graph, start, goal):
    """`goal` is `start` or one of its ancestors in `graph` (uid -> parents)."""
    seen, stack = set(), [start]
    while stack:
        u = stack.pop()
        if u == goal:
            return True
        if u not in seen:
            seen.add(u)
            stack.extend(graph.get(u, ()))
    return False


def _request_entities(v, stored_entities, n_max=6):
    """Entities for a request: replacements of stored ones, parent-only uids made entities, new uids. Their
    parents keep the hierarchy acyclic, except in about one case in ten, where one parent may close a cycle
    (cedarpy refuses those: so must authz)."""
    stored = [cg.uid_of(e) for e in stored_entities if cg.uid_of(e)[0] != ACTION]
    referenced = sorted({cg.uid_of({"uid": p}) for e in stored_entities for p in e["parents"]} - set(stored))
    referenced = [u for u in referenced if u[0] != ACTION]
    fresh = [u for u in cg.ALL_UIDS if u not in stored] + [("User", "odd \"id\""), ("NS::Res", "new")]
    # Stored entities with stored children (replacing one changes its descendants' ancestry), and the first
    # stored entities (the ones the generated policies name).
    inner = sorted({cg.uid_of({"uid": p}) for e in stored_entities for p in e["parents"]} & set(stored))
    named = stored[:64]
    chosen = []
    for _ in range(v.num(1, n_max)):
        r = v.num(0, 9)
        if r <= 2 and inner:
            u = v.pick(inner)
        elif r <= 5 and stored:
            u = v.pick(stored)
        elif r <= 6 and referenced:
            u = v.pick(referenced)
        else:
            u = v.pick(fresh)
        if u not in chosen:
            chosen.append(u)
    v.known = tuple(stored[:64] + chosen)
    # The union's hierarchy as it is built: each request entity replaces its uid's parents.
    graph = {cg.uid_of(e): [cg.uid_of({"uid": p}) for p in e["parents"]] for e in stored_entities}
    cycle_allowed = v.chance(10)
    ents = []
    for u in chosen:
        graph[u] = parents = []
        for _ in range(v.num(0, 3)):
            r = v.num(0, 99)
            if r < 40:
                x = v.pick(chosen)  # another request entity
            elif r < 85 and stored:
                x = v.pick(named if v.chance(50) else stored)  # a stored entity
            else:
                x = (v.pick(cg.ENTITY_TYPES), v.pick(cg.IDS))  # maybe no entity at all
            if x in parents:
                continue
            if _reaches(graph, x, u):
                if not cycle_allowed:
                    continue
                cycle_allowed = False  # one cycle at most
            parents.append(x)
        ent = {"uid": cg.uid_json(u) if v.chance(85) else {"__entity": cg.uid_json(u)},
               "attrs": v.record(2, dense=v.chance(60)),
               "parents": [cg.uid_json(x) if v.chance(90) else {"__entity": cg.uid_json(x)} for x in parents]}
        if v.chance(50):
            ent["tags"] = {key: v.any_value(1) for key in v.subset(cg.TAG_KEYS, 3)}
        ents.append(ent)
    return ents


def _extra_requests(v, stored_entities, ents, n):
    """Requests about the request's entities and the stored entities below them."""
    chosen = [cg.uid_of(e) for e in ents]
    below = [u for u, anc in _stored_ancestors(stored_entities).items() if anc & set(chosen) and u[0] != ACTION]
    stored = [cg.uid_of(e) for e in stored_entities if cg.uid_of(e)[0] != ACTION]
    pool = chosen + below[:50] + stored[:20]
    out = []
    for _ in range(n):
        out.append({"principal": cg.uid_json(v.pick(pool)),
                    "action": cg.uid_json((ACTION, v.pick(cg.ACTION_IDS))) if v.chance(95) else cg.uid_json(v.pick(pool)),
                    "resource": cg.uid_json(v.pick(pool)),
                    "context": v.record(2, dense=v.chance(60)) if v.chance(80) else {}})
    return out


@st.composite
def overlay_cases(draw, base):
    case = draw(base)
    v = cg.ValueGen(cg.ByteSource(draw(cg.BYTES)), "all")
    ents = _request_entities(v, case["entities"])
    case["request_entities"] = ents
    case["requests"] = case["requests"] + _extra_requests(v, case["entities"], ents, v.num(3, 8))
    return case


def union(stored, ents):
    """The oracle's entities: the stored ones the request does not replace, and the request's."""
    replaced = {cg.uid_of(e) for e in ents}
    return [e for e in stored if cg.uid_of(e) not in replaced] + ents


def check_overlay_case(h, case):
    from authz.errors import RequestError

    policy_files, entity_files = cg.policy_files(case), cg.entity_files(case)
    text, stored, layout = cg.combine(policy_files, entity_files)
    ents, requests = case["request_entities"], case["requests"]
    plain = cg.cedarpy_outcomes(text, stored, requests, layout)
    if any(isinstance(e, cg.NoDecision) and e.kind != "request" for e in plain):
        return  # cedarpy refuses the stored case itself: test_differential covers that
    h.load(policy_files, entity_files)
    engine = h.engine
    expected = cg.cedarpy_outcomes(text, union(stored, ents), requests, layout)
    where = "request entities:\n" + json.dumps(ents, indent=1, ensure_ascii=False)
    if any(isinstance(e, cg.NoDecision) and e.kind == "entities" for e in expected):
        for req in requests:
            try:
                d = engine.check(req["principal"], req["action"], req["resource"], req["context"], entities=ents)
            except RequestError:
                continue
            _fail("cedarpy refuses the request entities (%s) but authz decided %r on %r\n%s"
                  % ([e for e in expected if isinstance(e, cg.NoDecision)][0].messages[0][:300], d, req, where),
                  policy_files, union(stored, ents), requests, expected)
        with pytest.raises(RequestError):
            engine.check_batch(requests, entities=ents)
        return
    good = [(r, e) for r, e in zip(requests, expected) if not isinstance(e, cg.NoDecision)]
    batched = [cg.decision_outcome(d) for d in engine.check_batch([r for r, _ in good], entities=ents)] if good else []
    own = [cg.decision_outcome(d) for d in engine.check_batch([{**r, "entities": ents} for r, _ in good])] if good else []
    for (req, exp), b, o in zip(good, batched, own):
        single = cg.decision_outcome(engine.check(req["principal"], req["action"], req["resource"], req["context"],
                                                  entities=ents))
        for how, got in (("check", single), ("check_batch", b), ("check_batch, the item's own entities", o)):
            if got != exp:
                _fail("decision mismatch (%s) for request %r\n cedarpy: %r\n authz:   %r\n%s" % (how, req, exp, got, where),
                      policy_files, union(stored, ents), requests, expected)
    for req, exp in zip(requests, expected):
        if isinstance(exp, cg.NoDecision):
            with pytest.raises(RequestError):
                engine.check(req["principal"], req["action"], req["resource"], req["context"], entities=ents)
    # Nothing leaks: the same requests without entities are decided on the stored entities alone.
    for req, exp in zip(requests, plain):
        if isinstance(exp, cg.NoDecision):
            continue
        got = cg.decision_outcome(engine.check(req["principal"], req["action"], req["resource"], req["context"]))
        if got != exp:
            _fail("after a request with entities, %r is decided differently without them\n cedarpy: %r\n authz:   %r"
                  % (req, exp, got), policy_files, stored, requests, plain)


def _run(h, strategy, count, shape=None):
    ran = []

    @_settings(count)
    @given(case=overlay_cases(strategy))
    def run(case):
        if shape is not None:
            shape(case)
        ran.append(1)
        check_overlay_case(h, case)

    run()
    assert len(ran) >= max(1, int(count * SCALE))


def test_graph(authz_harness):
    """Hierarchies, scopes, `in`, `is ... in`, tags: the request's entities replace and extend them."""
    _run(authz_harness, cg.cases(family="graph"), 500)


def test_all(authz_harness):
    """Every construct (attributes of every kind, extension values, records) read from request entities."""
    _run(authz_harness, cg.cases(family="all"), 300)


def test_repository_shaped(authz_harness):
    """Many look-alike policies in many files and 300 stored entities in a hierarchy."""
    _run(authz_harness, cg.repo_cases(max_files=12, extra_entities=300, requests=(2, 4)), 50)


@pytest.mark.slow
def test_large(authz_harness):
    """Over 1,000 policies and 3,000 stored entities; the request replaces entities inside the hierarchy."""
    def shape(case):
        assert len(case["policies"]) >= 1000 and len(case["entities"]) >= 3000

    _run(authz_harness, cg.repo_cases(min_files=20, max_files=30, max_per_file=50, min_policies=1000,
                                      extra_entities=3000, requests=(5, 10)), 3, shape)


# -- deep hierarchies: policies scoped to groups and folders, the request moves parts of the tree -----------

def _tree(rng, kind, n, roots):
    """`n` entities of type `kind` ids k0.., each with 1-2 parents among the earlier ones (or `roots`)."""
    out, made = [], list(roots)
    for k in range(n):
        uid = (kind, "%s%d" % (kind[0].lower(), k))
        parents = rng.sample(made, min(len(made), rng.choice((1, 1, 2)))) if made else []
        out.append((uid, parents))
        made.append(uid)
    return out


@st.composite
def hierarchy_cases(draw, n_groups=60, n_users=1500, n_folders=60, n_docs=600, n_policies=200):
    """Thousands of stored users and documents under nested groups and folders, policies scoped to
    groups and folders (found through the index by the principal's and resource's ancestors), and request
    entities that move groups, folders, users and documents elsewhere in the tree or add new ones."""
    rng = random.Random(draw(st.integers(0, 2**32 - 1)))
    groups = _tree(rng, "Group", n_groups, [])
    folders = _tree(rng, "Folder", n_folders, [])
    g_uids, f_uids = [u for u, _ in groups], [u for u, _ in folders]
    users = [(("User", "u%d" % k), rng.sample(g_uids, rng.choice((1, 1, 2)))) for k in range(n_users)]
    docs = [(("Doc", "d%d" % k), rng.sample(f_uids, 1)) for k in range(n_docs)]
    ents = []
    for uid, parents in groups + folders:
        ents.append({"uid": cg.uid_json(uid), "attrs": {}, "parents": [cg.uid_json(p) for p in parents]})
    for uid, parents in users:
        ents.append({"uid": cg.uid_json(uid), "attrs": {"level": rng.randrange(5)},
                     "parents": [cg.uid_json(p) for p in parents]})
    for uid, parents in docs:
        attrs = {"secret": rng.random() < 0.1, "owner": {"__entity": cg.uid_json(rng.choice(users)[0])}}
        ents.append({"uid": cg.uid_json(uid), "attrs": attrs, "parents": [cg.uid_json(p) for p in parents]})
    pols = []
    for k in range(n_policies):
        g, f = cg.uid_text(rng.choice(g_uids)), cg.uid_text(rng.choice(f_uids))
        r = rng.randrange(6)
        if r <= 2:
            pols.append('permit(principal in %s, action == Action::"read", resource in %s) when { principal.level >= %d };'
                        % (g, f, rng.randrange(4)))
        elif r == 3:
            pols.append('forbid(principal in %s, action, resource in %s) when { resource.secret };' % (g, f))
        elif r == 4:
            pols.append('permit(principal, action == Action::"edit", resource in %s) when { resource.owner in %s };'
                        % (f, g))
        else:
            pols.append('permit(principal is User in %s, action, resource) when { resource in %s };' % (g, f))
    # The request's entities: groups and folders moved (their stored members follow), users and docs moved.
    graph = {cg.uid_of(e): [cg.uid_of({"uid": p}) for p in e["parents"]] for e in ents}
    request_entities = []
    for _ in range(rng.randrange(1, 6)):
        r = rng.randrange(4)
        uid = rng.choice(g_uids if r == 0 else f_uids if r == 1 else [u for u, _ in users] if r == 2 else
                         [d for d, _ in docs] + [("Doc", "new")])
        if any(cg.uid_of(e) == uid for e in request_entities):
            continue
        pool = g_uids if uid[0] in ("Group", "User") else f_uids
        parents = [p for p in rng.sample(pool, rng.choice((0, 1, 2))) if not _reaches(graph, p, uid)]
        graph[uid] = parents
        attrs = {} if uid[0] in ("Group", "Folder") else \
            {"level": rng.randrange(5)} if uid[0] == "User" else \
            {"secret": rng.random() < 0.3, "owner": {"__entity": cg.uid_json(rng.choice(users)[0])}}
        request_entities.append({"uid": cg.uid_json(uid), "attrs": attrs, "parents": [cg.uid_json(p) for p in parents]})
    # Requests about the moved entities' members, and some random ones.
    stored_anc = _stored_ancestors(ents)
    moved = {cg.uid_of(e) for e in request_entities}
    below = [u for u, anc in stored_anc.items() if anc & moved or u in moved]
    principals = [u for u in below if u[0] == "User"] or [u for u, _ in users]
    resources = [u for u in below if u[0] == "Doc"] + [("Doc", "new")]
    requests = []
    for _ in range(12):
        principal = rng.choice(principals) if rng.random() < 0.7 else rng.choice(users)[0]
        requests.append({"principal": cg.uid_json(principal),
                         "action": cg.uid_json(("Action", rng.choice(("read", "edit", "list")))),
                         "resource": cg.uid_json(rng.choice(resources) if rng.random() < 0.7 else rng.choice(docs)[0]),
                         "context": {}})
    return {"policies": pols, "ids": ["policies.cedar:%d" % k for k in range(len(pols))], "entities": ents,
            "requests": requests, "layout": [(cg.POLICY_FILE, len(pols))], "entity_split": len(ents),
            "request_entities": request_entities}


def test_hierarchy(authz_harness):
    """2,000+ stored entities in nested groups and folders, policies scoped to them; the request moves parts
    of the tree: index keys and scopes follow the recomputed ancestry."""
    ran = []

    @_settings(20)
    @given(case=hierarchy_cases())
    def run(case):
        ran.append(1)
        check_overlay_case(authz_harness, case)

    run()
    assert len(ran) >= max(1, int(20 * SCALE))


BAD_VALUES = (1.5, 2**63, None, {"__extn": {"fn": "ip", "arg": "nope"}}, {"__extn": {"fn": "decimal", "arg": "1.23456"}},
              {"__extn": {"fn": "nosuchfn", "arg": "x"}}, {"__entity": {"type": "User"}}, [1, 2.5],
              {"__extn": {"fn": "datetime", "arg": "2024-13-01"}}, {"__extn": {"fn": "duration", "arg": "1x"}})


@st.composite
def invalid_cases(draw):
    """A case whose request entities cedarpy may refuse (a bad attribute or tag value, a bad uid)."""
    case = draw(overlay_cases(cg.cases(family="all", max_policies=3)))
    v = cg.ValueGen(cg.ByteSource(draw(cg.BYTES)), "all")
    ent = case["request_entities"][0]
    r = v.num(0, 3)
    if r == 0:
        ent["attrs"][v.pick(("n", "x"))] = v.pick(BAD_VALUES)
    elif r == 1:
        ent["attrs"]["rec"] = {"inner": v.pick(BAD_VALUES)}
    elif r == 2:
        ent["tags"] = {"t": v.pick(BAD_VALUES)}
    else:
        ent["parents"] = ent["parents"] + [v.pick(({"type": "", "id": "a"}, {"type": "User"}, {"type": "if", "id": "a"},
                                                   {"type": "User", "id": 1}))]
    return case


def test_invalid_entities(authz_harness):
    """Bad values and references in request entities: refused where cedarpy refuses them, decided alike otherwise."""
    ran = []

    @_settings(150)
    @given(case=invalid_cases())
    def run(case):
        ran.append(1)
        check_overlay_case(authz_harness, case)

    run()
    assert len(ran) >= int(150 * SCALE)


# -- the engine API and `authz check` ------------------------------------------------------------------------

CLI_POLICIES = '''@id("read-docs")
permit(principal in Group::"eng", action == Action::"read", resource) when { context.env == "prod" };
@id("secret")
forbid(principal, action, resource) when { resource has secret && resource.secret };
'''
CLI_ENTITIES = [
    {"uid": {"type": "User", "id": "alice"}, "attrs": {}, "parents": [{"type": "Team", "id": "t"}]},
    {"uid": {"type": "Team", "id": "t"}, "attrs": {}, "parents": [{"type": "Group", "id": "eng"}]},
    {"uid": {"type": "Doc", "id": "s"}, "attrs": {"secret": True, "n": 2**62, "ip": {"__extn": {"fn": "ip", "arg": "10.0.0.0/8"}}},
     "parents": [], "tags": {"k": ["a", {"__entity": {"type": "User", "id": "alice"}}]}},
]


def _compiled(tmp_path):
    import authz

    (tmp_path / "p.cedar").write_text(CLI_POLICIES)
    (tmp_path / "entities.json").write_text(json.dumps(CLI_ENTITIES))
    db = str(tmp_path / "db")
    authz.compile([str(tmp_path)], db=db)
    return db


def test_check_jsonl_entities(tmp_path):
    import subprocess
    import sys

    db = _compiled(tmp_path)
    read = {"principal": 'User::"alice"', "action": 'Action::"read"', "resource": 'Doc::"d"', "context": {"env": "prod"}}
    lines = [read,
             {**read, "entities": [{"uid": {"type": "Team", "id": "t"}, "attrs": {}, "parents": []}]},
             {**read, "entities": [{"uid": {"type": "Doc", "id": "d"}, "attrs": {"secret": True}, "parents": []}]},
             {**read, "entities": [{"uid": {"type": "Action", "id": "read"}, "attrs": {}, "parents": []}]},
             {**read, "entities": "nope"},
             read]
    stdin = "".join(json.dumps(x) + "\n" for x in lines)
    out = subprocess.run([sys.executable, "-m", "authz", "check", "--db", db], input=stdin, capture_output=True,
                         text=True, timeout=60)
    assert out.returncode == 1, out.stderr
    got = [json.loads(x) for x in out.stdout.splitlines()]
    assert [g.get("decision") for g in got] == ["allow", "deny", "deny", None, None, "allow"]
    assert got[2]["policies"] == ["secret"]
    assert got[3]["error"].startswith('`entities[0].uid`: `Action::"read"` is an action')
    assert got[4]["error"] == "`entities`: expected an array of Cedar entities, not a string"


def test_stored_entity_reads_back_as_cedar_json(tmp_path):
    """Engine.entity: what a caller that overlays some attributes starts from; sent back unchanged, it
    changes no decision."""
    import authz

    engine = authz.Engine(_compiled(tmp_path))
    for e in CLI_ENTITIES:
        got = engine.entity(e["uid"])
        assert got == {"tags": {}, **e}
    assert engine.entity('Group::"eng"') is None  # only a parent: not an entity
    assert engine.entity('Nobody::"x"') is None
    read = ('User::"alice"', 'Action::"read"', 'Doc::"s"', {"env": "prod"})
    same = [engine.entity(e["uid"]) for e in CLI_ENTITIES]
    assert engine.check(*read, entities=same) == engine.check(*read)
    ov = engine.request_entities(same)  # checked once, used by several calls
    assert len(ov) == 3
    assert engine.check_batch([dict(zip(("principal", "action", "resource", "context"), read))] * 2, entities=ov) \
        == [engine.check(*read)] * 2
    engine.close()


def test_an_index_without_direct_parents(tmp_path):
    """An index published before the direct parents were (no `par/` key): entities that only add or replace
    entities without stored descendants still work; replacing one with descendants asks for a new compile."""
    import lmdb

    import authz
    from authz.engine.index import CURRENT_KEY, parents_key
    from authz.errors import RequestError

    db = _compiled(tmp_path)
    with lmdb.open(db, subdir=True) as env, env.begin(write=True) as txn:
        number = int.from_bytes(txn.get(CURRENT_KEY), "little")
        assert txn.delete(parents_key(number))
    engine = authz.Engine(db)
    read = ('User::"alice"', 'Action::"read"', 'Doc::"d"', {"env": "prod"})
    alice = {"uid": {"type": "User", "id": "alice"}, "attrs": {}, "parents": []}
    assert engine.check(*read).decision == "allow"
    assert engine.check(*read, entities=[alice]).decision == "deny"
    with pytest.raises(RequestError, match="compile it again"):
        engine.check(*read, entities=[{"uid": {"type": "Team", "id": "t"}, "attrs": {}, "parents": []}])
    assert engine.entity('User::"alice"')["parents"] == [{"type": "Group", "id": "eng"}, {"type": "Team", "id": "t"}]
    engine.close()
    authz.compile([str(tmp_path)], db=db)  # the next generation publishes them again
    engine = authz.Engine(db)
    assert engine.check(*read, entities=[{"uid": {"type": "Team", "id": "t"}, "attrs": {}, "parents": []}]).decision \
        == "deny"
    assert engine.entity('User::"alice"')["parents"] == [{"type": "Team", "id": "t"}]
    engine.close()
    with lmdb.open(db, subdir=True) as env, env.begin() as txn:
        keys = [bytes(k) for k, _ in txn.cursor()]
    assert sorted(k for k in keys if k.startswith(b"par/")) == [parents_key(number + 1)]  # the previous one removed
