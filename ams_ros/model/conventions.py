"""How a model file wants its pixels and how it gives its answer (a task file's I/O conventions).

Models arrive in every convention: channels first or last, RGB or BGR, floats in [0, 1] or
[0, 255] with a mean and std, or raw uint8; logits or probabilities per class (channels first or
last, often at a lower resolution than the input), class ids, or, for a two-class task, one
channel of foreground probability. `InputConvention.prepare` turns RGB uint8 frames into what the
model takes; `OutputConvention.to_ids` turns what it gives into class ids at the frames' size.
Numpy and OpenCV only: the drone side may use it too.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, fields

import cv2
import numpy as np

from ams_ros.pixels import resize_frame, resize_labels

LAYOUTS = ('NCHW', 'NHWC')
COLOURS = ('RGB', 'BGR')
SCALES = ('unit', 'byte', 'uint8')  # float in [0, 1], float in [0, 255], uint8 as it is
OUTPUT_KINDS = ('logits', 'probabilities', 'labels', 'foreground')
IMAGENET = ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))  # in [0, 1] units


class ConventionError(ValueError):
    """A convention that cannot be, or does not fit the model (the message says which field)."""


def _choice(name: str, value, allowed: Sequence) -> None:
    if value not in allowed:
        raise ConventionError(f'{name}: expected one of {list(allowed)}, got {value!r}')


def _triple(name: str, value) -> tuple[float, float, float]:
    try:
        triple = tuple(float(v) for v in value)
    except (TypeError, ValueError):
        triple = ()
    if len(triple) != 3 or not all(np.isfinite(triple)):
        raise ConventionError(f'{name}: expected three finite numbers (R, G, B), got {value!r}')
    return triple


@dataclass(frozen=True)
class InputConvention:
    """What the model's input tensor holds.

    layout: None to tell from the model's input shape (where its 3 channels are).
    scale: the pixel range before normalisation: 'unit' (p / 255), 'byte' (p) or 'uint8' (the
        bytes as they are; mean and std do not apply). mean and std are in the scale's units,
        per channel in the model's colour order.
    size: (height, width) to run at; None: the model's fixed size, else the frames' own.
    """

    layout: str | None = None
    colour: str = 'RGB'
    scale: str = 'unit'
    mean: tuple[float, float, float] = (0.0, 0.0, 0.0)
    std: tuple[float, float, float] = (1.0, 1.0, 1.0)
    size: tuple[int, int] | None = None

    def __post_init__(self):
        if self.layout is not None:
            _choice('input.layout', self.layout, LAYOUTS)
        _choice('input.colour', self.colour, COLOURS)
        _choice('input.scale', self.scale, SCALES)
        object.__setattr__(self, 'mean', _triple('input.mean', self.mean))
        object.__setattr__(self, 'std', _triple('input.std', self.std))
        if any(s <= 0 for s in self.std):
            raise ConventionError(f'input.std: must be positive, got {self.std}')
        if self.size is not None:
            size = tuple(int(v) for v in self.size)
            if len(size) != 2 or min(size) < 1:
                raise ConventionError(f'input.size: expected [height, width], got {self.size}')
            object.__setattr__(self, 'size', size)

    @property
    def dtype(self) -> np.dtype:
        return np.dtype(np.uint8 if self.scale == 'uint8' else np.float32)

    def fit(self, shape: Sequence, dtype: np.dtype) -> InputConvention:
        """Return this convention completed from the model's input (shape, element type).

        The layout comes from where the 3 channels are when not given; a fixed size in the
        model wins over none, and a different given size is an error.
        """
        if len(shape) != 4:
            raise ConventionError(f'the model input must be 4-D, got shape {list(shape)}')
        if np.dtype(dtype) != self.dtype:
            raise ConventionError(f"input.scale: '{self.scale}' feeds {self.dtype}, but the "
                                  f'model takes {np.dtype(dtype)}')
        layout = self.layout or _layout_of(shape, self.scale == 'uint8')
        spatial = shape[2:4] if layout == 'NCHW' else shape[1:3]
        channels = shape[1] if layout == 'NCHW' else shape[3]
        if isinstance(channels, int) and channels != 3:
            raise ConventionError(f'input.layout: {layout} puts {channels} channels in the '
                                  f'model input {list(shape)}, not 3')
        fixed = tuple(spatial) if all(isinstance(d, int) and d > 0 for d in spatial) else None
        if fixed is not None and self.size is not None and self.size != fixed:
            raise ConventionError(f'input.size: the model takes {list(fixed)}, not '
                                  f'{list(self.size)}')
        return InputConvention(layout, self.colour, self.scale, self.mean, self.std,
                               fixed or self.size)

    def prepare(self, frames: np.ndarray) -> np.ndarray:
        """Turn N x H x W x 3 RGB uint8 frames into the model's input (after `fit`)."""
        if self.size is not None and frames.shape[1:3] != self.size:
            frames = np.stack([resize_frame(f, *self.size) for f in frames])
        if self.colour == 'BGR':
            frames = frames[..., ::-1]
        if self.scale == 'uint8':
            x = frames
        else:
            x = frames.astype(np.float32)
            if self.scale == 'unit':
                x *= np.float32(1 / 255)
            x = (x - np.float32(self.mean)) / np.float32(self.std)
        if self.layout == 'NCHW':
            x = x.transpose(0, 3, 1, 2)
        return np.ascontiguousarray(x, dtype=self.dtype)


def _layout_of(shape: Sequence, takes_uint8: bool) -> str:
    """Tell NHWC from NCHW by where the 3 channels are; if unclear, uint8 means NHWC."""
    if shape[1] == 3 and shape[3] != 3:
        return 'NCHW'
    if shape[3] == 3 and shape[1] != 3:
        return 'NHWC'
    return 'NHWC' if takes_uint8 else 'NCHW'


@dataclass(frozen=True)
class OutputConvention:
    """What the model's output tensor holds.

    kind: 'logits' or 'probabilities' per class (argmax), 'labels' (class ids), or
        'foreground' (one channel: the probability of class 1 over class 0, cut at threshold).
    layout: where the class channels are, 'NCHW' or 'NHWC'; None: NCHW, except that a single
        channel is found wherever its size-1 axis is.
    """

    kind: str = 'logits'
    layout: str | None = None
    threshold: float = 0.5

    def __post_init__(self):
        _choice('output.kind', self.kind, OUTPUT_KINDS)
        if self.layout is not None:
            _choice('output.layout', self.layout, LAYOUTS)
        if not 0.0 < float(self.threshold) < 1.0 and self.kind == 'foreground':
            raise ConventionError(f'output.threshold: must lie in (0, 1), got {self.threshold}')

    def to_ids(self, out: np.ndarray, height: int, width: int) -> np.ndarray:
        """Return the model's class ids (N x height x width, int) from its output."""
        out = np.asarray(out)
        if self.kind == 'labels':
            ids = _channels_first(out, self.layout)
            if ids.shape[1] != 1:
                raise ConventionError(f"output.kind: 'labels' wants one channel of class ids, "
                                      f'the model gives {ids.shape[1]}')
            return resize_labels(ids[:, 0], height, width)
        scores = _channels_first(out.astype(np.float32, copy=False), self.layout)
        if self.kind == 'foreground':
            if scores.shape[1] != 1:
                raise ConventionError(f"output.kind: 'foreground' wants one channel, the "
                                      f'model gives {scores.shape[1]}')
            probability = np.stack([_resize_scores(s, height, width)[0] for s in scores])
            return (probability >= self.threshold).astype(np.int64)
        if scores.shape[2:] == (height, width):
            return scores.argmax(axis=1)
        # Resizing the scores, not the argmax, keeps class boundaries smooth at full size.
        return np.stack([_resize_scores(s, height, width).argmax(axis=0) for s in scores])


def _channels_first(out: np.ndarray, layout: str | None) -> np.ndarray:
    if out.ndim == 3:  # N x h x w: one channel
        return out[:, None]
    if out.ndim != 4:
        raise ConventionError(f'the model output must be 3-D or 4-D, got shape {out.shape}')
    if layout == 'NHWC' or (layout is None and out.shape[3] == 1 and out.shape[1] != 1):
        return out.transpose(0, 3, 1, 2)
    return out


def _resize_scores(scores: np.ndarray, height: int, width: int) -> np.ndarray:
    """Resize C x h x w scores bilinearly (cv2 takes at most 512 channels, last)."""
    if scores.shape[1:] == (height, width):
        return scores
    parts = [cv2.resize(np.ascontiguousarray(part.transpose(1, 2, 0)), (width, height),
                        interpolation=cv2.INTER_LINEAR).reshape(height, width, -1)
             for part in np.array_split(scores, -(-len(scores) // 512))]
    return np.concatenate(parts, axis=2).transpose(2, 0, 1)


def input_convention(spec: Mapping | None = None, **legacy) -> InputConvention:
    """Build an InputConvention from a config mapping; 'imagenet' as mean names its constants.

    Unknown keys are an error that names them.
    """
    spec = dict(spec or {}, **{k: v for k, v in legacy.items() if v is not None})
    _known('input', spec, InputConvention)
    if spec.get('mean') == 'imagenet' or spec.get('std') == 'imagenet':
        if spec.get('scale', 'unit') != 'unit':
            raise ConventionError("input.mean: 'imagenet' constants are in [0, 1] units: "
                                  "use scale 'unit'")
        spec['mean'], spec['std'] = IMAGENET
    return InputConvention(**spec)


def output_convention(spec: Mapping | str | None = None) -> OutputConvention:
    """Build an OutputConvention from a config mapping, or a kind alone."""
    spec = {'kind': spec} if isinstance(spec, str) else dict(spec or {})
    _known('output', spec, OutputConvention)
    return OutputConvention(**spec)


def _known(prefix: str, spec: Mapping, cls) -> None:
    names = {f.name for f in fields(cls)}
    unknown = sorted(set(spec) - names)
    if unknown:
        raise ConventionError(f'{prefix}: unknown keys {unknown}; known: {sorted(names)}')
