"""A user's ONNX student: trained on the ground as a torch module, run on the drone as their graph.

Most users can export their segmentation model to ONNX from any framework. The ground trains an
exact torch equivalent of that graph (`OnnxGraph`, our converter for the operators segmentation
students use), whose trainable parameters are the graph's weight initializers (Conv, ConvTranspose,
Gemm weights and biases, BatchNormalization scale and bias), one manifest entry each; BatchNorm
statistics and every other initializer stay constants. The drone runs the user's graph itself,
wrapped by `edge_graph` with what the edge runtime needs: a uint8 NHWC `image` input with the
model's own pixel convention (colour order, scale, mean/std, layout), and `logits` and `labels`
outputs at the input size (argmax, or the foreground threshold). Its weight initializers are named
after their manifest entries, so patches write them directly.

Why our own converter and not onnx2torch: it imports torchvision when loaded (here only CUDA
builds exist), names parameters after nodes rather than initializers, and turns deduplicated
initializers into non-trainable buffers.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnx
import torch
import torch.nn.functional as F
from onnx import helper, numpy_helper
from torch import nn

from ams_ros.model import conventions
from ams_ros.model.conventions import InputConvention, OutputConvention
from ams_ros.model.manifest import ParameterManifest, module_to_vector
from ams_ros.model.onnx_params import (
    CLASS_COLOURS_KEY,
    CLASS_NAMES_KEY,
    MANIFEST_KEY,
    MODEL_ID_KEY,
    InitializerWriter,
)

# Inputs of these operators that are trainable when they are initializers.
TRAINABLE_INPUTS = {'Conv': (1, 2), 'ConvTranspose': (1, 2), 'Gemm': (1, 2),
                    'BatchNormalization': (1, 2)}


class OnnxStudentError(ValueError):
    """An ONNX student this converter cannot train (the message names the operator)."""


def _key(name: str, taken: set[str]) -> str:
    key = re.sub(r'\W', '_', name).strip('_') or 'p'
    while key in taken:
        key += '_'
    taken.add(key)
    return key


class OnnxGraph(nn.Module):
    """The ONNX graph as a torch module: same inputs, same outputs, trainable weights."""

    def __init__(self, model: onnx.ModelProto):
        super().__init__()
        graph = model.graph
        self.nodes = list(graph.node)
        # Attributes decoded once: the trainer runs the graph many times a phase.
        self.attrs = [{a.name: helper.get_attribute_value(a) for a in node.attribute}
                      for node in self.nodes]
        unsupported = sorted({n.op_type for n in self.nodes} - set(OPS))
        if unsupported:
            raise OnnxStudentError(f'operators this converter does not handle: {unsupported}')
        initializers = {i.name: numpy_helper.to_array(i) for i in graph.initializer}
        trainable = {node.input[i] for node in self.nodes
                     for i in TRAINABLE_INPUTS.get(node.op_type, ())
                     if i < len(node.input) and node.input[i] in initializers
                     and initializers[node.input[i]].dtype == np.float32}
        self.weights = nn.ParameterDict()
        self.keys: dict[str, str] = {}  # initializer name -> key in weights or constants
        taken: set[str] = set()
        constants = {}
        for name, value in initializers.items():
            key = self.keys[name] = _key(name, taken)
            tensor = torch.from_numpy(np.array(value))
            if name in trainable:
                self.weights[key] = nn.Parameter(tensor)
            else:
                constants[key] = tensor
        for key, tensor in constants.items():
            self.register_buffer(f'const_{key}', tensor, persistent=False)
        self.input_names = [i.name for i in graph.input if i.name not in initializers]
        self.output_names = [o.name for o in graph.output]

    def value(self, name: str) -> torch.Tensor:
        key = self.keys[name]
        return self.weights[key] if key in self.weights else getattr(self, f'const_{key}')

    def forward(self, *inputs: torch.Tensor) -> torch.Tensor | tuple[torch.Tensor, ...]:
        env = dict(zip(self.input_names, inputs, strict=True))
        for node, attrs in zip(self.nodes, self.attrs, strict=True):
            args = [None if not name else env[name] if name in env else self.value(name)
                    for name in node.input]
            outputs = OPS[node.op_type](args, attrs)
            outputs = outputs if isinstance(outputs, tuple) else (outputs,)
            env.update(zip(node.output, outputs, strict=False))
        result = tuple(env[name] for name in self.output_names)
        return result[0] if len(result) == 1 else result


# -- operators ---------------------------------------------------------------------------------

def _ints(t) -> list[int]:
    return [int(v) for v in (t.tolist() if isinstance(t, torch.Tensor) else t)]


def _same_pads(pads, dims: int):
    """ONNX pads (begin..., end...) as torch padding, or None when begin and end differ."""
    pads = list(pads or [0] * 2 * dims)
    begin, end = pads[:dims], pads[dims:]
    return begin if begin == end else None


def _conv(args, attrs):
    x, w, b = (args + [None])[:3]
    dims = w.dim() - 2
    pads = attrs.get('pads')
    padding = _same_pads(pads, dims)
    if padding is None:  # asymmetric: pad first (F.pad takes the last dimension first)
        x = F.pad(x, [p for i in reversed(range(dims)) for p in (pads[i], pads[i + dims])])
        padding = [0] * dims
    if attrs.get('auto_pad', b'NOTSET') not in (b'NOTSET', 'NOTSET'):
        raise OnnxStudentError('Conv: auto_pad is not supported; export with explicit pads')
    return F.conv2d(x, w, b, stride=attrs.get('strides', [1] * dims), padding=padding,
                    dilation=attrs.get('dilations', [1] * dims), groups=attrs.get('group', 1))


def _conv_transpose(args, attrs):
    x, w, b = (args + [None])[:3]
    dims = w.dim() - 2
    padding = _same_pads(attrs.get('pads'), dims)
    if padding is None or 'output_shape' in attrs:
        raise OnnxStudentError('ConvTranspose: asymmetric pads or output_shape are not supported')
    return F.conv_transpose2d(x, w, b, stride=attrs.get('strides', [1] * dims), padding=padding,
                              output_padding=attrs.get('output_padding', [0] * dims),
                              groups=attrs.get('group', 1),
                              dilation=attrs.get('dilations', [1] * dims))


def _batch_norm(args, attrs):
    x, scale, bias, mean, var = args[:5]
    # Running statistics stay fixed, as the on-line fine-tuning keeps them (see student.py).
    return F.batch_norm(x, mean, var, scale, bias, training=False,
                        eps=attrs.get('epsilon', 1e-5))


def _pool(kind):
    def pool(args, attrs):
        x = args[0]
        kernel = attrs['kernel_shape']
        padding = _same_pads(attrs.get('pads'), len(kernel))
        if padding is None or attrs.get('auto_pad', b'NOTSET') not in (b'NOTSET', 'NOTSET'):
            raise OnnxStudentError(f'{kind}: asymmetric or automatic pads are not supported')
        strides = attrs.get('strides', [1] * len(kernel))
        if kind == 'MaxPool':
            return F.max_pool2d(x, kernel, strides, padding, attrs.get('dilations', 1),
                                ceil_mode=bool(attrs.get('ceil_mode', 0)))
        return F.avg_pool2d(x, kernel, strides, padding, ceil_mode=bool(attrs.get('ceil_mode', 0)),
                            count_include_pad=bool(attrs.get('count_include_pad', 0)))
    return pool


def _resize(args, attrs):
    x, _roi, scales, sizes = (args + [None] * 4)[:4]
    if sizes is not None and sizes.numel():
        size = _ints(sizes)[2:]
    else:
        size = [int(math.floor(d * float(s))) for d, s in zip(x.shape[2:], scales[2:].tolist(),
                                                                 strict=True)]
    mode = attrs.get('mode', b'nearest')
    mode = mode.decode() if isinstance(mode, bytes) else mode
    transform = attrs.get('coordinate_transformation_mode', b'half_pixel')
    transform = transform.decode() if isinstance(transform, bytes) else transform
    if mode == 'nearest':
        return F.interpolate(x, size=size, mode='nearest')
    if mode != 'linear':
        raise OnnxStudentError(f'Resize: mode {mode!r} is not supported')
    return F.interpolate(x, size=size, mode='bilinear', align_corners=transform == 'align_corners')


def _clip(args, attrs):
    x = args[0]
    low = args[1] if len(args) > 1 and args[1] is not None else attrs.get('min')
    high = args[2] if len(args) > 2 and args[2] is not None else attrs.get('max')
    low = None if low is None else float(low)
    high = None if high is None else float(high)
    return torch.clamp(x, low, high)


def _axes(args, attrs, index=1):
    if len(args) > index and args[index] is not None:
        return _ints(args[index])
    return list(attrs.get('axes', []))


def _reduce_mean(args, attrs):
    axes = _axes(args, attrs) or list(range(args[0].dim()))
    return args[0].mean(dim=axes, keepdim=bool(attrs.get('keepdims', 1)))


def _slice(args, attrs):
    x, starts, ends = args[:3]
    axes = _ints(args[3]) if len(args) > 3 and args[3] is not None else list(range(len(starts)))
    steps = _ints(args[4]) if len(args) > 4 and args[4] is not None else [1] * len(axes)
    for axis, start, end, step in zip(axes, _ints(starts), _ints(ends), steps, strict=True):
        size = x.shape[axis]
        start, end = start + size if start < 0 else start, end + size if end < 0 else end
        low, high = (0, size) if step > 0 else (-1, size - 1)  # ONNX's clamping
        rows = range(min(max(start, low), high), min(max(end, low), high), step)
        x = x.index_select(axis, torch.tensor(rows, dtype=torch.long, device=x.device))
    return x


def _reshape(args, attrs):
    x, shape = args[0], _ints(args[1])
    shape = [x.shape[i] if d == 0 and not attrs.get('allowzero', 0) else d
             for i, d in enumerate(shape)]
    return x.reshape(shape)


def _gemm(args, attrs):
    a, b, c = (args + [None])[:3]
    a = a.t() if attrs.get('transA', 0) else a
    b = b.t() if attrs.get('transB', 0) else b
    y = attrs.get('alpha', 1.0) * (a @ b)
    return y if c is None else y + attrs.get('beta', 1.0) * c


_CAST = {onnx.TensorProto.FLOAT: torch.float32, onnx.TensorProto.INT64: torch.int64,
         onnx.TensorProto.INT32: torch.int32, onnx.TensorProto.UINT8: torch.uint8,
         onnx.TensorProto.BOOL: torch.bool, onnx.TensorProto.DOUBLE: torch.float64}

OPS: dict[str, Callable] = {
    'Conv': _conv, 'ConvTranspose': _conv_transpose, 'BatchNormalization': _batch_norm,
    'Relu': lambda a, _: F.relu(a[0]), 'Sigmoid': lambda a, _: torch.sigmoid(a[0]),
    'Tanh': lambda a, _: torch.tanh(a[0]), 'Clip': _clip,
    'HardSigmoid': lambda a, t: torch.clamp(t.get('alpha', 0.2) * a[0] + t.get('beta', 0.5),
                                            0.0, 1.0),
    'HardSwish': lambda a, _: F.hardswish(a[0]),
    'LeakyRelu': lambda a, t: F.leaky_relu(a[0], t.get('alpha', 0.01)),
    'Softmax': lambda a, t: torch.softmax(a[0], dim=t.get('axis', -1)),
    'Add': lambda a, _: a[0] + a[1], 'Sub': lambda a, _: a[0] - a[1],
    'Mul': lambda a, _: a[0] * a[1], 'Div': lambda a, _: a[0] / a[1],
    'MatMul': lambda a, _: a[0] @ a[1], 'Gemm': _gemm,
    'Concat': lambda a, t: torch.cat(a, dim=t['axis']),
    'Transpose': lambda a, t: a[0].permute(*t.get('perm', reversed(range(a[0].dim())))),
    'Reshape': _reshape, 'Flatten': lambda a, t: _flatten(a[0], t.get('axis', 1)),
    'Squeeze': lambda a, t: a[0].squeeze(tuple(_axes(a, t))) if _axes(a, t) else a[0].squeeze(),
    'Unsqueeze': lambda a, t: _unsqueeze(a[0], _axes(a, t)),
    'Identity': lambda a, _: a[0], 'Dropout': lambda a, _: a[0],
    'Constant': lambda a, t: torch.from_numpy(np.array(numpy_helper.to_array(t['value']))),
    'Shape': lambda a, _: torch.tensor(a[0].shape, dtype=torch.int64),
    'Gather': lambda a, t: _gather(a[0], a[1], t.get('axis', 0)),
    'Slice': _slice, 'Cast': lambda a, t: a[0].to(_CAST[t['to']]),
    'GlobalAveragePool': lambda a, _: a[0].mean(dim=(2, 3), keepdim=True),
    'AveragePool': _pool('AveragePool'), 'MaxPool': _pool('MaxPool'),
    'ReduceMean': _reduce_mean, 'Resize': _resize,
}


def _flatten(x: torch.Tensor, axis: int) -> torch.Tensor:
    """ONNX Flatten: a 2-D tensor, the dimensions before `axis` in the first."""
    return x.reshape(math.prod(x.shape[:axis]), -1)


def _gather(x: torch.Tensor, indices: torch.Tensor, axis: int) -> torch.Tensor:
    """ONNX Gather: `indices` (any shape, negatives count from the end) along `axis`."""
    axis = axis % x.dim()
    flat = indices.reshape(-1).long() % x.shape[axis]
    picked = torch.index_select(x, axis, flat)
    return picked.reshape(x.shape[:axis] + indices.shape + x.shape[axis + 1:])


def _unsqueeze(x: torch.Tensor, axes: list[int]) -> torch.Tensor:
    for axis in sorted(a % (x.dim() + len(axes)) for a in axes):
        x = x.unsqueeze(axis)
    return x


# -- the trainer's view and the drone's graph ----------------------------------------------------

class OnnxStudent(nn.Module):
    """The user's graph as the trainer sees a student: [0, 1] RGB NCHW in, class scores out.

    Scores are at the input's size; probabilities become log-probabilities and a foreground
    channel p becomes (log(1 - p), log p), so cross-entropy on them is the right loss (binary
    cross-entropy for a foreground).
    """

    def __init__(self, graph: OnnxGraph, input: InputConvention, output: OutputConvention):
        super().__init__()
        self.graph = graph
        self.input = input
        self.output = output

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pixels = x * 255.0
        if self.input.colour == 'BGR':
            pixels = pixels.flip(1)
        if self.input.scale == 'unit':
            pixels = pixels / 255.0
        mean = torch.tensor(self.input.mean, device=x.device).view(1, 3, 1, 1)
        std = torch.tensor(self.input.std, device=x.device).view(1, 3, 1, 1)
        if self.input.scale != 'uint8':
            pixels = (pixels - mean) / std
        if self.input.layout == 'NHWC':
            pixels = pixels.permute(0, 2, 3, 1)
        out = self.graph(pixels)
        out = out[0] if isinstance(out, tuple) else out
        if self.output.layout == 'NHWC' or (self.output.layout is None and out.shape[-1] == 1
                                             and out.shape[1] != 1):
            out = out.permute(0, 3, 1, 2)
        if out.shape[2:] != x.shape[2:]:
            out = F.interpolate(out, size=x.shape[2:], mode='bilinear', align_corners=False)
        if self.output.kind == 'probabilities':
            return torch.log(out.clamp_min(1e-6))
        if self.output.kind == 'foreground':
            p = out.clamp(1e-6, 1 - 1e-6)
            return torch.cat([torch.log1p(-p), torch.log(p)], dim=1)
        if self.output.kind != 'logits':
            raise OnnxStudentError(f"an ONNX student's output must be logits, probabilities "
                                   f"or a foreground, not {self.output.kind!r}")
        return out


def edge_graph(model: onnx.ModelProto, names: dict[str, str], input: InputConvention,
               output: OutputConvention, size: tuple[int, int]) -> onnx.ModelProto:
    """Wrap the user's graph for the edge runtime; rename its weights to `names`.

    In: `image`, uint8 1 x H x W x 3 RGB. Out: `logits` (N, C, H, W) and `labels` (uint8 ids).
    """
    model = onnx.ModelProto.FromString(model.SerializeToString())
    graph = model.graph
    rename = dict(names)
    for init in graph.initializer:
        init.name = rename.get(init.name, init.name)
    (user_input,) = [i.name for i in graph.input if i.name not in
                     {init.name for init in graph.initializer} | set(names)]
    for node in graph.node:
        node.input[:] = [rename.get(n, n) for n in node.input]
    user_output = graph.output[0].name
    height, width = size
    const = {}

    def constant(name: str, value: np.ndarray) -> str:
        const[name] = numpy_helper.from_array(np.asarray(value), f'ams_const_{name}')
        return f'ams_const_{name}'

    pre, x = [], 'image'
    pre.append(helper.make_node('Cast', [x], ['ams_float'], to=onnx.TensorProto.FLOAT))
    x = 'ams_float'
    if input.colour == 'BGR':
        pre.append(helper.make_node('Gather', [x, constant('bgr', np.array([2, 1, 0]))],
                                    ['ams_bgr'], axis=3))
        x = 'ams_bgr'
    if input.scale != 'uint8':
        unit = 255.0 if input.scale == 'unit' else 1.0
        scale = (1.0 / (unit * np.asarray(input.std))).astype(np.float32)
        shift = (-np.asarray(input.mean) / np.asarray(input.std)).astype(np.float32)
        pre.append(helper.make_node('Mul', [x, constant('scale', scale)], ['ams_scaled']))
        pre.append(helper.make_node('Add', ['ams_scaled', constant('shift', shift)],
                                    ['ams_normalised']))
        x = 'ams_normalised'
    if input.layout == 'NCHW':
        pre.append(helper.make_node('Transpose', [x], ['ams_nchw'], perm=[0, 3, 1, 2]))
        x = 'ams_nchw'
    if input.scale == 'uint8':
        pre.append(helper.make_node('Cast', [x], ['ams_bytes'], to=onnx.TensorProto.UINT8))
        x = 'ams_bytes'
    for node in graph.node:
        node.input[:] = [x if n == user_input else n for n in node.input]

    post, y = [], user_output
    channels = _channels(model, user_output, output)
    if output.layout == 'NHWC' or _single_channel_last(model, user_output, output):
        post.append(helper.make_node('Transpose', [y], ['ams_out_nchw'], perm=[0, 3, 1, 2]))
        y = 'ams_out_nchw'
    post.append(helper.make_node('Resize', [y, '', '', constant('size', np.array(
        [1, channels, height, width], np.int64))], ['ams_scores'], mode='linear',
        coordinate_transformation_mode='half_pixel'))
    if output.kind == 'foreground':
        post.append(helper.make_node('Greater', ['ams_scores', constant(
            'threshold', np.array(output.threshold, np.float32))], ['ams_fg']))
        post.append(helper.make_node('Squeeze', ['ams_fg', constant('axis', np.array([1]))],
                                     ['ams_fg_ids']))
        post.append(helper.make_node('Cast', ['ams_fg_ids'], ['labels'],
                                     to=onnx.TensorProto.UINT8))
    else:
        post.append(helper.make_node('ArgMax', ['ams_scores'], ['ams_ids'], axis=1,
                                     keepdims=0))
        post.append(helper.make_node('Cast', ['ams_ids'], ['labels'],
                                     to=onnx.TensorProto.UINT8))
    post.append(helper.make_node('Identity', ['ams_scores'], ['logits']))
    nodes = pre + list(graph.node) + post
    del graph.node[:]
    graph.node.extend(nodes)
    graph.initializer.extend(const.values())
    del graph.input[:]
    graph.input.append(helper.make_tensor_value_info('image', onnx.TensorProto.UINT8,
                                                     [1, height, width, 3]))
    del graph.output[:]
    graph.output.append(helper.make_tensor_value_info('labels', onnx.TensorProto.UINT8,
                                                      [1, height, width]))
    graph.output.append(helper.make_tensor_value_info('logits', onnx.TensorProto.FLOAT,
                                                      [1, channels, height, width]))
    del graph.value_info[:]
    onnx.checker.check_model(model)
    return model


def _output_dims(model: onnx.ModelProto, output: str) -> list[int]:
    (info,) = [o for o in model.graph.output if o.name == output]
    dims = [d.dim_value for d in info.type.tensor_type.shape.dim]
    if len(dims) != 4 or not all(dims[1:]):
        raise OnnxStudentError(f'the student output {output!r} must be 4-D with fixed sizes, '
                               f'got {dims}')
    return dims


def _single_channel_last(model, output: str, convention: OutputConvention) -> bool:
    dims = _output_dims(model, output)
    return convention.layout is None and dims[3] == 1 and dims[1] != 1


def _channels(model: onnx.ModelProto, output: str, convention: OutputConvention) -> int:
    dims = _output_dims(model, output)
    last = convention.layout == 'NHWC' or _single_channel_last(model, output, convention)
    return dims[3] if last else dims[1]


def task_student_template(student: dict, class_names, class_colours=()):
    """Return the StudentTemplate of a task's own-file student ({'onnx'} or {'torchscript'}).

    A TorchScript student is exported to ONNX at its declared input size first (the legacy
    exporter takes scripted and traced modules), then handled as an ONNX one.
    """
    source = student.get('onnx')
    if source is None:
        source = torchscript_to_onnx(student['torchscript'],
                                     conventions.input_convention(student['input']))
    return onnx_template(source, student['input'], student['output'], class_names,
                         class_colours, name=Path(student.get('onnx') or
                                                  student['torchscript']).name)


def torchscript_to_onnx(path, input: InputConvention) -> onnx.ModelProto:
    """Export a TorchScript student to ONNX at the input convention's size and layout."""
    import io
    import warnings

    if input.size is None:
        raise OnnxStudentError('a TorchScript student needs its input_size')
    shape = (1, 3, *input.size) if (input.layout or 'NCHW') == 'NCHW' else (1, *input.size, 3)
    dtype = torch.uint8 if input.scale == 'uint8' else torch.float32
    buffer = io.BytesIO()
    with torch.no_grad(), warnings.catch_warnings():
        # TorchScript and its exporter are deprecated, but still what many models ship as.
        warnings.simplefilter('ignore', DeprecationWarning)
        warnings.filterwarnings('ignore', 'no signature found', UserWarning)  # scripted: fine
        module = torch.jit.load(str(path), map_location='cpu').eval()
        torch.onnx.export(module, (torch.zeros(shape, dtype=dtype),), buffer, dynamo=False,
                          opset_version=17, input_names=['x'], output_names=['y'])
    return onnx.load_from_string(buffer.getvalue())


def onnx_template(source, input, output, class_names, class_colours=(), name: str = ''):
    """Return the StudentTemplate of a user's ONNX student (input/output: convention configs).

    source: the file, or a loaded model. The trainer feeds it [0, 1] RGB (its InputSpec: mean
    0, std 1); the drone runs `edge_graph`, whose weights a vector writes directly.
    """
    from ams_ros.model.student import InputSpec
    from ams_ros.model.template import StudentTemplate

    output = conventions.output_convention(output)
    model, student, fitted, size = load_onnx_student(source,
                                                     conventions.input_convention(input), output)
    if model.opset_import and max(o.version for o in model.opset_import
                                  if o.domain in ('', 'ai.onnx')) < 13:
        raise OnnxStudentError('export the student at ONNX opset 13 or later')
    student.eval()
    manifest = ParameterManifest.from_module(student)
    graph = student.graph
    names = {name: f'graph.weights.{key}' for name, key in graph.keys.items()
             if key in graph.weights}
    edge = edge_graph(model, names, fitted, output, size)
    model_id = manifest.model_id(f'onnx:{name or Path(str(source)).name}')
    metadata = {MANIFEST_KEY: manifest.to_json(), MODEL_ID_KEY: model_id,
                CLASS_NAMES_KEY: json.dumps(list(class_names))}
    if class_colours:
        metadata[CLASS_COLOURS_KEY] = json.dumps([list(c) for c in class_colours])
    for key, value in metadata.items():
        edge.metadata_props.add(key=key, value=value)
    onnx_bytes = InitializerWriter(edge, manifest).write(module_to_vector(student, manifest))
    return StudentTemplate(model=student, manifest=manifest, model_id=model_id,
                           onnx_bytes=onnx_bytes, class_names=tuple(class_names),
                           input_spec=InputSpec(*size, mean=(0.0, 0.0, 0.0),
                                                std=(1.0, 1.0, 1.0)))


def load_onnx_student(source, input: InputConvention, output: OutputConvention
                      ) -> tuple[onnx.ModelProto, OnnxStudent, InputConvention, tuple[int, int]]:
    """Read the user's model; return (model, its torch student, the fitted input, (H, W))."""
    model = source if isinstance(source, onnx.ModelProto) else onnx.load(str(source))
    inits = {i.name for i in model.graph.initializer}
    inputs = [i for i in model.graph.input if i.name not in inits]
    if len(inputs) != 1:
        raise OnnxStudentError(f'an ONNX student takes one image input, this one takes '
                               f'{[i.name for i in inputs]}')
    dims = [d.dim_value or d.dim_param for d in inputs[0].type.tensor_type.shape.dim]
    elem = inputs[0].type.tensor_type.elem_type
    dtype = np.uint8 if elem == onnx.TensorProto.UINT8 else np.float32
    fitted = input.fit(dims, dtype)
    if fitted.size is None:
        raise OnnxStudentError('give the student an input size: its model has none fixed')
    student = OnnxStudent(OnnxGraph(model), fitted, output)
    return model, student, fitted, fitted.size

