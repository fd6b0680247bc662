"""The drone's engine against the ground's: the whole AMS loop in one process, without ROS."""

import dataclasses

import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper
from support.tiny_student import calibrated_template

from ams_ros.drone.agent import DroneAgent, DroneConfig
from ams_ros.drone.edge_runtime import EdgeRuntime
from ams_ros.drone.frame_sampler import FrameSampler
from ams_ros.ground.drone_session import INITIAL_VERSION, DroneSession, GroundConfig
from ams_ros.ground.trainer import TrainerConfig
from ams_ros.model.manifest import vector_digest
from ams_ros.model.onnx_params import InitializerWriter
from ams_ros.model.student import InputSpec, build_student
from ams_ros.model.template import StudentTemplate
from ams_ros.wire.frame_codec import CodecSettings, decode_frames
from ams_ros.wire.model_version import APPLIED, DUPLICATE, NEEDS_SNAPSHOT, REJECTED, GroundMirror
from ams_ros.wire.patch_codec import PatchFormat
from ams_ros.wire.snapshot import SnapshotPayload, build_snapshot, open_snapshot

CLASSES = ('dark', 'red', 'green')
SPEC = InputSpec(height=32, width=64)


class ChannelTeacher:
    def label(self, frames, stamps):
        frames = np.asarray(frames, np.int32)
        labels = np.where(frames[..., 0] > frames[..., 1], 1, 2).astype(np.uint8)
        labels[frames.max(axis=-1) < 60] = 0
        return labels


@pytest.fixture(scope='module')
def template():
    torch.manual_seed(0)
    model = build_student('deeplabv3_mbv2_small', len(CLASSES))
    return StudentTemplate.from_model(model, 'deeplabv3_mbv2_small', CLASSES, SPEC)


def ground(template):
    config = GroundConfig(trainer=TrainerConfig(iterations=2, batch_size=2, fraction=0.1,
                                                channels_last=False))
    return DroneSession('d1', template, ChannelTeacher(), config)


def camera(n, rng):
    """Frames at 2 fps of a blocky scene (larger than the model input, as a camera's)."""
    palette = np.array([[20, 20, 20], [200, 30, 30], [30, 200, 30]], np.uint8)
    for i in range(n):
        cells = rng.integers(0, 3, (8, 16))
        yield i * 0.5, palette[cells].repeat(8, axis=0).repeat(8, axis=1)


def drone_config(**kw):
    return DroneConfig(client_id='d1', uplink=CodecSettings(codec='h264', bitrate_kbps=400,
                                                            preset='ultrafast'),
                       sampling_rate=1.0, update_period=4.0, **kw)


def snapshot_of(template, vector, version, **fields) -> SnapshotPayload:
    """Return a snapshot of the template's model holding `vector` (the ground's, or forged)."""
    payload = build_snapshot(
        client_id='d1', model_id=template.model_id, version=version,
        writer=InitializerWriter(template.onnx_bytes, template.manifest),
        manifest=template.manifest, vector=vector, class_names=template.class_names,
        input_spec=template.input_spec)
    return dataclasses.replace(payload, **fields)


def forged_tiny_snapshot(model_id, version) -> SnapshotPayload:
    """Return the hostile run's forgery: a tiny valid ONNX, one initializer, constant output."""
    weight = np.array([0.5], np.float32)
    graph = helper.make_graph(
        [helper.make_node('Mul', ['w', 'w'], ['labels'])], 'forged',
        [helper.make_tensor_value_info('image', TensorProto.UINT8, [1, 32, 64, 3])],
        [helper.make_tensor_value_info('labels', TensorProto.FLOAT, [1])],
        [numpy_helper.from_array(weight, 'w')])
    model_data = helper.make_model(graph).SerializeToString()
    assert len(model_data) < 300
    onnx.checker.check_model(onnx.load_from_string(model_data))
    return SnapshotPayload(
        client_id='d1', model_id=model_id, version=version, format='onnx',
        model_data=model_data, parameters=(('w', (1,), 0),), class_names=CLASSES,
        input_height=32, input_width=64, mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0),
        digest=vector_digest(weight))


def running_drone(template) -> DroneAgent:
    """Return a drone running the template's model from its file, version 1."""
    drone = DroneAgent(drone_config())
    assert drone.load_model_file(template.onnx_bytes, INITIAL_VERSION).kind == APPLIED
    return drone


def outcome_of(outcome) -> tuple[str, str]:
    return outcome.kind, outcome.reason


def test_the_loop_keeps_drone_and_ground_in_step(template):
    rng = np.random.default_rng(0)
    server = ground(template)
    drone = DroneAgent(drone_config())
    assert drone.load_model_file(template.onnx_bytes, INITIAL_VERSION).kind == APPLIED
    assert drone.class_names == CLASSES and drone.model_id == template.model_id
    batches = 0
    for stamp, frame in camera(20, rng):
        assert drone.infer(frame).shape == (32, 64)  # the model's input size
        batch = drone.sample(stamp, frame)
        if batch is None:
            continue
        batches += 1
        # Sampled at 1 fps, sent at the model's size, H.264 encoded.
        assert len(batch.stamps) == 4 and (batch.height, batch.width) == (32, 64)
        frames = decode_frames(batch.data, batch.codec, batch.width, batch.height,
                               len(batch.stamps))
        server.add_frames(frames, batch.stamps)
        outcome = drone.offer_patch(server.train_phase().patch)
        assert outcome.kind == APPLIED
        assert drone.runtime.wait_for_version(drone.version, timeout=30)
    assert batches == 2 and drone.version == INITIAL_VERSION + 2
    np.testing.assert_array_equal(drone.state.vector, server.mirror.vector)
    # The model the drone runs is the mirror's model: same masks as a runtime built from it.
    reference = EdgeRuntime(server.snapshot().model_data, template.manifest)
    frame = next(camera(1, rng))[1]
    np.testing.assert_array_equal(drone.infer(frame), reference.infer(frame))
    drone.close()
    reference.close()


def test_a_drone_without_model_asks_for_a_snapshot_and_catches_up(template):
    rng = np.random.default_rng(1)
    server = ground(template)
    frames = np.stack([f for _, f in camera(4, rng)])[:, :32, :64]
    server.add_frames(frames, [0.0, 1.0, 2.0, 3.0])
    patch = server.train_phase().patch
    drone = DroneAgent(drone_config())
    assert drone.infer(frames[0]) is None  # no model yet: nothing to run
    outcome = drone.offer_patch(patch)
    assert (outcome.kind, outcome.reason) == (NEEDS_SNAPSHOT, 'startup')
    # The ground answers with its mirror; the held patch is then stale and not re-applied.
    assert drone.load_snapshot(server.snapshot()).kind == APPLIED
    assert drone.version == patch.version
    np.testing.assert_array_equal(drone.state.vector, server.mirror.vector)
    drone.close()


def test_a_corrupt_snapshot_is_never_run(template):
    server = ground(template)
    drone = DroneAgent(drone_config())
    snapshot = server.snapshot()
    bad = dataclasses.replace(snapshot, digest=bytes(32))
    outcome = drone.load_snapshot(bad)
    assert outcome.kind == NEEDS_SNAPSHOT and outcome.reason == 'snapshot-digest-mismatch'
    assert drone.runtime is None and drone.version == 0
    assert open_snapshot(snapshot).vector.size == template.manifest.total_size


def test_frames_of_a_new_uplink_size_go_in_a_batch_of_their_own():
    # Without a model frames go up at the camera's size, so a new camera size is a new uplink
    # size (with a model, a snapshot of another input size changes it).
    drone = DroneAgent(DroneConfig(client_id='d1', sampling_rate=1.0, update_period=4.0,
                                   uplink=CodecSettings(codec='h264', bitrate_kbps=400,
                                                        preset='ultrafast')))
    scene = [frame for _, frame in camera(5, np.random.default_rng(2))]  # 64x128
    batches = [drone.sample(t, scene[t][:32, :64] if t < 3 else scene[t]) for t in range(5)]
    assert batches[:3] == [None] * 3
    # The first 64x128 frame sends the 32x64 samples early; the window's end (t=4) the rest.
    expected = [((32, 64), (0.0, 1.0, 2.0)), ((64, 128), (3.0,))]
    for batch, (size, stamps) in zip(batches[3:], expected, strict=True):
        assert (batch.height, batch.width, batch.stamps) == (*size, stamps)
        frames = decode_frames(batch.data, batch.codec, batch.width, batch.height, len(stamps))
        assert [frame.shape[:2] for frame in frames] == [size] * len(stamps)
    assert drone.sampler.size_flushes == 1


# -- snapshots the drone did not ask for, forged ones, absurd values ----------------------------

def test_a_ground_resync_one_version_ahead_is_applied_unrequested(template):
    server = ground(template)
    drone = running_drone(template)   # from its model file: no normalisation known yet
    resync = dataclasses.replace(server.snapshot(), version=drone.version + 1)
    outcome = drone.load_snapshot(resync, requested=False)
    assert outcome.applied_versions == (2,)
    runtime = drone.runtime   # the same model: its runtime goes on, with the new vector
    assert runtime.wait_for_version(2, timeout=30)
    # Now started from a snapshot: the normalisation is known and must match too.
    later = dataclasses.replace(resync, version=3)
    for changes in (dict(mean=(0.0, 0.0, 0.0)), dict(class_names=('a', 'b', 'c'))):
        outcome = drone.load_snapshot(dataclasses.replace(later, **changes), requested=False)
        assert outcome_of(outcome) == (REJECTED, 'unrequested-model')
    assert drone.load_snapshot(later, requested=False).applied_versions == (3,)
    assert drone.runtime is runtime and drone.version == 3
    drone.close()


def test_forged_unrequested_snapshots_are_refused_even_with_a_consistent_digest(template):
    drone = running_drone(template)
    runtime, vector = drone.runtime, drone.state.vector
    forged = snapshot_of(template, vector * 2, 2**62)   # the ground's model id and interface
    assert outcome_of(drone.load_snapshot(forged, requested=False)) == (REJECTED,
                                                                        'version-jump')
    tiny = forged_tiny_snapshot(template.model_id, 2**62)
    assert outcome_of(drone.load_snapshot(tiny, requested=False)) == (REJECTED, 'version-jump')
    tiny = dataclasses.replace(tiny, version=2)
    assert outcome_of(drone.load_snapshot(tiny, requested=False)) == (REJECTED,
                                                                      'unrequested-model')
    stale = snapshot_of(template, vector * 2, 1)
    assert outcome_of(drone.load_snapshot(stale, requested=False)) == (REJECTED, 'stale')
    assert drone.version == 1 and drone.runtime is runtime
    np.testing.assert_array_equal(drone.state.vector, vector)
    drone.close()


def test_a_drone_pushed_to_a_forged_version_asks_the_ground_again(template):
    server = ground(template)
    drone = running_drone(template)
    # Without a key a forger may answer the drone's request first: it runs a moment.
    forged = snapshot_of(template, drone.state.vector * 2, 2**62)
    assert drone.load_snapshot(forged, requested=True).applied_versions == (2**62,)
    frames = np.stack([f for _, f in camera(4, np.random.default_rng(3))])[:, :32, :64]
    server.add_frames(frames, [0.0, 1.0, 2.0, 3.0])
    patch = server.train_phase().patch   # the ground's genuine version 2
    assert outcome_of(drone.offer_patch(patch)) == (NEEDS_SNAPSHOT, 'diverged')
    # The drone asks; the ground's model replaces the forgery, and patches apply again.
    assert drone.load_snapshot(server.snapshot(), requested=True).applied_versions == (2,)
    assert drone.offer_patch(patch).kind == DUPLICATE   # an exact redelivery
    server.add_frames(frames, [4.0, 5.0, 6.0, 7.0])
    assert drone.offer_patch(server.train_phase().patch).applied_versions == (3,)
    np.testing.assert_array_equal(drone.state.vector, server.mirror.vector)
    assert drone.runtime.wait_for_version(3, timeout=30)
    drone.close()


def test_a_requested_snapshot_may_bring_a_new_model(template):
    drone = running_drone(template)
    new = calibrated_template(SPEC)   # the world's classes: another manifest and model id
    snapshot = snapshot_of(new, new.initial_vector, 5)
    assert outcome_of(drone.load_snapshot(snapshot, requested=False)) == (REJECTED,
                                                                           'unrequested-model')
    assert drone.load_snapshot(snapshot, requested=True).applied_versions == (5,)
    assert (drone.model_id, drone.class_names) == (new.model_id, new.class_names)
    assert drone.runtime.active_version == 5 and drone.infer(np.zeros((32, 64, 3),
                                                                      np.uint8)).shape == (32, 64)
    # The model it ran before is now the other one.
    old = snapshot_of(template, template.initial_vector, 6)
    assert outcome_of(drone.load_snapshot(old, requested=False)) == (REJECTED,
                                                                     'unrequested-model')
    drone.close()


def test_a_new_input_size_is_another_interface(template):
    drone = running_drone(template)
    wider = StudentTemplate.from_model(template.model, 'deeplabv3_mbv2_small', CLASSES,
                                       InputSpec(height=32, width=96))
    assert wider.manifest == template.manifest and wider.model_id == template.model_id
    snapshot = snapshot_of(wider, wider.initial_vector, 2)
    assert outcome_of(drone.load_snapshot(snapshot, requested=False)) == (REJECTED,
                                                                           'unrequested-model')
    assert drone.load_snapshot(snapshot, requested=True).applied_versions == (2,)
    assert drone.runtime.input_size == (32, 96)   # a new runtime for the new graph
    drone.close()


@pytest.mark.parametrize('value, reason', [(np.nan, 'non-finite'), (np.inf, 'non-finite'),
                                           (3e38, 'out-of-range')])
def test_absurd_values_are_never_run(template, value, reason):
    drone = running_drone(template)
    runtime, vector = drone.runtime, drone.state.vector
    absurd = vector.copy()
    absurd[7] = value
    for requested in (False, True):
        outcome = drone.load_snapshot(snapshot_of(template, absurd, 2), requested=requested)
        assert outcome_of(outcome) == (NEEDS_SNAPSHOT, reason)
    raw = PatchFormat(value_mode='fp32', compressors=('none',), shuffle=(False,))
    mirror = GroundMirror('d1', template.model_id, INITIAL_VERSION, vector, fmt=raw)
    patch = mirror.make_patch(np.array([7]), np.array([3e38], np.float32))
    if reason == 'non-finite':   # the encoder refuses such values: written over its bytes
        patch = dataclasses.replace(patch, value_data=np.array([value], '<f4').tobytes())
    assert outcome_of(drone.offer_patch(patch)) == (REJECTED, reason)
    assert drone.version == 1 and drone.runtime is runtime
    assert runtime.wait_until_idle(timeout=30) and runtime.active_version == 1
    np.testing.assert_array_equal(drone.state.vector, vector)
    drone.close()


# -- sampling control within bounds; the sampler never stuck ------------------------------------

@pytest.mark.parametrize('rate, period', [(1e9, 4.0), (1e-30, 4.0), (1.0, 3.4e38),
                                          (float('nan'), 4.0), (1.0, float('inf')),
                                          (31.0, 4.0), (1.0, 0.4)])
def test_sampling_outside_the_bounds_is_refused_and_the_last_good_kept(rate, period):
    drone = DroneAgent(drone_config())
    assert drone.set_sampling(0.5, 8.0) is True
    assert drone.set_sampling(0.5, 8.0) is False  # the same decision again changes nothing
    with pytest.raises(ValueError, match='must be within'):
        drone.set_sampling(rate, period)
    assert (drone.sampler.rate, drone.sampler.update_period) == (0.5, 8.0)


def test_the_sampling_bounds_are_checked_in_the_config():
    for bad in (dict(sampling_rate=31.0), dict(update_period=0.1),
                dict(sampling_rate_min=0.0), dict(update_period_max=float('inf')),
                dict(sampling_rate_min=2.0, sampling_rate_max=1.0)):
        with pytest.raises(ValueError):
            DroneConfig(**bad)


@pytest.mark.parametrize('rate, period, seconds, camera_fps', [(30.0, 0.5, 2.0, 30.0),
                                                                (0.01, 600.0, 601.0, 1.0)])
def test_every_batch_encodes_at_the_sampling_bounds(rate, period, seconds, camera_fps):
    drone = DroneAgent(drone_config())
    drone.set_sampling(rate, period)
    frame = next(camera(1, np.random.default_rng(4)))[1][:32, :64]
    batches = [drone.sample(k / camera_fps, frame) for k in range(int(seconds * camera_fps))]
    sizes = [len(b.stamps) for b in batches if b is not None]
    assert sizes == ([15] * 3 if rate == 30.0 else [6])


def test_a_long_window_at_a_high_rate_is_sent_in_full_batches():
    drone = DroneAgent(drone_config(uplink_size=(16, 32)))
    drone.set_sampling(30.0, 600.0)   # 18000 frames a window: more than memory should hold
    frame = np.zeros((16, 32, 3), np.uint8)
    batches = [drone.sample(k / 30, frame) for k in range(700)]
    assert [len(b.stamps) for b in batches if b is not None] == [300, 300]
    assert drone.sampler.full_flushes == 2


def test_no_period_or_stamp_leaves_the_sampler_failing_every_frame():
    frame = np.zeros((2, 2, 3), np.uint8)
    sampler = FrameSampler(rate=1.0, update_period=5e-324)   # positive, finite, absurd
    batches = [sampler.add(t, frame) for t in (0.0, 1.0, 2.0)]
    assert [b.stamps for b in batches[1:]] == [(0.0,), (1.0,)]
    sampler.set_update_period(4.0)
    batches = [sampler.add(t, frame) for t in np.arange(3.0, 12.0)]
    assert [b.stamps for b in batches if b is not None] == [(2.0, 3.0, 4.0, 5.0),
                                                            (6.0, 7.0, 8.0, 9.0)]
    sampler = FrameSampler(rate=1.0, update_period=4.0)
    assert sampler.add(-1e308, frame) is None
    assert sampler.add(1e308, frame).stamps == (-1e308,)   # infinitely many windows later
    assert sampler.add(1e308 + 4e292, frame).stamps == (1e308,)   # and it goes on sampling
