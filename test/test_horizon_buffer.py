"""The time-stamped training buffer: horizon window, eviction, uniform sampling."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ams_ros.ground.horizon_buffer import HorizonBuffer


def frame(value=0):
    return np.full((4, 6, 3), value, np.uint8)


def label(value=0):
    return np.full((4, 6), value, np.uint8)


def stamps_of(items):
    return sorted(item.stamp for item in items)


def test_window_is_the_last_horizon_seconds_before_the_newest_frame():
    buffer = HorizonBuffer(horizon_s=10.0)
    for t in (0.0, 3.0, 6.0, 9.0, 12.0, 15.0):
        buffer.add(t, frame(), label())
    assert buffer.newest_stamp == 15.0
    assert stamps_of(buffer.window()) == [6.0, 9.0, 12.0, 15.0]  # 5.0 <= stamp <= 15.0
    # A given `now` bounds both ends; a shorter horizon narrows the window.
    assert stamps_of(buffer.window(now=12.0)) == [6.0, 9.0, 12.0]
    assert stamps_of(buffer.window(horizon_s=4.0)) == [12.0, 15.0]


def test_old_frames_are_evicted_so_memory_stays_bounded():
    buffer = HorizonBuffer(horizon_s=10.0)
    for t in range(100):
        buffer.add(float(t), frame(), label())
        assert len(buffer) <= 11
    assert stamps_of(buffer.window(now=200.0, horizon_s=1000.0)) == list(range(89, 100))
    assert buffer.evict(now=105.0) == 6  # 89..94 are now older than 95
    assert len(buffer) == 5
    assert not buffer.add(50.0, frame(), label())  # arrives already too old
    assert len(buffer) == 5


def test_out_of_order_inserts_and_duplicate_stamps():
    buffer = HorizonBuffer(horizon_s=100.0)
    for t in (5.0, 1.0, 3.0):
        buffer.add(t, frame(int(t)), label())
    assert [item.stamp for item in buffer.window()] == [1.0, 3.0, 5.0]
    buffer.add(3.0, frame(42), label(7))
    assert len(buffer) == 3
    replaced = [item for item in buffer.window() if item.stamp == 3.0]
    assert replaced[0].frame[0, 0, 0] == 42 and replaced[0].label[0, 0] == 7


def test_sampling_is_uniform_without_replacement_and_shrinks_to_the_window():
    buffer = HorizonBuffer(horizon_s=100.0)
    for t in range(10):
        buffer.add(float(t), frame(t), label())
    rng = np.random.default_rng(0)
    counts = np.zeros(10)
    for _ in range(2000):
        batch = buffer.sample(3, rng)
        picked = [item.stamp for item in batch]
        assert len(set(picked)) == 3
        counts[np.array(picked, int)] += 1
    assert counts.min() > 0.85 * 600 and counts.max() < 1.15 * 600
    assert len(buffer.sample(50, rng)) == 10
    assert HorizonBuffer().sample(4, rng) == []


@settings(max_examples=60, deadline=None)
@given(stamps=st.lists(st.floats(0.0, 1000.0), min_size=1, max_size=40),
       horizon=st.floats(1.0, 300.0), now_offset=st.floats(-50.0, 50.0))
def test_samples_never_come_from_outside_the_horizon(stamps, horizon, now_offset):
    buffer = HorizonBuffer(horizon_s=horizon)
    for t in stamps:
        buffer.add(t, frame(), label())
    newest = max(stamps)
    assert len(buffer) == sum(1 for t in set(stamps) if t >= newest - horizon)
    now = newest + now_offset
    batch = buffer.sample(8, np.random.default_rng(0), now=now)
    assert all(now - horizon <= item.stamp <= now for item in batch)


def test_rejects_malformed_frames():
    buffer = HorizonBuffer()
    with pytest.raises(ValueError):
        buffer.add(0.0, frame().astype(np.float32), label())
    with pytest.raises(ValueError):
        buffer.add(0.0, frame()[..., :1], label())
    with pytest.raises(ValueError):
        buffer.add(0.0, frame(), label()[..., None])
    with pytest.raises(ValueError):
        HorizonBuffer(horizon_s=0.0)


@pytest.mark.parametrize('offset', [1.7e9, -95.0])
def test_shift_moves_every_frame_onto_the_new_clock(offset):
    buffer = HorizonBuffer(horizon_s=10.0)
    for t in (100.0, 103.0, 106.0, 109.0):
        buffer.add(t, frame(int(t)), label(int(t) % 7))
    before = buffer.window()
    buffer.shift(offset)
    after = buffer.window()
    assert len(buffer) == 4 and buffer.newest_stamp == 109.0 + offset
    assert [item.stamp for item in after] == [item.stamp + offset for item in before]
    for old, new in zip(before, after, strict=True):
        assert new.frame is old.frame and new.label is old.label
    # The horizon carries on from the shifted newest stamp.
    assert buffer.add(112.0 + offset, frame(), label())
    assert stamps_of(buffer.window()) == [t + offset for t in (103.0, 106.0, 109.0, 112.0)]
    assert not buffer.add(100.0 + offset, frame(), label())  # now older than the horizon


def test_shift_of_an_empty_buffer_and_bad_offsets():
    buffer = HorizonBuffer()
    buffer.shift(5.0)
    assert len(buffer) == 0 and buffer.newest_stamp is None
    buffer.add(1.0, frame(), label())
    for bad in (float('nan'), float('inf')):
        with pytest.raises(ValueError):
            buffer.shift(bad)
    assert stamps_of(buffer.window()) == [1.0]


@settings(max_examples=60, deadline=None)
@given(centis=st.lists(st.integers(0, 100_000), min_size=1, max_size=30, unique=True),
       offset=st.floats(-2.0**31, 2.0**31))
def test_shift_keeps_the_training_window(centis, offset):
    buffer = HorizonBuffer(horizon_s=100.0)
    for t in centis:  # frames at least 10 ms apart, stamps in ROS's range
        buffer.add(t / 100, frame(), label())
    before = stamps_of(buffer.window())
    buffer.shift(offset)
    assert stamps_of(buffer.window()) == pytest.approx([t + offset for t in before])
