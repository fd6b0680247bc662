"""`ams bag`: synthetic flights written as standard rosbag2 files, played and recorded over DDS."""

import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import yaml

pytest.importorskip('rosbags')
from rosbags.highlevel import AnyReader  # noqa: E402
from rosbags.rosbag2 import Reader  # noqa: E402

from ams_ros.ros import bag  # noqa: E402
from ams_ros.world import AerialVideo  # noqa: E402

SEED, FPS, DURATION, START = 1003, 5.0, 2.0, 1000.0
FRAMES = int(DURATION * FPS) + 1


def read_images(path):
    """Return {topic: [(log_ns, stamp_ns, array)]} decoded with rosbags alone."""
    out = {}
    with AnyReader([Path(path)], default_typestore=bag.typestore()) as reader:
        for conn, log_ns, raw in reader.messages():
            msg = reader.deserialize(raw, conn.msgtype)
            stamp = msg.header.stamp.sec * 10**9 + msg.header.stamp.nanosec
            shape = (msg.height, msg.width) if msg.encoding == 'mono8' else (msg.height,
                                                                              msg.width, 3)
            out.setdefault(conn.topic, []).append(
                (log_ns, stamp, np.asarray(msg.data).reshape(shape)))
    return out


@pytest.mark.parametrize('storage,suffix', [('mcap', '.mcap'), ('sqlite3', '.db3')])
def test_record_synthetic_writes_a_standard_bag(tmp_path, storage, suffix):
    out = tmp_path / 'flight'
    assert bag.main(['record-synthetic', str(out), '--seed', str(SEED), '--duration',
                     str(DURATION), '--fps', str(FPS), '--height', '48', '--width', '96',
                     '--start-time', str(START), '--storage', storage]) == 0

    meta = yaml.safe_load((out / 'metadata.yaml').read_text())['rosbag2_bagfile_information']
    assert meta['storage_identifier'] == storage
    assert [f for f in meta['relative_file_paths']] == [f'flight{suffix}']
    assert (out / f'flight{suffix}').is_file()
    topics = {t['topic_metadata']['name']: t for t in meta['topics_with_message_count']}
    assert set(topics) == {'/camera/image_raw', '/camera/labels'}
    for entry in topics.values():
        assert entry['message_count'] == FRAMES
        assert entry['topic_metadata']['type'] == 'sensor_msgs/msg/Image'
        assert entry['topic_metadata']['serialization_format'] == 'cdr'
        assert entry['topic_metadata']['type_description_hash'].startswith('RIHS01_')
    camera_qos = topics['/camera/image_raw']['topic_metadata']['offered_qos_profiles'][0]
    assert camera_qos['reliability'] == 'best_effort'  # a camera's sensor-data QoS

    with Reader(out) as reader:
        assert reader.message_count == 2 * FRAMES
        assert reader.start_time == int(START * 1e9)

    images = read_images(out)
    video = AerialVideo(SEED, DURATION, START)
    expected = [round((START + i / FPS) * 1e9) for i in range(FRAMES)]
    for topic in ('/camera/image_raw', '/camera/labels'):
        assert [log for log, _, _ in images[topic]] == expected  # log time = capture time
        assert [stamp for _, stamp, _ in images[topic]] == expected
    frame, label = video.render(3 / FPS, 48, 96)
    np.testing.assert_array_equal(images['/camera/image_raw'][3][2], frame)
    np.testing.assert_array_equal(images['/camera/labels'][3][2], label)


def test_record_synthetic_without_labels(tmp_path):
    count = bag.record_synthetic(tmp_path / 'b', seed=SEED, duration=1.0, fps=2.0, height=24,
                                 width=48, labels=False)
    assert count == 3
    with Reader(tmp_path / 'b') as reader:
        assert [c.topic for c in reader.connections] == ['/camera/image_raw']


# -- over DDS ---------------------------------------------------------------------------------

rclpy = pytest.importorskip('rclpy')
from rclpy.duration import Duration  # noqa: E402
from rclpy.qos import (  # noqa: E402
    DurabilityPolicy,
    QoSProfile,
    ReliabilityPolicy,
    qos_profile_sensor_data,
)
from support.processes import child_env, spin_until  # noqa: E402


@pytest.fixture
def node():
    rclpy.init()
    n = rclpy.create_node('ams_bag_test')
    yield n
    n.destroy_node()
    rclpy.try_shutdown()


def test_play_keeps_timing_stamps_and_publishes_clock(tmp_path, node):
    from rosgraph_msgs.msg import Clock
    from sensor_msgs.msg import Image

    path = tmp_path / 'flight'
    bag.record_synthetic(path, seed=SEED, duration=DURATION, fps=FPS, height=48, width=96,
                         start_time=START)
    images, labels, clock = [], [], []
    node.create_subscription(Image, '/camera/image_raw', lambda m: images.append(
        (m.header.stamp.sec * 10**9 + m.header.stamp.nanosec, time.monotonic())),
        qos_profile_sensor_data)
    node.create_subscription(Image, '/camera/labels', lambda m: labels.append(
        m.header.stamp.sec * 10**9 + m.header.stamp.nanosec), 10)
    node.create_subscription(Clock, '/clock', lambda m: clock.append(
        m.clock.sec * 10**9 + m.clock.nanosec),
        QoSProfile(depth=10, reliability=ReliabilityPolicy.BEST_EFFORT))
    player = subprocess.Popen(
        [sys.executable, '-m', 'ams_ros.ros.bag', 'play', str(path), '--rate', '2',
         '--wait-for', '/camera/image_raw', '/camera/labels'], env=child_env())
    try:
        assert spin_until(node, lambda: player.poll() is not None, 60.0)
        assert player.returncode == 0
        spin_until(node, lambda: len(images) == FRAMES and len(labels) == FRAMES, 10.0)
    finally:
        if player.poll() is None:
            player.kill()
            player.wait()
    expected = [round((START + i / FPS) * 1e9) for i in range(FRAMES)]
    assert [s for s, _ in images] == expected
    assert labels == expected
    # Original spacing (0.2 s) at rate 2: about 0.1 s apart, 1 s in all.
    span = images[-1][1] - images[0][1]
    assert 0.8 < span < 1.6, span
    # /clock runs from the bag's start to its end, never backwards, never past a message.
    assert clock and clock[0] >= expected[0] and clock[-1] == expected[-1]
    assert all(b >= a for a, b in zip(clock, clock[1:], strict=False))


def test_custom_types_registered_from_msg_files_hash_like_rosidl(node):
    import ams_msgs.msg

    store = bag.typestore('ams_msgs/msg/ModelPatch')  # registers the whole package
    for name in ('EdgeStatus', 'FrameBatch', 'ModelPatch', 'ModelSnapshot', 'ParameterSpec',
                 'SamplingControl', 'SnapshotRequest'):
        node.create_publisher(getattr(ams_msgs.msg, name), f'/ams_bag_test/{name}', 1)
        (info,) = node.get_publishers_info_by_topic(f'/ams_bag_test/{name}')
        assert store.hash_rihs01(f'ams_msgs/msg/{name}') == str(info.topic_type_hash), name


def test_record_captures_custom_types_and_latched_qos(tmp_path, node):
    from ams_msgs.msg import SamplingControl

    latched = QoSProfile(depth=1, reliability=ReliabilityPolicy.RELIABLE,
                         durability=DurabilityPolicy.TRANSIENT_LOCAL)
    pub = node.create_publisher(SamplingControl, '/ams/sampling', latched)
    out = tmp_path / 'traffic'
    recorder = subprocess.Popen(
        [sys.executable, '-m', 'ams_ros.ros.bag', 'record', str(out), '--topics', '/ams/sampling'],
        env=child_env())
    try:
        assert spin_until(node, lambda: pub.get_subscription_count() > 0, 30.0)
        for i in range(5):
            pub.publish(SamplingControl(client_id='drone', sampling_rate=0.1 * (i + 1),
                                        update_period=10.0))
        # Reliable: once the recorder acknowledged them all, they are in its reader.
        assert pub.wait_for_all_acked(Duration(seconds=20))
    finally:
        recorder.send_signal(signal.SIGINT)
        assert recorder.wait(timeout=20) == 0
    meta = yaml.safe_load((out / 'metadata.yaml').read_text())['rosbag2_bagfile_information']
    topic = meta['topics_with_message_count'][0]
    assert topic['topic_metadata']['type'] == 'ams_msgs/msg/SamplingControl'
    qos = topic['topic_metadata']['offered_qos_profiles'][0]
    assert (qos['reliability'], qos['durability']) == ('reliable', 'transient_local')
    with AnyReader([out], default_typestore=bag.typestore()) as reader:
        rates = [reader.deserialize(raw, c.msgtype).sampling_rate
                 for c, _, raw in reader.messages()]
    np.testing.assert_allclose(rates, [0.1, 0.2, 0.3, 0.4, 0.5], rtol=1e-6)



# -- the live camera the bags stand in for ----------------------------------------------------

def camera_run(node, params, frames, labels=True, timeout=60.0):
    """Run ams_camera until it finishes; return [(stamp_ns, rgb)], [(stamp_ns, label)]."""
    from sensor_msgs.msg import Image

    from ams_ros.ros.image_conversion import image_to_array

    images, label_msgs = [], []
    subs = [node.create_subscription(Image, '/camera/image_raw', lambda m: images.append(
        (m.header.stamp.sec * 10**9 + m.header.stamp.nanosec, image_to_array(m),
         time.monotonic())), QoSProfile(depth=50, reliability=ReliabilityPolicy.BEST_EFFORT))]
    if labels:
        subs.append(node.create_subscription(Image, '/camera/labels', lambda m: label_msgs.append(
            (m.header.stamp.sec * 10**9 + m.header.stamp.nanosec, image_to_array(m))),
            QoSProfile(depth=50, reliability=ReliabilityPolicy.RELIABLE)))
    args = ['-p', 'exit_when_done:=true', '-p', 'wait_for_subscribers:=1']
    for key, value in params.items():
        args += ['-p', f'{key}:={value}']
    camera = subprocess.Popen([sys.executable, '-m', 'ams_ros.ros.camera_node', '--ros-args',
                               *args], env=child_env())
    try:
        assert spin_until(node, lambda: camera.poll() is not None, timeout)
        assert camera.returncode == 0
        spin_until(node, lambda: len(images) >= frames and len(label_msgs) >= frames * labels,
                   10.0)
    finally:
        if camera.poll() is None:
            camera.kill()
            camera.wait()
        for sub in subs:
            node.destroy_subscription(sub)
    return images, label_msgs


def test_camera_node_flies_what_record_synthetic_writes(tmp_path, node):
    params = {'seed': SEED, 'fps': FPS, 'width': 96, 'height': 48, 'duration': DURATION,
              'start_time': START, 'publish_labels': 'true'}
    images, labels = camera_run(node, params, FRAMES)
    bag.record_synthetic(tmp_path / 'b', seed=SEED, duration=DURATION, fps=FPS, height=48,
                         width=96, start_time=START)
    recorded = read_images(tmp_path / 'b')
    assert [s for s, _, _ in images] == [s for _, s, _ in recorded['/camera/image_raw']]
    assert [s for s, _ in labels] == [s for _, s, _ in recorded['/camera/labels']]
    for (_, got, _), (_, _, want) in zip(images, recorded['/camera/image_raw'], strict=True):
        np.testing.assert_array_equal(got, want)
    for (_, got), (_, _, want) in zip(labels, recorded['/camera/labels'], strict=True):
        np.testing.assert_array_equal(got, want)
    span = images[-1][2] - images[0][2]  # real time: 2 s of flight take about 2 s
    assert 1.6 < span < 3.0, span


def test_camera_node_plays_a_video_file(tmp_path, node):
    import av

    path = tmp_path / 'clip.mp4'
    with av.open(str(path), 'w') as container:
        stream = container.add_stream('libx264', rate=10)
        stream.width, stream.height, stream.pix_fmt = 64, 48, 'yuv420p'
        for i in range(12):
            frame = av.VideoFrame.from_ndarray(np.full((48, 64, 3), 20 * i, np.uint8),
                                               format='rgb24')
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    images, _ = camera_run(node, {'source': str(path), 'width': 32, 'height': 24,
                                  'start_time': 50.0, 'rate': 2.0}, 12, labels=False)
    assert [s for s, _, _ in images] == [round((50.0 + i / 10) * 1e9) for i in range(12)]
    assert images[0][1].shape == (24, 32, 3)
    assert abs(int(images[5][1].mean()) - 100) < 12  # frame 5 was grey 100
