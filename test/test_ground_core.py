"""The ground's engine: per-drone training into patches and snapshots, and the multi-drone core."""

import dataclasses
import math

import numpy as np
import pytest
import torch
from test_stamp_guard import batch

from ams_ros.ground.drone_session import INITIAL_VERSION, DroneSession, GroundConfig
from ams_ros.ground.phase_scheduler import PhaseScheduler
from ams_ros.ground.rate_control import AsrConfig
from ams_ros.ground.stamp_guard import REANCHOR, STAMP_JUMP, StampRefused
from ams_ros.ground.trainer import TrainerConfig
from ams_ros.model.student import InputSpec, build_student
from ams_ros.model.template import StudentTemplate
from ams_ros.wire.model_version import APPLIED, EdgeModelState
from ams_ros.wire.snapshot import SnapshotError, open_snapshot

CLASSES = ('dark', 'red', 'green')
SPEC = InputSpec(height=32, width=64)


class ChannelTeacher:
    """Labels a pixel by its brightest channel (dark when all are low): learnable and exact."""

    def __init__(self):
        self.calls = 0

    def label(self, frames, stamps):
        self.calls += 1
        frames = np.asarray(frames, np.int32)
        labels = np.where(frames[..., 0] > frames[..., 1], 1, 2).astype(np.uint8)
        labels[frames.max(axis=-1) < 60] = 0
        return labels


def random_frames(rng, n, size=(32, 64)):
    """Blocky random scenes: each 8x8 cell one of the classes' colours."""
    cells = rng.integers(0, 3, (n, size[0] // 8, size[1] // 8))
    palette = np.array([[20, 20, 20], [200, 30, 30], [30, 200, 30]], np.uint8)
    return palette[cells].repeat(8, axis=1).repeat(8, axis=2)


@pytest.fixture(scope='module')
def template():
    torch.manual_seed(0)
    model = build_student('deeplabv3_mbv2_small', len(CLASSES))
    return StudentTemplate.from_model(model, 'deeplabv3_mbv2_small', CLASSES, SPEC)


def fast_config(**trainer):
    defaults = dict(iterations=3, batch_size=2, learning_rate=3e-3, channels_last=False)
    defaults.update(trainer)
    return GroundConfig(trainer=TrainerConfig(**defaults), asr=AsrConfig(interval=10.0))


def feed(client, rng, n, start):
    stamps = [start + i for i in range(n)]
    return client.add_frames(random_frames(rng, n), stamps)


def test_patches_keep_the_drone_identical_to_the_mirror(template):
    rng = np.random.default_rng(0)
    client = DroneSession('d1', template, ChannelTeacher(), fast_config())
    opened = open_snapshot(client.snapshot())
    edge = EdgeModelState()
    assert edge.load_snapshot(INITIAL_VERSION, opened.vector, client.snapshot().digest,
                              model_id=template.model_id).kind == APPLIED
    for phase in range(3):
        feed(client, rng, 4, start=10.0 * phase)
        out = client.train_phase()
        assert (out.patch.base_version, out.patch.version) == (phase + 1, phase + 2)
        assert edge.offer(out.patch).kind == APPLIED
        # The drone, the mirror and the trainer's weights agree bit for bit.
        np.testing.assert_array_equal(edge.vector, client.mirror.vector)
        np.testing.assert_array_equal(client.trainer.weights(), client.mirror.vector)
    assert not np.array_equal(edge.vector, template.initial_vector)


def test_snapshot_carries_the_current_model(template):
    rng = np.random.default_rng(2)
    client = DroneSession('d1', template, ChannelTeacher(), fast_config())
    feed(client, rng, 4, start=0.0)
    client.train_phase()
    snap = client.snapshot()
    opened = open_snapshot(snap)
    assert snap.version == INITIAL_VERSION + 1
    np.testing.assert_array_equal(opened.vector, client.mirror.vector)
    assert opened.manifest == template.manifest
    assert snap.class_names == CLASSES
    assert (snap.input_height, snap.input_width) == (32, 64)
    # Normalisation travels on the 0..255 scale, as float32 values (what the message holds).
    assert snap.mean == tuple(float(np.float32(m * 255)) for m in SPEC.mean)


@pytest.mark.parametrize('field,value,reason', [
    ('model_data', b'not an onnx model', 'bad-model'),
    ('digest', bytes(32), 'digest-mismatch'),
    ('format', 'tflite', 'unknown-format'),
    ('parameters', (('x', (3,), 5),), 'bad-manifest'),
])
def test_damaged_snapshots_are_refused(template, field, value, reason):
    snap = DroneSession('d1', template, ChannelTeacher(), fast_config()).snapshot()
    with pytest.raises(SnapshotError) as err:
        open_snapshot(dataclasses.replace(snap, **{field: value}))
    assert err.value.reason == reason


def test_sampling_rate_follows_scene_change(template):
    rng = np.random.default_rng(3)
    calm = DroneSession('calm', template, ChannelTeacher(), fast_config())
    busy = DroneSession('busy', template, ChannelTeacher(), fast_config())
    still = random_frames(rng, 1)
    calm.add_frames(np.repeat(still, 12, axis=0), [float(t) for t in range(12)])
    feed(busy, rng, 12, start=0.0)
    calm_rate, busy_rate = calm.update_rates(11.0), busy.update_rates(11.0)
    assert calm.update_rates(11.5) is None  # once per δt only
    assert calm_rate.sampling_rate < busy_rate.sampling_rate
    assert calm.asr.last_phi_mean == 0.0 and busy.asr.last_phi_mean > 0.3
    assert calm.phi == 0.0 and busy.phi > 0.3


def make_scheduler(template, policy):
    return PhaseScheduler(template, lambda cid: ChannelTeacher(),
                        fast_config(iterations=1, batch_size=1), policy=policy)


def test_round_robin_serves_waiting_drones_in_turn(template):
    rng = np.random.default_rng(4)
    scheduler = make_scheduler(template, 'round_robin')
    for cid in ('a', 'b', 'c'):
        scheduler.add(cid).add_frames(random_frames(rng, 2), [0.0, 1.0])
    order = [scheduler.train_next()[0] for _ in range(3)]
    assert sorted(order) == ['a', 'b', 'c']
    assert scheduler.train_next() is None  # nobody has new frames
    scheduler.add('b').add_frames(random_frames(rng, 1), [2.0])
    assert scheduler.train_next()[0] == 'b'


def test_phi_weighted_gives_changing_scenes_more_phases(template):
    rng = np.random.default_rng(5)
    scheduler = make_scheduler(template, 'phi_weighted')
    still = random_frames(rng, 1)
    counts = {'calm': 0, 'busy': 0}
    for step in range(12):
        scheduler.add('calm').add_frames(still, [float(step)])
        scheduler.add('busy').add_frames(random_frames(rng, 1), [float(step)])
        for cid in counts:
            scheduler.session(cid).update_rates(float(step))
        counts[scheduler.train_next()[0]] += 1
    assert counts['busy'] > 2 * counts['calm'] > 0


def test_phi_weighted_phase_output_belongs_to_the_drone_it_was_scheduled_for(template):
    """One decision per phase: the patch comes from the mirror of the drone returned with it.

    Credit is charged once per phase, so with a busy and a calm drone waiting the busy one
    trains and its own mirror (and only its own) moves on.
    """
    rng = np.random.default_rng(7)
    scheduler = make_scheduler(template, 'phi_weighted')
    for step in range(3):
        scheduler.add('calm').add_frames(random_frames(rng, 1) * 0, [float(step)])
        scheduler.add('busy').add_frames(random_frames(rng, 1), [float(step)])
    versions = {cid: scheduler.session(cid).mirror.version for cid in ('calm', 'busy')}
    for _ in range(2):
        client_id, output = scheduler.train_next()
        assert output.patch.client_id == client_id
        assert output.patch.version == scheduler.session(client_id).mirror.version
        versions[client_id] += 1
        assert {cid: scheduler.session(cid).mirror.version for cid in versions} == versions
    assert scheduler.train_next() is None


def test_clients_come_and_go(template):
    rng = np.random.default_rng(6)
    scheduler = make_scheduler(template, 'round_robin')
    scheduler.add('a').add_frames(random_frames(rng, 1), [0.0])
    scheduler.add('b').add_frames(random_frames(rng, 1), [0.0])
    scheduler.remove('a')
    assert scheduler.client_ids == ['b']
    assert scheduler.train_next()[0] == 'b'
    # A returning drone starts over from the template (it will be sent a snapshot).
    assert scheduler.add('a').mirror.version == INITIAL_VERSION


# -- the ground client keeps its frames ---------------------------------------------------------

def new_client(template):
    config = GroundConfig(trainer=TrainerConfig(iterations=2, batch_size=2, channels_last=False,
                                                horizon_s=60.0))
    return DroneSession('d1', template, ChannelTeacher(), config)


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
