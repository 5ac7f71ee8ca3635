"""Builds the compiled extensions (Cython 3), each in the package it serves: authz.engine._evaluator (the
evaluator), authz.server._wire (authz.v1 BatchCheck and Envoy Check on the wire), authz.server._jsonl (decision
log lines), authz.server._envoy_map (the Envoy mapping), authz.compiler._records (compiled records read back
for the compiler's publish-time check), authz.state.windows (task-state rate windows), authz.state._records (the
fields of the task-state records), authz.state._step (the server's per-call task-state step) and
authz.state._lmdb_call (the step's single-call path on the embedded store)."""
import os

from Cython.Build import cythonize
from setuptools import Extension, setup

DIRECTIVES = {
    "language_level": "3",
    "boundscheck": False,
    "wraparound": False,
    "cdivision": True,
    "initializedcheck": False,
    "embedsignature": True,
}
if os.environ.get("AUTHZ_CYTHON_LINETRACE"):
    DIRECTIVES["linetrace"] = True

setup(
    ext_modules=cythonize(
        [Extension("authz.engine._evaluator", ["authz/engine/_evaluator.pyx"], extra_compile_args=["-O2"]),
         Extension("authz.server._wire", ["authz/server/_wire.pyx"], extra_compile_args=["-O2"]),
         Extension("authz.server._jsonl", ["authz/server/_jsonl.pyx"], extra_compile_args=["-O2"]),
         Extension("authz.server._envoy_map", ["authz/server/_envoy_map.pyx"], extra_compile_args=["-O2"]),
         Extension("authz.compiler._records", ["authz/compiler/_records.pyx"], extra_compile_args=["-O2"]),
         Extension("authz.state.windows", ["authz/state/windows.pyx"], extra_compile_args=["-O2"]),
         Extension("authz.state._records", ["authz/state/_records.pyx"], extra_compile_args=["-O2"]),
         Extension("authz.state._step", ["authz/state/_step.pyx"], extra_compile_args=["-O2"]),
         Extension("authz.state._lmdb_call", ["authz/state/_lmdb_call.pyx"], extra_compile_args=["-O2"])],
        compiler_directives=DIRECTIVES,
        annotate=bool(os.environ.get("AUTHZ_CYTHON_ANNOTATE")),
    )
)
