"""Hot reload: polls a policies folder and recompiles it, in a short-lived child process, into the index on
change; a failed reload keeps the last good generation serving, is retried with backoff, and is reported.

Run as `python -m authz.server.reload FOLDER DB [--with-shadow SHADOW_DB | --shadow-set ENTITIES_FOLDER]`,
this module is that child: it compiles and prints one JSON line with the outcome. With `--with-shadow` the
folder's shadow set (its @mode("shadow") policies enforced) goes to SHADOW_DB too; `--shadow-set` compiles
a candidate folder (shadow_policies) with ENTITIES_FOLDER's entity files (docs/policy-tooling.md).
"""
from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import threading
import time

from authz.errors import AuthzError, CompileError

log = logging.getLogger("authz.reload")

_SOURCES = (".cedar", ".json")
COMPILE_TIMEOUT_S = 900.0   # a compile still running after this is killed (and retried)
RETRY_FIRST_S = 1.0         # a failed reload is retried after this, doubling each time ...
RETRY_MAX_S = 60.0          # ... up to this
MAX_DIAGNOSTICS = 100       # diagnostics a compile child reports (and the log shows); the rest are counted
_STDERR_TAIL = 2000         # characters of a crashed compile child's stderr kept for the log


class ReloadError(AuthzError):
    """A compile failed for a reason other than the policies (disk full, the compile process died)."""

    code = "reload_failed"


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


class ChildCompiler:
    """Compiles a folder into the index in a child process (`python -m authz.server.reload`), so the
    memory a big compile takes (~1 GB for 50,000 policies) is returned when it exits, and a compile
    that hangs or crashes is only a failed reload. Callable as compile_fn(folder, db) -> generation.

    With `shadow_db` the folder's shadow set is compiled into it too, and `on_shadow(outcome)` told
    its generation, None (no @mode("shadow") policy) or a CompileError (the enforced set is served
    anyway); with `entities_from` the folder is a shadow_policies candidate set compiled with that
    folder's entity files."""

    def __init__(self, timeout_s: float = COMPILE_TIMEOUT_S, shadow_db: str = "", on_shadow=None,
                 entities_from: str = ""):
        self.timeout_s = timeout_s
        self.shadow_db, self.on_shadow, self.entities_from = shadow_db, on_shadow, entities_from
        self._lock = threading.Lock()
        self._child = None
        self._cancelled = False

    def __call__(self, folder: str, db: str) -> int:
        """Compile `folder` into a new generation of `db`; returns it. Raises CompileError or ReloadError."""
        start = time.monotonic()
        with self._lock:
            if self._cancelled:
                raise ReloadError("the server is stopping")
            extra = ["--with-shadow", self.shadow_db] if self.shadow_db else \
                ["--shadow-set", self.entities_from] if self.entities_from else []
            try:
                self._child = child = subprocess.Popen(
                    [sys.executable, "-m", "authz.server.reload", folder, db, *extra], stdin=subprocess.DEVNULL,
                    stdout=subprocess.PIPE, stderr=subprocess.PIPE)
            except OSError as e:
                raise ReloadError(f"cannot start the compile process: {e.strerror}") from None
        try:
            out, err = child.communicate(timeout=self.timeout_s)
        except subprocess.TimeoutExpired:
            child.kill()
            child.communicate()
            raise ReloadError(f"the compile took longer than {self.timeout_s:.0f} s and was stopped") from None
        finally:
            with self._lock:
                self._child = None
        try:
            result = json.loads(out.splitlines()[-1]) if out.strip() else None
        except ValueError:
            result = None
        if not isinstance(result, dict):
            tail = err.decode("utf-8", "replace")[-_STDERR_TAIL:].strip()
            how = f"was killed by signal {-child.returncode}" if child.returncode < 0 else \
                f"exited with code {child.returncode}"
            raise ReloadError(f"the compile process {how}" + (f":\n{tail}" if tail else ""))
        if "diagnostics" in result:
            more = result.get("more", 0)
            raise CompileError(result["diagnostics"] + ([f"... and {more} more"] if more else []))
        if "error" in result:
            raise ReloadError(result["error"])
        generation = int(result["generation"])
        if self.on_shadow is not None:
            if "shadow_diagnostics" in result:
                self.on_shadow(CompileError(result["shadow_diagnostics"]))
            else:
                shadow = result.get("shadow_generation")
                self.on_shadow(None if shadow is None else int(shadow))
        log.info("compiled `%s` in a child process (pid %d): generation %d, %.1f s, peak %.0f MiB", folder,
                 child.pid, generation, time.monotonic() - start, result.get("peak_kib", 0) / 1024)
        return generation

    def cancel(self) -> None:
        """Stop the running compile, if any, and refuse further ones (the server is stopping)."""
        with self._lock:
            self._cancelled = True
            if self._child is not None and self._child.poll() is None:
                self._child.kill()


class PolicyWatcher:
    """Recompiles `folder` into `db` whenever its files change (polling every `interval_s`).

    `applied` is the folder's snapshot taken before the compile of the served `generation` (None: none
    compiled from the folder yet). A reload that fails is logged and counted; the index keeps serving
    the last good generation, the folder is reported stale (`stale`, the `stale_flag` shared with the
    workers, the metrics) and the reload is retried after RETRY_FIRST_S doubling to RETRY_MAX_S, or at
    once when the folder changes again.
    """

    def __init__(self, folder: str, db: str, interval_s: float = 0.25, metrics=None, compile_fn=None,
                 applied: tuple | None = None, stale_flag=None, generation: int | None = None, also: str = ""):
        self.folder, self.db, self.interval_s = folder, db, max(interval_s, 0.01)
        self.also = also  # another folder whose changes are compiled in too (a shadow set's entities)
        self.metrics = metrics
        self.compile_fn = compile_fn if compile_fn is not None else ChildCompiler()
        self.stale_flag = stale_flag
        self.generation = generation
        self.failures = 0
        self.reloads = 0
        self.stale = False
        self._applied = self._scan() if applied is None else applied
        self._failed = None       # the snapshot whose reload failed last
        self._attempts = 0        # consecutive failed reloads of it
        self._retry_at = 0.0      # monotonic time of its next attempt
        self._last_error = ""
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="policy-watcher", daemon=True)

    def _scan(self) -> tuple:
        return snapshot(self.folder) + (snapshot(self.also) if self.also else ())

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        cancel = getattr(self.compile_fn, "cancel", None)
        if cancel is not None:
            cancel()
        self._thread.join(5)

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            try:
                self.poll()
            except Exception:
                log.exception("policy watcher failed; retrying")

    def poll(self) -> bool:
        """Recompile if the folder differs from what the index serves and no retry is pending; True if it did."""
        current = self._scan()
        if current == self._applied:
            if self.stale:  # the folder is back to what is served
                self._set_stale(False)
            self._failed = None
            return False
        if current == self._failed and time.monotonic() < self._retry_at:
            return False
        if current != self._failed:
            # Debounce: editors and `cp -r` write in several steps; wait until a scan repeats.
            while not self._stop.wait(min(self.interval_s, 0.05)):
                again = self._scan()
                if again == current:
                    break
                current = again
        self.reload(current)
        return True

    def reload(self, current: tuple | None = None) -> bool:
        """Compile now (`current`: the folder's snapshot taken before); log, count and report the result."""
        if current is None:
            current = self._scan()
        try:
            gen = self.compile_fn(self.folder, self.db)
        except Exception as e:  # noqa: BLE001 - any failure keeps the last good generation
            if not self._stop.is_set():  # (stopping kills the compile: not a failure to report)
                self._failure(current, e)
            return False
        self._applied, self._failed, self._attempts, self._last_error = current, None, 0, ""
        self.reloads += 1
        self.generation = gen
        if self.metrics is not None:
            self.metrics.reload(True, gen)
        self._set_stale(False)
        log.info("reloaded `%s`: generation %s", self.folder, gen)
        return True

    def _failure(self, current: tuple, e: Exception) -> None:
        self.failures += 1
        self._attempts = self._attempts + 1 if current == self._failed else 1
        self._failed = current
        delay = min(RETRY_FIRST_S * 2 ** (self._attempts - 1), RETRY_MAX_S)
        self._retry_at = time.monotonic() + delay
        if self.metrics is not None:
            self.metrics.reload(False)
        self._set_stale(True)  # before the log line, which tells that it failed
        if isinstance(e, CompileError):
            error = "\n".join(e.diagnostics)
        elif isinstance(e, AuthzError):
            error = str(e)
        else:
            error = f"{type(e).__name__}: {e}"
        served = (f"still serving generation {self.generation}" if self.generation is not None
                  else "no generation of it served yet")
        if error != self._last_error:
            log.error("reload of `%s` failed; %s; retrying in %.0f s:\n%s", self.folder, served, delay, error)
        else:
            log.error("reload of `%s` failed again (attempt %d, same error); %s; retrying in %.0f s", self.folder,
                      self._attempts, served, delay)
        self._last_error = error

    def _set_stale(self, stale: bool) -> None:
        self.stale = stale
        if self.stale_flag is not None:
            self.stale_flag.value = int(stale)
        if self.metrics is not None:
            self.metrics.policies_stale(stale)


def compile_shadow_set(folder: str, entities_from: str, db: str) -> int:
    """Compile a shadow_policies folder (every policy in it enforced, @mode("shadow") or not) with the
    entity files of the served policies folder `entities_from` into `db`; returns the generation."""
    from authz.compiler import compile_sources, find_sources

    _, own = find_sources([folder])
    if own:
        raise CompileError([f"{own[0][1]}: a shadow policies folder holds policies only: the shadow set decides "
                            f"with the entities of the policies folder `{entities_from}`"])
    _, entities = find_sources([entities_from])
    return compile_sources([folder] + [path for path, _ in entities], db, shadow=True)


def _compile_child(folder: str, db: str, option: str = "", arg: str = "") -> int:
    """The compile child: compile, print one JSON line (generation | diagnostics | error, and peak_kib;
    shadow_generation or shadow_diagnostics with --with-shadow)."""
    import resource

    import authz
    from authz.compiler import compile_with_shadow

    try:
        if option == "--with-shadow":
            generation, shadow = compile_with_shadow([folder], db, arg)
            result = {"generation": int(generation)}
            if isinstance(shadow, CompileError):
                result["shadow_diagnostics"] = shadow.diagnostics[:MAX_DIAGNOSTICS]
            else:
                result["shadow_generation"] = shadow
        elif option == "--shadow-set":
            result = {"generation": int(compile_shadow_set(folder, arg, db))}
        else:
            result = {"generation": int(authz.compile([folder], db=db))}
        code = 0
    except CompileError as e:
        result, code = {"diagnostics": e.diagnostics[:MAX_DIAGNOSTICS],
                        "more": max(len(e.diagnostics) - MAX_DIAGNOSTICS, 0)}, 2
    except (AuthzError, OSError) as e:
        result, code = {"error": str(e)}, 1
    result["peak_kib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print(json.dumps(result), flush=True)
    return code


if __name__ == "__main__":
    sys.exit(_compile_child(*sys.argv[1:5]))
