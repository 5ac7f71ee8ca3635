# cython: language_level=3
"""Rate windows counted in fixed buckets: `m1` (1-second buckets) and `h1` (1-minute buckets).

A call at time t falls in bucket floor(t / width). A window keeps the counts of its newest bucket
(`head`) and the 60 before it, in a ring of 61 slots (slot = bucket mod 61). The count at time `now`
is the sum of the buckets b with b >= floor(now / width) - 60.

Error bound (width w: 1 s for m1, 60 s for h1; window W = 60 w):
  every allowed call in (now - W, now] is counted (t > now - W implies floor(t/w) >= floor(now/w) - 60),
  and a counted call has t >= (floor(now/w) - 60) w > now - W - w. So
      exact <= count <= exact + (allowed calls in (now - W - w, now - W]).
The count never under-counts: a policy `context.task.rate.m1 < 30` admits at most 30 calls in any
60 seconds. It may refuse a call an exact sliding window would admit while calls 60 to 61 s old (m1),
or 60 to 61 minutes old (h1), are still counted.

A clock that steps back counts a call in the newest bucket (it stays counted no shorter), and a count
taken at an earlier time than the newest bucket sums every bucket kept (never fewer).
Slot counts saturate at 2^32 - 1 (4 billion calls in one bucket).

Compiled (Cython): a decision with task state counts four windows and reads four (the task's and
its agent's m1 and h1), so these run once per call on the request path.
"""
from cpython cimport array
from libc.math cimport floor, fmod

from array import array as _array

SPAN = 60                  # buckets before the newest that still count
SLOTS = SPAN + 1
M1_WIDTH = 1
H1_WIDTH = 60
SLOTS_BYTES = 4 * SLOTS
cdef int _SLOTS = SLOTS
cdef int _SPAN = SPAN
cdef unsigned int _SLOT_MAX = 0xFFFFFFFF
cdef bytes _ZEROS = bytes(SLOTS_BYTES)
assert _array("I").itemsize == 4


cdef inline long long _bucket(double now, long long width):
    """int(now // width) as Python computes it for a float `now` >= 0 (CPython's float floor division)."""
    cdef double w = <double>width
    cdef double mod = fmod(now, w)
    cdef double div = (now - mod) / w
    cdef double fl = floor(div)
    if div - fl > 0.5:
        fl += 1.0
    return <long long>fl


cdef inline int _slot(long long bucket):
    """The slot of a bucket: bucket mod SLOTS, in 0..SLOTS-1 also for a negative bucket (as Python's %)."""
    cdef long long r = bucket % _SLOTS
    return <int>(r + _SLOTS if r < 0 else r)


cdef class Window:
    """One rate window; `slots` is None until its first call. It remembers its last count (`at`, `counted`):
    the calls of a batch share one `now`, and a call counted at that `now` adds exactly one to it.
    Its fields are declared in windows.pxd (width, head, slots, has_at, at, its bucket at_bucket, counted)."""

    def __init__(self, long long width, long long head=0, array.array slots=None):
        if width <= 0:
            raise ValueError("a window's width is a positive number of seconds")
        self.width, self.head, self.slots = width, head, slots
        self.has_at = False

    cpdef add(self, double now):
        """Count one call at `now`."""
        # the calls of a batch share their `now`: its bucket is the remembered count's
        cdef long long bucket = self.at_bucket if self.has_at and now == self.at else _bucket(now, self.width)
        cdef array.array slots = self.slots
        cdef long long b
        cdef int i
        if slots is not None and bucket <= self.head:  # the common case: the newest bucket (or a clock behind)
            i = _slot(self.head)
            if slots.data.as_uints[i] < _SLOT_MAX:
                slots.data.as_uints[i] += 1
                if self.has_at and self.at_bucket - self.head < _SLOTS:
                    self.counted += 1  # the newest bucket is in the remembered count (see count())
            return
        self.has_at = False
        if slots is None:
            slots = self.slots = _array("I", _ZEROS)
            self.head = bucket
        else:
            if bucket - self.head >= _SLOTS:
                for i in range(_SLOTS):
                    slots.data.as_uints[i] = 0
            else:
                for b in range(self.head + 1, bucket + 1):
                    slots.data.as_uints[_slot(b)] = 0
            self.head = bucket
        i = _slot(self.head)
        if slots.data.as_uints[i] < _SLOT_MAX:
            slots.data.as_uints[i] += 1

    cpdef long long count(self, double now):
        """Calls counted at `now` (see the module docstring for the bound)."""
        # The count depends only on now's bucket, and add() keeps the remembered one current (or forgets it).
        if self.has_at and now == self.at:
            return self.counted
        cdef long long bucket = _bucket(now, self.width)
        if self.has_at and bucket == self.at_bucket:
            self.at = now  # the same count: the next call at this `now` (a batch's next) finds it at once
            return self.counted
        cdef array.array slots = self.slots
        if slots is None:
            return 0
        cdef long long aged = bucket - self.head  # buckets after the newest: the oldest age out
        cdef long long counted = 0, b
        cdef int i
        if aged >= _SLOTS:
            counted = 0
        else:
            for i in range(_SLOTS):
                counted += slots.data.as_uints[i]
            if aged > 0:
                for b in range(self.head - _SPAN, self.head - _SPAN + aged):
                    counted -= slots.data.as_uints[_slot(b)]
        self.has_at, self.at, self.at_bucket, self.counted = True, now, bucket, counted
        return counted

    def stored(self) -> bytes:
        """The slots to store (none before the first call). Kept whatever their age: a later count from a
        clock that stepped back still sees them, exactly as the window in memory would."""
        return b"" if self.slots is None else self.slots.tobytes()

    @classmethod
    def load(cls, long long width, long long head, raw) -> "Window":
        """From `stored()` bytes; ValueError when they are not a window's."""
        if not raw:
            return cls(width)
        if len(raw) != SLOTS_BYTES:
            raise ValueError("a rate window has 61 slots")
        slots = _array("I")
        slots.frombytes(raw)
        return cls(width, head, slots)
