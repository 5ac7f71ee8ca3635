"""LineFile: a JSONL file several processes append whole lines to, rotated by size and reopened when renamed.

Each append holds an exclusive flock on the file, so the workers sharing it take turns, and:
- never leaves part of a line: a write cut short (a full disk) is truncated back to the last whole
  line it wrote, and a line left cut short anyway (a truncate that failed, a process killed mid-write) is removed
  by the next append before it writes;
- follows the file's name: renamed away or removed (logrotate, another worker rotating it), the
  file at the path is opened (created) and written instead;
- rotates by size: before `max_bytes` would be passed, `path` becomes `path.1` (`path.1` becomes
  `path.2`, ..., `keep` files kept) and a new file starts. A line longer than `max_bytes` gets a
  file of its own.
"""
from __future__ import annotations

import fcntl
import logging
import os

log = logging.getLogger("authz.decisionlog")

_SCAN_BLOCK = 64 << 10  # read back this much at a time to find the last whole line


class AppendError(Exception):
    """An append failed with `error` (an OSError) after `written` bytes of its data went to the file (whole lines)."""

    def __init__(self, error: OSError, written: int):
        super().__init__(error.strerror or str(error))
        self.error, self.written = error, written


class LineFile:
    """Appends whole lines to `path` (see the module docstring). Used by one thread of each process."""

    def __init__(self, path: str, max_bytes: int = 0, keep: int = 0, mode: int = 0o640):
        self.path = path
        self.max_bytes = max_bytes  # 0: no size limit
        self.keep = keep
        self._mode = mode
        self._fd = -1
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        self._open()

    def _open(self) -> None:
        # Read too: an append checks that the file ends in a whole line (_whole_lines).
        fd = os.open(self.path, os.O_RDWR | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, self._mode)
        self.close()
        self._fd = fd

    def reopen(self) -> None:
        """Open the file now at `path` (created if missing); raises OSError if it cannot be opened."""
        self._open()

    def close(self) -> None:
        if self._fd >= 0:
            try:
                os.close(self._fd)
            except OSError:
                pass
            self._fd = -1

    def append(self, data: bytes) -> None:
        """Append `data`, whole lines (each ending in a newline); raises AppendError if not all of it was written,
        the file then ending after the last line that was."""
        start = stalled = 0
        while start < len(data):
            # A turn writes at least one line, or rotates (the next turn writes into an empty file), or
            # follows a rename: turns without progress only repeat while others keep renaming the file.
            try:
                if self._fd < 0:
                    self._open()
                reached = self._append_locked(data, start)
            except AppendError:
                raise
            except OSError as e:
                raise AppendError(e, start) from None
            stalled = 0 if reached > start else stalled + 1
            if stalled > 8:
                raise AppendError(OSError(0, "the file keeps being renamed"), start)
            start = reached

    def _append_locked(self, data: bytes, start: int) -> int:
        """One turn under the file's lock; returns how far into `data` is written."""
        fd = self._fd
        fcntl.flock(fd, fcntl.LOCK_EX)
        try:
            st = os.fstat(fd)
            if not self._is_at_path(st):
                follow = True
            else:
                size = self._whole_lines(fd, st.st_size)
                take = self._fitting(data, start, size)
                if take:
                    self._write(fd, data, start, start + take, size)
                    return start + take
                self._rotate()
                follow = True
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)
        if follow:
            self._open()
        return start

    def _is_at_path(self, st) -> bool:
        try:
            at_path = os.stat(self.path)
        except FileNotFoundError:
            return False
        return (at_path.st_dev, at_path.st_ino) == (st.st_dev, st.st_ino)

    def _fitting(self, data: bytes, start: int, size: int) -> int:
        """How many bytes of data[start:] (whole lines) go into a file of `size` bytes; 0: rotate first."""
        rest = len(data) - start
        if not self.max_bytes or size + rest <= self.max_bytes:
            return rest
        room = self.max_bytes - size
        if room > 0:
            cut = data.rfind(b"\n", start, start + room)
            if cut >= 0:
                return cut + 1 - start
        if size == 0:  # a line longer than the limit: a file of its own
            end = data.find(b"\n", start)
            return (end + 1 if end >= 0 else len(data)) - start
        return 0

    def _write(self, fd: int, data: bytes, start: int, end: int, size: int) -> None:
        """Write data[start:end] at the end of the file (`size` bytes). A write cut short is truncated back
        to the last whole line it wrote, and AppendError says how far into `data` that is."""
        view = memoryview(data)
        at = start
        try:
            while at < end:
                at += os.write(fd, view[at:end])
        except OSError as e:
            whole = max(data.rfind(b"\n", start, at) + 1, start)  # the end of the last whole line written
            if whole < at:
                try:
                    os.ftruncate(fd, size + whole - start)
                except OSError:
                    pass  # the next append removes the cut line (_whole_lines)
            raise AppendError(e, whole) from None

    def _whole_lines(self, fd: int, size: int) -> int:
        """The size of the file once a last line without its newline is removed (truncating it)."""
        if size == 0 or os.pread(fd, 1, size - 1) == b"\n":
            return size
        end = size
        while end > 0:  # bounded by the file's size
            begin = max(0, end - _SCAN_BLOCK)
            block = os.pread(fd, end - begin, begin)
            newline = block.rfind(b"\n")
            if newline >= 0:
                end = begin + newline + 1
                break
            end = begin
        os.ftruncate(fd, end)
        log.warning("decision log `%s`: removed a line cut short (%d bytes) at its end", self.path, size - end)
        return end

    def _rotate(self) -> None:
        """`path` -> `path.1` -> ... -> `path.<keep>` (the oldest goes); with `keep` 0 the file is removed."""
        if self.keep == 0:
            os.unlink(self.path)
            return
        for i in range(self.keep - 1, 0, -1):
            try:
                os.rename(f"{self.path}.{i}", f"{self.path}.{i + 1}")
            except FileNotFoundError:
                pass
        os.rename(self.path, f"{self.path}.1")
