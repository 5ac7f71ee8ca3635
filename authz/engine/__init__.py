"""The engine: authz.Engine opens an index read-only and decides requests against its current generation,
zero-copy, with the Cython evaluator (_evaluator.pyx) that reads the generation in place (index.py: the
LMDB index)."""

import json
import os
import struct
import zlib

import lmdb

from ..errors import IndexUnavailableError
from . import _evaluator
from .index import (CURRENT_KEY, annotations_key, crc_key, data_file_key, digest_key, generation_key, open_env,
                    parents_key, release_env)

Decision = _evaluator.Decision
_NONE = {}
_DIGESTS_KEPT = 16  # generations whose digests digest_of() still knows (decision-log lines formatted late)
_HEX = frozenset("0123456789abcdef")


class Engine(_evaluator.EngineCore):
    """Decides Cedar requests from the index at `db`; notices newer generations within `poll_interval_s`.

    check(principal, action, resource, context=None, entities=None) decides one request and
    check_batch(requests, entities=None) a list of {principal, action, resource, context?} dicts.

    Request entities: `entities` is a list of entities in Cedar's JSON entity format,
    {"uid": {"type": T, "id": I}, "attrs": {...}, "parents": [{"type": .., "id": ..}, ...], "tags": {...}}
    ("tags" optional; values as in Cedar JSON: strings, booleans, integers, arrays as sets, objects as
    records, {"__entity": {...}} and {"__extn": {"fn": .., "arg": ..}} escapes). For this call only (every
    request of a batch) they replace the stored entities with the same uid whole: attributes, tags and
    parents; entities not stored are added. Ancestors are recomputed: a request entity's parents may be
    stored entities or other request entities, and a stored entity whose ancestry passes through a replaced
    entity sees that entity's new parents. The decision is then Cedar's for the stored entities with these
    replacing them (decisions, determining and erroring policies). Nothing is kept for the next call.
    At most MAX_REQUEST_ENTITIES (100) entities and MAX_REQUEST_ENTITY_VALUES (10,000) JSON values in
    all; a uid given twice, an action entity (type `Action` or `...::Action`: action groups are compiled)
    or anything malformed raises RequestError naming the field (`entities[2].attrs.level`: ...).
    Stored attributes are not merged in: to change some attributes of a stored entity, read it with
    entity(uid) (the stored entity in this format, with its direct parents, or None), change it and send
    it whole. request_entities(entities) checks and resolves them once for several calls (pass its result
    as `entities`). A request dict given to check_batch may carry its own "entities" (they replace the
    batch's for that request). An empty list is the same as none; requests without entities take the
    usual path and cost nothing more (docs/request-entities.md).
    """

    def __init__(self, db, poll_interval_s=0.01):
        self.db = os.fspath(db)
        self.poll_interval_s = poll_interval_s
        self._env = open_env(self.db, create=False)
        self._file = data_file_key(self.db)
        self._loaded = None  # the data file the installed generation was read from
        self._annotations = _NONE
        self.policy_digest = ""  # the current generation's content digest (SHA-256 hex; "": none stored)
        self._digests = {}  # generation -> its digest, for the last _DIGESTS_KEPT generations installed
        self._retired = []  # environments of an index since replaced at this path (see _follow_replacement)
        self._last_txnid = None
        self.refresh()

    def _follow_replacement(self):
        """Opens the index now at `db` if it is another file than the one open (removed and compiled
        again: its generation numbers start over, so they can't tell). The old environment stays open
        until close(): decisions in flight may still read the generation mapped from it."""
        current = data_file_key(self.db)
        if current is None or current == self._file:
            return
        env = open_env(self.db, create=False)
        self._retired.append(self._env)
        self._env, self._file, self._last_txnid = env, current, None

    def refresh(self):
        """Switches to the index's current generation now, if it changed; returns its number."""
        self._follow_replacement()
        txnid = self._env.info()["last_txnid"]
        if txnid == self._last_txnid and self.generation is not None:
            self._reschedule()
            return self.generation
        txn = self._env.begin(buffers=True)
        try:
            raw = txn.get(CURRENT_KEY)
            if raw is None or len(raw) != 8:
                raise IndexUnavailableError(f"`{self.db}` holds no compiled generation")
            number = struct.unpack("<Q", bytes(raw))[0]
            if number == self.generation and self._loaded == self._file:
                # Remember what this snapshot saw, not what info() said: a commit between the two is
                # then noticed on the next poll instead of being skipped.
                self._last_txnid = txn.id()
                txn.abort()
                self._reschedule()
                return number
            blob = txn.get(generation_key(number))
            crc = txn.get(crc_key(number))
            if blob is None or crc is None or struct.unpack("<I", bytes(crc))[0] != zlib.crc32(blob):
                raise IndexUnavailableError(f"`{self.db}`: generation {number} is corrupted")
            try:
                generation = _evaluator.Generation(blob, number, txn)
                parents = txn.get(parents_key(number))
                if parents is not None:
                    generation._set_parents(parents)
                raw = txn.get(annotations_key(number))
                annotations = json.loads(bytes(raw).decode("utf-8", "surrogatepass")) if raw is not None else {}
                if type(annotations) is not dict:
                    raise ValueError("not a JSON object")
                raw = txn.get(digest_key(number))
                digest = bytes(raw).decode("ascii", "replace") if raw is not None else ""
                if len(digest) != 64 or not _HEX.issuperset(digest):
                    digest = ""  # none stored (an older index), or not one the compiler writes
            except (_evaluator.IndexFormatError, ValueError) as err:
                raise IndexUnavailableError(f"`{self.db}`: generation {number} is unreadable: {err}") from None
        except lmdb.Error as err:
            txn.abort()
            raise IndexUnavailableError(f"cannot read index `{self.db}`: {err}") from None
        except BaseException:
            txn.abort()
            raise
        # The generation holds `txn` (and so its snapshot) until no decision uses it any more.
        self._install(generation, self.poll_interval_s)
        self._annotations = annotations
        self.policy_digest = digest
        if len(self._digests) >= _DIGESTS_KEPT:
            del self._digests[next(iter(self._digests))]
        self._digests[number] = digest
        self._last_txnid = txn.id()
        self._loaded = self._file
        return number

    def digest_of(self, generation):
        """The content digest of `generation`, one of the last ones this engine served ("" otherwise)."""
        return self._digests.get(generation, "")

    def annotations(self, policy_id):
        """The annotations besides @id of a policy of the current generation: {name: value or None}."""
        return self._annotations.get(policy_id, _NONE)

    def _poll(self):
        try:
            self.refresh()
        except IndexUnavailableError:
            # Keep deciding with the generation already loaded; a broken write never reaches readers.
            pass

    def close(self):
        """Releases the map; the engine can't decide afterwards."""
        self._install(None, self.poll_interval_s)
        for env in self._retired + [self._env]:
            if env is not None:
                release_env(env)
        self._env, self._retired = None, []

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
