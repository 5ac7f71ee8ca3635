"""Shared fixture for the Cedar differential and corpus tests: one authz index reused across cases."""

import json

import pytest


class AuthzHarness:
    """Writes a case to <root>/src, compiles it into one LMDB path (a new generation each time), checks requests."""

    def __init__(self, authz, root):
        self.authz = authz
        self.src = root / "src"
        self.src.mkdir()
        self.db = str(root / "authz.lmdb")
        self.engine = None
        self.compiles = 0
        # Compiling while an Engine on the same path is open in this process is part of the API
        # (test_differential.py::test_compile_with_open_engine checks it); if that fails, the
        # semantic tests close the engine around each compile so they can still run.
        self.reopen = False

    def load(self, policies, entities, as_files=False) -> None:
        """Compile a case; raises authz's CompileError when authz refuses it.

        `policies`: Cedar text (written to policies.cedar) or [(file name, text)];
        `entities`: a list / JSON text (written to entities.json) or [(file name, list)].
        The folder is compiled, or with `as_files` the list of its files in the order given.
        """
        from cedar_gen import ENTITY_FILE, POLICY_FILE

        if isinstance(policies, str):
            policies = [(POLICY_FILE, policies)]
        if isinstance(entities, str) or not (entities and isinstance(entities[0], tuple)):
            entities = [(ENTITY_FILE, entities)]
        for old in self.src.iterdir():
            old.unlink()
        for name, text in policies:
            (self.src / name).write_text(text, encoding="utf-8")
        for name, ents in entities:
            body = ents if isinstance(ents, str) else json.dumps(ents, ensure_ascii=False)
            (self.src / name).write_text(body, encoding="utf-8")
        if self.engine is not None and self.reopen:
            self.engine.close()
            self.engine = None
        if as_files:
            self.authz.compile([str(self.src / name) for name, _ in policies + entities], db=self.db)
        else:
            self.authz.compile([str(self.src)], db=self.db)
        self.compiles += 1
        if self.engine is None:
            self.engine = self.authz.Engine(self.db)
        else:
            self.engine.refresh()

    def outcomes(self, requests) -> list:
        from cedar_gen import decision_outcome

        if not requests:
            return []
        return [decision_outcome(d) for d in self.engine.check_batch(requests)]

    def check(self, request):
        return self.engine.check(
            principal=request["principal"],
            action=request["action"],
            resource=request["resource"],
            context=request.get("context", {}),
        )


@pytest.fixture(scope="session")
def authz_harness(tmp_path_factory):
    import authz
    h = AuthzHarness(authz, tmp_path_factory.mktemp("authz-diff"))
    probe = tmp_path_factory.mktemp("authz-probe")
    try:
        (probe / "p.cedar").write_text("permit(principal, action, resource);")
        authz.compile([str(probe / "p.cedar")], db=str(probe / "x.lmdb"))
        engine = authz.Engine(str(probe / "x.lmdb"))
        authz.compile([str(probe / "p.cedar")], db=str(probe / "x.lmdb"))
        engine.refresh()
    except Exception:
        h.reopen = True
    return h
