"""Every ams_msgs type, signed or not, survives a round trip between processes over Fast DDS."""

import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

rclpy = pytest.importorskip('rclpy')
from builtin_interfaces.msg import Time  # noqa: E402
from rclpy.qos import QoSProfile, ReliabilityPolicy  # noqa: E402

import ams_msgs.msg as M  # noqa: E402
from ams_ros.ros.link_auth import LinkSigner, LinkVerifier  # noqa: E402

ECHO = Path(__file__).parent / 'support' / 'echo_node.py'
TYPES = ['FrameBatch', 'ModelPatch', 'ModelSnapshot', 'SamplingControl', 'SnapshotRequest',
         'EdgeStatus']
KEY = bytes(range(32))
rng = np.random.default_rng(7)


def random_bytes(n):
    return rng.integers(0, 256, n, dtype=np.uint8).tobytes()


def frame_batch(size):
    msg = M.FrameBatch(client_id='drone1', seq=42, codec=M.FrameBatch.CODEC_H264, width=512,
                       height=256, source_encoding='bgr8', sampling_rate=0.5, update_period=10.0)
    msg.header.frame_id = 'camera'
    msg.header.stamp = Time(sec=1700000000, nanosec=123)
    msg.stamps = [Time(sec=1700000000 + i, nanosec=i * 1000) for i in range(10)]
    msg.data = random_bytes(size)
    return msg


def model_patch(size):
    return M.ModelPatch(client_id='drone1', model_id='deeplabv3_mbv2-0123456789abcdef',
                        base_version=6, version=7, num_params=2_100_000,
                        index_codec='gaps+zstd', index_data=random_bytes(size // 4),
                        value_codec='fp16+zstd', value_data=random_bytes(size - size // 4),
                        digest=random_bytes(32), auth_tag=random_bytes(32))


def model_snapshot():
    specs = [M.ParameterSpec(name='backbone.0.weight', shape=[32, 3, 3, 3], offset=0),
             M.ParameterSpec(name='head.bias', shape=[6], offset=864)]
    return M.ModelSnapshot(client_id='drone1', model_id='m', version=3,
                           format=M.ModelSnapshot.FORMAT_ONNX, model_data=random_bytes(200_000),
                           parameters=specs, class_names=['road', 'building', 'water'],
                           input_height=256, input_width=512, mean=[123.7, 116.3, 103.5],
                           std=[58.4, 57.1, 57.4], digest=random_bytes(32), auth_tag=b'')


def samples():
    cases = [
        ('FrameBatch', '1MB', frame_batch(1_000_000)),
        ('FrameBatch', 'small', frame_batch(3_000)),
        ('ModelPatch', '500kB', model_patch(500_000)),
        ('ModelSnapshot', '', model_snapshot()),
        ('SamplingControl', '', M.SamplingControl(client_id='drone1', sampling_rate=0.25,
                                              update_period=15.0)),
        ('SnapshotRequest', '', M.SnapshotRequest(client_id='drone1', model_id='m',
                                              active_version=5, reason='digest-mismatch')),
        ('EdgeStatus', '', M.EdgeStatus(client_id='drone1', model_id='m', active_version=9,
                                    active_digest=random_bytes(32), inference_fps=29.5,
                                    latency_p50_ms=8.125, latency_p99_ms=12.5,
                                    frames_received=1000, frames_inferred=990, frames_sampled=20,
                                    batches_sent=2, bytes_up=40_000, bytes_down=300_000,
                                    patches_applied=7, patches_rejected=1, sampling_rate=0.5,
                                    update_period=10.0, last_error='gap: expected base 8')),
    ]
    return [pytest.param(name, msg, id=f'{name}-{tag}' if tag else name)
            for name, tag, msg in cases]


@pytest.fixture(scope='module')
def echo_session():
    echo = subprocess.Popen([sys.executable, str(ECHO), *TYPES], stdin=subprocess.PIPE)
    rclpy.init()
    node = rclpy.create_node('ams_roundtrip_test')
    qos = QoSProfile(depth=10, reliability=ReliabilityPolicy.RELIABLE)
    received = {name: [] for name in TYPES}
    pubs = {}
    for name in TYPES:
        msg_type = getattr(M, name)
        pubs[name] = node.create_publisher(msg_type, f'/ams_test/{name}', qos)
        node.create_subscription(msg_type, f'/ams_test/{name}/echo', received[name].append, qos)
    yield node, pubs, received
    node.destroy_node()
    rclpy.shutdown()
    echo.stdin.close()
    echo.wait(timeout=10)


def spin_until(node, predicate, timeout):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        rclpy.spin_once(node, timeout_sec=0.05)
    return predicate()


def round_trip(echo_session, name, msg):
    """Publish msg until the echo node sends it back; return the first echo."""
    node, pubs, received = echo_session
    topic = f'/ams_test/{name}'
    assert spin_until(node, lambda: pubs[name].get_subscription_count() > 0
                      and node.count_publishers(topic + '/echo') > 0, 20), 'echo never matched'
    received[name].clear()
    # A new publisher's first messages can be lost even once matched: resend until echoed.
    deadline = time.monotonic() + 30
    while not received[name] and time.monotonic() < deadline:
        pubs[name].publish(msg)
        spin_until(node, lambda: bool(received[name]), 1.0)
    assert received[name], f'{name} never came back'
    return received[name][0]


@pytest.mark.parametrize('name,msg', samples())
def test_round_trip(echo_session, name, msg):
    assert round_trip(echo_session, name, msg) == msg


@pytest.mark.parametrize('name,msg', samples())
def test_signed_round_trip(echo_session, name, msg):
    if hasattr(msg, 'sampling_rate'):
        msg.sampling_rate = 0.1  # not float32-exact: the tag must survive the rounding
    LinkSigner(KEY).sign(msg)
    assert LinkVerifier(KEY).verify(round_trip(echo_session, name, msg), 'drone1') == ''
