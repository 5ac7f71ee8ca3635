# cython: language_level=3
"""A growing byte buffer for the Cython writers (authz._wire, authz._jsonl), and the hex digits of decision
ids: inline, no Python objects."""
from libc.stdlib cimport realloc, free
from libc.string cimport memcpy


cdef struct Buf:
    char* data
    Py_ssize_t n
    Py_ssize_t cap


cdef inline void buf_init(Buf* b) noexcept:
    b.data = NULL
    b.n = 0
    b.cap = 0


cdef inline void buf_free(Buf* b) noexcept:
    free(b.data)
    b.data = NULL


cdef inline int reserve(Buf* b, Py_ssize_t extra) except -1:
    """Room for `extra` more bytes."""
    cdef Py_ssize_t cap
    cdef char* grown
    if b.n + extra <= b.cap:
        return 0
    cap = max(b.cap * 2, b.n + extra, 4096)
    grown = <char*>realloc(b.data, cap)
    if grown == NULL:
        raise MemoryError()
    b.data = grown
    b.cap = cap
    return 0


cdef inline int put(Buf* b, const char* p, Py_ssize_t n) except -1:
    reserve(b, n)
    memcpy(b.data + b.n, p, n)
    b.n += n
    return 0


cdef inline int hex_seq(char* digits, unsigned long long seq) noexcept:
    """`seq` as (at least) 10 lowercase hex digits, right-aligned in digits[16]: what f"{seq:010x}" gives
    (the sequence part of a decision id). Returns how many digits."""
    cdef const char* hexd = b"0123456789abcdef"
    cdef int n = 0
    while seq or n < 10:
        digits[15 - n] = hexd[seq & 15]
        seq >>= 4
        n += 1
    return n
