"""One drone as the ground station serves it (Algorithm 1 of the paper).

Frames arrive in batches; the teacher labels them into the horizon buffer and the φ-scores of
consecutive labels drive the drone's sampling rate (ASR) and update period (ATR). A batch's
stamps pass the drone's stamp guard first: a refused batch raises ``StampRefused`` and changes
nothing, and a confirmed clock jump moves the buffered frames and the stamp-keyed state onto the
new clock. Each training phase trains the ground's copy of the drone's student and encodes the
change as a patch against the mirror of what the drone runs; the trainer then continues from the
mirror's values, so the ground always trains exactly the model the drone has (fp16 or quantised
values included).
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field

import numpy as np

from ams_ros.ground.horizon_buffer import HorizonBuffer
from ams_ros.ground.rate_control import (
    AdaptiveSamplingRate,
    AdaptiveTrainingRate,
    AsrConfig,
    AtrConfig,
    phi_score,
)
from ams_ros.ground.stamp_guard import (
    REANCHOR,
    StampGuard,
    StampGuardConfig,
    StampRefused,
    StampVerdict,
)
from ams_ros.ground.trainer import PhaseResult, Trainer, TrainerConfig
from ams_ros.model.onnx_params import InitializerWriter
from ams_ros.model.template import StudentTemplate
from ams_ros.wire.model_version import GroundMirror, PatchPayload
from ams_ros.wire.patch_codec import DEFAULT_FORMAT, PatchFormat
from ams_ros.wire.snapshot import SnapshotPayload, build_snapshot

# The model a drone starts from (the pretrained student) is version 1; 0 means "no model".
INITIAL_VERSION = 1
# Weight of the past in the moving average of φ that multi-drone scheduling reads.
PHI_SMOOTHING = 0.7


@dataclass(frozen=True)
class GroundConfig:
    trainer: TrainerConfig = field(default_factory=TrainerConfig)
    patch_format: PatchFormat = DEFAULT_FORMAT
    asr: AsrConfig = field(default_factory=AsrConfig)
    atr: AtrConfig = field(default_factory=AtrConfig)
    stamps: StampGuardConfig = field(default_factory=StampGuardConfig)

    def __post_init__(self):
        if self.stamps.max_spread_s < self.atr.period_max:
            raise ValueError(f'stamps.max_spread_s ({self.stamps.max_spread_s:g} s) must cover '
                             f'a batch of the longest update period ({self.atr.period_max:g} s)')


@dataclass(frozen=True)
class PhaseOutput:
    patch: PatchPayload
    result: PhaseResult


@dataclass(frozen=True)
class RateDecision:
    sampling_rate: float  # frames/s
    update_period: float  # T_update, s


class DroneSession:
    """Buffer, trainer, mirror and rate controllers of one drone."""

    def __init__(self, client_id: str, template: StudentTemplate, teacher,
                 config: GroundConfig | None = None, *, seed: int = 0):
        self.client_id = client_id
        self.template = template
        self.teacher = teacher
        self.config = config or GroundConfig()
        self.trainer = Trainer(copy.deepcopy(template.model), template.manifest,
                               self.config.trainer, seed, template.input_spec)
        self.buffer = HorizonBuffer(self.config.trainer.horizon_s)
        self.mirror = GroundMirror(client_id, template.model_id, INITIAL_VERSION,
                                   self.trainer.weights(), fmt=self.config.patch_format)
        self.asr = AdaptiveSamplingRate(self.config.asr)
        self.atr = AdaptiveTrainingRate(self.config.atr)
        self.stamp_guard = StampGuard(self.config.stamps)
        self.stamp_verdict: StampVerdict | None = None  # on the latest batch
        self._writer: InitializerWriter | None = None
        self._last_label: tuple[float, np.ndarray] | None = None
        self._phi_average: float | None = None  # the scheduler's signal, fresher than ASR's
        self.pending_frames = 0  # labelled since the last phase

    @property
    def phi(self) -> float | None:
        """Recent φ-score (moving average): how fast this drone's scene changes now."""
        return self._phi_average

    def add_frames(self, frames: np.ndarray, stamps, now: float | None = None) -> np.ndarray:
        """Label a batch with the teacher, buffer it, feed φ to ASR; return the labels.

        The stamps pass the stamp guard first (`now`: the caller's monotonic time of arrival,
        see stamp_guard); a refused batch raises StampRefused before the teacher runs.
        `stamp_verdict` holds the guard's verdict on the latest batch.
        """
        stamps = [float(s) for s in stamps]
        if len(frames) != len(stamps):
            raise ValueError(f'{len(frames)} frames but {len(stamps)} stamps')
        verdict = self.stamp_guard.check(stamps, now)
        self.stamp_verdict = verdict
        if not verdict.accepted:
            raise StampRefused(verdict)
        if verdict.reason == REANCHOR:
            self._shift(verdict.offset)
        labels = np.asarray(self.teacher.label(frames, stamps))
        # In capture order: the guard refuses stamps that are not.
        for stamp, frame, label in zip(stamps, frames, labels, strict=True):
            if not self.buffer.add(stamp, frame, label):
                continue  # older than the horizon: useless for training
            if self._last_label is not None and stamp > self._last_label[0]:
                self._observe_phi(stamp, phi_score(self._last_label[1], label,
                                                   len(self.template.class_names)))
            if self._last_label is None or stamp > self._last_label[0]:
                self._last_label = (stamp, label)
            self.pending_frames += 1
        return labels

    def _shift(self, offset: float) -> None:
        """Move everything keyed by stamp onto the drone's new clock (see stamp_guard)."""
        self.buffer.shift(offset)
        self.asr.shift(offset)
        if self._last_label is not None:
            self._last_label = (self._last_label[0] + offset, self._last_label[1])

    def _observe_phi(self, stamp: float, phi: float | None) -> None:
        self.asr.observe(stamp, phi)
        if phi is not None:
            self._phi_average = (phi if self._phi_average is None
                                 else PHI_SMOOTHING * self._phi_average
                                 + (1 - PHI_SMOOTHING) * phi)

    def train_phase(self, now: float | None = None) -> PhaseOutput:
        """Run one phase over the horizon and return the patch that carries its result."""
        result = self.trainer.run_phase(self.buffer, now)
        patch = self.mirror.make_patch(result.indices, result.values)
        self.trainer.set_weights(self.mirror.vector)
        self.pending_frames = 0
        return PhaseOutput(patch, result)

    def update_rates(self, now: float) -> RateDecision | None:
        """Apply Eq. 1 (and ATR) once per δt of stamp time; None between updates."""
        rate = self.asr.update(now)
        if rate is None:
            return None
        period = (self.atr.update(self.asr.last_phi_mean)
                  if self.asr.last_phi_mean is not None else self.atr.update_period)
        return RateDecision(rate, period)

    def snapshot(self) -> SnapshotPayload:
        """Return the drone's current model (the mirror) as a whole-model snapshot."""
        if self._writer is None:
            self._writer = InitializerWriter(self.template.onnx_bytes, self.template.manifest)
        t = self.template
        return build_snapshot(client_id=self.client_id, model_id=t.model_id,
                              version=self.mirror.version, writer=self._writer,
                              manifest=t.manifest, vector=self.mirror.vector,
                              class_names=t.class_names, input_spec=t.input_spec)
