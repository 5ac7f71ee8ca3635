"""The state store's LMDB environment: opened once per process and file, never used across fork,
its stale reader slots cleared on open, and LMDB errors turned into Unavailable / Full.

LMDB forbids opening one file twice in a process (its locks are per process) and using an environment
in a forked child; every LmdbStore of a process on one file shares one environment here. A forked
child closes the environment it inherited (safe since LMDB 0.9.23: the parent's locks and reader slots
are left alone; py-lmdb refuses to open the file again while it is open) and opens its own.
"""
from __future__ import annotations

import os
import threading

import lmdb

from authz.state.errors import Full, Unavailable

DATABASES = (b"meta", b"tasks", b"agents", b"approvals", b"order", b"grants", b"feed", b"due")
FORMAT = b"1"
_ENVS = {}  # (st_dev, st_ino) of data.mdb -> [Environment, {name: db handle}, references, pid that opened it]
_LOCK = threading.Lock()  # threads opening the same store at once would open its file twice


def _file_key(path: str):
    try:
        st = os.stat(os.path.join(path, "data.mdb"))
    except FileNotFoundError:
        return None
    except OSError as err:
        raise Unavailable(f"cannot open the state store `{path}`: {err.strerror}") from None
    return st.st_dev, st.st_ino


def open_env(path: str, map_size: int, durable: bool):
    """(environment, {name: db}) of the store at `path` (created if missing). Pair with release_env."""
    with _LOCK:
        return _open_env(path, map_size, durable)


def _open_env(path: str, map_size: int, durable: bool):
    key = _file_key(path)
    entry = _ENVS.get(key) if key is not None else None
    if entry is not None and entry[3] != os.getpid():
        del _ENVS[key]
        entry[0].close()  # inherited across fork: never used here, closed so the file can be opened
        entry = None
    if entry is not None:
        entry[2] += 1
        return entry[0], entry[1]
    try:
        os.makedirs(path, mode=0o700, exist_ok=True)
        env = lmdb.open(path, map_size=map_size, subdir=True, create=True, max_dbs=len(DATABASES),
                        max_readers=1024, lock=True, sync=durable, metasync=durable, writemap=False)
    except lmdb.Error as err:
        raise Unavailable(f"cannot open the state store `{path}`: {err}") from None
    except OSError as err:
        raise Unavailable(f"cannot open the state store `{path}`: {err.strerror or err}") from None
    try:
        # A worker killed without closing leaves its reader slot; it would pin old pages forever.
        env.reader_check()
        with env.begin(write=True) as txn:
            dbs = {name.decode(): env.open_db(name, txn=txn, create=True) for name in DATABASES}
            stored = txn.get(b"format", db=dbs["meta"])
            if stored is None:
                txn.put(b"format", FORMAT, db=dbs["meta"])
            elif stored != FORMAT:
                raise Unavailable(f"the state store `{path}` was written by another version of authz "
                                  f"(format {stored[:16]!r})")
    except lmdb.MapFullError:
        env.close()
        raise Full(f"the state store `{path}` is full (map_size {map_size} bytes)") from None
    except lmdb.Error as err:
        env.close()
        raise Unavailable(f"cannot open the state store `{path}`: {err}") from None
    except BaseException:
        env.close()
        raise
    key = _file_key(path)
    if key is None:
        env.close()
        raise Unavailable(f"cannot open the state store `{path}`: its data.mdb disappeared")
    _ENVS[key] = [env, dbs, 1, os.getpid()]
    return env, dbs


def release_env(env, broken: bool = False) -> None:
    """Drop one reference; the last one closes it. `broken` (MDB_PANIC: the environment is unusable):
    forget it now, so the next open_env opens the file afresh; it closes when its last holder drops it."""
    with _LOCK:
        _release_env(env, broken)


def _release_env(env, broken: bool) -> None:
    for key, entry in list(_ENVS.items()):
        if entry[0] is env and entry[3] == os.getpid():
            entry[2] -= 1
            if broken or entry[2] == 0:
                del _ENVS[key]
            if entry[2] == 0:
                env.close()
            return


def mapped(err: lmdb.Error, path: str, doing: str) -> Unavailable:
    """The Unavailable (or Full) to raise for an LMDB error."""
    if isinstance(err, lmdb.MapFullError):
        return Full(f"the state store `{path}` is full (map_size); nothing was written")
    return Unavailable(f"cannot {doing} the state store `{path}`: {err}")
