"""The evaluation harness's common interface: what a scheme gets and what it returns.

A *scheme* (No Customization, One-Time, AMS, Just-In-Time, Remote+Tracking, ...) is anything
with a ``name`` and ``run(ctx) -> SchemeResult``. The context carries one flight (a `Source`),
the teacher, the initial student, the link, the configs and the seed; the result carries every
number the tables and figures need, and turns into plain JSON with ``to_dict``.

Time is the stamp time of the source's frames, never the wall clock. The simulated camera runs
at ``ctx.fps``; every ``ctx.eval_stride``-th camera frame is evaluated: the drone's mask (at the
model's input size) against the ground-truth label, both taken to ``ctx.eval_size`` (nearest
neighbour), pooled in one confusion matrix (``miou``) and kept per frame (``frame_miou``, for the
CDF of the paper's Figure 5). The ground truth is the source's label when it has one, else the
teacher's label of the frame at the source's resolution: the paper evaluates against the teacher.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

import numpy as np

from ams_ros.drone.agent import DroneConfig
from ams_ros.evaluation.link import LinkConfig
from ams_ros.ground.drone_session import GroundConfig
from ams_ros.ground.trainer import TrainerConfig
from ams_ros.metrics import confusion_matrix, mean_iou
from ams_ros.model.template import StudentTemplate
from ams_ros.pixels import resize_labels

# (stamp, RGB uint8 HxWx3 frame, ground-truth uint8 HxW label or None)
SourceFrame = tuple[float, np.ndarray, 'np.ndarray | None']


@runtime_checkable
class Source(Protocol):
    """One flight: frames at any rate and size, from stamp `start_s` for `duration_s`."""

    name: str
    duration_s: float
    start_s: float

    def frames(self, fps: float, height: int | None = None,
               width: int | None = None) -> Iterator[SourceFrame]:
        """Yield (stamp, frame, label or None) every 1/fps s; None size keeps the native one."""
        ...


@dataclass
class EvalContext:
    """Everything a scheme needs to run on one flight.

    source: the flight; teacher: labels frames for the ground (Teacher protocol) and is the
    ground truth where the source has none; template: the initial (pretrained) student.
    fps: the simulated camera's frame rate; eval_stride: evaluate every n-th camera frame.
    frame_size: (H, W) the source renders/decodes frames at (None: the student's input size).
    eval_size: (H, W) mIoU is computed at (None: the student's input size).
    link: the simulated link; ground: GroundConfig (trainer, patch format, ASR, ATR);
    drone: DroneConfig (uplink codec, initial sampling, T_update).
    phase_time_s: simulated duration of one ground phase (decode + label + train + encode);
    None takes each phase's measured wall time.
    one_time_s: the One-Time scheme's customisation window (the paper's 60 s).
    seed: seeds training and link loss; progress: called with (simulated seconds done, total).
    """

    source: Source
    teacher: Any
    template: StudentTemplate
    fps: float = 2.0
    eval_stride: int = 1
    frame_size: tuple[int, int] | None = None
    eval_size: tuple[int, int] | None = None
    link: LinkConfig = field(default_factory=LinkConfig)
    ground: GroundConfig = field(default_factory=GroundConfig)
    drone: DroneConfig = field(default_factory=DroneConfig)
    phase_time_s: float | None = None
    one_time_s: float = 60.0
    seed: int = 0
    progress: Callable[[float, float], None] | None = None

    @property
    def trainer(self) -> TrainerConfig:
        return self.ground.trainer

    @property
    def class_names(self) -> tuple[str, ...]:
        return self.template.class_names

    @property
    def num_classes(self) -> int:
        return len(self.template.class_names)

    @property
    def input_size(self) -> tuple[int, int]:
        spec = self.template.input_spec
        return spec.height, spec.width

    @property
    def resolved_frame_size(self) -> tuple[int, int]:
        return tuple(self.frame_size or self.input_size)

    @property
    def resolved_eval_size(self) -> tuple[int, int]:
        return tuple(self.eval_size or self.input_size)

    def frames(self) -> Iterator[tuple[int, float, np.ndarray, np.ndarray | None, bool]]:
        """Yield (index, stamp, frame, label or None, evaluated?) for the camera's frames."""
        height, width = self.resolved_frame_size
        for index, (stamp, frame, label) in enumerate(self.source.frames(self.fps, height,
                                                                         width)):
            yield index, float(stamp), frame, label, index % self.eval_stride == 0

    def report(self, stamp: float) -> None:
        """Tell the progress callback how far (in simulated seconds) the flight has got."""
        if self.progress is not None:
            self.progress(float(stamp) - self.source.start_s, self.source.duration_s)


class FrameScorer:
    """Score drone masks against ground truth at the evaluation size; pool and keep per frame."""

    def __init__(self, ctx: EvalContext):
        self.ctx = ctx
        self.size = ctx.resolved_eval_size
        self.num_classes = ctx.num_classes
        self.confusion = np.zeros((self.num_classes, self.num_classes), np.int64)
        self.frame_miou: list[tuple[float, float]] = []

    def truth(self, stamp: float, frame: np.ndarray, label: np.ndarray | None) -> np.ndarray:
        """Return the ground-truth label at the evaluation size (the teacher's if none given)."""
        if label is None:
            label = np.asarray(self.ctx.teacher.label(frame[None], [stamp]))[0]
        return resize_labels(np.asarray(label), *self.size)

    def add(self, stamp: float, mask: np.ndarray, truth: np.ndarray) -> float:
        """Add one frame's mask (any size) against a label from `truth`; return its mIoU."""
        mask = resize_labels(np.asarray(mask), *self.size)
        confusion = confusion_matrix(truth, mask, self.num_classes)
        self.confusion += confusion
        miou = mean_iou(confusion)
        self.frame_miou.append((float(stamp), miou))
        return miou


@dataclass
class SchemeResult:
    """What one scheme did on one flight. Bytes count everything sent, lost messages included.

    frame_miou: (stamp, mIoU) per evaluated frame (NaN where the frame has no class);
    confusion: pooled [label, prediction] pixel counts; updates: stamps at which a new model
    became active on the drone; sampling: (stamp, frames/s) at start and at every change;
    bandwidth: {'bin_s', 'start', 'uplink': bytes per bin, 'downlink': bytes per bin}.
    """

    name: str
    flight: str
    duration_s: float
    class_names: tuple[str, ...]
    frame_miou: list[tuple[float, float]]
    confusion: np.ndarray
    uplink_bytes: int = 0
    downlink_bytes: int = 0
    updates: list[float] = field(default_factory=list)
    sampling: list[tuple[float, float]] = field(default_factory=list)
    bandwidth: dict = field(default_factory=dict)
    extra: dict = field(default_factory=dict)

    @property
    def miou(self) -> float:
        """MIoU of the pooled confusion matrix (classes absent throughout are skipped)."""
        return mean_iou(self.confusion)

    @property
    def mean_frame_miou(self) -> float:
        values = [m for _, m in self.frame_miou if not math.isnan(m)]
        return float(np.mean(values)) if values else float('nan')

    @property
    def uplink_kbps(self) -> float:
        return _kbps(self.uplink_bytes, self.duration_s)

    @property
    def downlink_kbps(self) -> float:
        return _kbps(self.downlink_bytes, self.duration_s)

    def to_dict(self) -> dict:
        """Plain JSON-able dict, derived numbers included (NaN becomes None)."""
        return {
            'name': self.name, 'flight': self.flight, 'duration_s': self.duration_s,
            'class_names': list(self.class_names),
            'miou': _json_float(self.miou), 'mean_frame_miou': _json_float(self.mean_frame_miou),
            'uplink_bytes': int(self.uplink_bytes), 'downlink_bytes': int(self.downlink_bytes),
            'uplink_kbps': self.uplink_kbps, 'downlink_kbps': self.downlink_kbps,
            'frame_miou': [[s, _json_float(m)] for s, m in self.frame_miou],
            'confusion': np.asarray(self.confusion).tolist(),
            'updates': list(self.updates),
            'sampling': [list(p) for p in self.sampling],
            'bandwidth': _jsonable(self.bandwidth), 'extra': _jsonable(self.extra),
        }

    @classmethod
    def from_dict(cls, data: dict) -> SchemeResult:
        return cls(
            name=data['name'], flight=data['flight'], duration_s=data['duration_s'],
            class_names=tuple(data['class_names']),
            frame_miou=[(s, float('nan') if m is None else m) for s, m in data['frame_miou']],
            confusion=np.asarray(data['confusion'], np.int64),
            uplink_bytes=data['uplink_bytes'], downlink_bytes=data['downlink_bytes'],
            updates=list(data['updates']), sampling=[tuple(p) for p in data['sampling']],
            bandwidth=dict(data['bandwidth']), extra=dict(data['extra']))


@runtime_checkable
class Scheme(Protocol):
    """An adaptation scheme under evaluation."""

    name: str

    def run(self, ctx: EvalContext) -> SchemeResult:
        """Fly `ctx.source` with this scheme and return what happened."""
        ...


def _kbps(nbytes: int, duration_s: float) -> float:
    return nbytes * 8.0 / 1000.0 / duration_s if duration_s > 0 else 0.0


def _json_float(value: float) -> float | None:
    return None if value is None or math.isnan(value) else float(value)


def _jsonable(value):
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, np.ndarray):
        return _jsonable(value.tolist())
    if isinstance(value, (np.integer,)):
        return int(value)
    if isinstance(value, (float, np.floating)):
        return _json_float(float(value))
    return value
