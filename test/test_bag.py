"""`ams bag`: standard rosbag2 files written, read, played and recorded over DDS.

Besides the project's own bags, bags shaped as rosbag2 releases from Foxy to Kilted leave them
(support/bag_fixtures.py), whose metadata.yaml and storage file disagree about offered QoS.
"""

import re
import signal
import subprocess
import sys
import time
from collections import Counter

import numpy as np
import pytest
import yaml

pytest.importorskip('rosbags')
from ams_ros.ros import bag  # noqa: E402
from ams_ros.ros.bag_reader import BagReader, OfferedQos, parse_offered_qos  # noqa: E402
from ams_ros.world import AerialVideo  # noqa: E402

SEED, FPS, DURATION, START = 1003, 5.0, 2.0, 1000.0
FRAMES = int(DURATION * FPS) + 1


def read_images(path):
    """Return {topic: [(log_ns, stamp_ns, array)]} as the project's reader decodes them."""
    out = {}
    for topic, log_ns, msg in bag.read_messages(path):
        stamp = msg.header.stamp.sec * 10**9 + msg.header.stamp.nanosec
        shape = (msg.height, msg.width) if msg.encoding == 'mono8' else (msg.height,
                                                                          msg.width, 3)
        out.setdefault(topic, []).append((log_ns, stamp, np.asarray(msg.data).reshape(shape)))
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

    with BagReader(out) as reader:
        assert reader.message_count == 2 * FRAMES
        assert reader.start_ns == int(START * 1e9)

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
    with BagReader(tmp_path / 'b') as reader:
        assert [t.name for t in reader.topics] == ['/camera/image_raw']


def test_offered_qos_is_advice_that_parses_or_is_none():
    up_to_v8 = ('- history: 1\n  depth: 5\n  reliability: 2\n  durability: 1\n'
                '  deadline: {sec: 0, nsec: 0}\n')
    assert parse_offered_qos(up_to_v8) == (OfferedQos('best_effort', 'transient_local', 5),)
    from_v9 = [{'history': 'keep_last', 'depth': 10, 'reliability': 'reliable',
                'durability': 'volatile'}]
    assert parse_offered_qos(from_v9) == (OfferedQos('reliable', 'volatile', 10),)
    for unusable in (None, '', [], '{not: [qos', 'text', [{'depth': 1}],
                     [{'reliability': 'sometimes', 'durability': 'volatile'}]):
        assert parse_offered_qos(unusable) is None, unusable


# -- over DDS ---------------------------------------------------------------------------------

rclpy = pytest.importorskip('rclpy')
from rclpy.duration import Duration  # noqa: E402
from rclpy.qos import (  # noqa: E402
    DurabilityPolicy,
    QoSProfile,
    ReliabilityPolicy,
    qos_profile_sensor_data,
)
from support.bag_fixtures import (  # noqa: E402
    BASIC,
    CASES,
    CHATTER,
    MYSTERY,
    TOPICS,
    UNKNOWN_TYPE,
    Case,
    expected_values,
    write_case,
)
from support.processes import Children, child_env, spin_until  # noqa: E402


@pytest.fixture
def node():
    rclpy.init()
    n = rclpy.create_node('ams_bag_test')
    yield n
    n.destroy_node()
    rclpy.try_shutdown()


@pytest.mark.parametrize('storage', ['mcap', 'sqlite3'])
def test_play_keeps_timing_stamps_and_publishes_clock(tmp_path, node, storage):
    from rosgraph_msgs.msg import Clock
    from sensor_msgs.msg import Image

    path = tmp_path / 'flight'
    bag.record_synthetic(path, seed=SEED, duration=DURATION, fps=FPS, height=48, width=96,
                         start_time=START, storage=storage)
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
    rates = [msg.sampling_rate for _, _, msg in bag.read_messages(out)]
    np.testing.assert_allclose(rates, [0.1, 0.2, 0.3, 0.4, 0.5], rtol=1e-6)


def test_playback_qos_follows_advice_and_defaults_to_reliable_volatile():
    from rclpy.qos import DurabilityPolicy, ReliabilityPolicy

    def policies(offered):
        qos = bag.playback_qos(offered)
        return qos.reliability, qos.durability, qos.depth

    assert policies(None) == (ReliabilityPolicy.RELIABLE, DurabilityPolicy.VOLATILE, 10)
    latched = OfferedQos('reliable', 'transient_local', 1)
    assert policies((latched,)) == (ReliabilityPolicy.RELIABLE,
                                    DurabilityPolicy.TRANSIENT_LOCAL, 1)
    mixed = (latched, OfferedQos('best_effort', 'volatile', 5))
    assert policies(mixed) == (ReliabilityPolicy.BEST_EFFORT, DurabilityPolicy.VOLATILE, 5)



# -- bags as rosbag2 releases from Foxy to Kilted leave them ------------------------------------

def played_counts(log: str) -> dict:
    """Return {topic: (in bag, published)} from the player's closing table."""
    return {m[1]: (int(m[2]), int(m[3]))
            for m in re.finditer(r'^(/\S+) +(\d+) +(\d+)$', log, re.MULTILINE)}


def run_player(path, *extra):
    return subprocess.run([sys.executable, '-m', 'ams_ros.ros.bag', 'play', str(path),
                           '--no-clock', *extra], env=child_env(), capture_output=True,
                          text=True, timeout=60)


@pytest.mark.parametrize('case', CASES, ids=lambda c: c.name)
def test_reader_reads_every_message_whatever_release_wrote_the_bag(tmp_path, case):
    path = write_case(tmp_path / 'bag', case)
    with BagReader(path) as reader:
        assert [(t.name, t.msgtype, t.count) for t in reader.topics] == [
            (s.name, s.msgtype, s.count) for s in TOPICS]
        logged = [(topic.name, log_ns) for topic, log_ns, _ in reader.messages()]
    assert Counter(name for name, _ in logged) == {s.name: s.count for s in TOPICS}
    assert [ns for _, ns in logged] == sorted(ns for _, ns in logged)
    chatter = [msg.data for _, _, msg in bag.read_messages(path, [CHATTER.name])]
    assert chatter == expected_values(CHATTER)


@pytest.mark.parametrize('case', CASES, ids=lambda c: c.name)
def test_play_publishes_every_message_whatever_release_wrote_the_bag(tmp_path, node, case):
    from std_msgs.msg import String
    from test_msgs.msg import BasicTypes

    path = write_case(tmp_path / 'bag', case)
    received = {CHATTER.name: [], BASIC.name: []}
    reliable = QoSProfile(depth=100, reliability=ReliabilityPolicy.RELIABLE)
    subs = [node.create_subscription(String, CHATTER.name, lambda m: received[CHATTER.name]
                                     .append(m.data), reliable),
            node.create_subscription(BasicTypes, BASIC.name, lambda m: received[BASIC.name]
                                     .append((m.int32_value, m.float64_value)), reliable)]
    children = Children(tmp_path)
    try:
        player = children.start('player', ['-m', 'ams_ros.ros.bag', 'play', str(path),
                                           '--no-clock', '--wait-for', CHATTER.name,
                                           BASIC.name])
        # The player waits for both subscriptions, then settles a second before playing.
        assert spin_until(node, lambda: all(s.get_publisher_count() for s in subs), 30.0), \
            children.logs()
        (offered,) = node.get_publishers_info_by_topic(BASIC.name)
        assert spin_until(node, lambda: player.poll() is not None, 30.0), children.logs()
        assert player.returncode == 0, children.logs()
        spin_until(node, lambda: all(len(received[s.name]) == s.count
                                     for s in (CHATTER, BASIC)), 10.0)
    finally:
        children.stop_all()
    assert received[CHATTER.name] == expected_values(CHATTER)
    assert received[BASIC.name] == expected_values(BASIC)
    # /basic was recorded transient local: followed where the bag's QoS parses on either side.
    assert offered.qos_profile.durability == (DurabilityPolicy.TRANSIENT_LOCAL
                                              if case.qos_advice else DurabilityPolicy.VOLATILE)
    assert offered.qos_profile.reliability == ReliabilityPolicy.RELIABLE
    log = (tmp_path / 'player.log').read_text()
    assert log.count('skipping') == 1, log
    assert (f'skipping {MYSTERY.name}: type {UNKNOWN_TYPE} is not installed '
            f'({MYSTERY.count} messages)') in log
    assert played_counts(log) == {CHATTER.name: (7, 7), BASIC.name: (5, 5), MYSTERY.name: (3, 0)}
    assert 'played 12 messages' in log


@pytest.mark.parametrize('storage', ['mcap', 'sqlite3'])
def test_play_fails_on_a_bag_of_which_nothing_can_be_played(tmp_path, storage):
    path = write_case(tmp_path / 'bag', Case('kilted', storage, 9, 'names', 'names'),
                      topics=(MYSTERY,))
    result = run_player(path)
    assert result.returncode == 1, result.stdout + result.stderr
    assert f'skipping {MYSTERY.name}: type {UNKNOWN_TYPE} is not installed (3 messages)' \
        in result.stderr
    assert (f'nothing to play in {path}: no message of an installed type '
            f'(not installed: {UNKNOWN_TYPE})') in result.stderr


def test_play_fails_when_no_message_lies_after_the_start_offset(tmp_path):
    path = write_case(tmp_path / 'bag', CASES[0])
    result = run_player(path, '--start-offset', '60')
    assert result.returncode == 1, result.stdout + result.stderr
    assert played_counts(result.stdout) == {CHATTER.name: (7, 0), BASIC.name: (5, 0),
                                            MYSTERY.name: (3, 0)}
    assert ('played none of the 12 messages of installed types from --start-offset 60 s on'
            in result.stderr)


@pytest.mark.parametrize('case', [CASES[0], CASES[-2]], ids=lambda c: c.name)
def test_info_lists_topics_counts_time_span_storage_and_version(tmp_path, capsys, case):
    from ams_ros import cli

    path = write_case(tmp_path / 'bag', case)
    assert cli.main(['bag', 'info', str(path)]) == 0
    out = capsys.readouterr().out
    fields = dict(re.findall(r'^(\w[\w ]*): +(.*)$', out, re.MULTILINE))
    assert fields['Storage id'] == case.storage
    assert fields['rosbag2 version'] == str(case.version)
    assert fields['Messages'] == '15'
    assert fields['Duration'] == '0.280000000s'  # 15 messages 20 ms apart
    assert fields['Start'].endswith('(1700000000.000000000)')
    assert fields['End'].endswith('(1700000000.280000000)')
    for spec in TOPICS:
        assert (f'Topic: {spec.name} | Type: {spec.msgtype} | Count: {spec.count} | '
                'Serialization Format: cdr') in out


def test_info_explains_what_is_not_a_bag(tmp_path, capsys):
    assert bag.main(['info', str(tmp_path)]) == 1
    assert 'is not a rosbag2 bag folder' in capsys.readouterr().err


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
