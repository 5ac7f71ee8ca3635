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
"""
from __future__ import annotations

from array import array

SPAN = 60                  # buckets before the newest that still count
SLOTS = SPAN + 1
M1_WIDTH = 1
H1_WIDTH = 60
_SLOT_MAX = 0xFFFFFFFF
_ZEROS = bytes(4 * SLOTS)
SLOTS_BYTES = len(_ZEROS)
assert array("I").itemsize == 4


class Window:
    """One rate window; `slots` is None until its first call. It remembers its last count (`at`, `counted`):
    the calls of a batch share one `now`, and a call counted at that `now` adds exactly one to it."""

    __slots__ = ("width", "head", "slots", "at", "counted")

    def __init__(self, width: int, head: int = 0, slots: array | None = None):
        self.width, self.head, self.slots = width, head, slots
        self.at = self.counted = None

    def add(self, now: float) -> None:
        """Count one call at `now`."""
        bucket = int(now // self.width)
        slots = self.slots
        if slots is not None and bucket <= self.head:  # the common case: the newest bucket (or a clock behind)
            i = self.head % SLOTS
            if slots[i] < _SLOT_MAX:
                slots[i] += 1
                if self.at is not None and int(self.at // self.width) - self.head < SLOTS:
                    self.counted += 1  # the newest bucket is in the remembered count (see count())
            return
        self.at = None
        if slots is None:
            slots = self.slots = array("I", _ZEROS)
            self.head = bucket
        else:
            if bucket - self.head >= SLOTS:
                slots[:] = array("I", _ZEROS)
            else:
                for b in range(self.head + 1, bucket + 1):
                    slots[b % SLOTS] = 0
            self.head = bucket
        i = self.head % SLOTS
        if slots[i] < _SLOT_MAX:
            slots[i] += 1

    def count(self, now: float) -> int:
        """Calls counted at `now` (see the module docstring for the bound)."""
        # The count depends only on now's bucket, and add() keeps the remembered one current (or forgets it).
        if self.at is not None and (now == self.at or int(now // self.width) == int(self.at // self.width)):
            return self.counted
        slots = self.slots
        if slots is None:
            return 0
        aged = int(now // self.width) - self.head  # buckets after the newest: the oldest that many age out
        if aged <= 0:
            counted = sum(slots)
        elif aged >= SLOTS:
            counted = 0
        else:
            gone = 0
            for b in range(self.head - SPAN, self.head - SPAN + aged):
                gone += slots[b % SLOTS]
            counted = sum(slots) - gone
        self.at, self.counted = now, counted
        return counted

    def stored(self) -> bytes:
        """The slots to store (none before the first call). Kept whatever their age: a later count from a
        clock that stepped back still sees them, exactly as the window in memory would."""
        return b"" if self.slots is None else self.slots.tobytes()

    @classmethod
    def load(cls, width: int, head: int, raw: bytes) -> "Window":
        """From `stored()` bytes; ValueError when they are not a window's."""
        if not raw:
            return cls(width)
        if len(raw) != SLOTS_BYTES:
            raise ValueError("a rate window has 61 slots")
        slots = array("I")
        slots.frombytes(raw)
        return cls(width, head, slots)
