"""The drone and ground nodes as separate processes over real Fast DDS, and their conversions.

Processes: drone 't1' starts from a model file and serves the camera tests; drone 't2' starts
without a model and, with the ground (which serves only client 't2'), runs the whole loop:
snapshot, uplink batches, training, patches, all signed with a shared key. All three start
together to overlap start-up.
"""

import dataclasses
import functools
import os
import subprocess
import sys
import time

import numpy as np
import pytest

rclpy = pytest.importorskip('rclpy')
torch = pytest.importorskip('torch')
from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus  # noqa: E402
from rclpy.qos import QoSProfile, ReliabilityPolicy, qos_profile_sensor_data  # noqa: E402
from rclpy.serialization import deserialize_message, serialize_message  # noqa: E402
from sensor_msgs.msg import Image  # noqa: E402
from support.processes import spin_until  # noqa: E402

import ams_msgs.msg as M  # noqa: E402
from ams_ros.ground.client_registry import stable_shard  # noqa: E402
from ams_ros.ground.drone_session import DroneSession, GroundConfig  # noqa: E402
from ams_ros.ground.trainer import TrainerConfig  # noqa: E402
from ams_ros.model.student import InputSpec, build_student  # noqa: E402
from ams_ros.model.template import StudentTemplate  # noqa: E402
from ams_ros.ros import conversions as conv  # noqa: E402
from ams_ros.ros.ground_node import drone_namespace  # noqa: E402
from ams_ros.ros.image_conversion import array_to_image  # noqa: E402
from ams_ros.ros.link_auth import LinkSigner, LinkVerifier  # noqa: E402
from ams_ros.wire.frame_codec import decode_frames  # noqa: E402
from ams_ros.wire.uplink_batch import UplinkBatch  # noqa: E402
from ams_ros.world import CLASS_NAMES, AerialVideo  # noqa: E402

KEY = b'k' * 32
SEED = 1003  # the flight the test camera flies and the ground's teacher labels
ARCH = 'deeplabv3_mbv2_small'
SPEC = InputSpec(height=32, width=64)
# Run a node module; closing its stdin shuts it down (it never outlives the test).
WRAPPER = ('import importlib, sys, threading, rclpy; '
           'threading.Thread(target=lambda: (sys.stdin.read(), rclpy.try_shutdown()), '
           'daemon=True).start(); '
           'sys.exit(importlib.import_module(sys.argv[1]).main(sys.argv[1:]))')
RELIABLE = QoSProfile(depth=10, reliability=ReliabilityPolicy.RELIABLE)
T1_MAX_PIXELS = 10_000  # drone t1's max_image_pixels: its 48x96 and 64x128 frames pass


@functools.cache
def video():
    return AerialVideo(SEED)  # one instance: its world caches the districts it generated


@pytest.fixture(scope='module')
def template():
    # The ground node builds the same student (seed 0), so a drone started from this file
    # runs exactly the ground's version 1.
    torch.manual_seed(0)
    model = build_student(ARCH, len(CLASS_NAMES))
    return StudentTemplate.from_model(model, ARCH, CLASS_NAMES, SPEC)


# -- conversions ------------------------------------------------------------------------------

class Teacher:
    def label(self, frames, stamps):
        return np.zeros(np.shape(frames)[:3], np.uint8)


def wire(msg):
    """Serialise and deserialise, as a message arriving from DDS."""
    return deserialize_message(serialize_message(msg), type(msg))


def test_signed_snapshot_and_patch_survive_the_wire(template):
    client = DroneSession('d1', template, Teacher(), GroundConfig(
        trainer=TrainerConfig(iterations=1, batch_size=1, channels_last=False)))
    signer = LinkSigner(KEY)
    snapshot = client.snapshot()
    msg = wire(conv.snapshot_to_msg(snapshot, 12.5, signer=signer))
    assert conv.snapshot_from_msg(msg, verifier=LinkVerifier(KEY)) == snapshot
    msg.version += 1
    assert LinkVerifier(KEY).verify(msg, conv.GROUND) == 'bad-signature'
    frames = np.stack([video().render(t, 32, 64)[0] for t in (0.0, 1.0)])
    client.add_frames(frames, [0.0, 1.0])
    patch = client.train_phase().patch
    msg = wire(conv.patch_to_msg(patch, signer=signer))
    assert conv.patch_from_msg(msg, verifier=LinkVerifier(KEY)) == patch
    msg.version += 1
    assert LinkVerifier(KEY).verify(msg, conv.GROUND) == 'bad-signature'


def test_frame_batch_and_stamps_survive_the_wire():
    batch = UplinkBatch('d1', 3, 'jpeg', 64, 32, (1.5, 2.000000001, 1e9 + 0.25), b'\x01\x02',
                        0.5, 10.0)
    msg = wire(conv.batch_to_msg(batch, 'cam', 'bgr8'))
    assert conv.batch_from_msg(msg) == batch
    assert (msg.header.frame_id, msg.source_encoding) == ('cam', 'bgr8')
    assert conv.stamp_to_seconds(msg.header.stamp) == batch.stamps[-1]


def test_malformed_messages_are_refused_with_a_reason(template):
    def reason(call, *args):
        with pytest.raises(conv.MessageError) as error:
            call(*args)
        return error.value.reason

    batch = M.FrameBatch(client_id='d1', codec='h264', width=64, height=32, sampling_rate=1.0,
                         update_period=10.0)
    assert reason(conv.batch_from_msg, batch) == 'bad-field'  # no stamps
    batch.stamps = [conv.seconds_to_stamp(1.0)]
    batch.update_period = float('nan')
    assert reason(conv.batch_from_msg, batch) == 'bad-field'
    assert reason(conv.patch_from_msg, M.ModelPatch(client_id='d1', digest=b'12345')) == \
        'bad-digest'
    assert reason(conv.patch_from_msg, M.ModelPatch(digest=bytes(32))) == 'no-client-id'
    assert reason(conv.snapshot_from_msg, M.ModelPatch()) == 'wrong-type'
    assert reason(conv.seconds_to_stamp, -1.0) == 'bad-stamp'
    patch = DroneSession('d1', template, Teacher()).mirror.make_patch(
        np.array([0]), np.array([0.5], np.float32))
    assert reason(conv.patch_to_msg, dataclasses.replace(patch, version=-1)) == 'bad-field'


def test_shards_split_client_ids_stably():
    ids = [f'drone{i}' for i in range(200)]
    shards = [stable_shard(i, 3) for i in ids]
    assert shards == [stable_shard(i, 3) for i in ids]  # no per-process hash seed
    assert stable_shard('drone1', 3) == 0  # the same on every machine
    assert all(40 < shards.count(k) < 90 for k in range(3))


def test_drone_namespaces_are_read_off_topic_names():
    assert drone_namespace('/drone1/ams/frames') == '/drone1'
    assert drone_namespace('/fleet/d7/ams/status') == '/fleet/d7'
    assert drone_namespace('/ams/snapshot_request') == '/'
    assert drone_namespace('/drone1/ams/patch') is None
    assert drone_namespace('/drone1/camera/image_raw') is None


# -- nodes as processes -----------------------------------------------------------------------

def start(module, tmp_path, name, *ros_args, env=None):
    log = open(tmp_path / f'{name}.log', 'w')
    process = subprocess.Popen(
        [sys.executable, '-c', WRAPPER, module, '--ros-args', *ros_args],
        stdin=subprocess.PIPE, stdout=log, stderr=subprocess.STDOUT,
        env={**os.environ, 'PYTHONPATH': os.pathsep.join(sys.path), **(env or {})})
    process.log_path = tmp_path / f'{name}.log'
    return process


def params(**values):
    args = []
    for name, value in values.items():
        text = str(value).lower() if isinstance(value, bool) else str(value)
        args += ['-p', f'{name.replace("__", ".")}:={text}']
    return args


@pytest.fixture(scope='module')
def system(template, tmp_path_factory):
    tmp_path = tmp_path_factory.mktemp('nodes')
    model = tmp_path / 'student.onnx'
    model.write_bytes(template.onnx_bytes)
    key = tmp_path / 'ams.key'
    key.write_bytes(KEY + b'\n')
    processes = {
        'ground': start_keyed_ground(tmp_path, key, 't2', discovery_period=0.5),
        't1': start('ams_ros.ros.drone_node', tmp_path, 't1', '-r', '__ns:=/t1', *params(
            model_path=model, status_period=0.5, max_image_pixels=T1_MAX_PIXELS)),
        't2': start('ams_ros.ros.drone_node', tmp_path, 't2', '-r', '__ns:=/t2', *params(
            status_period=0.5, uplink__preset='ultrafast', uplink__bitrate_kbps=400.0,
            auth_key_file=key)),
    }
    yield from observed(processes, 'ams_node_test')


def start_keyed_ground(tmp_path, key, drone, **extra):
    """Start a ground serving the keyed drone namespace /<drone>, with tiny training phases."""
    return start('ams_ros.ros.ground_node', tmp_path, 'ground', *params(
        student=ARCH, input_height=SPEC.height, input_width=SPEC.width, device='cpu',
        torch_threads=1, client_ids=f'[{drone}]', drone_namespaces=f'[/{drone}]',
        status_period=0.5, teacher__seed=SEED, trainer__iterations=2, trainer__batch_size=2,
        trainer__channels_last=False, atr__period_min=2.0, asr__interval=2.0,
        auth_key_file=key, **extra))


def observed(processes, node_name):
    """Yield (a test node, processes) with rclpy up; afterwards shut down and stop them all."""
    rclpy.init()
    node = rclpy.create_node(node_name)
    yield node, processes
    node.destroy_node()
    rclpy.shutdown()
    stop_all(processes)


def stop_all(processes):
    """Close every child's stdin (it exits on EOF); kill those still running after 15 s."""
    for process in processes.values():
        process.stdin.close()
    for process in processes.values():
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def logs(processes):
    return '\n'.join(f'--- {name} ---\n{p.log_path.read_text()[-3000:]}'
                     for name, p in processes.items())


def camera_frame(t, size=(48, 96)):
    frame = video().render(t, *size)[0]
    msg = array_to_image(frame, 'rgb8')
    msg.header.stamp = conv.seconds_to_stamp(t)
    msg.header.frame_id = 'camera'
    return msg


def publish_until_masked(node, camera, masks, frame, timeout=15.0):
    """Publish a frame until its mask comes back (best-effort delivery may lose it)."""
    def masked():
        if any(m.header.stamp == frame.header.stamp for m in masks):
            return True
        camera.publish(frame)
        return False

    return spin_until(node, masked, timeout)


def drone_diagnostics(messages, client_id):
    for array in reversed(messages):
        for status in array.status:
            if status.name == f'ams_drone: {client_id}':
                return {kv.key: kv.value for kv in status.values}
    return None


def test_drone_publishes_a_mask_per_frame_and_survives_bad_images(system):
    node, processes = system
    masks, diagnostics = [], []
    node.create_subscription(Image, '/t1/ams_drone/mask', masks.append, RELIABLE)
    node.create_subscription(DiagnosticArray, '/diagnostics', diagnostics.append, 10)
    camera = node.create_publisher(Image, '/t1/camera/image_raw', qos_profile_sensor_data)
    assert spin_until(node, lambda: camera.get_subscription_count() > 0
                      and node.count_publishers('/t1/ams_drone/mask') > 0, 30), \
        logs(processes)

    for t in (1.0, 1.5, 2.0):
        assert publish_until_masked(node, camera, masks, camera_frame(t)), logs(processes)
    for t in (1.0, 1.5, 2.0):
        mask = next(m for m in masks if m.header.stamp == conv.seconds_to_stamp(t))
        assert (mask.encoding, mask.height, mask.width) == ('mono8', 48, 96)
        assert mask.header.frame_id == 'camera'
        assert max(mask.data) < len(CLASS_NAMES)

    bad = [Image(encoding='yuv422_weird', height=2, width=2, step=4, data=bytes(8)),
           Image(encoding='rgb8', height=4, width=4, step=12, data=bytes(10))]

    def refused():
        values = drone_diagnostics(diagnostics, 't1') or {}
        return (int(values.get('bad_images.unsupported-encoding', 0)) >= 1
                and int(values.get('bad_images.bad-length', 0)) >= 1)

    assert spin_until(node, lambda: refused() or [camera.publish(b) for b in bad] and False,
                      20), drone_diagnostics(diagnostics, 't1')
    assert 'refused' in drone_diagnostics(diagnostics, 't1')['last_error']
    # Still running: a good frame still gets its mask.
    assert publish_until_masked(node, camera, masks, camera_frame(3.0))
    assert processes['t1'].poll() is None


def test_drone_refuses_huge_images_and_follows_a_resolution_change(system):
    node, processes = system
    masks, diagnostics, uplink = [], [], []
    node.create_subscription(Image, '/t1/ams_drone/mask', masks.append, RELIABLE)
    frames = node.create_subscription(M.FrameBatch, '/t1/ams/frames', uplink.append, RELIABLE)
    node.create_subscription(DiagnosticArray, '/diagnostics', diagnostics.append, 10)
    camera = node.create_publisher(Image, '/t1/camera/image_raw', qos_profile_sensor_data)
    # The batch this test waits for is sent once: its subscription must match first.
    assert spin_until(node, lambda: camera.get_subscription_count() > 0
                      and frames.get_publisher_count() > 0
                      and node.count_publishers('/t1/ams_drone/mask') > 0, 30), \
        logs(processes)

    def count(key):
        return int((drone_diagnostics(diagnostics, 't1') or {}).get(key, 0))

    # A frame over max_image_pixels is refused with its own reason, and nothing else happens.
    huge = camera_frame(10.0, size=(120, 160))
    assert spin_until(node, lambda: count('bad_images.too-large') or camera.publish(huge), 20), \
        logs(processes)
    assert drone_diagnostics(diagnostics, 't1')['last_error'] == (
        f'camera image refused (too-large: image is 160x120, more than {T1_MAX_PIXELS} pixels)')
    assert not any(m.header.stamp == huge.header.stamp for m in masks)

    # The camera switches from 48x96 to 64x128 mid-stream: masks follow, the change is counted
    # once, and the uplink batch spanning the change (window [11, 21) at 1 frame/s) goes out
    # at one size, the model's. (The uplink keeps only the newest frame while it encodes, so
    # which frames of the window it samples varies; the first, 11, always opens it.)
    changes = count('camera_size_changes')
    for t in range(11, 22):
        frame = camera_frame(float(t), (48, 96) if t < 13 else (64, 128))
        assert publish_until_masked(node, camera, masks, frame), logs(processes)
        mask = next(m for m in masks if m.header.stamp == frame.header.stamp)
        assert (mask.height, mask.width) == (frame.height, frame.width)
    assert spin_until(node, lambda: count('camera_size_changes') == changes + 1, 10)

    def spanning_batch():
        return next((b for b in map(conv.batch_from_msg, uplink) if b.stamps[0] == 11.0), None)

    assert spin_until(node, spanning_batch, 20), logs(processes)
    batch = spanning_batch()
    assert batch.stamps[-1] >= 13.0  # frames from both camera sizes
    assert (batch.height, batch.width) == (SPEC.height, SPEC.width)
    frames = decode_frames(batch.data, batch.codec, batch.width, batch.height, len(batch.stamps))
    assert len(frames) == len(batch.stamps)
    assert count('camera_size_changes') == changes + 1
    assert count('uplink_errors') == 0 and count('frame_errors') == 0
    assert processes['t1'].poll() is None


def test_ground_streams_a_model_to_a_drone_and_it_advances(system):
    node, processes = system
    status = {'t1': [], 't2': []}
    for client_id, received in status.items():
        node.create_subscription(M.EdgeStatus, f'/{client_id}/ams/status', received.append,
                                 RELIABLE)
    camera = node.create_publisher(Image, '/t2/camera/image_raw', qos_profile_sensor_data)
    assert spin_until(node, lambda: camera.get_subscription_count() > 0, 30), logs(processes)

    # The camera flies at 5x real time (stamps 0.5 s apart every 0.1 s): with T_update 2 s of
    # stamp time the drone sends a batch every 0.4 s.
    t = 0.0
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        if status['t2'] and status['t2'][-1].active_version >= 3:
            break
        camera.publish(camera_frame(t))
        t += 0.5
        spin_until(node, lambda: False, 0.1)
    assert status['t2'], logs(processes)
    last = status['t2'][-1]
    # Snapshot v1, then at least two patches, applied after verification.
    assert last.active_version >= 3, (last, logs(processes))
    assert last.patches_applied >= 2 and last.patches_rejected == 0
    assert last.batches_sent >= 2 and last.bytes_down > 0 and last.bytes_up > 0
    # The ground serves only client t2: drone t1 keeps the model it started from.
    assert status['t1'] and status['t1'][-1].active_version == 1
    for process in processes.values():
        assert process.poll() is None, logs(processes)


def test_ground_spins_while_its_student_is_prepared(system, tmp_path):
    """A packaged student neither shipped nor cached is pretrained after the node is up."""
    node, _ = system
    ground = start('ams_ros.ros.ground_node', tmp_path, 'ground', *params(
        student='pretrained', device='cpu', torch_threads=1, discover=False,
        status_period=0.5, shard_index=1, shard_count=2),  # its shard tells it from the others
        env={'XDG_CACHE_HOME': str(tmp_path / 'cache')})
    diagnostics = []
    subscription = node.create_subscription(DiagnosticArray, '/diagnostics', diagnostics.append,
                                            10)

    def preparing():
        return next((s for a in diagnostics for s in a.status if s.name == 'ams_ground'
                     and {kv.key: kv.value for kv in s.values}.get('shard') == '1/2'), None)

    try:
        assert spin_until(node, lambda: preparing() is not None, 60), logs({'ground': ground})
        status = preparing()
        values = {kv.key: kv.value for kv in status.values}
        assert values['student'].startswith('pretraining the packaged student pretrained')
        assert status.level == DiagnosticStatus.WARN and ground.poll() is None
    finally:
        node.destroy_subscription(subscription)
        ground.kill()  # its worker is pretraining: no need to wait for it
        ground.wait()
