"""One ground, three drones, φ-weighted scheduling, over real Fast DDS between processes.

The drones ('calm', 'slow', 'busy') are real drone nodes, each in its own namespace, fed by
this process with scenes that change at different rates: the same picture every frame, one
block of it repainted per frame, and a new picture every frame. The ground labels their frames
with a small ONNX colour teacher (labels follow the picture, so φ follows the scene) and trains
more slowly than batches arrive, so the scheduler has to choose every phase.

Asserted: every patch on a drone's topic was made for that drone and applied by it (none
refused as foreign, no snapshot requested), the ground's mirror of each drone ends equal to
what the drone runs, and the busiest scene got the most phases.
"""

import io
import time
import warnings

import numpy as np
import pytest

rclpy = pytest.importorskip('rclpy')
torch = pytest.importorskip('torch')
import yaml  # noqa: E402
from diagnostic_msgs.msg import DiagnosticArray  # noqa: E402
from rclpy.qos import QoSProfile, ReliabilityPolicy, qos_profile_sensor_data  # noqa: E402
from sensor_msgs.msg import Image  # noqa: E402
from support.processes import Children, spin_until  # noqa: E402

from ams_msgs.msg import ModelPatch  # noqa: E402
from ams_ros.model.student import InputSpec, build_student  # noqa: E402
from ams_ros.model.template import StudentTemplate  # noqa: E402
from ams_ros.ros import conversions as conv  # noqa: E402
from ams_ros.ros.image_conversion import array_to_image  # noqa: E402
from ams_ros.world import CLASS_NAMES  # noqa: E402

ARCH, SPEC = 'deeplabv3_mbv2_small', InputSpec(height=32, width=64)
DRONES = ('calm', 'slow', 'busy')
FPS_STAMP_STEP = 0.5  # stamp seconds per frame; frames go out every 0.1 s (5x real time)
T_UPDATE = 2.0  # stamp seconds per batch: a batch per drone every 0.4 s
RELIABLE = QoSProfile(depth=100, reliability=ReliabilityPolicy.RELIABLE)
RUN_S = 40.0


class ColourTeacher(torch.nn.Module):
    """Label each pixel by its most extreme colour channel (6 classes): labels follow content."""

    def __init__(self):
        super().__init__()
        self.conv = torch.nn.Conv2d(3, len(CLASS_NAMES), 1)
        eye = torch.eye(3)
        with torch.no_grad():
            self.conv.weight.copy_(torch.cat([eye, -eye])[:, :, None, None])
            self.conv.bias.copy_(torch.tensor([0.0, 0.0, 0.0, 255.0, 255.0, 255.0]))

    def forward(self, x):
        return self.conv(x)


def write_teacher(path):
    buffer = io.BytesIO()
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter('ignore', DeprecationWarning)
        torch.onnx.export(ColourTeacher().eval(), (torch.zeros(1, 3, SPEC.height, SPEC.width),),
                          buffer, dynamo=False, opset_version=17, input_names=['x'],
                          output_names=['logits'], dynamic_axes={'x': {0: 'n'}})
    path.write_bytes(buffer.getvalue())


class Scenes:
    """Blocky pictures (8x8 blocks survive the uplink's H.264) changing at three rates."""

    def __init__(self):
        self.rng = np.random.default_rng(0)
        self.blocks = {name: self._blocks() for name in DRONES}

    def _blocks(self):
        return self.rng.integers(0, 256, (SPEC.height // 8, SPEC.width // 8, 3), np.uint8)

    def next(self, name) -> np.ndarray:
        if name == 'busy':
            self.blocks[name] = self._blocks()
        elif name == 'slow':
            rows, cols, _ = self.blocks[name].shape
            self.blocks[name][self.rng.integers(rows), self.rng.integers(cols)] = \
                self.rng.integers(0, 256, 3)
        return np.repeat(np.repeat(self.blocks[name], 8, axis=0), 8, axis=1)


def start_node(children, folder, name, module, namespace, params):
    path = folder / f'{name}.yaml'
    path.write_text(yaml.safe_dump({'/**': {'ros__parameters': params}}))
    children.start(name, ['-m', f'ams_ros.ros.{module}', '--ros-args', '-r',
                          f'__ns:={namespace}', '--params-file', str(path)])


def latest(diagnostics, name):
    for array in reversed(diagnostics):
        for status in array.status:
            if status.name == name:
                return {kv.key: kv.value for kv in status.values}
    return {}


def count(values, key):
    return int(float(values.get(key, 0)))


def test_phi_weighted_ground_sends_each_drone_its_own_patches(tmp_path):
    torch.manual_seed(0)  # the ground builds the same student: this file is its version 1
    template = StudentTemplate.from_model(build_student(ARCH, len(CLASS_NAMES)), ARCH,
                                          CLASS_NAMES, SPEC)
    model, teacher = tmp_path / 'student.onnx', tmp_path / 'teacher.onnx'
    model.write_bytes(template.onnx_bytes)
    write_teacher(teacher)
    children = Children(tmp_path)
    rclpy.init()
    node = rclpy.create_node('ams_scheduling_test')
    try:
        start_node(children, tmp_path, 'ground', 'ground_node', '/', {
            'student': ARCH, 'input_height': SPEC.height, 'input_width': SPEC.width,
            'seed': 0, 'device': 'cpu', 'torch_threads': 1, 'discover': False,
            'drone_namespaces': [f'/{name}' for name in DRONES],
            'teacher.kind': 'onnx', 'teacher.path': str(teacher),
            'teacher.normalization': 'in-graph', 'teacher.output': 'logits',
            # Slower phases than batches arrive: the scheduler chooses every time.
            'trainer.iterations': 6, 'trainer.batch_size': 4, 'trainer.channels_last': False,
            'scheduler.policy': 'phi_weighted',
            'asr.initial_rate': 2.0, 'asr.rate_min': 2.0, 'asr.rate_max': 2.0,
            'asr.interval': T_UPDATE, 'atr.period_min': T_UPDATE, 'status_period': 0.5})
        for name in DRONES:
            start_node(children, tmp_path, name, 'drone_node', f'/{name}', {
                'model_path': str(model), 'ort.threads': 1, 'uplink.preset': 'ultrafast',
                'uplink.bitrate_kbps': 400.0, 'sampling_rate': 2.0,
                'update_period': T_UPDATE, 'status_period': 0.5})

        patches = {name: [] for name in DRONES}
        patch_subs = [node.create_subscription(ModelPatch, f'/{name}/ams/patch',
                                               patches[name].append, RELIABLE)
                      for name in DRONES]
        diagnostics = []
        node.create_subscription(DiagnosticArray, '/diagnostics', diagnostics.append, RELIABLE)
        cameras = {name: node.create_publisher(Image, f'/{name}/camera/image_raw',
                                               qos_profile_sensor_data) for name in DRONES}
        # Every patch is checked: the subscriptions match the ground before any is sent.
        assert spin_until(node, lambda: all(s.get_publisher_count() > 0 for s in patch_subs)
                          and all(c.get_subscription_count() > 0 for c in cameras.values()),
                          60), children.logs()

        scenes, stamp = Scenes(), 100.0
        deadline = time.monotonic() + RUN_S
        while time.monotonic() < deadline:
            for name, camera in cameras.items():
                msg = array_to_image(scenes.next(name), 'rgb8')
                msg.header.stamp = conv.seconds_to_stamp(stamp)
                camera.publish(msg)
            stamp += FPS_STAMP_STEP
            spin_until(node, lambda: False, 0.1)

        def ground(name):
            return latest(diagnostics, f'ams_ground: {name}')

        def drone(name):
            return latest(diagnostics, f'ams_drone: {name}')

        def settled():
            return all(ground(n) and drone(n) and count(ground(n), 'pending_frames') == 0
                       and count(drone(n), 'verified_version')
                       == count(ground(n), 'mirror_version') for n in DRONES)

        # Cameras stopped: the last phases run and their patches land.
        assert spin_until(node, settled, 60), (
            {n: (ground(n), drone(n)) for n in DRONES}, children.logs())
        phases = {name: count(ground(name), 'phases') for name in DRONES}
        report = {name: {'phases': phases[name], 'phi': ground(name).get('phi'),
                         'patches_seen': len(patches[name]),
                         'patch_outcomes': {k: v for k, v in drone(name).items()
                                            if k.startswith('patch.')}}
                  for name in DRONES}
        print(report)
        for name in DRONES:
            values = drone(name)
            assert all(msg.client_id == name for msg in patches[name]), report
            assert len(patches[name]) == phases[name] >= 1, report
            assert count(values, 'patch.applied') == phases[name], report
            assert count(values, 'foreign_messages') == 0, report
            assert count(values, 'patches_rejected') == 0, report
            assert count(values, 'snapshot_requests') == 0, report
        assert phases['busy'] > phases['slow'] and phases['busy'] > phases['calm'], report
    finally:
        children.stop_all()
        node.destroy_node()
        rclpy.try_shutdown()
