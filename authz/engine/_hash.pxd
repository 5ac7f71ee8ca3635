# cython: language_level=3
"""A fast 64-bit hash of short byte strings, for the Cython modules' own caches (not for anything an
attacker can turn into a denial of service beyond a cache miss: every cache it serves is bounded)."""
from libc.stdint cimport uint64_t
from libc.string cimport memcpy


cdef inline uint64_t bytes_hash(const void* data, Py_ssize_t n, uint64_t seed) noexcept nogil:
    """Hashes n bytes 8 at a time (multiply-xorshift rounds); `seed` separates kinds of keys."""
    cdef const char* p = <const char*>data
    cdef uint64_t h = seed ^ (<uint64_t>n * 0x9E3779B97F4A7C15ULL), w
    while n >= 8:
        memcpy(&w, p, 8)
        h = (h ^ w) * 0xBF58476D1CE4E5B9ULL
        h ^= h >> 31
        p += 8
        n -= 8
    w = 0
    memcpy(&w, p, n)
    h = (h ^ w) * 0x94D049BB133111EBULL
    return h ^ (h >> 29)
