"""The signing-key files: written whole or not at all (a real full file system), and an empty, corrupt or
missing key set refused, never replaced by a new key."""
import logging
import os
import subprocess
import sys

import pytest
from harness import env_with_repo
from tokenkit import fill

from authz.tokens.keys import KEYSET, KeyStore, KeyStoreError, ensure_keys, keys_dir, rotate_keys


def _snapshot(folder) -> dict:
    """Every file of `folder` with its bytes."""
    out = {}
    for name in sorted(os.listdir(folder)):
        with open(os.path.join(folder, name), "rb") as f:
            out[name] = f.read()
    return out


def _keys_cli(*args):
    return subprocess.run([sys.executable, "-m", "authz", "keys", *args], capture_output=True, text=True,
                          env=env_with_repo(), timeout=60)


def test_rotate_on_a_full_file_system_leaves_the_keys_as_they_were(small_fs):
    data = str(small_fs / "data")
    first = ensure_keys(data)
    folder = keys_dir(data)
    before = _snapshot(folder)
    filler = fill(small_fs)
    r = _keys_cli("rotate", "--data-dir", data)
    assert r.returncode == 2 and "No space left on device" in r.stderr, r.stderr
    assert _snapshot(folder) == before  # no empty key file, no temporary file left behind
    assert KeyStore(data).active_kid == first
    assert _keys_cli("export", "--data-dir", data).returncode == 0
    filler.unlink()
    r = _keys_cli("rotate", "--data-dir", data)
    assert r.returncode == 0, r.stderr
    store = KeyStore(data)
    assert store.active_kid != first and set(os.listdir(folder)) == {".lock", store.active_kid + ".pem", KEYSET}


def test_a_first_key_on_a_full_file_system_leaves_nothing_behind(small_fs):
    data = str(small_fs / "data")
    os.makedirs(keys_dir(data), mode=0o700)
    filler = fill(small_fs)
    with pytest.raises(KeyStoreError, match="No space left on device"):
        ensure_keys(data)
    assert [n for n in os.listdir(keys_dir(data)) if n != ".lock"] == []
    filler.unlink()
    kid = ensure_keys(data)
    assert KeyStore(data).active_kid == kid


@pytest.mark.parametrize("damage, message", [
    (b"", "is empty"),
    (b"   \n", "is empty"),
    (b'{"active": "x", "keys": [', "not valid JSON"),
    (b"\x00" * 100, "not valid JSON"),
    (b"[]", "not an authz key set"),
], ids=["empty", "blank", "cut-short", "zeros", "not-a-key-set"])
def test_an_empty_or_corrupt_key_set_is_refused_never_replaced(tmp_path, damage, message):
    data = str(tmp_path / "data")
    ensure_keys(data)
    path = os.path.join(keys_dir(data), KEYSET)
    with open(path, "wb") as f:
        f.write(damage)
    for load in (lambda: KeyStore(data), lambda: ensure_keys(data), lambda: rotate_keys(data)):
        with pytest.raises(KeyStoreError, match=message):
            load()
    with open(path, "rb") as f:
        assert f.read() == damage
    r = _keys_cli("rotate", "--data-dir", data)
    assert r.returncode == 2 and message in r.stderr and r.stderr.count("\n") == 1, r.stderr


@pytest.mark.parametrize("damage, message", [(b"", "is empty"), (b"-----BEGIN PRIVATE KEY-----\n", "not a PEM")],
                         ids=["empty", "cut-short"])
def test_an_empty_or_corrupt_signing_key_is_refused(tmp_path, damage, message):
    data = str(tmp_path / "data")
    kid = ensure_keys(data)
    with open(os.path.join(keys_dir(data), kid + ".pem"), "wb") as f:
        f.write(damage)
    with pytest.raises(KeyStoreError, match=message):
        KeyStore(data)


def test_signing_keys_without_their_key_set_are_refused_never_replaced(tmp_path):
    data = str(tmp_path / "data")
    kid = ensure_keys(data)
    os.unlink(os.path.join(keys_dir(data), KEYSET))
    for load in (lambda: ensure_keys(data), lambda: KeyStore(data)):
        with pytest.raises(KeyStoreError, match="is missing but .* holds signing keys"):
            load()
    assert set(os.listdir(keys_dir(data))) == {".lock", kid + ".pem"}
    r = _keys_cli("rotate", "--data-dir", data)
    assert r.returncode == 2 and "is missing" in r.stderr, r.stderr


def test_a_key_set_gone_under_a_running_store_keeps_its_keys_and_says_so_once(tmp_path, caplog):
    data = str(tmp_path / "data")
    kid = ensure_keys(data)
    store = KeyStore(data, check_interval_s=0.0)
    os.unlink(os.path.join(keys_dir(data), KEYSET))
    with caplog.at_level(logging.ERROR, logger="authz.tokens"):
        for _ in range(5):
            assert store.signing_key()[0] == kid
    assert [r.getMessage() for r in caplog.records if "keeping the loaded signing keys" in r.getMessage()] == [
        f"keeping the loaded signing keys: the key set `{keys_dir(data)}/{KEYSET}` is missing but `{keys_dir(data)}`"
        " holds signing keys: restore it, or move the folder away to start over with a new key"]
