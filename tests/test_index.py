"""The policy index: requests find the policies filed under any of their keys, however many keys they have."""

import json

import cedarpy
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

import authz


def test_principal_with_more_ancestors_than_the_stack_buffer(tmp_path):
    # 100 nested groups: more index keys than the evaluator keeps on its stack (64).
    depth = 100
    entities = [{"uid": {"type": "User", "id": "u"}, "attrs": {}, "parents": [{"type": "Group", "id": "g0"}]}]
    entities += [{"uid": {"type": "Group", "id": f"g{i}"}, "attrs": {},
                  "parents": [{"type": "Group", "id": f"g{i + 1}"}] if i + 1 < depth else []} for i in range(depth)]
    policies = "".join(f'permit(principal in Group::"g{i}", action, resource in Folder::"f{i % 3}");\n'
                       for i in range(0, depth, 7))
    (tmp_path / "p.cedar").write_text(policies)
    (tmp_path / "entities.json").write_text(json.dumps(entities))
    resources = [{"uid": {"type": "Doc", "id": f"d{k}"}, "attrs": {}, "parents": [{"type": "Folder", "id": f"f{k}"}]}
                 for k in range(3)]
    (tmp_path / "r.entities.json").write_text(json.dumps(resources))
    authz.compile([str(tmp_path)], db=str(tmp_path / "db"))
    with authz.Engine(str(tmp_path / "db")) as engine:
        for k in range(3):
            request = {"principal": 'User::"u"', "action": 'Action::"a"', "resource": f'Doc::"d{k}"', "context": {}}
            ours = engine.check(**request)
            theirs = cedarpy.is_authorized(request, policies, json.dumps(entities + resources))
            assert ours.allowed == theirs.allowed
            assert sorted(ours.policies) == sorted(f"p.cedar:{int(r[len('policy'):])}" for r in theirs.diagnostics.reasons)
            assert len(ours.policies) >= 4


# -- partner masks: a pre-filter of the pair index (layout.py) --

import random
import struct

from authz.engine import _evaluator
from authz.compiler import compile_generation
from authz.compiler import layout as L


def _read_str(blob, off):
    (n,) = struct.unpack_from("<I", blob, off)
    return blob[off + 4:off + 4 + n].decode(), off + 4 + n


def index_masks(blob):
    """{index key: (role flags, principal mask, resource mask)} as read back from a generation blob,
    and the index key of each uid (type, id) and type name."""
    header = dict(zip(L.HEADER_FIELDS, struct.unpack_from(f"<{len(L.HEADER_FIELDS)}I", blob, 12)))
    keys, masks = {}, {}
    for t in range(header["n_types"]):
        (rec,) = struct.unpack_from("<I", blob, header["types_off"] + 4 * t)
        name, at = _read_str(blob, rec)
        keys[name] = L.TYPE_KEY | t
        masks[L.TYPE_KEY | t] = (blob[at] & 6,) + struct.unpack_from("<QQ", blob, at + 1)
    for u in range(header["n_uids"]):
        (rec,) = struct.unpack_from("<I", blob, header["uids_off"] + 4 * u)
        (type_idx,) = struct.unpack_from("<I", blob, rec)
        type_name = next(n for n, k in keys.items() if isinstance(n, str) and k == L.TYPE_KEY | type_idx)
        keys[(type_name, _read_str(blob, rec + L.UID_FIXED)[0])] = u
        masks[u] = (blob[rec + 4] & 6,) + struct.unpack_from("<QQ", blob, rec + L.UID_MASKS)
    masks[L.ANY_KEY] = (0, header["any_pmask_lo"] | header["any_pmask_hi"] << 32,
                        header["any_rmask_lo"] | header["any_rmask_hi"] << 32)
    return keys, masks


def pair_index(blob):
    """The (principal key, resource key) pairs of a blob's pair index."""
    header = dict(zip(L.HEADER_FIELDS, struct.unpack_from(f"<{len(L.HEADER_FIELDS)}I", blob, 12)))
    entries = (struct.unpack_from("<III", blob, header["pair_hash_off"] + 12 * slot)
               for slot in range(header["pair_hash_size"]))
    return {(pk, rk) for pk, rk, lst in entries if lst}


def test_partner_masks_written_for_a_small_set(tmp_path):
    (tmp_path / "p.cedar").write_text(
        'permit(principal == User::"a", action, resource == Doc::"x");\n'
        'permit(principal in Group::"g", action, resource is Doc);\n'
        'permit(principal, action, resource in Folder::"f");\n'
        'permit(principal is User, action, resource);\n'
        'permit(principal == User::"a", action, resource in Folder::"f");\n'
        'permit(principal, action == Action::"read", resource);\n')
    (tmp_path / "entities.json").write_text(json.dumps([
        {"uid": {"type": "User", "id": "b"}, "attrs": {}, "parents": [{"type": "Group", "id": "g"}]}]))
    keys, masks = index_masks(compile_generation([str(tmp_path)]))
    bit = _evaluator.key_bit
    a, x, g, f, b = (keys[k] for k in [("User", "a"), ("Doc", "x"), ("Group", "g"), ("Folder", "f"), ("User", "b")])
    doc, user, ANY = keys["Doc"], keys["User"], L.ANY_KEY
    P, R = L.KEY_IS_PRINCIPAL, L.KEY_IS_RESOURCE
    assert masks[a] == (P, bit(x) | bit(f), 0)
    assert masks[x] == (R, 0, bit(a))
    assert masks[g] == (P, bit(doc), 0)
    assert masks[doc] == (R, 0, bit(g))
    assert masks[f] == (R, 0, bit(ANY) | bit(a))
    assert masks[user] == (P, bit(ANY), 0)
    assert masks[ANY] == (0, bit(f), bit(user))
    # Keys in no pair (the action, a uid only named as an entity) have no role and no masks.
    assert masks[keys[("Action", "read")]] == masks[b] == (0, 0, 0)
    assert all(bin(bit(k)).count("1") == 1 and bit(k) < 1 << 64 for k in [0, 1, 2, L.TYPE_KEY, ANY, 12345])


def test_mask_pruning_is_exact(tmp_path):
    # Many pairs over few keys: the 64-bit masks are dense and collide, so the filter lets through pairs
    # that are not in the index, and also prunes some; every decision still matches cedarpy.
    rng = random.Random(5)
    users, docs = [f"u{i}" for i in range(14)], [f"d{i}" for i in range(14)]
    groups, folders = ["g0", "g1", "g2", "g3"], ["f0", "f1", "f2", "f3"]
    entities = [{"uid": {"type": "Group", "id": g}, "attrs": {}, "parents": [{"type": "Division", "id": f"v{i % 2}"}]}
                for i, g in enumerate(groups)]
    entities += [{"uid": {"type": "User", "id": u}, "attrs": {}, "parents": [{"type": "Group", "id": groups[i % 4]}]}
                 for i, u in enumerate(users)]
    entities += [{"uid": {"type": "Doc", "id": d}, "attrs": {}, "parents": [{"type": "Folder", "id": folders[i % 4]}]}
                 for i, d in enumerate(docs)]
    principals = ([f'principal == User::"{u}"' for u in users] + [f'principal in Group::"{g}"' for g in groups]
                  + ['principal in Division::"v0"', "principal is User", "principal"])
    resources = ([f'resource == Doc::"{d}"' for d in docs] + [f'resource in Folder::"{f}"' for f in folders]
                 + ["resource is Doc", "resource"])
    policies = ""
    for _ in range(90):
        effect = "forbid" if rng.random() < 0.2 else "permit"
        policies += f"{effect}({rng.choice(principals)}, action, {rng.choice(resources)});\n"
    (tmp_path / "p.cedar").write_text(policies)
    (tmp_path / "entities.json").write_text(json.dumps(entities))

    blob = compile_generation([str(tmp_path)])
    keys, masks = index_masks(blob)
    bit = _evaluator.key_bit
    pks = [k for k, m in masks.items() if m[1]]
    rks = [k for k, m in masks.items() if m[2]]
    admitted = {(p, r) for p in pks for r in rks if masks[p][1] & bit(r) and masks[r][2] & bit(p)}
    indexed = pair_index(blob)
    assert indexed <= admitted                        # no pair of the index is ever pruned
    assert admitted - indexed                         # colliding bits let absent pairs through
    assert len(admitted) < len(pks) * len(rks)        # and the filter prunes others

    authz.compile([str(tmp_path)], db=str(tmp_path / "db"))
    with authz.Engine(str(tmp_path / "db")) as engine:
        for u in users + ["stranger"]:
            for d in docs + ["loose"]:
                request = {"principal": f'User::"{u}"', "action": 'Action::"a"', "resource": f'Doc::"{d}"',
                           "context": {}}
                ours = engine.check(**request)
                theirs = cedarpy.is_authorized(request, policies, json.dumps(entities))
                assert ours.allowed == theirs.allowed, request
                assert sorted(ours.policies) == sorted(
                    f"p.cedar:{int(r[len('policy'):])}" for r in theirs.diagnostics.reasons), request


def test_a_policy_filed_twice_is_reported_once(tmp_path, monkeypatch):
    # The evaluator keeps no `seen` table for the pair lists and the list of all (a well-formed index
    # files each policy once there); an index that files a policy twice still reports it once.
    from authz.compiler import writer

    (tmp_path / "p.cedar").write_text(
        '@id("by-user") permit(principal == User::"a", action, resource);\n'
        '@id("broken") permit(principal == User::"a", action, resource) when { principal.nope };\n'
        '@id("by-folder") forbid(principal, action, resource in Folder::"f") when { context.deny };\n')
    (tmp_path / "entities.json").write_text(json.dumps([
        {"uid": {"type": "User", "id": "a"}, "attrs": {}, "parents": []},
        {"uid": {"type": "Doc", "id": "d"}, "attrs": {}, "parents": [{"type": "Folder", "id": "f"}]}]))
    requests = [{"principal": 'User::"a"', "action": 'Action::"read"', "resource": 'Doc::"d"', "context": {"deny": deny}}
                for deny in (False, True)]
    authz.compile([str(tmp_path)], db=str(tmp_path / "once"))
    filed = writer.file_policies

    def file_twice(policy_keys):
        pairs, by_action, everyone = filed(policy_keys)
        return pairs, by_action, everyone + [p for ps in pairs.values() for p in ps]

    monkeypatch.setattr(writer, "file_policies", file_twice)
    authz.compile([str(tmp_path)], db=str(tmp_path / "twice"))
    with authz.Engine(str(tmp_path / "once")) as once, authz.Engine(str(tmp_path / "twice")) as twice:
        for request in requests:
            expected = once.check(**request)
            assert twice.check(**request) == expected
            assert len(expected.policies) == 1 and [e["policy"] for e in expected.errors] == ["broken"]


# -- the uid text cache: request uid texts (`Type::"id"`) -> resolved uids, in front of the dict --

def test_uid_text_cache_resolves_each_text_to_its_own_uid(tmp_path):
    # More distinct texts than the cache has slots (so slots are shared and replaced), texts that
    # differ only past their first 8-byte word or only in length, and texts too long for a slot.
    ids = [f"u{i}" for i in range(6000)] + ["abcdefgh-1", "abcdefgh-2", "abcdefgh", "abcdefgh-"]
    ids += ["x" * 40, "x" * 41, "x" * 60, "é" * 20]
    allowed = set(ids[::3])
    policies = "".join(f'permit(principal == User::"{i}", action, resource);\n' for i in sorted(allowed))
    (tmp_path / "p.cedar").write_text(policies)
    authz.compile([str(tmp_path / "p.cedar")], db=str(tmp_path / "db"))
    with authz.Engine(str(tmp_path / "db")) as engine:
        for _ in range(2):  # the second pass hits the cache (or a slot another text took since)
            for i in ids:
                d = engine.check(f'User::"{i}"', 'Action::"a"', 'R::"r"', {})
                assert d.allowed == (i in allowed), i
        # A text that is not a uid still fails after valid ones filled the cache; a lone surrogate too.
        for bad in ('User::"u1', 'User:"u1"', 'User::"\ud800"', {"type": "User", "id": "\ud800"}):
            with pytest.raises(authz.RequestError):
                engine.check(bad, 'Action::"a"', 'R::"r"', {})
        batch = engine.check_batch([{"principal": f'User::"{i}"', "action": 'Action::"a"', "resource": 'R::"r"'}
                                    for i in ids[:50]])
        assert [d.allowed for d in batch] == [i in allowed for i in ids[:50]]


_UID_TEXT_ENTITIES = [{"uid": {"type": t, "id": i}, "attrs": {"ok": True}, "parents": []} for t, i in [
    ("User", "a"), ("User", 'q"uote'), ("User", "back\\slash"), ("User", "é"), ("User", "tab\t"),
    ("A::B", "a"), ("A::B::C", "it's"), ("_x1", ""), ("User", "\u0001"), ("Ns::User", "a"),
    ("A::B", "1")]]  # known as A::B only: User::"1" is another, unknown entity
_UID_TEXT_POLICY = "permit(principal, action, resource) when { principal.ok };"


@pytest.fixture(scope="module")
def uid_text_engine(tmp_path_factory):
    folder = tmp_path_factory.mktemp("uid-text")
    (folder / "p.cedar").write_text(_UID_TEXT_POLICY)
    (folder / "entities.json").write_text(json.dumps(_UID_TEXT_ENTITIES))
    authz.compile([str(folder)], db=str(folder / "db"))
    with authz.Engine(str(folder / "db")) as engine:
        yield engine


_TYPE_NAMES = ["User", "A::B", "A::B::C", "_x1", "Ns::User", "if", "A::in", "__cedar", "x1", "1a", "A:B", "",
               "A::", "::A", "é", "A ::B", "User ", "U-ser", "A::B::", "Usér", "has", "A::then"]
_TYPE_PARTS = st.sampled_from(_TYPE_NAMES)
_ID_CHARS = st.sampled_from(list('a"\\\'tu{}01é \t\n\x01\x7f') + ["\ud800"])
_UID_TEXTS = st.one_of(
    st.builds(lambda t, i: f'{t}::"{i}"', _TYPE_PARTS, st.text(_ID_CHARS, max_size=8)),
    st.builds(lambda t, sep, i, end: t + sep + i + end, _TYPE_PARTS,
              st.sampled_from(['::"', '::"', '::"', ':"', '::', '"', ':: "']),
              st.text(_ID_CHARS, max_size=8), st.sampled_from(['"', '"', '"', '', '" ', '""'])),
    st.text(max_size=12))


@settings(max_examples=600, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(text=_UID_TEXTS)
@example('User::"a"').via("a known entity")
@example('User::"é"').via("a non-ASCII id")
@example('_x1::""').via("an empty id")
@example('Ns::User::"a"').via("a namespaced type")
@example('User::"q\\"uote"').via("an escaped quote")
@example('User::"back\\\\slash"').via("an escaped backslash")
@example('A::B::C::"it\\\'s"').via("an escaped apostrophe")
@example("A::B::C::\"it's\"").via("an apostrophe to escape")
@example('User::"\\u{1}"').via("a unicode escape")
@example('User::"\t"').via("a control character to escape")
@example('User::"tab\\t"').via("an escaped control character")
@example('User::"\x7f"').via("DEL to escape")
@example('User::"q"uote"').via("a quote to escape")
@example('if::"a"').via("a reserved type name")
@example('A::in::"a"').via("a reserved segment")
@example('has::"a"').via("another reserved name")
@example('User::"1"').via("an id known under another type")
@example('User::"a').via("no closing quote")
@example('User::"new\\tline\\n\\u{1}é"').via("an unknown entity whose id Cedar escapes when it prints it")
def test_uid_texts_read_as_cedarpy_reads_them(uid_text_engine, text):
    # Request uid texts (`Type::"id"`): the evaluator reads the plain ones itself and leaves escapes
    # and malformed texts to the general parser. Both must accept, resolve and reject exactly the
    # texts cedarpy does; known entities (odd ids among them) must be found.
    # One deliberate difference: text that is not valid Unicode (a lone surrogate) is rejected;
    # cedarpy decodes it lossily into U+FFFD characters, naming some other entity.
    request = {"principal": text, "action": 'Action::"a"', "resource": 'R::"r"', "context": {}}
    theirs = cedarpy.is_authorized(request, _UID_TEXT_POLICY, json.dumps(_UID_TEXT_ENTITIES))
    if theirs.decision == cedarpy.Decision.NoDecision or any(0xD800 <= ord(c) <= 0xDFFF for c in text):
        expected = "rejected"
    else:
        expected = "allow" if theirs.allowed else ("error" if theirs.diagnostics.errors else "deny")
    for _ in range(2):  # the second time through the uid text caches
        try:
            ours = uid_text_engine.check(text, 'Action::"a"', 'R::"r"', {})
        except authz.RequestError:
            got = "rejected"
        else:
            got = "allow" if ours.allowed else ("error" if ours.errors else "deny")
        assert got == expected, text
        if got == "error":  # an unknown entity, named in its message as Cedar names it
            assert ours.errors[0]["message"] in str(theirs.diagnostics.errors[0]), text


@pytest.mark.parametrize("type_name", _TYPE_NAMES)
def test_uid_objects_take_the_type_names_cedarpy_takes(uid_text_engine, type_name):
    # {"type", "id"} uids: their type names are checked by the same rules as the texts'.
    request = {"principal": f'{type_name}::"a"', "action": 'Action::"a"', "resource": 'R::"r"', "context": {}}
    theirs = cedarpy.is_authorized(request, _UID_TEXT_POLICY, json.dumps(_UID_TEXT_ENTITIES))
    try:
        ours = uid_text_engine.check({"type": type_name, "id": "a"}, 'Action::"a"', 'R::"r"', {})
    except authz.RequestError:
        assert theirs.decision == cedarpy.Decision.NoDecision
    else:
        assert ours.allowed == theirs.allowed and theirs.decision != cedarpy.Decision.NoDecision


def test_uid_text_of_another_type_in_the_same_hash_slot(uid_text_engine):
    # A type whose uid hash for id "1" has the same low 16 bits as A::B::"1"'s: its probe for
    # T::"1" meets A::B::"1" (same id) first in any table of up to 65,536 slots, and must pass it.
    from authz.engine._evaluator import hash_key

    target = hash_key(b"A::B", b"1") & 0xFFFF
    name = next(f"T{k}" for k in range(10**7) if hash_key(f"T{k}".encode(), b"1") & 0xFFFF == target)
    d = uid_text_engine.check(f'{name}::"1"', 'Action::"a"', 'R::"r"', {})
    assert not d.allowed and [e["message"] for e in d.errors] == [f'entity `{name}::"1"` does not exist']
    assert uid_text_engine.check('A::B::"1"', 'Action::"a"', 'R::"r"', {}).allowed


def test_more_index_pairs_than_one_probe_batch(tmp_path):
    # 40 (group, folder) pairs for one request: more than the 16 pair probes the evaluator prefetches
    # at a time, so its probe batches are flushed and refilled.
    groups = 40
    entities = [{"uid": {"type": "User", "id": "u"}, "attrs": {},
                 "parents": [{"type": "Group", "id": f"g{i}"} for i in range(groups)]},
                {"uid": {"type": "Doc", "id": "d"}, "attrs": {}, "parents": [{"type": "Folder", "id": "f"}]}]
    policies = "".join(f'permit(principal in Group::"g{i}", action, resource in Folder::"f");\n'
                       f'forbid(principal in Group::"g{i}", action, resource in Folder::"other") when {{ {i} > 0 }};\n'
                       for i in range(groups))
    (tmp_path / "p.cedar").write_text(policies)
    (tmp_path / "entities.json").write_text(json.dumps(entities))
    authz.compile([str(tmp_path)], db=str(tmp_path / "db"))
    request = {"principal": 'User::"u"', "action": 'Action::"a"', "resource": 'Doc::"d"', "context": {}}
    theirs = cedarpy.is_authorized(request, policies, json.dumps(entities))
    with authz.Engine(str(tmp_path / "db")) as engine:
        ours = engine.check(**request)
    assert ours.allowed and theirs.allowed
    assert sorted(ours.policies) == sorted(f"p.cedar:{int(r[len('policy'):])}" for r in theirs.diagnostics.reasons)
    assert len(ours.policies) == groups


def test_scopes_a_pair_key_proves_and_those_it_does_not(tmp_path):
    # A policy found under a (principal, resource) key pair skips `in E` and `is T` (the key proves
    # them) but still tests `== E` (E's key is reached from E's members too) and the type of
    # `is T in E`. Every scope form, against members, non-members, E itself and other types.
    policies = "\n".join([
        '@id("eq-group") permit(principal == Group::"g", action, resource == Tool::"t");',
        '@id("in-group") permit(principal in Group::"g", action, resource == Tool::"t");',
        '@id("is-agent") permit(principal is Agent, action, resource in Folder::"f");',
        '@id("is-agent-in-g") forbid(principal is Agent in Group::"g", action, resource == Tool::"x");',
        '@id("eq-folder") permit(principal in Group::"g", action, resource == Folder::"f");',
        '@id("user-in-f") permit(principal is User, action, resource is Doc in Folder::"f");',
        '@id("any-x") permit(principal, action, resource == Tool::"x");',
    ])
    entities = [
        {"uid": {"type": "Agent", "id": "a"}, "attrs": {}, "parents": [{"type": "Group", "id": "g"}]},
        {"uid": {"type": "User", "id": "u"}, "attrs": {}, "parents": [{"type": "Group", "id": "g"}]},
        {"uid": {"type": "Agent", "id": "out"}, "attrs": {}, "parents": []},
        {"uid": {"type": "Group", "id": "g"}, "attrs": {}, "parents": []},
        {"uid": {"type": "Doc", "id": "d"}, "attrs": {}, "parents": [{"type": "Folder", "id": "f"}]},
        {"uid": {"type": "Tool", "id": "in-f"}, "attrs": {}, "parents": [{"type": "Folder", "id": "f"}]},
    ]
    (tmp_path / "p.cedar").write_text(policies)
    (tmp_path / "entities.json").write_text(json.dumps(entities))
    authz.compile([str(tmp_path)], db=str(tmp_path / "db"))
    principals = ['Agent::"a"', 'User::"u"', 'Agent::"out"', 'Group::"g"', 'Agent::"unknown"']
    resources = ['Tool::"t"', 'Tool::"x"', 'Doc::"d"', 'Tool::"in-f"', 'Folder::"f"', 'Doc::"elsewhere"']
    seen = set()
    with authz.Engine(str(tmp_path / "db")) as engine:
        for principal in principals:
            for resource in resources:
                request = {"principal": principal, "action": 'Action::"a"', "resource": resource, "context": {}}
                ours = engine.check(**request)
                theirs = cedarpy.is_authorized(request, policies, json.dumps(entities))
                assert ours.allowed == theirs.allowed, request
                ids = [line.split('"')[1] for line in policies.splitlines()]  # cedarpy names them policyN
                assert sorted(ours.policies) == sorted(ids[int(r[len("policy"):])] for r in theirs.diagnostics.reasons)
                seen.update(ours.policies)
    assert seen == {"eq-group", "in-group", "is-agent", "is-agent-in-g", "eq-folder", "user-in-f", "any-x"}
