"""Ground side: teachers, the expensive models whose labels the student is trained on.

Every teacher has one method, ``label(frames, stamps)``: N RGB uint8 frames (N x H x W x 3) in,
N class-id maps (N x H x W uint8, IGNORE_LABEL where the teacher abstains) out, at the frames'
own resolution. Stamps are for teachers that know the scene (the synthetic world's perfect
teacher); model teachers ignore them.

Model teachers come from local files only (nothing is downloaded):

- ``onnx_teacher`` (ONNX Runtime) and ``tflite_teacher`` (LiteRT): a ``ModelTeacher`` that feeds
  the model and reads its answer by the I/O conventions of ``ams_ros.model.conventions`` (layout,
  colour order, pixel scale, mean/std, size; logits, probabilities, class ids or one foreground
  channel). A uint8 input is fed the pixels as they are; a float one defaults to ImageNet's
  normalisation.
- ``TorchTeacher``: a TorchScript file, or a torchvision segmentation model built without weights
  and loaded from a state-dict file (only where torchvision imports), read by the same
  conventions (float input).

A class map translates the teacher's classes into the student's; unmapped classes become
IGNORE_LABEL. ``make_teacher`` builds any of them, and the synthetic world's perfect teacher,
from a config dict.
"""

from __future__ import annotations

import inspect
import warnings
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Protocol, runtime_checkable

import numpy as np

from ams_ros import IGNORE_LABEL
from ams_ros.model import conventions

IN_GRAPH = 'in-graph'   # normalisation: feed float 0..255 pixels, the model normalises them


@runtime_checkable
class Teacher(Protocol):
    def label(self, frames: np.ndarray, stamps: Sequence[float]) -> np.ndarray:
        """Return class ids (N x H x W uint8, IGNORE_LABEL = abstain) for N RGB uint8 frames."""
        ...


# -- pieces shared by the model teachers ------------------------------------------------------

def check_frames(frames: np.ndarray, stamps: Sequence[float]) -> np.ndarray:
    frames = np.asarray(frames)
    if frames.dtype != np.uint8 or frames.ndim != 4 or frames.shape[3] != 3:
        raise ValueError(f'expected uint8 N x H x W x 3 frames, got {frames.dtype} '
                         f'{frames.shape}')
    if len(frames) != len(stamps):
        raise ValueError(f'{len(frames)} frames but {len(stamps)} stamps')
    return frames


def class_lookup(class_map: Mapping[int, int] | Sequence[int] | np.ndarray) -> np.ndarray:
    """Return a table: teacher class id -> student class id, IGNORE_LABEL where unmapped.

    A mapping may come from a JSON/YAML config, whose keys are strings: they are parsed as ints.
    A sequence maps index i to entry i; negative entries mean unmapped.
    """
    if isinstance(class_map, Mapping):
        pairs = {int(k): int(v) for k, v in class_map.items()}
    else:
        pairs = {i: int(v) for i, v in enumerate(np.asarray(class_map).ravel())}
        pairs = {k: v for k, v in pairs.items() if v >= 0}
    if any(k < 0 for k in pairs) or any(not 0 <= v <= IGNORE_LABEL for v in pairs.values()):
        raise ValueError('class map: teacher ids must be >= 0 and student ids in '
                         f'0..{IGNORE_LABEL}')
    table = np.full(max(pairs, default=-1) + 1, IGNORE_LABEL, np.uint8)
    for teacher_id, student_id in pairs.items():
        table[teacher_id] = student_id
    return table


def to_student_ids(ids: np.ndarray, table: np.ndarray | None) -> np.ndarray:
    """Map teacher class ids through the table (ids past its end: IGNORE_LABEL), as uint8."""
    ids = np.asarray(ids)
    if table is None:
        if ids.size and (ids.min() < 0 or ids.max() > IGNORE_LABEL):
            raise ValueError(f'teacher class ids {ids.min()}..{ids.max()} do not fit uint8 '
                             'labels: give a class_map')
        return ids.astype(np.uint8)
    inside = (ids >= 0) & (ids < len(table))
    return np.where(inside, table[np.clip(ids, 0, len(table) - 1)], IGNORE_LABEL).astype(np.uint8)


def label_in_batches(label_batch, frames: np.ndarray, batch_size: int) -> np.ndarray:
    """Run label_batch(frames, height, width) on batches of at most batch_size frames."""
    height, width = frames.shape[1:3]
    labels = [label_batch(frames[i:i + batch_size], height, width)
              for i in range(0, len(frames), batch_size)]
    return np.concatenate(labels) if labels else np.empty((0, height, width), np.uint8)


def _existing_file(path: str | Path, what: str) -> Path:
    path = Path(path).expanduser()
    if not path.is_file():
        raise FileNotFoundError(f'{what} not found: {path}')
    return path


# -- model files: ONNX and TFLite ------------------------------------------------------------

def input_spec(input=None, normalization=None, input_size=None) -> dict:
    """Merge a teacher's input convention (conventions.InputConvention keys) with shorthands.

    normalization: 'imagenet' (scale 'unit' with ImageNet's mean and std), IN_GRAPH (scale
    'byte': the model normalises), or (mean, std) in [0, 1] units; input_size: its size.
    """
    spec = dict(input or {})
    if normalization is not None:
        if {'scale', 'mean', 'std'} & set(spec):
            raise ValueError('give normalization or input scale/mean/std, not both')
        if normalization == IN_GRAPH:
            spec['scale'] = 'byte'
        elif normalization == 'imagenet':
            spec.update(scale='unit', mean='imagenet', std='imagenet')
        else:
            spec['mean'], spec['std'] = normalization
    if input_size is not None:
        spec['size'] = tuple(input_size)
    return spec


def fitted_input(spec: Mapping | None, shape: Sequence, dtype) -> conventions.InputConvention:
    """Return the input convention for a model input.

    The scale defaults to 'uint8' for a uint8 model, else to 'unit' with ImageNet's mean and std.
    """
    spec = dict(spec or {})
    if np.dtype(dtype) == np.uint8:
        spec.setdefault('scale', 'uint8')
    elif not {'scale', 'mean', 'std'} & set(spec):
        spec.update(scale='unit', mean='imagenet', std='imagenet')
    return conventions.input_convention(spec).fit(shape, dtype)


class ModelTeacher:
    """A segmentation model behind a runner, fed and read by its I/O conventions.

    runner: has input_shape, input_dtype and is called with a prepared batch, returning the
    output tensor. input: InputConvention keys (scale defaults to 'uint8' for a uint8 model,
    else 'unit' with ImageNet's mean and std); output: an OutputConvention kind or keys.
    class_map: teacher class -> task class (see class_lookup).
    """

    def __init__(self, runner, input: Mapping | None = None, output='logits',
                 class_map=None, batch_size: int = 4):
        self.runner = runner
        self.input = fitted_input(input, runner.input_shape, runner.input_dtype)
        self.output = conventions.output_convention(output)
        self.table = None if class_map is None else class_lookup(class_map)
        self.batch_size = 1 if runner.input_shape[0] == 1 else batch_size

    def label(self, frames: np.ndarray, stamps: Sequence[float]) -> np.ndarray:
        return label_in_batches(self._label_batch, check_frames(frames, stamps), self.batch_size)

    def _label_batch(self, frames: np.ndarray, height: int, width: int) -> np.ndarray:
        out = self.runner(self.input.prepare(frames))
        return to_student_ids(self.output.to_ids(out, height, width), self.table)


class OnnxRunner:
    """An ONNX model in ONNX Runtime: one image input, the chosen output.

    output_name: which graph output; default: one named like the output kind, else the first.
    providers: ONNX Runtime providers; default: CUDA where available, then CPU.
    """

    def __init__(self, path: str | Path, output_name: str | None = None,
                 providers: Sequence[str] | None = None, prefer: str = ''):
        import onnxruntime as ort

        path = _existing_file(path, 'ONNX teacher model')
        if providers is None:
            available = ort.get_available_providers()
            providers = [p for p in ('CUDAExecutionProvider', 'CPUExecutionProvider')
                         if p in available]
        self.session = ort.InferenceSession(str(path), providers=list(providers))
        inputs = self.session.get_inputs()
        if len(inputs) != 1:
            raise ValueError(f'the teacher must take one input, this one takes '
                             f'{[i.name for i in inputs]}')
        (image,) = inputs
        types = {'tensor(uint8)': np.uint8, 'tensor(float)': np.float32}
        if image.type not in types:
            raise ValueError(f'teacher input must be uint8 or float32, got {image.type}')
        self.input_name, self.input_shape = image.name, list(image.shape)
        self.input_dtype = np.dtype(types[image.type])
        names = [o.name for o in self.session.get_outputs()]
        if output_name is not None and output_name not in names:
            raise ValueError(f'no output {output_name!r}; the model has {names}')
        self.output_name = output_name or (prefer if prefer in names else names[0])

    def __call__(self, x: np.ndarray) -> np.ndarray:
        return self.session.run([self.output_name], {self.input_name: x})[0]


class TfliteRunner:
    """A TFLite model in LiteRT (ai-edge-litert), one frame per invoke.

    Quantised outputs are dequantised. LiteRT's default XNNPACK delegate stays on: common
    segmentation models (MediaPipe's) need it for their custom transposed convolution.
    """

    def __init__(self, path: str | Path, threads: int | None = None):
        try:
            from ai_edge_litert.interpreter import Interpreter
        except ImportError as exc:
            raise RuntimeError('a TFLite teacher needs LiteRT: pip install ai-edge-litert '
                               '(part of the ground extra)') from exc
        path = _existing_file(path, 'TFLite teacher model')
        self.interpreter = Interpreter(model_path=str(path), num_threads=threads)
        self.interpreter.allocate_tensors()
        inputs = self.interpreter.get_input_details()
        if len(inputs) != 1:
            raise ValueError(f'the teacher must take one input, this one takes {len(inputs)}')
        self._input = inputs[0]
        self._output = self.interpreter.get_output_details()[0]
        self.input_shape = [int(d) for d in self._input['shape']]
        self.input_dtype = np.dtype(self._input['dtype'])
        if self.input_dtype not in (np.uint8, np.float32):
            raise ValueError(f'teacher input must be uint8 or float32, got {self.input_dtype}')

    def __call__(self, x: np.ndarray) -> np.ndarray:
        outputs = []
        for frame in x:
            self.interpreter.set_tensor(self._input['index'], frame[None])
            self.interpreter.invoke()
            outputs.append(self.interpreter.get_tensor(self._output['index'])[0].copy())
        out = np.stack(outputs)
        scale, zero_point = self._output.get('quantization', (0.0, 0))
        if scale:
            out = (out.astype(np.float32) - zero_point) * scale
        return out


def onnx_teacher(path: str, input: Mapping | None = None, output='logits',
                 output_name: str | None = None, providers: Sequence[str] | None = None,
                 class_map=None, batch_size: int = 4, normalization=None,
                 input_size=None) -> ModelTeacher:
    kind = output if isinstance(output, str) else dict(output).get('kind', 'logits')
    runner = OnnxRunner(path, output_name, providers, prefer=kind)
    return ModelTeacher(runner, input_spec(input, normalization, input_size), output,
                        class_map, batch_size)


def tflite_teacher(path: str, input: Mapping | None = None, output='logits', class_map=None,
                   threads: int | None = None, normalization=None,
                   input_size=None) -> ModelTeacher:
    return ModelTeacher(TfliteRunner(path, threads), input_spec(input, normalization,
                                                                input_size), output, class_map)


# -- torch ------------------------------------------------------------------------------------

def select_torch_device(device: str = 'auto') -> str:
    """Return 'cuda' for 'auto' where CUDA is available, else 'cpu'; other names unchanged.

    ValueError for 'cuda' where torch sees no CUDA device.
    """
    import torch

    if device == 'auto':
        return 'cuda' if torch.cuda.is_available() else 'cpu'
    if device == 'cuda' and not torch.cuda.is_available():
        raise ValueError("device 'cuda': torch sees no CUDA device")
    return device


class TorchTeacher:
    """A torch segmentation module: float frames in (NCHW unless `input` says otherwise).

    The output may be a tensor, a dict with 'out' (torchvision's models) or a tuple whose first
    element is the answer; `output` says what it holds (conventions.OutputConvention). Logits
    are upsampled and argmaxed on the device; other kinds are read on the CPU.
    """

    def __init__(self, module, device: str = 'auto', input: Mapping | None = None,
                 output='logits', class_map=None, batch_size: int = 4, normalization=None,
                 input_size=None):
        self.device = select_torch_device(device)
        self.module = module.to(self.device).eval()
        spec = input_spec(input, normalization, input_size)
        layout = spec.get('layout') or 'NCHW'
        shape = ['N', 3, 'H', 'W'] if layout == 'NCHW' else ['N', 'H', 'W', 3]
        self.input = fitted_input(dict(spec, layout=layout), shape, np.float32)
        self.output = conventions.output_convention(output)
        self.table = None if class_map is None else class_lookup(class_map)
        self.batch_size = batch_size

    @classmethod
    def from_torchscript(cls, path: str | Path, **kwargs) -> TorchTeacher:
        import torch

        path = _existing_file(path, 'TorchScript teacher')
        with warnings.catch_warnings():
            # Deprecated in favour of torch.export, but still what most teachers ship as.
            warnings.simplefilter('ignore', DeprecationWarning)
            module = torch.jit.load(str(path), map_location='cpu')
        return cls(module, **kwargs)

    @classmethod
    def from_torchvision(cls, name: str, weights: str | Path, num_classes: int = 21,
                         **kwargs) -> TorchTeacher:
        """Build torchvision.models.segmentation.<name> without weights, then load the file's.

        The file is a state dict (torch.save(model.state_dict(), path)); nothing is downloaded.
        """
        import torch

        segmentation = _import_torchvision_segmentation()
        builder = getattr(segmentation, name, None)
        if not callable(builder):
            raise ValueError(f'torchvision.models.segmentation has no model {name!r}')
        weights = _existing_file(weights, 'torchvision teacher weights')
        state = torch.load(str(weights), map_location='cpu', weights_only=True)
        aux = any(key.startswith('aux_classifier.') for key in state)
        module = builder(weights=None, weights_backbone=None, num_classes=num_classes,
                         aux_loss=aux)
        module.load_state_dict(state)
        return cls(module, **kwargs)

    def label(self, frames: np.ndarray, stamps: Sequence[float]) -> np.ndarray:
        return label_in_batches(self._label_batch, check_frames(frames, stamps), self.batch_size)

    def _label_batch(self, frames: np.ndarray, height: int, width: int) -> np.ndarray:
        import torch
        import torch.nn.functional as F

        x = torch.from_numpy(self.input.prepare(frames)).to(self.device)
        with torch.inference_mode():
            out = self.module(x)
            out = out['out'] if isinstance(out, Mapping) else out
            out = out[0] if isinstance(out, (tuple, list)) else out
            if self.output.kind != 'logits' or self.output.layout == 'NHWC':
                return to_student_ids(self.output.to_ids(out.float().cpu().numpy(), height,
                                                         width), self.table)
            if out.shape[2:] != (height, width):
                out = F.interpolate(out, size=(height, width), mode='bilinear',
                                    align_corners=False)
            ids = out.argmax(dim=1).cpu().numpy()
        return to_student_ids(ids, self.table)


def _import_torchvision_segmentation():
    try:
        from torchvision.models import segmentation
    except Exception as exc:  # a torchvision built for another torch fails in many ways
        raise RuntimeError(
            'a torchvision teacher needs torchvision, which does not import here '
            f'({type(exc).__name__}: {exc}); install the torchvision that matches this torch, '
            'or export the teacher to TorchScript or ONNX') from exc
    return segmentation


# -- from a config ----------------------------------------------------------------------------

def _synthetic(seed: int, duration_s: float = 600.0, start_s: float = 0.0):
    """Return the synthetic world's perfect teacher for flight `seed`."""
    from ams_ros.world import AerialVideo, PerfectTeacher

    return PerfectTeacher(AerialVideo(seed, duration_s, start_s))


def _torchvision(name: str, weights: str, **kwargs) -> TorchTeacher:
    return TorchTeacher.from_torchvision(name, weights, **kwargs)


def _torchscript(path: str, **kwargs) -> TorchTeacher:
    return TorchTeacher.from_torchscript(path, **kwargs)


_TORCH_OPTIONS = ('device', 'input', 'output', 'class_map', 'batch_size', 'normalization',
                  'input_size')

# kind -> (builder, the options its config may give beside 'kind')
TEACHER_KINDS: dict[str, tuple[Callable[..., Teacher], tuple[str, ...]]] = {
    'onnx': (onnx_teacher, ('path', 'input', 'output', 'output_name', 'providers', 'class_map',
                            'batch_size', 'normalization', 'input_size')),
    'tflite': (tflite_teacher, ('path', 'input', 'output', 'class_map', 'threads',
                                'normalization', 'input_size')),
    'torchscript': (_torchscript, ('path', *_TORCH_OPTIONS)),
    'torchvision': (_torchvision, ('name', 'weights', 'num_classes', *_TORCH_OPTIONS)),
    'synthetic': (_synthetic, ('seed', 'duration_s', 'start_s')),
}


def make_teacher(spec: Mapping) -> Teacher:
    """Build a teacher from a config such as {'kind': 'onnx', 'path': 'teacher.onnx'}.

    Kinds and their options are in TEACHER_KINDS; lists in the config (from YAML or JSON) are
    accepted where a tuple is meant.
    """
    options = dict(spec)
    kind = options.pop('kind', None)
    if kind not in TEACHER_KINDS:
        raise ValueError(f'teacher kind must be one of {sorted(TEACHER_KINDS)}, got {kind!r}')
    builder, allowed = TEACHER_KINDS[kind]
    unknown = sorted(set(options) - set(allowed))
    if unknown:
        raise ValueError(f'{kind} teacher: unknown options {unknown}; allowed: {list(allowed)}')
    try:
        inspect.signature(builder).bind(**options)
    except TypeError as exc:
        raise ValueError(f'{kind} teacher: {exc}') from exc
    for key in ('input_size', 'normalization'):
        if isinstance(options.get(key), list):
            options[key] = tuple(tuple(v) if isinstance(v, list) else v for v in options[key])
    return builder(**options)
