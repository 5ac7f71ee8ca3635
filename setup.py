"""Builds the one compiled extension, authz._evaluator (Cython 3)."""
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
        [Extension("authz._evaluator", ["authz/_evaluator.pyx"], extra_compile_args=["-O2"])],
        compiler_directives=DIRECTIVES,
        annotate=bool(os.environ.get("AUTHZ_CYTHON_ANNOTATE")),
    )
)
