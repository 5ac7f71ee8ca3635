"""PolicyWatcher: polls a policies folder and recompiles it into the index on change, keeping the last good generation."""
from __future__ import annotations

import logging
import os
import threading

log = logging.getLogger("authz.reload")

_SOURCES = (".cedar", ".json")


def snapshot(folder: str) -> tuple:
    """What identifies the folder's policy and entity files right now: (path, mtime_ns, size, inode) each."""
    entries = []
    for root, dirs, files in os.walk(folder):
        # Hidden folders are skipped (e.g. a Kubernetes ConfigMap's `..data` timestamped copies).
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        for name in sorted(files):
            if name.endswith(_SOURCES) and not name.startswith("."):
                path = os.path.join(root, name)
                try:
                    st = os.stat(path)
                except OSError:  # removed while scanning; the next poll sees the result
                    continue
                entries.append((path, st.st_mtime_ns, st.st_size, st.st_ino))
    return tuple(entries)


def compile_folder(folder: str, db: str) -> int:
    """Compile `folder` into a new generation of `db`; returns the generation. Raises CompileError."""
    import authz

    gen = authz.compile([folder], db=db)
    return int(gen) if gen is not None else 0


class PolicyWatcher:
    """Recompiles `folder` into `db` whenever its files change (polling every `interval_s`).

    A compile that fails is logged with its diagnostics and counted in the metrics; the
    index keeps serving the last good generation.
    """

    def __init__(self, folder: str, db: str, interval_s: float = 0.25, metrics=None, compile_fn=compile_folder):
        self.folder, self.db, self.interval_s = folder, db, max(interval_s, 0.01)
        self.metrics = metrics
        self.compile_fn = compile_fn
        self.generation = None
        self.failures = 0
        self.reloads = 0
        self._last = snapshot(folder)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="policy-watcher", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(5)

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            try:
                self.poll()
            except Exception:
                log.exception("policy watcher failed; retrying")

    def poll(self) -> bool:
        """Recompile if the folder changed since the last compile; True if it did recompile."""
        current = snapshot(self.folder)
        if current == self._last:
            return False
        # Debounce: editors and `cp -r` write in several steps; wait until a scan repeats.
        while not self._stop.wait(min(self.interval_s, 0.05)):
            again = snapshot(self.folder)
            if again == current:
                break
            current = again
        self._last = current
        self.reload()
        return True

    def reload(self) -> None:
        """Compile now; log and count the result."""
        from authz.errors import CompileError

        try:
            gen = self.compile_fn(self.folder, self.db)
        except CompileError as e:
            self.failures += 1
            log.error("reload of `%s` failed; still serving generation %s:\n%s", self.folder,
                      self.generation, "\n".join(e.diagnostics))
            if self.metrics is not None:
                self.metrics.reload(False)
            return
        except Exception as e:
            self.failures += 1
            log.exception("reload of `%s` failed; still serving generation %s: %s", self.folder, self.generation, e)
            if self.metrics is not None:
                self.metrics.reload(False)
            return
        self.reloads += 1
        self.generation = gen
        log.info("reloaded `%s`: generation %s", self.folder, gen)
        if self.metrics is not None:
            self.metrics.reload(True, gen)
