"""The content digest of a policy set: SHA-256 over the sources a compile read (policy and entity files),
each named by its path relative to the folder given (its base name when the file itself was given) and
sorted by that name, so every node compiling the same folder content gets the same digest, whatever the
order files are listed in, the folder's absolute path or the process's hash seed (docs/scale-out.md)."""

import hashlib
import json
import struct

_LENGTH = struct.Struct("<Q")


class SourceDigest:
    """Collects (name, bytes) of the sources a compile reads; hexdigest() is the policy set's digest."""

    def __init__(self):
        self._parts = []

    def add(self, name: str, data: bytes) -> None:
        self._parts.append((name.encode("utf-8", "surrogateescape"), data))

    def add_overlay(self, name: str, items) -> None:
        """Entities given in place of files (compile_sources' entity_overlay), as JSON in their given order."""
        self.add(name, json.dumps(items, ensure_ascii=False, default=str).encode("utf-8", "surrogatepass"))

    def hexdigest(self) -> str:
        h = hashlib.sha256(b"authz policy set v1\0")
        for name, data in sorted(self._parts):
            # Length-prefixed: no two different source lists hash the same bytes.
            h.update(_LENGTH.pack(len(name)))
            h.update(name)
            h.update(_LENGTH.pack(len(data)))
            h.update(data)
        return h.hexdigest()
