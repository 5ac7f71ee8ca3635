"""The LMDB policy index: where generations live (their keys), one environment per index file per process,
and publishing a new generation atomically. The compiler writes through it; engines read through it."""

import json
import os
import struct
import zlib

import lmdb

from ..errors import IndexUnavailableError

_U32 = struct.Struct("<I")
CURRENT_KEY = b"current"
# Address space reserved for the map (the file grows only as needed). A generation of 100,000
# policies is ~15 MB and two live at a time; 4 GiB stays within tight virtual-memory limits.
DEFAULT_MAP_SIZE = 1 << 32


def generation_key(number):
    return b"gen/%016x" % number


def crc_key(number):
    return b"crc/%016x" % number


def annotations_key(number):
    """The generation's policy annotations besides @id: JSON {policy id: {name: value}} (absent: none)."""
    return b"ann/%016x" % number


# LMDB allows one environment per file per process: engines and compiles in one process share it.
# Keyed by the (device, inode) of its data.mdb, not by its path: an index removed and made again at the
# same path is another file, and an inode cannot be reused while the environment holding it open is
# here. A forked child starts with none of its parent's environments (LMDB forbids using them across
# fork), so the key needs no pid, which a later process could reuse.
_ENVS = {}
os.register_at_fork(after_in_child=_ENVS.clear)


def data_file_key(db):
    """(device, inode) of the index's data.mdb, or None when there is none."""
    try:
        st = os.stat(os.path.join(db, "data.mdb"))
    except FileNotFoundError:
        return None
    except OSError as err:
        raise IndexUnavailableError(f"cannot open index `{db}`: {err.strerror}") from None
    return st.st_dev, st.st_ino


def open_env(db, create):
    """The process's LMDB environment at `db` (a directory), shared and reference-counted;
    IndexUnavailableError with one line if it can't be used. Pair with `release_env`."""
    if not create and not os.path.isdir(db):
        if os.path.exists(db):
            raise IndexUnavailableError(f"`{db}` is not an authz index (expected a directory)")
        raise IndexUnavailableError(f"no index at `{db}`: run `authz compile ... --db {db}` first")
    if create and os.path.exists(db) and not os.path.isdir(db):
        raise IndexUnavailableError(f"`{db}` is not an authz index (expected a directory)")
    if not create and not os.path.exists(os.path.join(db, "data.mdb")):
        raise IndexUnavailableError(f"`{db}` is not an authz index (no data.mdb)")
    if create:
        try:
            os.makedirs(db, exist_ok=True)
        except OSError as err:
            raise IndexUnavailableError(f"cannot create index `{db}`: {err.strerror}") from None
    key = data_file_key(db)
    entry = _ENVS.get(key) if key is not None else None
    if entry is not None and (entry[0].flags()["readonly"] is False or not create):
        entry[1] += 1
        return entry[0]
    if entry is not None:
        raise IndexUnavailableError(f"`{db}` is open read-only in this process and cannot be written")
    try:
        writable = create or os.access(db, os.W_OK)
        env = lmdb.open(db, map_size=DEFAULT_MAP_SIZE, subdir=True, readonly=not writable,
                        create=create, max_dbs=0, max_readers=1024, lock=True)
    except lmdb.Error as err:
        raise IndexUnavailableError(f"cannot open index `{db}`: {err}") from None
    key = data_file_key(db)
    if key is None:
        env.close()
        raise IndexUnavailableError(f"cannot open index `{db}`: its data.mdb disappeared")
    _ENVS[key] = [env, 1]
    return env


def release_env(env):
    """Drops one reference to a shared environment; the last one closes it."""
    for key, entry in list(_ENVS.items()):
        if entry[0] is env:
            entry[1] -= 1
            if entry[1] == 0:
                del _ENVS[key]
                env.close()
            return


def parents_key(number):
    """The generation's entities' direct parents (compiler.writer.parents_table; absent: compiled before
    they were published, or by hand), read only by requests that bring entities of their own."""
    return b"par/%016x" % number


def digest_key(number):
    """The generation's policy set content digest (compiler.digest: SHA-256 hex, ASCII; absent: published
    before digests were, or by hand)."""
    return b"dig/%016x" % number


def publish(db, blob, annotations=None, parents=None, digest=None):
    """Writes `blob` (and its policies' `annotations`, its entities' direct `parents`, its sources'
    `digest`) as the next generation and makes it current in one write transaction; returns its number."""
    env = open_env(db, create=True)
    try:
        # A reader killed without closing (SIGKILL) leaves its slot, which would keep every later
        # generation's pages from being reused: the file would grow by a generation per publish.
        env.reader_check()
        with env.begin(write=True) as txn:
            raw = txn.get(CURRENT_KEY)
            if raw is not None and len(raw) != 8:
                raise IndexUnavailableError(f"`{db}` is not an authz index (bad current pointer)")
            previous = struct.unpack("<Q", raw)[0] if raw is not None else 0
            number = previous + 1
            txn.put(generation_key(number), blob)
            txn.put(crc_key(number), _U32.pack(zlib.crc32(blob)))
            if annotations:
                text = json.dumps(annotations, ensure_ascii=False)
                txn.put(annotations_key(number), text.encode("utf-8", "surrogatepass"))
            if parents is not None:
                txn.put(parents_key(number), parents)
            if digest:
                txn.put(digest_key(number), digest.encode("ascii"))
            txn.put(CURRENT_KEY, struct.pack("<Q", number))
            # Readers still holding the previous generation keep their snapshot; LMDB reuses its pages later.
            if previous:
                txn.delete(generation_key(previous))
                txn.delete(crc_key(previous))
                txn.delete(annotations_key(previous))
                txn.delete(parents_key(previous))
                txn.delete(digest_key(previous))
        return number
    except lmdb.MapFullError:
        raise IndexUnavailableError(f"cannot write index `{db}`: the generation does not fit in the "
                                    f"{DEFAULT_MAP_SIZE >> 30} GiB map") from None
    except lmdb.Error as err:
        raise IndexUnavailableError(f"cannot write index `{db}`: {err}") from None
    finally:
        release_env(env)
