"""The per-drone stamp guard (the ground client keeping its frames: test_ground_core)."""

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ams_ros.ground.rate_control import AdaptiveSamplingRate, AsrConfig
from ams_ros.ground.stamp_guard import (
    BAD_STAMPS,
    REANCHOR,
    STAMP_JUMP,
    StampGuard,
    StampGuardConfig,
)


def batch(start, n=10, step=1.0):
    """One update period of stamps, as a drone sends them."""
    return [start + i * step for i in range(n)]


def flight(guard, start, batches, period=10.0):
    """Feed genuine consecutive batches; return their verdicts."""
    return [guard.check(batch(start + k * period)) for k in range(batches)]


def test_a_genuine_flight_is_accepted():
    guard = StampGuard()
    verdicts = flight(guard, 1000.0, 30)
    assert all(v.accepted and v.reason == '' for v in verdicts)
    assert guard.newest_stamp == 1299.0


@pytest.mark.parametrize('forged', [1e9, 2.0**31, 5000.0, 0.0, 500.0])
def test_a_single_forged_batch_is_refused_and_changes_nothing(forged):
    guard = StampGuard()
    flight(guard, 1000.0, 3)
    verdict = guard.check([forged])
    assert (verdict.accepted, verdict.reason) == (False, STAMP_JUMP)
    assert 'clock is at 1029.000' in verdict.detail
    assert guard.newest_stamp == 1029.0
    verdicts = flight(guard, 1030.0, 5)  # the genuine batches that follow
    assert all(v.accepted and v.reason == '' for v in verdicts)


def test_forged_batches_between_genuine_ones_never_re_anchor():
    guard = StampGuard()
    flight(guard, 0.0, 1)
    for k in range(1, 20):
        assert guard.check([1e9 + k]).reason == STAMP_JUMP
        assert guard.check(batch(10.0 * k)).reason == ''
    assert guard.newest_stamp == 199.0


@pytest.mark.parametrize('jump', [1e6, -900.0])  # GPS time sync; a bag that loops
def test_a_confirmed_clock_jump_re_anchors(jump):
    guard = StampGuard(StampGuardConfig(confirmations=2))
    flight(guard, 1000.0, 3)  # clock at 1029
    new = 1030.0 + jump
    assert guard.check(batch(new)).reason == STAMP_JUMP  # the candidate
    assert guard.check(batch(new + 10)).reason == STAMP_JUMP  # one confirmation of two
    verdict = guard.check(batch(new + 20))
    assert (verdict.accepted, verdict.reason) == (True, REANCHOR)
    # The old clock's newest stamp lands on the new clock's first one.
    assert verdict.offset == pytest.approx(new - 1029.0)
    assert guard.newest_stamp == new + 29
    assert guard.check(batch(new + 30)).reason == ''
    # The old clock is gone: its stamps are a jump now.
    assert guard.check(batch(1040.0)).reason == STAMP_JUMP


def test_a_candidate_must_be_confirmed_by_consecutive_batches():
    guard = StampGuard(StampGuardConfig(confirmations=2))
    flight(guard, 0.0, 1)
    assert guard.check(batch(1e6)).reason == STAMP_JUMP
    assert guard.check(batch(2e6)).reason == STAMP_JUMP  # another clock: a new candidate
    assert guard.check(batch(2e6 + 10)).reason == STAMP_JUMP
    assert guard.check(batch(2e6 + 20)).reason == REANCHOR


def test_with_arrival_times_a_long_silence_on_the_same_clock_continues():
    guard = StampGuard()
    assert guard.check(batch(0.0), now=50.0).accepted
    # Twenty minutes without a batch (out of range), same clock: not a jump.
    assert guard.check(batch(1210.0), now=1260.0).reason == ''
    # Without arrival times the same gap looks like a jump.
    blind = StampGuard()
    blind.check(batch(0.0))
    assert blind.check(batch(1210.0)).reason == STAMP_JUMP
    # A paused sim clock (stamps stood still while time went on) continues as well.
    assert guard.check(batch(1220.0), now=5000.0).reason == ''
    # Still refused: beyond the elapsed time plus max_jump_s.
    assert guard.check(batch(1e9), now=5001.0).reason == STAMP_JUMP


@pytest.mark.parametrize('stamps', [
    [], [math.nan], [math.inf], [1005.0, -math.inf], [-1.0], [1005.0, 1004.0],
    [1000.0, 1200.0], [3e9],
])
def test_malformed_stamps_are_refused_and_change_nothing(stamps):
    guard = StampGuard()
    flight(guard, 900.0, 10)  # clock at 999
    verdict = guard.check(stamps)
    assert (verdict.accepted, verdict.reason) == (False, BAD_STAMPS) and verdict.detail
    assert guard.newest_stamp == 999.0
    assert guard.check(batch(1000.0)).reason == ''


def test_a_malformed_first_batch_does_not_set_the_clock():
    guard = StampGuard()
    assert guard.check([0.0, 1e9]).reason == BAD_STAMPS
    assert guard.newest_stamp is None
    assert guard.check(batch(100.0)).accepted


@settings(max_examples=100, deadline=None)
@given(forged=st.floats(0.0, 2.0**31), position=st.integers(1, 8))
def test_one_forged_batch_anywhere_never_costs_a_genuine_one(forged, position):
    guard = StampGuard()
    genuine = [batch(5000.0 + 10 * k) for k in range(10)]
    for k, stamps in enumerate(genuine):
        if k == position:
            # Within max_jump_s of the clock a forged stamp cannot be told from a real one.
            forged_accepted = guard.check([forged]).accepted
        assert guard.check(stamps).reason == ''
    if not forged_accepted:
        assert guard.newest_stamp == genuine[-1][-1]


@pytest.mark.parametrize('bad', [dict(max_jump_s=0.0), dict(max_jump_s=math.inf),
                                 dict(confirmations=0), dict(confirmations=1.5),
                                 dict(max_spread_s=-1.0), dict(max_spread_s=math.nan)])
def test_config_is_checked(bad):
    with pytest.raises(ValueError):
        StampGuardConfig(**bad)


def test_sampling_rate_control_only_compares_stamps_so_a_shift_is_seamless():
    """ASR shifted mid-flight acts exactly as one that saw the new clock from the start."""
    rng = np.random.default_rng(0)
    phis = rng.uniform(0, 1, 60)
    offset = -995.5  # back, and off the δt grid: unshifted, ASR would restart
    shifted, reference = AdaptiveSamplingRate(AsrConfig()), AdaptiveSamplingRate(AsrConfig())
    updates = 0
    for t, phi in enumerate(phis):
        if t == 35:
            shifted.shift(offset)
        clock = 1000.0 + t + (offset if t >= 35 else 0.0)
        shifted.observe(clock, phi)
        reference.observe(1000.0 + t + offset, phi)
        rate = shifted.update(clock)
        assert rate == reference.update(1000.0 + t + offset)
        updates += rate is not None
    assert updates == 5 and shifted.rate == reference.rate
