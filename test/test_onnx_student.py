"""A user's ONNX student, in several conventions: trained as torch, run as their graph."""

import warnings

import numpy as np
import onnxruntime as ort
import pytest
import torch
from test_teachers import head_and_shoulders
from torch import nn

from ams_ros.drone.agent import DroneAgent, DroneConfig
from ams_ros.ground.drone_session import DroneSession, GroundConfig
from ams_ros.ground.teachers import make_teacher
from ams_ros.ground.trainer import TrainerConfig
from ams_ros.model.manifest import module_to_vector, vector_to_module
from ams_ros.model.onnx_params import InitializerWriter
from ams_ros.model.onnx_student import OnnxStudentError, onnx_template
from ams_ros.task import load_task
from ams_ros.wire.model_version import APPLIED

HEIGHT, WIDTH = 48, 64
MEAN = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
STD = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)


class Net(nn.Module):
    """A small segmenter in one of the conventions users export in."""

    def __init__(self, nhwc_in=False, bgr=False, byte=False, out='logits', nhwc_out=False,
                 uint8=False):
        super().__init__()
        self.flags = (nhwc_in, bgr, byte, out, nhwc_out)
        self.body = nn.Sequential(
            nn.Conv2d(3, 8, 3, 2, 1), nn.BatchNorm2d(8), nn.ReLU6(),
            nn.Conv2d(8, 8, 3, 1, 1, groups=8), nn.BatchNorm2d(8), nn.Hardswish())
        self.head = nn.Conv2d(8, 1 if out == 'foreground' else 2, 1)

    def forward(self, x):
        nhwc_in, bgr, byte, out, nhwc_out = self.flags
        x = x.float().permute(0, 3, 1, 2) if nhwc_in else x
        x = x.flip(1) if bgr else x
        x = x / 255.0 if byte else (x - MEAN) / STD  # its own normalisation is part of it
        y = self.body(x)
        y = y * torch.sigmoid(y.mean((2, 3), keepdim=True))  # squeeze-and-excite style
        y = self.head(y)
        y = nn.functional.interpolate(y, scale_factor=2.0, mode='bilinear')  # back to full
        if out == 'probabilities':
            y = y.softmax(1)
        elif out == 'foreground':
            y = torch.sigmoid(y)
        return y.permute(0, 2, 3, 1) if nhwc_out else y


CONVENTIONS = {
    'nchw-rgb-unit-logits': (dict(), {'scale': 'unit'}, 'logits'),
    'nhwc-bgr-byte-probabilities': (
        dict(nhwc_in=True, bgr=True, byte=True, out='probabilities', nhwc_out=True),
        {'layout': 'NHWC', 'colour': 'BGR', 'scale': 'byte'},
        {'kind': 'probabilities', 'layout': 'NHWC'}),
    'nchw-foreground': (dict(out='foreground'), {'scale': 'unit'},
                        {'kind': 'foreground', 'threshold': 0.5}),
    'nhwc-uint8-logits': (dict(nhwc_in=True, byte=True, uint8=True), {'scale': 'uint8'},
                          'logits'),
}


def export(tmp_path, name, flags) -> str:
    torch.manual_seed(0)
    net = Net(**flags)
    with torch.no_grad():
        net.train()(torch.rand(4, HEIGHT, WIDTH, 3) if flags.get('nhwc_in')
                    else torch.rand(4, 3, HEIGHT, WIDTH))
    shape = (1, HEIGHT, WIDTH, 3) if flags.get('nhwc_in') else (1, 3, HEIGHT, WIDTH)
    dtype = torch.uint8 if flags.get('uint8') else torch.float32  # the model takes bytes
    path = tmp_path / f'{name}.onnx'
    with warnings.catch_warnings():
        warnings.simplefilter('ignore')
        torch.onnx.export(net.eval(), (torch.zeros(shape, dtype=dtype),), str(path), dynamo=False,
                          opset_version=17, input_names=['x'], output_names=['y'])
    return str(path)


def edge_and_torch(template, model_bytes, frame):
    session = ort.InferenceSession(model_bytes, providers=['CPUExecutionProvider'])
    logits, labels = session.run(['logits', 'labels'], {'image': frame[None]})
    x = torch.from_numpy(frame).permute(2, 0, 1)[None].float() / 255.0
    with torch.no_grad():
        scores = template.model.eval()(x).numpy()
    return logits, labels, scores


@pytest.mark.parametrize('name', list(CONVENTIONS))
def test_torch_and_the_edge_graph_agree_before_and_after_sparse_patches(tmp_path, name):
    flags, input_spec, output = CONVENTIONS[name]
    template = onnx_template(export(tmp_path, name, flags), input_spec, output,
                             ('background', 'person'))
    frame = head_and_shoulders(HEIGHT, WIDTH)
    manifest, model = template.manifest, template.model
    writer = InitializerWriter(template.onnx_bytes, manifest)
    vector = module_to_vector(model, manifest)
    rng = np.random.default_rng(1)
    for step in range(3):
        logits, labels, scores = edge_and_torch(template, writer.write(vector), frame)
        if output == 'logits':
            np.testing.assert_allclose(logits, scores, atol=1e-4)
        elif name.endswith('probabilities'):
            np.testing.assert_allclose(np.log(np.maximum(logits, 1e-6)), scores, atol=1e-4)
        else:  # foreground: the edge gives p; torch gives (log(1 - p), log p)
            np.testing.assert_allclose(np.log(np.maximum(logits, 1e-6)), scores[:, 1:],
                                       atol=1e-3)
        assert (labels == scores.argmax(1)).mean() > 0.999, step
        chosen = rng.choice(vector.size, max(1, vector.size // 20), replace=False)
        vector[chosen] += rng.normal(0.0, 0.05, chosen.size).astype(np.float32)
        vector_to_module(vector, model, manifest)


@pytest.mark.parametrize('name', list(CONVENTIONS))
def test_the_drone_runs_it_and_the_ground_trains_it(tmp_path, name):
    torch.set_num_threads(1)
    flags, input_spec, output = CONVENTIONS[name]
    template = onnx_template(export(tmp_path, name, flags), input_spec, output,
                             ('background', 'person'), ((0, 0, 0), (230, 60, 60)))
    drone = DroneAgent(DroneConfig(client_id='d'))
    assert drone.load_model_file(template.onnx_bytes, 1).kind == APPLIED
    assert drone.runtime.wait_for_version(1, 30.0)
    assert drone.class_colours == ((0, 0, 0), (230, 60, 60))
    task = load_task('person')
    session = DroneSession('d', template, make_teacher(task.teacher), GroundConfig(
        trainer=TrainerConfig(iterations=15, batch_size=4, learning_rate=1e-2, fraction=0.5,
                              channels_last=False)), seed=0)
    frames = np.stack([np.roll(head_and_shoulders(HEIGHT, WIDTH), 3 * i, axis=1)
                       for i in range(8)])
    session.add_frames(frames, [float(i) for i in range(8)])
    phases = [session.train_phase(8.0) for _ in range(3)]
    assert phases[2].result.mean_loss < phases[0].result.mean_loss
    for version, phase in enumerate(phases, start=2):  # the drone takes every patch
        assert drone.offer_patch(phase.patch).kind == APPLIED
        assert drone.runtime.wait_for_version(version, 30.0)
    mask = drone.infer(frames[0])
    assert mask.shape == (HEIGHT, WIDTH) and set(np.unique(mask)) <= {0, 1}
    drone.close()


def test_what_the_converter_cannot_train_is_named(tmp_path):
    class Odd(nn.Module):
        def forward(self, x):
            return torch.erf(x)

    path = tmp_path / 'odd.onnx'
    with warnings.catch_warnings():
        warnings.simplefilter('ignore')
        torch.onnx.export(Odd(), (torch.zeros(1, 3, 8, 8),), str(path), dynamo=False,
                          opset_version=17)
    with pytest.raises(OnnxStudentError, match=r"does not handle: \['Erf'\]"):
        onnx_template(str(path), {'scale': 'unit'}, 'logits', ('a', 'b'))


def test_ams_eval_runs_a_task_whose_student_is_an_onnx_file(tmp_path):
    import json

    import yaml
    from test_evaluation import person_clip

    from ams_ros.cli import main as ams_main

    export(tmp_path, 'net', CONVENTIONS['nchw-foreground'][0])
    data = yaml.safe_load(open(load_task('person').source))
    data['student'] = {'onnx': 'net.onnx', 'input': {'scale': 'unit'},
                       'output': {'kind': 'foreground'}}
    task_file = tmp_path / 'task.yaml'
    task_file.write_text(yaml.safe_dump(data))
    out = tmp_path / 'out'
    assert ams_main(['eval', '--task', str(task_file), '--video',
                     person_clip(tmp_path / 'clip.mp4', frames=30), '--schemes', 'ams',
                     '--iterations', '2', '--batch-size', '2', '--t-update', '2',
                     '--phase-time', '0.5', '--fps', '5', '--eval-fps', '5', '--out', str(out),
                     '--no-progress']) == 0
    results = json.loads((out / 'results.json').read_text())
    assert results['meta']['student'] == {'kind': 'onnx', 'path': str(tmp_path / 'net.onnx')}
    assert results['meta']['input_size'] == [HEIGHT, WIDTH]
    assert results['results'][0]['updates']  # patches were written into the user's graph


def test_a_torchscript_student_is_exported_and_trained_as_its_graph(tmp_path):
    from ams_ros.model.onnx_student import task_student_template

    torch.manual_seed(0)
    net = Net(out='foreground').eval()
    path = tmp_path / 'student.pt'
    with warnings.catch_warnings():
        warnings.simplefilter('ignore')
        torch.jit.trace(net, torch.zeros(1, 3, HEIGHT, WIDTH)).save(str(path))
    template = task_student_template(
        {'torchscript': str(path), 'input': {'scale': 'unit', 'size': (HEIGHT, WIDTH)},
         'output': {'kind': 'foreground'}}, ('background', 'person'))
    frame = head_and_shoulders(HEIGHT, WIDTH)
    logits, labels, scores = edge_and_torch(template, template.onnx_bytes, frame)
    np.testing.assert_allclose(np.log(np.maximum(logits, 1e-6)), scores[:, 1:], atol=1e-3)
    x = torch.from_numpy(frame).permute(2, 0, 1)[None].float() / 255.0
    with torch.no_grad():  # the scripted module itself, as the user wrote it
        np.testing.assert_allclose(logits, net(x).numpy(), atol=1e-4)
    assert (labels == scores.argmax(1)).all()


def _i64(name, values):
    from onnx import numpy_helper

    return numpy_helper.from_array(np.asarray(values, np.int64), name)


def _f32(name, values):
    from onnx import numpy_helper

    return numpy_helper.from_array(np.asarray(values, np.float32), name)


# One node each, beside what the students above use: attribute and input forms users' exports have.
OPERATOR_CASES = {
    'gather-negative-2d': ('Gather', ['x', 'i'], {'axis': 1}, [_i64('i', [[-1, 0], [1, 2]])]),
    'flatten-axis-2': ('Flatten', ['x'], {'axis': 2}, []),
    'reduce-mean': ('ReduceMean', ['x'], {'axes': [2, 3], 'keepdims': 1}, []),
    'slice-reversed': ('Slice', ['x', 's', 'e', 'a', 't'], {},
                       [_i64('s', [-1, 0]), _i64('e', [-10**18, 6]), _i64('a', [3, 2]),
                        _i64('t', [-2, 2])]),
    'resize-linear': ('Resize', ['x', '', 'sc'], {'mode': 'linear'},
                      [_f32('sc', [1, 1, 2, 2])]),
    'resize-nearest-sizes': ('Resize', ['x', '', '', 'sz'], {'mode': 'nearest'},
                             [_i64('sz', [2, 3, 16, 12])]),
    'max-pool': ('MaxPool', ['x'], {'kernel_shape': [3, 3], 'strides': [2, 2],
                                    'pads': [1, 1, 1, 1]}, []),
    'average-pool': ('AveragePool', ['x'], {'kernel_shape': [2, 2], 'strides': [2, 2]}, []),
    'hard-sigmoid': ('HardSigmoid', ['x'], {'alpha': 0.3, 'beta': 0.4}, []),
    'clip-inputs': ('Clip', ['x', 'lo', 'hi'], {}, [_f32('lo', -0.5), _f32('hi', 0.5)]),
    'softmax': ('Softmax', ['x'], {'axis': 1}, []),
    'transpose': ('Transpose', ['x'], {'perm': [0, 2, 3, 1]}, []),
    'reshape-zero': ('Reshape', ['x', 'sh'], {}, [_i64('sh', [0, 3, -1])]),
    'unsqueeze': ('Unsqueeze', ['x', 'ax'], {}, [_i64('ax', [0, -1])]),
    'conv-asymmetric-pads': ('Conv', ['x', 'w'], {'pads': [0, 1, 1, 0], 'strides': [2, 1]},
                             [_f32('w', np.random.default_rng(2).standard_normal((4, 3, 3, 3)))]),
}


@pytest.mark.parametrize('case', list(OPERATOR_CASES))
def test_operators_match_onnx_runtime(case):
    from onnx import TensorProto, helper

    from ams_ros.model.onnx_student import OnnxGraph

    op, inputs, attrs, initializers = OPERATOR_CASES[case]
    x = np.random.default_rng(0).standard_normal((2, 3, 8, 6)).astype(np.float32)
    graph = helper.make_graph(
        [helper.make_node(op, inputs, ['y'], **attrs)], case,
        [helper.make_tensor_value_info('x', TensorProto.FLOAT, list(x.shape))],
        [helper.make_tensor_value_info('y', TensorProto.FLOAT, None)], initializers)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid('', 17)])
    expected = ort.InferenceSession(model.SerializeToString(),
                                    providers=['CPUExecutionProvider']).run(['y'], {'x': x})[0]
    with torch.no_grad():
        ours = OnnxGraph(model)(torch.from_numpy(x)).numpy()
    assert ours.shape == expected.shape
    np.testing.assert_allclose(ours, expected, atol=1e-5)
