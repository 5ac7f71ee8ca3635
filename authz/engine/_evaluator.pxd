# cython: language_level=3
"""The type of authz._evaluator that the other extensions (the wire encoder, the decision log) read
at C speed instead of through Python attribute lookups."""
cimport cython


@cython.final
cdef class Decision:
    cdef readonly bint allowed
    cdef readonly list policies
    cdef list _errors   # None when no policy errored: the empty list is made only if someone asks
    cdef readonly bint permitted  # some permit was satisfied (also when a forbid denies: approvals ask this)
