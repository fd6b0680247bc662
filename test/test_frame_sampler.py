"""The edge's sampler: spacing at the ground's rate, batches per T_update, run-time changes."""

import numpy as np
import pytest

from ams_ros.drone.frame_sampler import FrameSampler

FRAME = np.zeros((4, 6, 3), np.uint8)


def feed(sampler, stamps):
    """Offer a frame at every stamp; return the batches emitted."""
    batches = []
    for stamp in stamps:
        batch = sampler.add(stamp, FRAME)
        if batch is not None:
            batches.append(batch)
    return batches


def camera(start, stop, fps=30.0):
    return [start + k / fps for k in range(int(round((stop - start) * fps)))]


def sampled_stamps(batches):
    return [stamp for batch in batches for stamp in batch.stamps]


@pytest.mark.parametrize('rate', [1.0, 0.7, 0.5, 0.25, 0.1])
def test_samples_are_spaced_one_period_apart_at_any_rate(rate):
    sampler = FrameSampler(rate=rate, update_period=10.0)
    batches = feed(sampler, camera(0.0, 120.0))
    stamps = sampled_stamps(batches) + list(sampler.flush().stamps)
    gaps = np.diff(stamps)
    assert np.all(np.abs(gaps - 1 / rate) <= 1 / 30 + 1e-9)  # within one camera frame
    assert len(stamps) == pytest.approx(120 * rate, abs=1)  # the rate holds over the run


def test_batches_are_emitted_once_they_span_the_update_period():
    sampler = FrameSampler(rate=1.0, update_period=10.0)
    emitted_at = []
    for stamp in camera(100.0, 135.0):
        batch = sampler.add(stamp, FRAME)
        if batch is not None:
            emitted_at.append(stamp)
            assert len(batch.frames) == 10
            assert batch.stamps[-1] - batch.stamps[0] == pytest.approx(9.0, abs=0.05)
            assert batch.rate == 1.0 and batch.update_period == 10.0
    assert emitted_at == pytest.approx([110.0, 120.0, 130.0])
    assert len(sampler.flush().frames) == 5
    assert sampler.flush() is None


def test_rate_change_takes_effect_from_the_last_sample():
    sampler = FrameSampler(rate=1.0, update_period=100.0)
    feed(sampler, camera(0.0, 3.5))  # samples at 0, 1, 2, 3
    sampler.set_rate(0.2)
    feed(sampler, camera(3.5, 20.0))
    stamps = sampler.flush().stamps
    assert stamps == pytest.approx([0, 1, 2, 3, 8, 13, 18], abs=1e-9)
    sampler = FrameSampler(rate=0.1, update_period=100.0)
    feed(sampler, camera(0.0, 4.0))  # sample at 0; the next would be due at 10
    sampler.set_rate(1.0)  # due at 1, already past: the next frame is taken
    feed(sampler, camera(4.0, 6.5))
    assert sampler.flush().stamps == pytest.approx([0, 4, 5, 6], abs=1e-9)


def test_batch_reports_the_rate_in_force():
    sampler = FrameSampler(rate=1.0, update_period=10.0)
    feed(sampler, camera(0.0, 5.0))
    sampler.set_rate(0.5)
    (batch,) = feed(sampler, camera(5.0, 10.1))
    assert batch.rate == 0.5
    assert batch.stamps == pytest.approx([0, 1, 2, 3, 4, 6, 8], abs=1e-9)


def test_update_period_change_applies_to_the_open_window():
    sampler = FrameSampler(rate=1.0, update_period=10.0)
    feed(sampler, camera(0.0, 4.5))
    sampler.set_update_period(20.0)  # the window opened at 0 now closes at 20
    batches = feed(sampler, camera(4.5, 45.0))
    assert [len(b.frames) for b in batches] == [20, 20]
    assert batches[0].update_period == 20.0
    sampler.set_update_period(2.0)  # the window opened at 40 should have closed at 42
    (batch,) = feed(sampler, camera(45.0, 45.1))
    assert batch.stamps == pytest.approx([40, 41, 42, 43, 44], abs=1e-9)


def test_windows_without_samples_emit_nothing():
    sampler = FrameSampler(rate=0.1, update_period=5.0)
    batches = feed(sampler, camera(0.0, 40.0))  # windows [5, 10), [15, 20), ... are empty
    assert [len(b.frames) for b in batches] == [1, 1, 1, 1]
    assert [b.stamps[0] for b in batches] == pytest.approx([0.0, 10.0, 20.0, 30.0])


def test_camera_jitter_does_not_skip_samples():
    # A 1 fps camera sampled at 1 fps: a frame stamped a few ms early is still taken.
    jitter = np.random.default_rng(0).uniform(-0.02, 0.02, 60)
    sampler = FrameSampler(rate=1.0, update_period=10.0)
    batches = feed(sampler, np.arange(60) + jitter)
    assert [len(b.frames) for b in batches] == [10] * 5


def test_a_stall_restarts_the_schedule_without_a_burst():
    sampler = FrameSampler(rate=1.0, update_period=1000.0)
    feed(sampler, camera(0.0, 2.5))
    feed(sampler, camera(30.0, 33.0))  # the camera stalled from 2.5 s to 30 s
    assert sampler.flush().stamps == pytest.approx([0, 1, 2, 30, 31, 32], abs=1e-9)


def test_clock_jumping_back_restarts_sampling():
    sampler = FrameSampler(rate=1.0, update_period=10.0)
    feed(sampler, camera(50.0, 57.0))
    batches = feed(sampler, camera(0.0, 12.0))  # bag loop: time starts over
    assert sampler.resets == 1
    assert [b.stamps[0] for b in batches] == [0.0]  # the old timeline's samples were dropped
    assert len(batches[0].frames) == 10


def test_slightly_late_frames_are_dropped_not_a_reset():
    sampler = FrameSampler(rate=10.0, update_period=100.0, reorder_tolerance_s=0.5)
    feed(sampler, [0.0, 0.1, 0.2, 0.15, 0.3])
    assert sampler.resets == 0
    assert sampler.flush().stamps == pytest.approx([0.0, 0.1, 0.2, 0.3])


def test_sampled_frames_are_copies():
    sampler = FrameSampler()
    frame = np.full((2, 2, 3), 7, np.uint8)
    sampler.add(0.0, frame)
    frame[:] = 0  # the caller reuses its buffer
    assert sampler.flush().frames[0][0, 0, 0] == 7


@pytest.mark.parametrize('bad', [0.0, -1.0, float('nan'), float('inf')])
def test_invalid_rate_and_period_are_refused(bad):
    with pytest.raises(ValueError, match='rate'):
        FrameSampler(rate=bad)
    with pytest.raises(ValueError, match='update_period'):
        FrameSampler().set_update_period(bad)
    with pytest.raises(ValueError, match='rate'):
        FrameSampler().set_rate(bad)


def test_a_frame_of_another_size_first_emits_the_buffered_samples():
    sampler = FrameSampler(rate=1.0, update_period=10.0)
    small, large = np.zeros((4, 6, 3), np.uint8), np.ones((8, 12, 3), np.uint8)
    assert feed(sampler, [0.0, 1.0, 2.0]) == []
    assert sampler.add(2.5, large) is None  # not due: not taken, the buffer is untouched
    early = sampler.add(3.0, large)
    assert early.stamps == (0.0, 1.0, 2.0)
    assert {frame.shape for frame in early.frames} == {small.shape}
    assert sampler.size_flushes == 1
    batches = [sampler.add(t, large) for t in range(4, 11)]
    # The window [0, 10) still closes on schedule, with the samples taken at the new size.
    assert batches[:-1] == [None] * 6 and batches[-1].stamps == tuple(range(3, 10))
    assert {frame.shape for frame in batches[-1].frames} == {large.shape}
    assert sampler.size_flushes == 1


def test_a_size_change_on_the_frame_that_closes_a_window_flushes_nothing():
    sampler = FrameSampler(rate=1.0, update_period=10.0)
    feed(sampler, range(10))
    batch = sampler.add(10.0, np.ones((8, 12, 3), np.uint8))
    assert len(batch.frames) == 10 and sampler.size_flushes == 0
    assert sampler.flush().frames[0].shape == (8, 12, 3)
