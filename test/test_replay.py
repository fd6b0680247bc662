"""Bag replay through the real nodes, as separate processes over real DDS.

1. A camera bag into the drone node: one mask per frame, with the frame's stamp.
2. A camera bag into the drone and ground nodes: patches flow, the drone's version advances,
   and over the last part of the bag its masks beat the same student without updates.
3. The model traffic recorded during (2) (ModelPatch, ModelSnapshot, SamplingControl) replayed
   into a fresh drone node, twice: both end on the same version and segment alike.

The student is a freshly initialised small one at 64x128 (saved as a checkpoint here), so the
test does not depend on the packaged pretrained weights and trains in seconds.
"""

from pathlib import Path

import av
import numpy as np
import pytest

rclpy = pytest.importorskip('rclpy')
pytest.importorskip('rosbags')
pytest.importorskip('torch')
from rclpy.qos import QoSProfile, ReliabilityPolicy  # noqa: E402
from sensor_msgs.msg import Image  # noqa: E402
from support.processes import Children, spin_until  # noqa: E402

from ams_msgs.msg import EdgeStatus  # noqa: E402
from ams_ros.evaluation.demo_report import STATUS_FIELDS, DemoMonitor  # noqa: E402
from ams_ros.evaluation.side_by_side import SideBySideWriter  # noqa: E402
from ams_ros.ros import bag  # noqa: E402
from ams_ros.ros.image_conversion import array_to_image, image_to_array, image_to_rgb  # noqa
from ams_ros.world import CLASS_NAMES, colour_table  # noqa: E402

HEIGHT, WIDTH = 64, 128
SEED, START = 1004, 500.0
# Flight 1011 hovers for its first 18 s: the scene the ground trains on is the scene the drone
# segments next, the case where a few patches must already show (AMS's premise).
ADAPT_SEED, ADAPT_S = 1011, 20.0
MASK_TOPIC = '/ams_drone/mask'
TRAFFIC = ['/ams/patch', '/ams/snapshot', '/ams/sampling']
RELIABLE = QoSProfile(depth=100, reliability=ReliabilityPolicy.RELIABLE)


@pytest.fixture(scope='module')
def student(tmp_path_factory):
    """Make a fresh small student: checkpoint (.pt + .json) for the ground, ONNX for the drone."""
    import torch

    from ams_ros.model.pretrain import StudentMetadata, export_onnx, save_student
    from ams_ros.model.student import IMAGENET_MEAN, IMAGENET_STD, build_student

    folder = tmp_path_factory.mktemp('student')
    torch.manual_seed(0)
    model = build_student('deeplabv3_mbv2_small', len(CLASS_NAMES)).eval()
    meta = StudentMetadata('deeplabv3_mbv2_small', tuple(CLASS_NAMES), HEIGHT, WIDTH,
                           IMAGENET_MEAN, IMAGENET_STD)
    save_student(folder / 'student.pt', model, meta)
    export_onnx(model, meta, folder / 'student.onnx')
    return folder / 'student.pt', folder / 'student.onnx'


@pytest.fixture(scope='module')
def adaptation_student(tmp_path_factory, student):
    """Return (checkpoint, onnx, height, width, pretrained): the packaged student if present.

    Adaptation has to turn a student that segments into one that segments this flight better;
    a freshly initialised student predicts one class and a few patches do not change that.
    """
    from ams_ros.model.pretrain import SMALL_CHECKPOINT, StudentMetadata, export_onnx, load_student

    if not SMALL_CHECKPOINT.is_file():
        return (*student, HEIGHT, WIDTH, False)
    meta = StudentMetadata.from_json(SMALL_CHECKPOINT.with_suffix('.json').read_text())
    onnx = SMALL_CHECKPOINT.with_suffix('.onnx')
    if not onnx.is_file():
        onnx = tmp_path_factory.mktemp('pretrained') / 'student.onnx'
        export_onnx(*load_student(SMALL_CHECKPOINT), onnx)
    return SMALL_CHECKPOINT, onnx, meta.height, meta.width, True


@pytest.fixture(scope='module')
def ros():
    rclpy.init()
    node = rclpy.create_node('ams_replay_test')
    yield node
    node.destroy_node()
    rclpy.try_shutdown()


def stamp_ns(msg):
    return msg.header.stamp.sec * 10**9 + msg.header.stamp.nanosec


def play(children, path, *extra):
    return children.start('player', ['-m', 'ams_ros.ros.bag', 'play', str(path), '--no-clock',
                                     *extra])


def drone_params(onnx):
    return {'model_path': str(onnx), 'ort.threads': 1, 'uplink.preset': 'ultrafast',
            'status_period': 0.5}


def test_bag_into_drone_gives_one_mask_per_frame(tmp_path, student, ros):
    _, onnx = student
    flight = tmp_path / 'flight'
    count = bag.record_synthetic(flight, seed=SEED, duration=4.0, fps=5.0, height=HEIGHT,
                                 width=WIDTH, start_time=START, labels=False)
    masks = []
    sub = ros.create_subscription(Image, MASK_TOPIC, lambda m: masks.append(
        (stamp_ns(m), m.header.frame_id, image_to_array(m).shape)), RELIABLE)
    children = Children(tmp_path)
    try:
        children.node('ams_drone', 'drone_node', drone_params(onnx))
        # Masks published before this subscription matched would be lost to it.
        assert spin_until(ros, lambda: sub.get_publisher_count() >= 1, 60.0), children.logs()
        # The player starts once the drone's camera subscription matched it.
        player = play(children, flight, '--wait-for', '/camera/image_raw')
        assert spin_until(ros, lambda: player.poll() is not None, 60.0), children.logs()
        assert player.returncode == 0, children.logs()
        spin_until(ros, lambda: len(masks) >= count, 15.0)
    finally:
        children.stop_all()
        ros.destroy_subscription(sub)
    expected = [round((START + i / 5.0) * 1e9) for i in range(count)]
    missing = [(s - expected[0]) / 1e9 for s in sorted(set(expected) - {s for s, _, _ in masks})]
    assert not missing, (missing, children.logs())
    assert [s for s, _, _ in masks] == expected
    assert {(f, shape) for _, f, shape in masks} == {('camera', (HEIGHT, WIDTH))}


@pytest.fixture(scope='module')
def adapted_run(tmp_path_factory, adaptation_student, ros):
    """Run (2) once, recording the model traffic for (3)."""
    checkpoint, onnx, height, width, pretrained = adaptation_student
    folder = tmp_path_factory.mktemp('adapt')
    duration, fps = ADAPT_S, 5.0
    flight = folder / 'flight'
    bag.record_synthetic(flight, seed=ADAPT_SEED, duration=duration, fps=fps, height=height,
                         width=width, start_time=START)

    from ams_ros.ros.demo import _baseline

    agent, baseline = _baseline(onnx)
    video = SideBySideWriter(folder / 'report' / 'side_by_side.mp4', colour_table(), 5.0,
                             len(CLASS_NAMES))
    monitor = DemoMonitor(CLASS_NAMES, baseline=baseline, video=video)
    subs = [
        ros.create_subscription(Image, '/camera/image_raw', lambda m: monitor.on_image(
            stamp_ns(m), image_to_rgb(m)), QoSProfile(depth=50,
                                                     reliability=ReliabilityPolicy.BEST_EFFORT)),
        ros.create_subscription(Image, '/camera/labels', lambda m: monitor.on_label(
            stamp_ns(m), image_to_array(m)), RELIABLE),
        ros.create_subscription(Image, MASK_TOPIC, lambda m: monitor.on_mask(
            stamp_ns(m), image_to_array(m)), RELIABLE),
        ros.create_subscription(EdgeStatus, '/ams/status', lambda m: monitor.on_status(
            {k: getattr(m, k) for k in STATUS_FIELDS}), RELIABLE),
    ]
    children = Children(folder)
    traffic = folder / 'traffic'
    try:
        children.start('recorder', ['-m', 'ams_ros.ros.bag', 'record', str(traffic), '--topics',
                                    *TRAFFIC])
        children.node('ams_ground', 'ground_node', {
            'student': str(checkpoint), 'device': 'cpu', 'teacher.kind': 'synthetic',
            'teacher.seed': ADAPT_SEED, 'teacher.start_s': START,
            'teacher.duration_s': duration, 'trainer.iterations': 8, 'trainer.batch_size': 4,
            'trainer.horizon_s': 20.0, 'asr.initial_rate': 2.0, 'asr.rate_max': 2.0,
            'atr.period_min': 3.0})
        children.node('ams_drone', 'drone_node', drone_params(onnx))
        # Frames flow once the ground listens for the drone's batches (it discovers the drone)
        # and the drone and the monitor listen to the camera.
        assert spin_until(ros, lambda: ros.count_subscribers('/ams/frames') >= 1
                          and ros.count_subscribers('/camera/image_raw') >= 2
                          and ros.count_publishers('/ams/patch') >= 1, 120.0), children.logs()
        monitor.start_clock()
        player = play(children, flight, '--wait-for', '/camera/image_raw', '/camera/labels')
        assert spin_until(ros, lambda: player.poll() is not None, duration + 60.0), \
            children.logs()
        spin_until(ros, lambda: False, 1.5)  # masks of the last frames, a last status
        children.stop('ams_ground')
        children.stop('ams_drone')
        children.stop('recorder')
    finally:
        children.stop_all()
        for sub in subs:
            ros.destroy_subscription(sub)
    monitor.close(timeout=60.0)
    agent.close()
    summary = monitor.write_report(folder / 'report')
    summary['after_two_patches'] = monitor.compare(monitor.frames_from_version(3))
    return summary, traffic, onnx, children, pretrained


def test_bag_into_drone_and_ground_adapts_and_beats_no_update(adapted_run):
    summary, _, _, children, pretrained = adapted_run
    model = summary['model']
    assert model['patches_applied'] >= 2, (summary['model'], children.logs())
    assert model['final_version'] >= 3
    assert model['patches_rejected'] == 0
    assert summary['bandwidth']['bytes_up'] > 0 and summary['bandwidth']['bytes_down'] > 0
    assert summary['accuracy']['whole_run']['frames_compared'] >= 80, summary['monitor']
    # The side-by-side video holds every compared frame.
    compared = summary['accuracy']['whole_run']['frames_compared']
    assert summary['video']['frames'] == compared
    with av.open(str(children.folder / 'report' / 'side_by_side.mp4')) as container:
        assert sum(1 for _ in container.decode(video=0)) == compared
    if not pretrained:
        pytest.skip('the accuracy comparison needs the packaged pretrained student '
                    '(ams_ros/data, made by ams_ros.model.pretrain)')
    # The frames the drone segmented after two patches, against the student it started from.
    adapted = summary['after_two_patches']
    assert adapted['frames_compared'] >= 15, (adapted, summary['model'])
    assert adapted['adapted_frame_miou'] > adapted['baseline_frame_miou'] + 0.05, adapted
    assert adapted['adapted_miou'] > adapted['baseline_miou'], adapted
    assert (Path(summary['plots'][0]).name == 'miou.png')


def test_recorded_model_traffic_replays_deterministically(tmp_path, adapted_run, ros):
    summary, traffic, onnx, _, _ = adapted_run
    versions = {}
    for topic, _, msg in bag.read_messages(traffic, ['/ams/patch', '/ams/snapshot']):
        versions.setdefault(topic, []).append(msg.version)
    patches = len(versions['/ams/patch'])
    assert patches >= 2
    final = max(versions['/ams/patch'] + versions.get('/ams/snapshot', []))

    probe = np.random.default_rng(3).integers(0, 256, (HEIGHT, WIDTH, 3), np.uint8)
    (version_a, mask_a), (version_b, mask_b) = (
        replay_into_fresh_drone(ros, tmp_path / f'run{run}', traffic, onnx, final, probe)
        for run in range(2))
    assert version_a == version_b == final
    np.testing.assert_array_equal(mask_a, mask_b)


def replay_into_fresh_drone(ros, folder, traffic, onnx, final, probe):
    """Start a drone, play the traffic into it; return its final version and a probe mask."""
    statuses, masks = [], {}
    subs = [ros.create_subscription(EdgeStatus, '/ams/status',
                                    lambda m: statuses.append(m.active_version), RELIABLE),
            ros.create_subscription(Image, MASK_TOPIC, lambda m: masks.setdefault(
                stamp_ns(m), image_to_array(m)), RELIABLE)]
    camera = ros.create_publisher(Image, '/camera/image_raw', 10)
    folder.mkdir()
    children = Children(folder)
    try:
        children.node('ams_drone', 'drone_node', drone_params(onnx))
        player = play(children, traffic, '--rate', '10', '--wait-for', '/ams/patch')
        assert spin_until(ros, lambda: player.poll() is not None, 60.0), children.logs()
        assert player.returncode == 0, children.logs()
        assert spin_until(ros, lambda: statuses and statuses[-1] == final, 20.0), \
            (statuses[-3:], final, children.logs())
        # Segment a probe frame with the final model (sent again until a mask answers).
        msg = array_to_image(probe, 'rgb8')
        msg.header.stamp.sec = 7
        msg.header.frame_id = 'camera'
        assert spin_until(ros, lambda: camera.publish(msg) or 7 * 10**9 in masks, 20.0)
        return statuses[-1], masks[7 * 10**9]
    finally:
        children.stop_all()
        for sub in subs:
            ros.destroy_subscription(sub)
        ros.destroy_publisher(camera)
