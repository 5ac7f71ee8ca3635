"""authz.Engine: opens an index read-only and decides requests against its current generation, zero-copy."""

import os
import struct
import zlib

import lmdb

from . import _evaluator
from .compiler.writer import CURRENT_KEY, crc_key, generation_key, open_env, release_env
from .errors import IndexUnavailableError

Decision = _evaluator.Decision


class Engine(_evaluator.EngineCore):
    """Decides Cedar requests from the index at `db`; notices newer generations within `poll_interval_s`."""

    def __init__(self, db, poll_interval_s=0.01):
        self.db = os.fspath(db)
        self.poll_interval_s = poll_interval_s
        self._env = open_env(self.db, create=False)
        self._last_txnid = None
        self.refresh()

    def refresh(self):
        """Switches to the index's current generation now, if it changed; returns its number."""
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
            if number == self.generation:
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
            except _evaluator.IndexFormatError as err:
                raise IndexUnavailableError(f"`{self.db}`: generation {number} is unreadable: {err}") from None
        except lmdb.Error as err:
            txn.abort()
            raise IndexUnavailableError(f"cannot read index `{self.db}`: {err}") from None
        except BaseException:
            txn.abort()
            raise
        # The generation holds `txn` (and so its snapshot) until no decision uses it any more.
        self._install(generation, self.poll_interval_s)
        self._last_txnid = txn.id()
        return number

    def _poll(self):
        try:
            self.refresh()
        except IndexUnavailableError:
            # Keep deciding with the generation already loaded; a broken write never reaches readers.
            pass

    def close(self):
        """Releases the map; the engine can't decide afterwards."""
        self._install(None, self.poll_interval_s)
        if self._env is not None:
            release_env(self._env)
            self._env = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
