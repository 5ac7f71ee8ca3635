"""The supervisor's side of shadow policies: compiles the shadow set into DATA_DIR/shadow.lmdb on start and on
every reload (in the compile child processes of authz/server/reload.py) and tells the workers, through
ShadowFlags, whether there is one to evaluate and whether its source fails to compile.

The shadow set is either the policies folder with its @mode("shadow") policies enforced (compiled by the
same child as the enforced set, only when some policy is @mode("shadow")), or, with `shadow_policies`,
that folder's policies with the policies folder's entities (its own watcher: a broken shadow folder never
stops the enforced set). A shadow set that fails to compile keeps the last good one evaluated.
"""
from __future__ import annotations

import logging

from authz.errors import CompileError
from authz.server.reload import ChildCompiler, PolicyWatcher, ReloadError
from authz.server.shadow import ShadowFlags

log = logging.getLogger("authz.reload")


class _CandidateCompiler(ChildCompiler):
    """Compiles the shadow_policies folder; a success makes the shadow set active."""

    def __init__(self, entities_from: str, flags: ShadowFlags):
        super().__init__(entities_from=entities_from)
        self.flags = flags

    def __call__(self, folder: str, db: str) -> int:
        generation = super().__call__(folder, db)
        self.flags.active.value = 1
        return generation


class ShadowSets:
    """Compiles and watches the shadow set of a ServeConfig with a policies folder."""

    def __init__(self, cfg, ctx):
        self.cfg = cfg
        self.flags = ShadowFlags(ctx)
        self.path = cfg.shadow_db_path
        self._watcher = None
        self._candidate = _CandidateCompiler(cfg.policies, self.flags) if cfg.shadow_policies else None
        self._generation = None
        self._applied = None

    def enforced_compiler(self) -> ChildCompiler:
        """The compile function of the policies folder: it compiles the folder's own shadow set too,
        unless a shadow_policies folder is the shadow set."""
        if self._candidate is not None:
            return ChildCompiler()
        return ChildCompiler(shadow_db=self.path, on_shadow=self._folder_shadow)

    def _folder_shadow(self, outcome) -> None:
        """What the policies folder's compile child said of its shadow set: generation, None or CompileError."""
        if isinstance(outcome, CompileError):
            self.flags.stale.value = 1
            log.error("shadow policies of `%s` failed to compile (enforcement goes on%s):\n%s", self.cfg.policies,
                      "; the last good shadow set is evaluated" if self.flags.active.value else "",
                      "\n".join(outcome.diagnostics))
            return
        self.flags.stale.value = 0
        if outcome is None:
            if self.flags.active.value:
                log.info("no @mode(\"shadow\") policy in `%s` any more: no shadow set", self.cfg.policies)
            self.flags.active.value = 0
        else:
            self.flags.active.value = 1
            log.info("shadow set of `%s` compiled into `%s`: generation %d", self.cfg.policies, self.path, outcome)

    def compile_initial(self) -> None:
        """Compile the shadow_policies folder, if any, before the workers start; a failure is logged and
        reported (flags.stale) and the folder retried by the watcher."""
        if self._candidate is None:
            return
        from authz.server.reload import snapshot

        folder = self.cfg.shadow_policies
        self._applied = snapshot(folder) + snapshot(self.cfg.policies)
        try:
            self._generation = self._candidate(folder, self.path)
        except (CompileError, ReloadError) as e:
            text = "\n".join(e.diagnostics) if isinstance(e, CompileError) else str(e)
            log.error("shadow policies `%s` failed to compile (enforcement goes on without them):\n%s", folder, text)
            self.flags.stale.value = 1
            self._applied = ()  # the watcher compiles it again
            return
        log.info("shadow policies `%s` compiled into `%s`: generation %d", folder, self.path, self._generation)

    def start_watching(self) -> None:
        """Watch the shadow_policies folder (and the policies folder's entities), if any."""
        if self._candidate is None:
            return
        self._watcher = PolicyWatcher(self.cfg.shadow_policies, self.path, self.cfg.reload_interval_s, None,
                                      self._candidate, self._applied, self.flags.stale, self._generation,
                                      also=self.cfg.policies)
        self._watcher.start()

    def stop(self) -> None:
        if self._watcher is not None:
            self._watcher.stop()
        elif self._candidate is not None:
            self._candidate.cancel()
