import copy
import io
from dataclasses import replace

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from onnx import helper

from ams_ros.model.manifest import (
    ParameterEntry,
    ParameterManifest,
    module_to_vector,
    vector_to_module,
)
from ams_ros.model.onnx_export import export_student_onnx
from ams_ros.model.onnx_params import InitializerWriter, check_initializers, read_vector
from ams_ros.model.student import InputSpec, build_student

SPEC = InputSpec(height=64, width=128)
NUM_CLASSES = 5


@pytest.fixture(scope='module')
def fresh():
    """Export a fresh student: BN weights all equal, running statistics set from data."""
    torch.manual_seed(0)
    model = build_student('deeplabv3_mbv2_small', NUM_CLASSES)
    _set_batchnorm_statistics(model)
    return model, export_student_onnx(model, SPEC)


def _set_batchnorm_statistics(model):
    """Estimate running statistics from one batch, as pretraining would, so signals propagate."""
    batchnorms = [m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    for bn in batchnorms:
        bn.momentum = None  # cumulative average: one batch sets the statistics exactly
    with torch.no_grad():
        model.train()(torch.randn(4, 3, SPEC.height, SPEC.width))
    for bn in batchnorms:
        bn.momentum = 0.1


def _torch_logits(model, image):
    x = torch.from_numpy(image).permute(0, 3, 1, 2).float() / 255
    x = (x - torch.tensor(SPEC.mean).view(1, 3, 1, 1)) / torch.tensor(SPEC.std).view(1, 3, 1, 1)
    with torch.no_grad():
        return model.eval()(x).numpy()


def _ort_run(model_bytes, image):
    session = ort.InferenceSession(model_bytes, providers=['CPUExecutionProvider'])
    return session.run(['labels', 'logits'], {'image': image})


def _image(seed=1):
    return np.random.default_rng(seed).integers(0, 256, (1, SPEC.height, SPEC.width, 3), np.uint8)


def test_fresh_export_names_one_initializer_per_parameter(fresh):
    model, export = fresh
    assert export.manifest == ParameterManifest.from_module(model)
    onnx_model = onnx.load_from_string(export.model_bytes)
    check_initializers(onnx_model, export.manifest)
    # The true (mostly identical) values were written back after the name mapping.
    np.testing.assert_array_equal(read_vector(onnx_model, export.manifest),
                                  module_to_vector(model, export.manifest))


@pytest.mark.filterwarnings('ignore::DeprecationWarning')
def test_plain_legacy_export_of_a_fresh_model_is_rejected():
    model = build_student('deeplabv3_mbv2_small', NUM_CLASSES).eval()
    buffer = io.BytesIO()
    torch.onnx.export(model, (torch.zeros(1, 3, 32, 64),), buffer, dynamo=False,
                      opset_version=17, do_constant_folding=False)
    with pytest.raises(ValueError, match='one-to-one'):
        check_initializers(onnx.load_from_string(buffer.getvalue()),
                           ParameterManifest.from_module(model))


def test_graph_takes_uint8_frames_and_returns_uint8_labels(fresh):
    _, export = fresh
    session = ort.InferenceSession(export.model_bytes, providers=['CPUExecutionProvider'])
    (image,) = session.get_inputs()
    assert (image.name, image.type, image.shape) == ('image', 'tensor(uint8)', [1, 64, 128, 3])
    labels, logits = session.run(None, {'image': _image()})
    assert labels.dtype == np.uint8 and labels.shape == (1, 64, 128)
    assert logits.shape == (1, NUM_CLASSES, 64, 128)


def test_sparse_patch_gives_same_outputs_in_torch_and_onnx_runtime(fresh):
    model, export = fresh
    manifest = export.manifest
    rng = np.random.default_rng(2)
    flat = module_to_vector(model, manifest)
    chosen = rng.choice(flat.size, flat.size // 20, replace=False)
    flat[chosen] = rng.normal(0, 0.1, chosen.size).astype(np.float32)

    patched = copy.deepcopy(model)
    vector_to_module(flat, patched, manifest)
    model_bytes = InitializerWriter(export.model_bytes, manifest).write(flat)
    np.testing.assert_array_equal(read_vector(onnx.load_from_string(model_bytes), manifest), flat)

    image = _image()
    expected = _torch_logits(patched, image)
    assert np.abs(expected - _torch_logits(model, image)).max() > 1e-2  # the patch matters
    labels, logits = _ort_run(model_bytes, image)
    assert np.abs(logits - expected).max() < 1e-4
    np.testing.assert_array_equal(labels, logits.argmax(axis=1))
    top2 = np.sort(expected, axis=1)[:, -2:]
    clear = top2[:, 1] - top2[:, 0] > 1e-3
    np.testing.assert_array_equal(labels[clear], expected.argmax(axis=1)[clear])


def test_export_leaves_the_callers_model_alone(fresh):
    model, _ = fresh
    model.train()
    before = module_to_vector(model, ParameterManifest.from_module(model))
    export = export_student_onnx(model, replace(SPEC, height=32, width=64))
    assert model.training
    np.testing.assert_array_equal(module_to_vector(model, export.manifest), before)


def test_too_many_classes_for_uint8_labels_is_rejected():
    model = build_student('deeplabv3_mbv2_small', 256)
    with pytest.raises(ValueError, match='uint8'):
        export_student_onnx(model, InputSpec(height=16, width=16))


def _with_entry(manifest, index, **changes):
    entries = list(manifest.entries)
    entries[index] = replace(entries[index], **changes)
    return ParameterManifest.from_shapes((e.name, e.shape) for e in entries)


@pytest.mark.parametrize('changes, message', [
    ({'name': 'no.such.weight'}, 'no initializer'),
    ({'shape': (3, 3)}, 'shape'),
])
def test_mismatched_manifest_is_rejected(fresh, changes, message):
    _, export = fresh
    bad = _with_entry(export.manifest, 1, **changes)
    with pytest.raises(ValueError, match=message):
        InitializerWriter(export.model_bytes, bad)
    with pytest.raises(ValueError, match=message):
        read_vector(onnx.load_from_string(export.model_bytes), bad)


def test_writer_rejects_a_vector_of_the_wrong_length(fresh):
    _, export = fresh
    writer = InitializerWriter(export.model_bytes, export.manifest)
    with pytest.raises(ValueError, match='flat vector'):
        writer.write(np.zeros(export.manifest.total_size - 1, np.float32))


def _tiny_graph(weight, unused=False):
    node = helper.make_node('Mul', ['x', 'w'], ['y'])
    graph = helper.make_graph(
        [] if unused else [node], 'tiny',
        [helper.make_tensor_value_info('x', onnx.TensorProto.FLOAT, [2])],
        [helper.make_tensor_value_info('y', onnx.TensorProto.FLOAT, [2])],
        [weight])
    return helper.make_model(graph)


def test_writer_handles_initializers_stored_as_float_data():
    weight = helper.make_tensor('w', onnx.TensorProto.FLOAT, [2], [1.0, 2.0])  # float_data
    manifest = ParameterManifest((ParameterEntry('w', (2,), 0),))
    model_bytes = InitializerWriter(_tiny_graph(weight), manifest).write(
        np.array([3.0, -4.0], np.float32))
    session = ort.InferenceSession(model_bytes, providers=['CPUExecutionProvider'])
    (y,) = session.run(None, {'x': np.ones(2, np.float32)})
    np.testing.assert_array_equal(y, [3.0, -4.0])


def test_initializers_of_the_wrong_kind_are_rejected():
    manifest = ParameterManifest((ParameterEntry('w', (2,), 0),))
    as_int = helper.make_tensor('w', onnx.TensorProto.INT32, [2], [1, 2])
    with pytest.raises(ValueError, match='not float32'):
        check_initializers(_tiny_graph(as_int), manifest)
    unread = helper.make_tensor('w', onnx.TensorProto.FLOAT, [2], [1.0, 2.0])
    with pytest.raises(ValueError, match='not read by any node'):
        check_initializers(_tiny_graph(unread, unused=True), manifest)
