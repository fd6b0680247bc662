"""The drone's engine against the ground's: the whole AMS loop in one process, without ROS."""

import dataclasses

import numpy as np
import pytest
import torch

from ams_ros.drone_agent import DroneAgent, DroneConfig
from ams_ros.edge_runtime import EdgeRuntime
from ams_ros.frame_codec import CodecSettings, decode_frames
from ams_ros.ground_client import INITIAL_VERSION, GroundClient, GroundConfig, StudentTemplate
from ams_ros.model_version import APPLIED, NEEDS_SNAPSHOT
from ams_ros.snapshot import open_snapshot
from ams_ros.student import InputSpec, build_student
from ams_ros.trainer import TrainerConfig

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
    return GroundClient('d1', template, ChannelTeacher(), config)


def camera(n, rng):
    """Frames at 2 fps of a blocky scene (larger than the model input, as a camera's)."""
    palette = np.array([[20, 20, 20], [200, 30, 30], [30, 200, 30]], np.uint8)
    for i in range(n):
        cells = rng.integers(0, 3, (8, 16))
        yield i * 0.5, palette[cells].repeat(8, axis=0).repeat(8, axis=1)


def drone_config(**kw):
    return DroneConfig(client_id='d1', uplink=CodecSettings(codec='h264', bitrate_kbps=400),
                       sampling_rate=1.0, update_period=4.0, **kw)


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
    assert drone.snapshot_rejections == {'digest-mismatch': 1}
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
