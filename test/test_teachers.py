import importlib.util
import io
import warnings
from pathlib import Path

import cv2
import numpy as np
import onnxruntime as ort
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import ams_ros
from ams_ros import IGNORE_LABEL
from ams_ros.ground.teachers import (
    Teacher,
    TorchTeacher,
    class_lookup,
    make_teacher,
    onnx_teacher,
    select_torch_device,
    to_student_ids,
)
from ams_ros.model.onnx_export import export_student_onnx
from ams_ros.model.student import IMAGENET_MEAN, IMAGENET_STD, InputSpec, build_student
from ams_ros.pixels import resize_frame

SPEC = InputSpec(height=32, width=64)
NUM_CLASSES = 4
HAS_TORCHVISION = importlib.util.find_spec('torchvision') is not None


@pytest.fixture(scope='module')
def student():
    """Return a student with data-set BatchNorm statistics, so its labels vary over a frame."""
    torch.manual_seed(0)
    model = build_student('deeplabv3_mbv2_small', NUM_CLASSES)
    for bn in (m for m in model.modules() if isinstance(m, nn.BatchNorm2d)):
        bn.momentum = None
    with torch.no_grad():
        model.train()(torch.randn(4, 3, SPEC.height, SPEC.width))
    return model.eval()


@pytest.fixture(scope='module')
def uint8_onnx(student, tmp_path_factory):
    """Write the student as the edge gets it: uint8 NHWC in, 'labels' and 'logits' out."""
    path = tmp_path_factory.mktemp('onnx') / 'student_uint8.onnx'
    path.write_bytes(export_student_onnx(student, SPEC).model_bytes)
    return path


@pytest.fixture(scope='module')
def float_onnx(student, tmp_path_factory):
    """Write the bare student: normalised float NCHW in, logits out, any batch and size."""
    path = tmp_path_factory.mktemp('onnx') / 'student_float.onnx'
    buffer = io.BytesIO()
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter('ignore', DeprecationWarning)
        torch.onnx.export(student, (torch.zeros(1, 3, SPEC.height, SPEC.width),), buffer,
                          dynamo=False, opset_version=17, input_names=['x'],
                          output_names=['scores'],
                          dynamic_axes={'x': {0: 'n', 2: 'h', 3: 'w'}})
    path.write_bytes(buffer.getvalue())
    return path


@pytest.fixture(scope='module')
def frames():
    """Return smooth random frames (noise upsampled), so labels form regions, not speckle."""
    rng = np.random.default_rng(0)
    small = rng.integers(0, 256, (3, 8, 16, 3), np.uint8)
    return np.stack([cv2.resize(f, (SPEC.width, SPEC.height), interpolation=cv2.INTER_CUBIC)
                     for f in small])


def _student_labels(uint8_onnx, frames):
    session = ort.InferenceSession(str(uint8_onnx), providers=['CPUExecutionProvider'])
    return np.concatenate([session.run(['labels'], {'image': f[None]})[0] for f in frames])


STAMPS = [0.0, 1.0, 2.0]


def test_onnx_teacher_on_the_exported_student_gives_its_labels(uint8_onnx, frames):
    expected = _student_labels(uint8_onnx, frames)
    assert len(np.unique(expected)) > 1
    for output in ('logits', 'labels'):
        teacher = onnx_teacher(uint8_onnx, output=output)
        assert isinstance(teacher, Teacher)
        labels = teacher.label(frames, STAMPS)
        assert labels.dtype == np.uint8 and labels.shape == frames.shape[:3]
        np.testing.assert_array_equal(labels, expected)


def test_onnx_teacher_labels_frames_at_their_own_size(uint8_onnx, frames):
    big = np.stack([cv2.resize(f, (2 * SPEC.width, 2 * SPEC.height)) for f in frames])
    at_model_size = _student_labels(
        uint8_onnx, np.stack([cv2.resize(f, (SPEC.width, SPEC.height),
                                         interpolation=cv2.INTER_AREA) for f in big]))

    labels = onnx_teacher(uint8_onnx, output='labels').label(big, STAMPS)
    assert labels.shape == big.shape[:3]
    np.testing.assert_array_equal(labels[:, ::2, ::2], at_model_size)

    # Logits are upsampled before the argmax: the same labels but for a few boundary pixels.
    from_logits = onnx_teacher(uint8_onnx, output='logits').label(big, STAMPS)
    assert from_logits.shape == big.shape[:3]
    assert (from_logits == labels).mean() > 0.9


def test_float_nchw_onnx_teacher_normalises_like_the_student(float_onnx, uint8_onnx, frames):
    teacher = onnx_teacher(float_onnx, normalization='imagenet', batch_size=2)
    assert teacher.batch_size == 2
    assert (teacher.input.scale, teacher.input.layout) == ('unit', 'NCHW')
    np.testing.assert_array_equal(teacher.label(frames, STAMPS),
                                  _student_labels(uint8_onnx, frames))

    # The same normalisation spelled out, and the wrong one, which changes the labels.
    explicit = onnx_teacher(float_onnx, normalization=(IMAGENET_MEAN, IMAGENET_STD))
    np.testing.assert_array_equal(explicit.label(frames, STAMPS), teacher.label(frames, STAMPS))
    raw = onnx_teacher(float_onnx, normalization='in-graph')
    assert not np.array_equal(raw.label(frames, STAMPS), teacher.label(frames, STAMPS))


def test_onnx_teacher_runs_a_dynamic_model_at_the_given_input_size(float_onnx, frames):
    big = np.stack([cv2.resize(f, (2 * SPEC.width, 2 * SPEC.height)) for f in frames])
    at_size = onnx_teacher(float_onnx, input_size=(SPEC.height, SPEC.width)).label(big, STAMPS)
    native = onnx_teacher(float_onnx).label(big, STAMPS)
    assert at_size.shape == native.shape == big.shape[:3]
    assert not np.array_equal(at_size, native)  # the input size did reach the model


def test_fixed_size_model_rejects_another_input_size(uint8_onnx):
    with pytest.raises(ValueError, match='the model takes'):
        onnx_teacher(uint8_onnx, input_size=(SPEC.height * 2, SPEC.width))


def test_class_map_translates_teacher_classes_and_ignores_the_rest(uint8_onnx, frames):
    expected = _student_labels(uint8_onnx, frames)
    remap = {0: 2, 1: 0}  # classes 2 and 3 have no student class
    labels = onnx_teacher(uint8_onnx, output='labels', class_map=remap).label(frames, STAMPS)
    want = np.full_like(expected, IGNORE_LABEL)
    want[expected == 0] = 2
    want[expected == 1] = 0
    np.testing.assert_array_equal(labels, want)


def test_class_lookup_accepts_config_forms():
    np.testing.assert_array_equal(class_lookup({'2': 0, '0': 1}), [1, IGNORE_LABEL, 0])
    np.testing.assert_array_equal(class_lookup([3, -1, 0]), [3, IGNORE_LABEL, 0])
    ids = np.array([[0, 1, 2, 7]])
    np.testing.assert_array_equal(to_student_ids(ids, class_lookup([3, -1, 0])),
                                  [[3, IGNORE_LABEL, 0, IGNORE_LABEL]])
    with pytest.raises(ValueError, match='class_map'):
        to_student_ids(np.array([[300]]), None)
    with pytest.raises(ValueError, match='student ids'):
        class_lookup({0: 256})


class _HalfResolution(nn.Module):
    """A tiny segmentation net with torchvision's output convention: {'out': logits}."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, NUM_CLASSES, 3, stride=2, padding=1)

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        return {'out': self.conv(x)}


@pytest.mark.filterwarnings('ignore:`torch.jit.script` is deprecated:DeprecationWarning')
def test_torchscript_teacher_loads_a_scripted_model(tmp_path, frames):
    torch.manual_seed(1)
    module = _HalfResolution().eval()
    path = tmp_path / 'teacher.pt'
    torch.jit.script(module).save(str(path))

    teacher = make_teacher({'kind': 'torchscript', 'path': str(path), 'device': 'cpu',
                            'batch_size': 2})
    assert isinstance(teacher, Teacher)
    labels = teacher.label(frames, STAMPS)

    x = torch.from_numpy(frames).permute(0, 3, 1, 2).float() / 255
    x = (x - torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)) / torch.tensor(IMAGENET_STD).view(
        1, 3, 1, 1)
    with torch.no_grad():
        logits = F.interpolate(module(x)['out'], size=frames.shape[1:3], mode='bilinear')
    np.testing.assert_array_equal(labels, logits.argmax(1).numpy())
    assert labels.dtype == np.uint8 and len(np.unique(labels)) > 1


@pytest.mark.filterwarnings('ignore:`torch.jit.trace.* is deprecated:DeprecationWarning')
def test_torchscript_student_teaches_what_its_onnx_export_does(student, uint8_onnx, frames,
                                                                 tmp_path):
    path = tmp_path / 'student.pt'
    torch.jit.trace(student, torch.zeros(1, 3, SPEC.height, SPEC.width),
                    check_trace=False).save(str(path))
    labels = TorchTeacher.from_torchscript(path, device='cpu').label(frames, STAMPS)
    assert (labels == _student_labels(uint8_onnx, frames)).mean() > 0.99


def test_torch_device_auto_picks_cuda_only_when_available():
    assert select_torch_device('auto') == ('cuda' if torch.cuda.is_available() else 'cpu')
    assert select_torch_device('cpu') == 'cpu'


@pytest.mark.skipif(HAS_TORCHVISION, reason='torchvision imports here')
def test_torchvision_teacher_without_torchvision_says_so(tmp_path):
    weights = tmp_path / 'w.pt'
    weights.write_bytes(b'')
    with pytest.raises(RuntimeError, match='needs torchvision'):
        make_teacher({'kind': 'torchvision', 'name': 'lraspp_mobilenet_v3_large',
                      'weights': str(weights)})


@pytest.mark.skipif(not HAS_TORCHVISION, reason='torchvision does not import here')
def test_torchvision_teacher_loads_local_weights(tmp_path, frames):
    from torchvision.models import segmentation

    torch.manual_seed(2)
    module = segmentation.lraspp_mobilenet_v3_large(weights=None, weights_backbone=None,
                                                    num_classes=NUM_CLASSES).eval()
    weights = tmp_path / 'lraspp.pt'
    torch.save(module.state_dict(), weights)
    teacher = make_teacher({'kind': 'torchvision', 'name': 'lraspp_mobilenet_v3_large',
                            'weights': str(weights), 'num_classes': NUM_CLASSES})
    assert teacher.device == select_torch_device('auto')
    expected = TorchTeacher(module, device='cpu').label(frames, STAMPS)
    assert (teacher.label(frames, STAMPS) == expected).mean() > 0.99


def test_synthetic_teacher_labels_the_known_flight():
    from ams_ros.world import AerialVideo

    teacher = make_teacher({'kind': 'synthetic', 'seed': 1003, 'duration_s': 20})
    frames = np.zeros((2, 24, 48, 3), np.uint8)  # only their size matters to this teacher
    labels = teacher.label(frames, [3.0, 7.0])
    video = AerialVideo(1003, duration_s=20)
    for label, stamp in zip(labels, [3.0, 7.0], strict=True):
        np.testing.assert_array_equal(label, video.render_at_stamp(stamp, 24, 48)[1])


@pytest.mark.parametrize('spec, error, match', [
    ({'kind': 'onnx', 'path': '/nonexistent/teacher.onnx'}, FileNotFoundError, 'not found'),
    ({'kind': 'torchscript', 'path': '/nonexistent/t.pt'}, FileNotFoundError, 'not found'),
    ({'kind': 'caffe', 'path': 'x'}, ValueError, 'kind must be one of'),
    ({'path': 'x'}, ValueError, 'kind must be one of'),
    ({'kind': 'onnx'}, ValueError, "missing a required argument: 'path'"),
    ({'kind': 'onnx', 'path': 'x', 'colour': 1}, ValueError, r"unknown options \['colour'\]"),
    ({'kind': 'synthetic'}, ValueError, "'seed'"),
])
def test_bad_specs_fail_clearly(spec, error, match):
    with pytest.raises(error, match=match):
        make_teacher(spec)


def test_bad_inputs_fail_clearly(uint8_onnx, frames):
    with pytest.raises(ValueError, match=r"output.kind: expected one of \['logits'"):
        onnx_teacher(uint8_onnx, output='scores')
    with pytest.raises(ValueError, match='no output'):
        onnx_teacher(uint8_onnx, output_name='scores')
    teacher = onnx_teacher(uint8_onnx)
    with pytest.raises(ValueError, match='3 frames but 2 stamps'):
        teacher.label(frames, STAMPS[:2])
    with pytest.raises(ValueError, match='uint8 N x H x W x 3'):
        teacher.label(frames.astype(np.float32), STAMPS)


# -- TFLite (LiteRT) and I/O conventions ------------------------------------------------------

SELFIE = Path(ams_ros.__file__).parent / 'data' / 'teachers' / 'selfie_segmentation.tflite'


def head_and_shoulders(height: int, width: int) -> np.ndarray:
    """Draw a cartoon person on a plain wall (RGB): enough for a real person segmenter."""
    img = np.full((256, 256, 3), (90, 140, 200), np.uint8)
    cv2.ellipse(img, (128, 100), (42, 55), 0, 0, 360, (205, 160, 130), -1)  # face
    cv2.ellipse(img, (128, 60), (46, 30), 0, 180, 360, (40, 30, 25), -1)  # hair
    cv2.ellipse(img, (128, 256), (110, 80), 0, 180, 360, (60, 60, 140), -1)  # shoulders
    for x in (110, 146):
        cv2.circle(img, (x, 95), 5, (30, 30, 30), -1)  # eyes
    cv2.ellipse(img, (128, 130), (14, 6), 0, 0, 180, (120, 50, 50), -1)  # mouth
    return cv2.resize(img, (width, height), interpolation=cv2.INTER_AREA)


def test_a_tflite_teacher_reads_a_foreground_channel_by_its_conventions():
    from ai_edge_litert.interpreter import Interpreter

    teacher = make_teacher({'kind': 'tflite', 'path': str(SELFIE), 'input': {'scale': 'unit'},
                            'output': {'kind': 'foreground', 'threshold': 0.5}, 'threads': 1})
    assert (teacher.input.layout, teacher.input.size) == ('NHWC', (256, 256))
    person = head_and_shoulders(120, 160)
    frames = np.stack([person, np.full_like(person, 128)])
    labels = teacher.label(frames, [0.0, 1.0])
    assert labels.shape == (2, 120, 160) and labels.dtype == np.uint8
    assert labels[0, 50, 80] == 1 and labels[0, 2, 2] == 0  # the face, a corner of the wall
    assert 0.15 < labels[0].mean() < 0.6 and labels[1].max() == 0  # a blank wall has no one

    # The same by hand: resize (the one convention, ams_ros.pixels), scale to [0, 1], LiteRT,
    # the probability resized back bilinearly, cut at 0.5.
    interpreter = Interpreter(model_path=str(SELFIE), num_threads=1)
    interpreter.allocate_tensors()
    (image,), (out,) = interpreter.get_input_details(), interpreter.get_output_details()
    x = resize_frame(person, 256, 256).astype(np.float32) / 255
    interpreter.set_tensor(image['index'], x[None])
    interpreter.invoke()
    probability = cv2.resize(interpreter.get_tensor(out['index'])[0, :, :, 0], (160, 120),
                             interpolation=cv2.INTER_LINEAR)
    np.testing.assert_array_equal(labels[0], probability >= 0.5)


def test_conventions_turn_bgr_nhwc_byte_models_into_the_same_labels(student, uint8_onnx, frames,
                                                                    tmp_path):
    """One student exported three ways: each convention, declared, gives the same labels."""

    class Wrapped(nn.Module):
        def __init__(self, bgr: bool, nhwc_in: bool, nhwc_out: bool, byte: bool):
            super().__init__()
            self.flags = (bgr, nhwc_in, nhwc_out, byte)
            self.student = student
            self.register_buffer('mean', torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1))
            self.register_buffer('std', torch.tensor(IMAGENET_STD).view(1, 3, 1, 1))

        def forward(self, x):
            bgr, nhwc_in, nhwc_out, byte = self.flags
            x = x.permute(0, 3, 1, 2) if nhwc_in else x
            x = x.flip(1) if bgr else x
            x = x / 255 if byte else x
            logits = self.student((x - self.mean) / self.std)
            probabilities = logits.softmax(1)
            return probabilities.permute(0, 2, 3, 1) if nhwc_out else probabilities

    expected = onnx_teacher(_export(Wrapped(False, False, False, False), tmp_path / 'a.onnx',
                                    (1, 3, SPEC.height, SPEC.width)),
                            input={'scale': 'unit'}, output='probabilities').label(frames, STAMPS)
    np.testing.assert_array_equal(expected, _student_labels(uint8_onnx, frames))
    model = _export(Wrapped(True, True, True, True), tmp_path / 'b.onnx',
                    (1, SPEC.height, SPEC.width, 3))
    declared = onnx_teacher(model, input={'colour': 'BGR', 'scale': 'byte', 'layout': 'NHWC'},
                            output={'kind': 'probabilities', 'layout': 'NHWC'})
    np.testing.assert_array_equal(declared.label(frames, STAMPS), expected)
    wrong = onnx_teacher(model, input={'colour': 'RGB', 'scale': 'byte', 'layout': 'NHWC'},
                         output={'kind': 'probabilities', 'layout': 'NHWC'})
    assert not np.array_equal(wrong.label(frames, STAMPS), expected)


def _export(module: nn.Module, path, shape) -> str:
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter('ignore', DeprecationWarning)
        torch.onnx.export(module.eval(), (torch.zeros(shape),), str(path), dynamo=False,
                          opset_version=17, input_names=['image'], output_names=['scores'])
    return str(path)


@pytest.mark.parametrize('spec, match', [
    ({'input': {'layout': 'NCWH'}}, r"input.layout: expected one of \['NCHW', 'NHWC'\]"),
    ({'input': {'scale': 'uint8'}}, "input.scale: 'uint8' feeds uint8, but the model takes "
                                    'float32'),
    ({'input': {'mean': [0.5, 0.5]}}, 'input.mean: expected three finite numbers'),
    ({'input': {'std': [1, 0, 1]}}, 'input.std: must be positive'),
    ({'input': {'gamma': 2}}, r"input: unknown keys \['gamma'\]"),
    ({'output': {'kind': 'foreground'}}, "'foreground' wants one channel, the model gives 4"),
    ({'input': {'scale': 'byte'}, 'normalization': 'imagenet'}, 'not both'),
])
def test_bad_conventions_name_the_field(float_onnx, frames, spec, match):
    with pytest.raises(ValueError, match=match):
        make_teacher({'kind': 'onnx', 'path': str(float_onnx), **spec}).label(frames, STAMPS)


class _RedIsForeground(nn.Module):
    """NHWC [0, 1] frames in; NHWC foreground probability out (red above one half)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(20.0 * (x[..., :1] - 0.5))


@pytest.mark.filterwarnings('ignore:`torch.jit.script` is deprecated:DeprecationWarning')
def test_a_torchscript_teacher_reads_nhwc_and_a_foreground_channel(tmp_path):
    path = tmp_path / 'red.pt'
    torch.jit.script(_RedIsForeground()).save(str(path))
    teacher = make_teacher({'kind': 'torchscript', 'path': str(path), 'device': 'cpu',
                            'input': {'layout': 'NHWC', 'scale': 'unit'},
                            'output': {'kind': 'foreground', 'layout': 'NHWC'},
                            'class_map': [0, 3]})
    frames = np.zeros((2, 16, 32, 3), np.uint8)
    frames[0, :, :12, 0] = 255  # red on the left of the first frame only
    labels = teacher.label(frames, [0.0, 1.0])
    want = np.zeros((2, 16, 32), np.uint8)
    want[0, :, :12] = 3  # teacher class 1 is task class 3
    np.testing.assert_array_equal(labels, want)
