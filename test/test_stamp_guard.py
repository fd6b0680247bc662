"""The per-drone stamp guard, and the ground client keeping its frames through hostile stamps."""

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ams_ros.rate_control import AdaptiveSamplingRate, AsrConfig
from ams_ros.stamp_guard import (
    BAD_STAMPS,
    REANCHOR,
    STAMP_JUMP,
    StampGuard,
    StampGuardConfig,
    StampRefused,
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


# -- the ground client keeps its frames ---------------------------------------------------------

CLASSES = ('dark', 'red', 'green')


class ChannelTeacher:
    """Labels a pixel by its brightest channel (dark when all are low)."""

    def __init__(self):
        self.calls = 0

    def label(self, frames, stamps):
        self.calls += 1
        frames = np.asarray(frames, np.int32)
        labels = np.where(frames[..., 0] > frames[..., 1], 1, 2).astype(np.uint8)
        labels[frames.max(axis=-1) < 60] = 0
        return labels


def random_frames(rng, n):
    cells = rng.integers(0, 3, (n, 4, 8))
    palette = np.array([[20, 20, 20], [200, 30, 30], [30, 200, 30]], np.uint8)
    return palette[cells].repeat(8, axis=1).repeat(8, axis=2)


@pytest.fixture(scope='module')
def template():
    torch = pytest.importorskip('torch')
    from ams_ros.ground_client import StudentTemplate
    from ams_ros.student import InputSpec, build_student

    torch.manual_seed(0)
    model = build_student('deeplabv3_mbv2_small', len(CLASSES))
    return StudentTemplate.from_model(model, 'deeplabv3_mbv2_small', CLASSES,
                                      InputSpec(height=32, width=64))


def new_client(template):
    from ams_ros.ground_client import GroundClient, GroundConfig
    from ams_ros.trainer import TrainerConfig

    config = GroundConfig(trainer=TrainerConfig(iterations=2, batch_size=2, channels_last=False,
                                                horizon_s=60.0))
    return GroundClient('d1', template, ChannelTeacher(), config)


def send(client, rng, stamps):
    return client.add_frames(random_frames(rng, len(stamps)), stamps)


def test_a_far_future_batch_is_refused_and_the_buffer_keeps_its_frames(template):
    rng = np.random.default_rng(1)
    client = new_client(template)
    for k in range(3):
        send(client, rng, batch(1000.0 + 10 * k))
    buffered = [item.stamp for item in client.buffer.window()]
    assert len(buffered) == 30
    calls, pending = client.teacher.calls, client.pending_frames
    with pytest.raises(StampRefused) as refused:
        send(client, rng, [1e9])
    assert refused.value.reason == STAMP_JUMP
    assert client.stamp_verdict.reason == STAMP_JUMP
    # Nothing moved: not labelled, not buffered, not evicted.
    assert [item.stamp for item in client.buffer.window()] == buffered
    assert client.buffer.newest_stamp == 1029.0
    assert (client.teacher.calls, client.pending_frames) == (calls, pending)
    assert client.train_phase().result.iterations == 2
    send(client, rng, batch(1030.0))
    assert len(client.buffer) == 40 and client.stamp_verdict.reason == ''


@pytest.mark.parametrize('new_clock', [1.7e9, 100.0])  # GPS time sync; a bag that loops
def test_a_confirmed_clock_jump_keeps_the_frames_and_training_goes_on(template, new_clock):
    rng = np.random.default_rng(2)
    client = new_client(template)
    for k in range(3):
        send(client, rng, batch(1000.0 + 10 * k))
    client.train_phase()
    for k in range(2):
        with pytest.raises(StampRefused):
            send(client, rng, batch(new_clock + 10 * k))
    send(client, rng, batch(new_clock + 20))
    assert client.stamp_verdict.reason == REANCHOR
    # The 30 old frames moved onto the new clock, ahead of the new ones, and are still in the
    # training window.
    offset = new_clock - 1029.0
    window = client.buffer.window()
    assert len(window) == 40
    assert window[0].stamp == pytest.approx(1000.0 + offset)
    assert window[29].stamp == pytest.approx(new_clock)
    assert client.buffer.newest_stamp == pytest.approx(new_clock + 29)
    output = client.train_phase()
    assert output.patch.version == 3 and math.isfinite(output.result.mean_loss)
    # Rate control carried on along the new clock: its update is due as it was, where a clock
    # going back would otherwise have restarted it.
    assert client.update_rates(new_clock + 29) is not None
