"""The revocation set's limits, in-process on a fake clock: each caller's share is bounded, lapsed entries take
no slot, and a task or agent revocation outlasts every token it covers."""
import struct

import lmdb
import pytest
from tokenkit import Kit, make_index

from authz.tokens.keys import KeyStore, ensure_keys
from authz.tokens.revocation import GEN_KEY, RevocationFullError, RevocationQuotaError, entry_expiry, entry_key
from authz.tokens.verify import TokenError


def _reason(kit, token):
    with pytest.raises(TokenError) as e:
        kit.verifier.verify(token)
    return e.value.code


def test_one_callers_junk_cannot_block_anothers_revocation(kit, clock):
    compromised = kit.issue(caller="victim")
    accepted = 0
    for i in range(300):  # bounded: the attacker tries far more than its share
        try:
            kit.revocations.revoke("token", f"junk-{i}", clock() + 3600, 200, "attacker", 50)
        except RevocationQuotaError as e:
            assert e.code == "revocation_quota_exceeded"
            assert "50" in str(e) and "tokens.max_revocations_per_caller" in str(e)
            break
        accepted += 1
    assert accepted == 50 and kit.revocations.held_by("attacker") == 50
    kit.revocations.revoke("token", compromised.jti, compromised.exp, 200, "victim", 50)
    assert _reason(kit, compromised.token) == "token_revoked"
    # The attacker may still re-revoke what it holds (nothing new); a new entry stays refused.
    kit.revocations.revoke("token", "junk-0", clock() + 60, 200, "attacker", 50)
    with pytest.raises(RevocationQuotaError):
        kit.revocations.revoke("task", "t9", 0, 200, "attacker", 50)


def test_the_whole_set_is_bounded_too(kit):
    for owner, value in (("a", "a0"), ("a", "a1"), ("a", "a2"), ("b", "b0"), ("b", "b1")):
        kit.revocations.revoke("task", value, 0, 5, owner, 3)
    with pytest.raises(RevocationFullError) as e:
        kit.revocations.revoke("task", "c0", 0, 5, "c", 3)
    assert e.value.code == "revocation_set_full" and "tokens.max_revocations" in str(e.value)


def test_lapsed_entries_are_swept_before_refusing(kit, clock):
    for i in range(4):
        kit.revocations.revoke("token", f"j{i}", clock() + 10, 4, "a", 4)
    kit.revocations.revoke("task", "forever", 0, 5, "b", 4)
    with pytest.raises(RevocationFullError):
        kit.revocations.revoke("token", "j9", clock() + 10, 5, "c", 4)
    with pytest.raises(RevocationQuotaError):
        kit.revocations.revoke("token", "j8", clock() + 10, 9, "a", 4)
    clock.now += 11  # the four token entries lapse: their slots and their owner's share come back
    kit.revocations.revoke("token", "j9", clock() + 10, 5, "c", 4)
    assert sorted(e[1] for e in kit.revocations.entries()) == ["forever", "j9"]
    assert [kit.revocations.held_by(o) for o in "abc"] == [0, 1, 1]
    for i in range(4):
        kit.revocations.revoke("token", f"again-{i}", clock() + 10, 9, "a", 4)


def test_a_revocation_that_has_already_lapsed_needs_no_slot(kit, clock):
    kit.revocations.revoke("task", "t1", 0, 1, "a", 1)
    generation = kit.revocations.current().generation
    assert kit.revocations.revoke("token", "old", clock() - 1, 1, "a", 1) <= clock()
    assert kit.revocations.current().generation == generation and len(kit.revocations.entries()) == 1


def test_lengthening_an_entry_is_charged_to_whoever_lengthens_it(kit, clock):
    store = kit.revocations
    assert store.revoke("token", "j", clock() + 100, 10, "a", 1) == int(clock()) + 101
    assert store.revoke("token", "j", clock() + 50, 10, "b", 1) == int(clock()) + 101  # shorter: nothing changes
    assert (store.held_by("a"), store.held_by("b")) == (1, 0)
    assert store.revoke("token", "j", clock() + 200, 10, "b", 1) == int(clock()) + 201
    assert (store.held_by("a"), store.held_by("b")) == (0, 1)
    store.revoke("token", "k", clock() + 10, 10, "a", 1)
    with pytest.raises(RevocationQuotaError):  # a holds its share: it cannot take j over either
        store.revoke("token", "j", 0, 10, "a", 1)
    clock.now += 150  # j's old expiry (+101) is no longer in the expiry index: it is still revoked
    assert store.current().token_revoked("j", clock())


def test_entry_expiry():
    now, lifetime, leeway = 1000.0, 900, 5
    assert entry_expiry("token", now, lifetime, leeway, token_exp=1300) == 1305
    assert entry_expiry("token", now, lifetime, leeway) == 1905  # by id: the longest a token it names can live
    assert entry_expiry("task", now, lifetime, leeway) == 0
    assert entry_expiry("agent", now, lifetime, leeway, ttl_s=10) == 1905  # outlasts every token issued before
    assert entry_expiry("task", now, lifetime, leeway, ttl_s=3600) == 4600


def test_a_short_task_revocation_outlasts_the_tokens_it_covers(kit, clock):
    token = kit.issue(task="t1", ttl=kit.cfg.max_ttl_s)
    expires = entry_expiry("task", clock(), kit.keys.max_ttl_s, kit.cfg.leeway_s, ttl_s=1)
    kit.revocations.revoke("task", "t1", expires, 10)
    clock.now = token.exp + kit.cfg.leeway_s  # the last moment the token would verify
    assert _reason(kit, token.token) == "task_revoked"


def test_the_key_set_records_the_longest_token_lifetime(tmp_path):
    data = str(tmp_path / "data")
    ensure_keys(data, 900)
    assert KeyStore(data).max_ttl_s == 900
    ensure_keys(data, 1800)
    ensure_keys(data, 600)  # a shorter lifetime later: tokens of the longer one may still be alive
    assert KeyStore(data).max_ttl_s == 1800


def _legacy(expires, value):
    return struct.pack("<qq", 1, int(expires)) + value.encode()


def test_entries_written_before_owners_are_counted_and_swept(tmp_path, clock):
    db = make_index(tmp_path)
    env = lmdb.open(db, subdir=True, max_dbs=0)
    with env.begin(write=True) as txn:  # the layout of the previous version: entries and the counter only
        txn.put(entry_key("task", "old-timed"), _legacy(clock() + 10, "old-timed"))
        txn.put(entry_key("agent", "old-forever"), _legacy(0, "old-forever"))
        txn.put(GEN_KEY, (2).to_bytes(8, "little"))
    env.close()
    kit = Kit(tmp_path / "data", db, clock)
    try:
        kit.revocations.revoke("task", "new", 0, 3, "a", 3)
        with pytest.raises(RevocationFullError):
            kit.revocations.revoke("task", "newer", 0, 3, "a", 3)
        clock.now += 11
        kit.revocations.revoke("task", "newer", 0, 3, "a", 3)
        assert sorted(e[1] for e in kit.revocations.entries()) == ["new", "newer", "old-forever"]
    finally:
        kit.revocations.close()
