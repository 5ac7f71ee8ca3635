"""The AuthZEN -> Cedar mapping over HTTP: properties overlay the stored entity for one request (stored parents and
unmentioned attributes stay; nothing leaks into the next request or item), action properties are `context.action`,
JSON values are Cedar values, stored action groups apply."""
from __future__ import annotations

MORTY = "CiRmZDE2MTRkMy1jMzlhLTQ3ODEtYjdiZC04Yjk2ZjVhNTEwMGQSBWxvY2Fs"
BETH = "CiRmZDM2MTRkMy1jMzlhLTQ3ODEtYjdiZC04Yjk2ZjVhNTEwMGQSBWxvY2Fs"
RICKS_TODO = {"type": "todo", "id": "t-1", "properties": {"ownerID": "rick@the-citadel.com"}}
MORTYS_TODO = {"type": "todo", "id": "t-2", "properties": {"ownerID": "morty@the-citadel.com"}}


def _update(subject_properties=None, resource=RICKS_TODO):
    subject = {"type": "user", "id": MORTY}
    if subject_properties is not None:
        subject["properties"] = subject_properties
    return {"subject": subject, "action": {"name": "can_update_todo"}, "resource": resource}


def test_subject_properties_overlay_the_stored_entity_for_one_request(client):
    assert client.evaluation(_update())[2] == {"decision": False}  # Morty is an editor, not an evil genius
    assert client.evaluation(_update({"roles": ["evil_genius"]}))[2] == {"decision": True}
    assert client.evaluation(_update())[2] == {"decision": False}  # the overlay is gone
    # An overlay that does not mention `id` and `roles` keeps them: his own todo stays his (an action group).
    assert client.evaluation(_update({"nickname": "M"}, MORTYS_TODO))[2] == {"decision": True}
    # An overlay replaces an attribute whole: roles without "editor" lose the editor's rights.
    assert client.evaluation(_update({"roles": ["viewer"]}, MORTYS_TODO))[2] == {"decision": False}


def test_overlays_do_not_leak_between_items(client):
    doc = client.evaluations({"action": {"name": "can_update_todo"}, "resource": RICKS_TODO, "evaluations": [
        {"subject": {"type": "user", "id": MORTY, "properties": {"roles": ["evil_genius"]}}},
        {"subject": {"type": "user", "id": MORTY}},
        {"subject": {"type": "user", "id": MORTY, "properties": {"roles": ["evil_genius"]}},
         "resource": {"type": "todo", "id": "t-1"}},
        {"subject": {"type": "user", "id": MORTY}, "resource": MORTYS_TODO}]})[2]
    assert doc == {"evaluations": [{"decision": True}, {"decision": False}, {"decision": True}, {"decision": True}]}


def test_stored_parents_stay_under_properties(client):
    """Doc::"stored" is in Folder::"f" with level 1; properties change its level, not its folder."""
    def read(props=None, subject="u1"):
        resource = {"type": "Doc", "id": "stored"}
        if props is not None:
            resource["properties"] = props
        return client.evaluation({"subject": {"type": "User", "id": subject}, "action": {"name": "read_folder"},
                                  "resource": resource})[2]["decision"]

    assert read() is True
    assert read({"level": 0}) is False
    assert read({"level": 7, "note": "x"}) is True
    assert read({"owner": {"__entity": {"type": "User", "id": "u2"}}}, "u2") is True
    assert read(None, "u2") is False
    # Not stored: built from the properties alone (no folder).
    assert client.evaluation({"subject": {"type": "User", "id": "u1"}, "action": {"name": "read_folder"},
                              "resource": {"type": "Doc", "id": "new", "properties": {
                                  "level": 3, "owner": {"__entity": {"type": "User", "id": "u1"}}}}})[2] \
        == {"decision": False}


def test_action_properties_are_context_action(client):
    def export(props, context=None):
        body = {"subject": {"type": "User", "id": "u1"}, "action": {"name": "export", "properties": props},
                "resource": {"type": "Doc", "id": "d"}}
        if context is not None:
            body["context"] = context
        return client.evaluation(body)[2]

    assert export({"format": "pdf", "pages": 3}) == {"decision": True}
    assert export({"format": "pdf", "pages": 30}) == {"decision": False}
    assert export({"format": "pdf", "pages": 3}, {"other": 1}) == {"decision": True}


def test_context_values(client):
    ctx = {"flag": True, "n": -3, "tags": ["b", "a", "a"], "rec": {"inner": "x", "gone": None},
           "owner": {"__entity": {"type": "User", "id": "u1"}}}
    body = {"subject": {"type": "User", "id": "u1"}, "action": {"name": "inspect"},
            "resource": {"type": "Doc", "id": "d"}, "context": ctx}
    assert client.evaluation(body)[2] == {"decision": True}
    assert client.evaluation({**body, "context": {**ctx, "n": -3.0}})[2] == {"decision": True}
    assert client.evaluation({**body, "context": {**ctx, "flag": False}})[2] == {"decision": False}
    assert client.evaluation({**body, "subject": {"type": "User", "id": "u2"}})[2] == {"decision": False}


def test_stored_action_groups_apply(client):
    """can_delete_todo is in the stored group edit_own_todo, which the editors' policy names."""
    body = {"subject": {"type": "user", "id": MORTY}, "action": {"name": "can_delete_todo"},
            "resource": MORTYS_TODO}
    assert client.evaluation(body)[2] == {"decision": True}
    body["subject"]["id"] = BETH
    assert client.evaluation(body)[2] == {"decision": False}
