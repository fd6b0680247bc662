"""A task file drives the nodes, as separate processes over real Fast DDS.

The ground runs the person task with its TFLite teacher and a user's own student: a PyTorch
factory (`support.factory_student:tiny`) distilled here, or an ONNX file exported here as a user
would. The drone starts from the drone model file `ams pretrain --task` writes, alone.
"""

import time

import numpy as np
import onnx
import pytest
import yaml

rclpy = pytest.importorskip('rclpy')
torch = pytest.importorskip('torch')
from diagnostic_msgs.msg import DiagnosticArray  # noqa: E402
from rclpy.qos import qos_profile_sensor_data  # noqa: E402
from sensor_msgs.msg import Image  # noqa: E402
from support.processes import spin_until  # noqa: E402
from test_evaluation import person_clip  # noqa: E402
from test_nodes import RELIABLE, logs, observed, params, start  # noqa: E402
from test_onnx_student import CONVENTIONS, export  # noqa: E402
from test_teachers import head_and_shoulders  # noqa: E402

import ams_msgs.msg as M  # noqa: E402
from ams_ros.cli import main as ams_main  # noqa: E402
from ams_ros.ground.teachers import make_teacher  # noqa: E402
from ams_ros.model.distill import DistillConfig, distil  # noqa: E402
from ams_ros.model.onnx_params import MODEL_ID_KEY, model_metadata  # noqa: E402
from ams_ros.ros import conversions as conv  # noqa: E402
from ams_ros.ros.image_conversion import array_to_image  # noqa: E402
from ams_ros.task import load_task  # noqa: E402

SIZE = (48, 64)  # the student's input


def factory_student(tmp_path, task) -> dict:
    """Distil the task's teacher into a factory student; return the task file's student."""
    clip = person_clip(tmp_path / 'clip.mp4', frames=20)
    distil(DistillConfig(videos=(clip,), arch='support.factory_student:tiny', height=SIZE[0],
                         width=SIZE[1], steps=10, batch_size=4, warmup_steps=2), task,
           make_teacher(task.teacher), tmp_path / 'student.pt', log=lambda _: None,
           cache=tmp_path / 'labels', progress=False)
    return {'path': 'student.pt'}  # relative to the task file


def onnx_student(convention: str):
    def make(tmp_path, task) -> dict:
        """Export a segmenter to ONNX, as a user would; return the task file's student."""
        flags, input_spec, output = CONVENTIONS[convention]
        export(tmp_path, 'net', flags)
        return {'onnx': 'net.onnx', 'input': input_spec, 'output': output}
    return make


STUDENTS = {'factory': factory_student,
            **{f'onnx-{name}': onnx_student(name) for name in CONVENTIONS}}


@pytest.fixture(scope='module', params=list(STUDENTS))
def person_system(tmp_path_factory, request):
    tmp_path = tmp_path_factory.mktemp('task')
    torch.set_num_threads(1)
    task = load_task('person')
    data = yaml.safe_load(open(task.source))
    data['student'] = STUDENTS[request.param](tmp_path, task)
    task_file = tmp_path / 'my_person.yaml'
    task_file.write_text(yaml.safe_dump(data))
    # The drone's file, as `ams pretrain --task` writes it (distilled, or the ONNX wrapped).
    drone_file = tmp_path / 'drone.onnx'
    if request.param == 'factory':
        drone_file.write_bytes((tmp_path / 'student.onnx').read_bytes())
    else:
        assert ams_main(['pretrain', '--task', str(task_file), '--out', str(drone_file)]) == 0
    model_id = drone_model_id(drone_file)
    processes = {
        'ground': start('ams_ros.ros.ground_node', tmp_path, 'ground', *params(
            task=task_file, device='cpu', torch_threads=1, client_ids='[p1]',
            drone_namespaces='[/p1]', status_period=0.5, trainer__iterations=2,
            trainer__batch_size=2, trainer__channels_last=False, atr__period_min=2.0,
            asr__interval=2.0)),
        'p1': start('ams_ros.ros.drone_node', tmp_path, 'p1', '-r', '__ns:=/p1', *params(
            model_path=drone_file, status_period=0.5)),
    }
    for node, processes_ in observed(processes, 'ams_task_test'):
        yield node, processes_, model_id


def drone_model_id(path) -> str:
    """Return the model id in a drone model file's metadata."""
    return model_metadata(onnx.load(str(path)))[MODEL_ID_KEY]


def person_frame(t: float):
    image = np.full((*SIZE, 3), (90, 140, 200), np.uint8)
    person = head_and_shoulders(SIZE[0], SIZE[1] // 2)
    x = int(t * 2) % (SIZE[1] // 2)
    image[:, x:x + SIZE[1] // 2] = person
    msg = array_to_image(image, 'rgb8')
    msg.header.stamp = conv.seconds_to_stamp(t)
    msg.header.frame_id = 'camera'
    return msg


def test_a_task_file_drives_the_ground_and_the_drone_follows(person_system):
    node, processes, model_id = person_system
    status, masks, diagnostics = [], [], []
    node.create_subscription(DiagnosticArray, '/diagnostics', diagnostics.append, 10)
    node.create_subscription(M.EdgeStatus, '/p1/ams/status', status.append, RELIABLE)
    node.create_subscription(Image, '/p1/ams_drone/mask', masks.append, RELIABLE)
    camera = node.create_publisher(Image, '/p1/camera/image_raw', qos_profile_sensor_data)
    assert spin_until(node, lambda: camera.get_subscription_count() > 0, 30), logs(processes)
    # 5x real time: stamps 0.5 s apart every 0.1 s; a batch every 2 s of stamps.
    t, deadline = 0.0, time.monotonic() + 120
    while time.monotonic() < deadline:
        if status and status[-1].active_version >= 3:
            break
        camera.publish(person_frame(t))
        t += 0.5
        spin_until(node, lambda: False, 0.1)
    assert status, logs(processes)
    last = status[-1]
    # The drone ran the student's own file (v1) and applied the ground's patches on it: the
    # ground's mirror of the task's student is the model the drone started from, so it never
    # needed a snapshot.
    assert last.active_version >= 3, (last, logs(processes))
    assert last.model_id == model_id
    assert last.patches_applied >= 2 and last.patches_rejected == 0

    def ground_entry():  # the ground's view of the drone once it has trained it twice
        return next((values for a in reversed(diagnostics) for s in a.status
                     if s.name == 'ams_ground: p1'
                     for values in [{kv.key: kv.value for kv in s.values}]
                     if int(values['phases']) >= 2), None)

    # The ground reports every 0.5 s; its /diagnostics may match later than the drone is done.
    assert spin_until(node, lambda: ground_entry() is not None, 15), logs(processes)
    ground = ground_entry()
    assert ground['snapshots'] == '0' and ground['resyncs'] == '0', ground
    assert masks and all(np.frombuffer(bytes(m.data), np.uint8).max() <= 1 for m in masks)
    for process in processes.values():
        assert process.poll() is None, logs(processes)
