"""Rate windows at their boundaries (injected times) and the error bound docs/tasks.md states:
exact <= count <= exact + (calls in (now - W - w, now - W])."""
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from statekit import call, make_store

from authz.state import windows

B = 1_700_000_040.0  # a whole minute: bucket edges of m1 and h1 coincide here


def rates(store, now, task="t1"):
    with store.begin(task, "a1", now) as txn:
        view = txn.view()
    assert view["agent"]["rate"] == view["task"]["rate"]
    return view["task"]["rate"]


def test_m1_counts_a_call_until_the_bucket_61_seconds_on(store):
    call(store, B + 0.5)
    assert rates(store, B + 0.5) == {"m1": 1, "h1": 1}
    assert rates(store, B + 60.4) == {"m1": 1, "h1": 1}   # exact: 60.4 - 0.5 < 60
    assert rates(store, B + 60.9) == {"m1": 1, "h1": 1}   # 60.4 s old: over-counted, within one bucket
    assert rates(store, B + 61.0) == {"m1": 0, "h1": 1}   # bucket B aged out
    assert rates(store, B + 3659.9) == {"m1": 0, "h1": 1}
    assert rates(store, B + 3660.0) == {"m1": 0, "h1": 0}


def test_h1_buckets_are_minutes(store):
    call(store, B + 59.9)                                 # minute bucket of B
    call(store, B + 60.0)                                 # next minute
    assert rates(store, B + 3659.0)["h1"] == 2
    assert rates(store, B + 3660.0)["h1"] == 1            # B's minute aged out
    assert rates(store, B + 3720.0)["h1"] == 0


def test_a_clock_that_steps_back_never_counts_fewer(store):
    call(store, B + 100)
    call(store, B + 40)                                   # counted in the newest bucket (B + 100)
    assert rates(store, B + 100) == {"m1": 2, "h1": 2}
    assert rates(store, B + 30) == {"m1": 2, "h1": 2}     # read before the newest bucket: all kept count
    assert rates(store, B + 160.5) == {"m1": 2, "h1": 2}
    assert rates(store, B + 161) == {"m1": 0, "h1": 2}


def test_a_window_stored_by_a_later_clock_still_counts_for_an_earlier_one(tmp_path):
    ahead = make_store(tmp_path / "s")                     # a worker whose clock runs 100 s ahead
    call(ahead, B)
    with ahead.begin("t1", "a1", B + 100) as txn:
        txn.commit_denied()
    ahead.close()
    other = make_store(tmp_path / "s")                     # another worker: reads what was stored
    assert rates(other, B + 1) == {"m1": 1, "h1": 1}
    other.close()


def test_a_long_pause_empties_the_window_and_it_counts_again(store):
    for t in (B, B + 1, B + 2):
        call(store, t)
    assert rates(store, B + 2)["m1"] == 3
    call(store, B + 10_000)
    assert rates(store, B + 10_000) == {"m1": 1, "h1": 1}


@settings(max_examples=300, deadline=None)
@given(calls=st.lists(st.floats(0, 400, allow_nan=False), max_size=40), at=st.floats(0, 500, allow_nan=False),
       width=st.sampled_from([windows.M1_WIDTH, windows.H1_WIDTH]))
def test_the_stated_error_bound_holds(calls, at, width):
    """Calls in time order (a clock that steps back is the test above); counted at any later time."""
    calls = sorted(B + c * width / 10 for c in calls)
    now = max([B + at * width / 10] + calls)
    window = windows.Window(width)
    for t in calls:
        window.add(t)
    span = 60 * width
    exact = sum(1 for t in calls if t > now - span)
    edge = sum(1 for t in calls if now - span - width < t <= now - span)
    assert exact <= window.count(now) <= exact + edge
    assert windows.Window.load(width, window.head, window.stored()).count(now) == window.count(now)


@settings(max_examples=300, deadline=None)
@given(ops=st.lists(st.tuples(st.booleans(), st.integers(0, 200).map(lambda t: B + t / 2)), max_size=60),
       width=st.sampled_from([windows.M1_WIDTH, windows.H1_WIDTH]))
def test_the_remembered_count_always_equals_a_recount(ops, width):
    """Adds and counts at any times, clocks stepping back included: a window's answer equals the answer of
    the same slots read back from storage (which remembers nothing)."""
    window = windows.Window(width)
    for is_add, t in ops:
        now = B + (t - B) * width
        if is_add:
            window.add(now)
        else:
            stored = windows.Window.load(width, window.head, window.stored())
            assert window.count(now) == stored.count(now)


def test_a_damaged_window_is_refused():
    with pytest.raises(ValueError):
        windows.Window.load(1, 5, b"\0" * 7)


@settings(max_examples=300, deadline=None)
@given(calls=st.lists(st.floats(0, 200, allow_nan=False), max_size=40), at=st.floats(0, 300, allow_nan=False),
       width=st.sampled_from([windows.M1_WIDTH, windows.H1_WIDTH]))
def test_counts_are_the_bucket_sums_also_in_the_first_buckets(calls, at, width):
    """The count is exactly the calls whose bucket is at most SPAN buckets before now's, near time 0 too
    (where the oldest counted buckets would be negative: the compiled window's slot arithmetic)."""
    calls = sorted(c * width for c in calls)
    now = max([at * width] + calls)
    window = windows.Window(width)
    for t in calls:
        window.add(t)
    oldest = int(now // width) - windows.SPAN
    assert window.count(now) == sum(1 for t in calls if int(t // width) >= oldest)
    assert windows.Window.load(width, window.head, window.stored()).count(now) == window.count(now)


def test_a_window_needs_a_positive_width():
    with pytest.raises(ValueError):
        windows.Window(0)
