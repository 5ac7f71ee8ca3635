# cython: language_level=3
"""The declaration of windows.Window, for compiled callers (authz/state/_step.pyx) to count without a
Python call."""
from cpython cimport array


cdef class Window:
    cdef readonly long long width
    cdef public long long head
    cdef public array.array slots
    cdef bint has_at
    cdef double at
    cdef long long at_bucket
    cdef long long counted

    cpdef add(self, double now)
    cpdef long long count(self, double now)
