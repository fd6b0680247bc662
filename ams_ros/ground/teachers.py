"""Ground side: teachers, the expensive models whose labels the student is trained on.

Every teacher has one method, ``label(frames, stamps)``: N RGB uint8 frames (N x H x W x 3) in,
N class-id maps (N x H x W uint8, IGNORE_LABEL where the teacher abstains) out, at the frames'
own resolution. Stamps are for teachers that know the scene (the synthetic world's perfect
teacher); model teachers ignore them.

Model teachers come from local files only (nothing is downloaded):

- ``OnnxTeacher``: any segmentation ONNX model. Float NCHW input is normalised here; uint8 input
  (NHWC, as the exported student takes) is fed as is. The output is either logits (N, C, h, w),
  upsampled bilinearly to the frame and argmaxed, or class ids, upsampled nearest.
- ``TorchTeacher``: a TorchScript file, or a torchvision segmentation model built without weights
  and loaded from a state-dict file (only where torchvision imports).

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

import cv2
import numpy as np

from ams_ros import IGNORE_LABEL
from ams_ros.model.student import IMAGENET_MEAN, IMAGENET_STD
from ams_ros.pixels import resize_frame, resize_labels

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


def normalisation_constants(normalization) -> tuple[np.ndarray, np.ndarray] | None:
    """Return (mean, std) in 0..255 pixel units, shaped (1, 3, 1, 1); None for IN_GRAPH.

    normalization: 'imagenet', IN_GRAPH (the model takes 0..255 floats), or (mean, std) given
    in 0..1 units, as torchvision's transforms take them.
    """
    if normalization == IN_GRAPH:
        return None
    mean, std = (IMAGENET_MEAN, IMAGENET_STD) if normalization == 'imagenet' else normalization
    mean = 255.0 * np.asarray(mean, np.float32).reshape(1, 3, 1, 1)
    std = 255.0 * np.asarray(std, np.float32).reshape(1, 3, 1, 1)
    return mean, std


def normalise(frames: np.ndarray, constants) -> np.ndarray:
    """Turn N x H x W x 3 uint8 frames into float32 N x 3 x H x W model input."""
    x = frames.astype(np.float32).transpose(0, 3, 1, 2)
    if constants is None:
        return np.ascontiguousarray(x)
    mean, std = constants
    return (x - mean) / std


def resize_frames(frames: np.ndarray, size: tuple[int, int] | None) -> np.ndarray:
    """Resize N x H x W x 3 frames to size (height, width) (ams_ros.pixels); None: as is."""
    if size is None or frames.shape[1:3] == tuple(size):
        return frames
    return np.stack([resize_frame(f, *size) for f in frames])


def logits_to_ids(logits: np.ndarray, height: int, width: int) -> np.ndarray:
    """Argmax (N, C, h, w) logits after upsampling them bilinearly to height x width."""
    logits = np.asarray(logits, np.float32)
    if logits.shape[2:] == (height, width):
        return logits.argmax(axis=1)
    # Upsampling the scores, not the argmax, keeps class boundaries smooth at full size.
    return np.stack([_resize_channels(scores, height, width).argmax(axis=0) for scores in logits])


def _resize_channels(scores: np.ndarray, height: int, width: int) -> np.ndarray:
    # cv2 resizes at most 512 channels at once, and wants them last.
    parts = [cv2.resize(np.ascontiguousarray(part.transpose(1, 2, 0)), (width, height),
                        interpolation=cv2.INTER_LINEAR).reshape(height, width, -1)
             for part in np.array_split(scores, -(-len(scores) // 512))]
    return np.concatenate(parts, axis=2).transpose(2, 0, 1)


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


# -- ONNX -------------------------------------------------------------------------------------

class OnnxTeacher:
    """A segmentation model in an ONNX file, run with ONNX Runtime.

    input_size: (height, width) to run at where the model's input size is not fixed; None: the
        frames' own size. A fixed size in the model always wins.
    normalization: for float inputs: 'imagenet', IN_GRAPH or (mean, std); uint8 inputs get
        the pixels unchanged.
    output: 'logits' (N, C, h, w) or 'labels' (N, h, w) or (N, 1, h, w) class ids.
    output_name: which graph output; default: the one named like `output`, else the first.
    providers: ONNX Runtime providers; default: CUDA where available, then CPU.
    class_map: teacher class -> student class (see class_lookup).
    batch_size: frames per run (1 where the model's batch dimension is fixed at 1).
    """

    def __init__(self, path: str | Path, input_size: tuple[int, int] | None = None,
                 normalization='imagenet', output: str = 'logits', output_name: str | None = None,
                 providers: Sequence[str] | None = None, class_map=None, batch_size: int = 4):
        import onnxruntime as ort

        if output not in ('logits', 'labels'):
            raise ValueError(f"output must be 'logits' or 'labels', got {output!r}")
        path = _existing_file(path, 'ONNX teacher model')
        if providers is None:
            available = ort.get_available_providers()
            providers = [p for p in ('CUDAExecutionProvider', 'CPUExecutionProvider')
                         if p in available]
        self.session = ort.InferenceSession(str(path), providers=list(providers))
        self.output = output
        self.normalization = normalisation_constants(normalization)
        self.table = None if class_map is None else class_lookup(class_map)

        (image,) = self.session.get_inputs()
        self.input_name = image.name
        if image.type not in ('tensor(uint8)', 'tensor(float)'):
            raise ValueError(f'teacher input must be uint8 or float32, got {image.type}')
        self.takes_uint8 = image.type == 'tensor(uint8)'
        self.channels_last = _channels_last(image.shape, self.takes_uint8)
        spatial = image.shape[1:3] if self.channels_last else image.shape[2:4]
        fixed = tuple(spatial) if all(isinstance(d, int) for d in spatial) else None
        if fixed is not None and input_size is not None and tuple(input_size) != fixed:
            raise ValueError(f'the model takes {fixed}, not input_size {tuple(input_size)}')
        self.input_size = fixed or (None if input_size is None else tuple(input_size))
        self.batch_size = 1 if image.shape[0] == 1 else batch_size

        names = [o.name for o in self.session.get_outputs()]
        if output_name is not None and output_name not in names:
            raise ValueError(f'no output {output_name!r}; the model has {names}')
        self.output_name = output_name or (output if output in names else names[0])

    def label(self, frames: np.ndarray, stamps: Sequence[float]) -> np.ndarray:
        return label_in_batches(self._label_batch, check_frames(frames, stamps), self.batch_size)

    def _label_batch(self, frames: np.ndarray, height: int, width: int) -> np.ndarray:
        x = resize_frames(frames, self.input_size)
        if not self.takes_uint8:
            x = normalise(x, self.normalization)
            if self.channels_last:
                x = np.ascontiguousarray(x.transpose(0, 2, 3, 1))
        elif not self.channels_last:
            x = np.ascontiguousarray(x.transpose(0, 3, 1, 2))
        (out,) = self.session.run([self.output_name], {self.input_name: x})
        if self.output == 'logits':
            ids = logits_to_ids(out, height, width)
        else:
            ids = resize_labels(out.reshape(len(frames), *out.shape[-2:]), height, width)
        return to_student_ids(ids, self.table)


def _channels_last(shape: Sequence, takes_uint8: bool) -> bool:
    """Tell NHWC from NCHW by where the 3 channels are; if unclear, uint8 means NHWC."""
    if len(shape) != 4:
        raise ValueError(f'teacher input must be 4-D (N, C, H, W or N, H, W, C), got {shape}')
    if shape[1] == 3 and shape[3] != 3:
        return False
    if shape[3] == 3 and shape[1] != 3:
        return True
    return takes_uint8


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
    """A torch segmentation module: normalised float NCHW in; logits (N, C, h, w) out.

    The output may also be a dict with 'out' (torchvision's models) or a tuple whose first
    element is the logits.
    """

    def __init__(self, module, device: str = 'auto', input_size: tuple[int, int] | None = None,
                 normalization='imagenet', class_map=None, batch_size: int = 4):
        self.device = select_torch_device(device)
        self.module = module.to(self.device).eval()
        self.input_size = None if input_size is None else tuple(input_size)
        self.normalization = normalisation_constants(normalization)
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

        # uint8 to the device, normalised there: a quarter of the bytes to copy.
        x = torch.from_numpy(resize_frames(frames, self.input_size)).to(self.device)
        x = x.permute(0, 3, 1, 2).float()
        if self.normalization is not None:
            mean, std = (torch.from_numpy(c).to(self.device) for c in self.normalization)
            x = (x - mean) / std
        with torch.inference_mode():
            out = self.module(x)
            logits = out['out'] if isinstance(out, Mapping) else out
            logits = logits[0] if isinstance(logits, (tuple, list)) else logits
            if logits.shape[2:] != (height, width):
                logits = F.interpolate(logits, size=(height, width), mode='bilinear',
                                       align_corners=False)
            ids = logits.argmax(dim=1).cpu().numpy()
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


_TORCH_OPTIONS = ('device', 'input_size', 'normalization', 'class_map', 'batch_size')

# kind -> (builder, the options its config may give beside 'kind')
TEACHER_KINDS: dict[str, tuple[Callable[..., Teacher], tuple[str, ...]]] = {
    'onnx': (OnnxTeacher, ('path', 'input_size', 'normalization', 'output', 'output_name',
                           'providers', 'class_map', 'batch_size')),
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
