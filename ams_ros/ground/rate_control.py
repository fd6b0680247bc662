"""How often the edge samples (ASR, paper §3.2 Eq. 1) and how often the ground updates (ATR).

Both are driven by the φ-score, the teacher's "how much did the labels change" signal, and by
stamp time (capture stamps of the labelled frames), never the wall clock.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np

from ams_ros import IGNORE_LABEL
from ams_ros.metrics import frame_miou


def phi_score(previous_labels: np.ndarray, labels: np.ndarray, num_classes: int | None = None,
              classes: Iterable[int] | None = None,
              ignore_label: int = IGNORE_LABEL) -> float | None:
    """φ_k: the task loss of T(I_k) predicted against T(I_{k-1}) as ground truth.

    The paper (§3.2) defines φ_k with the task's own loss. Teacher labels here are hard class
    maps, so the loss is 1 - mIoU (as in the original code): 0 for identical label maps, 1 when
    no pixel keeps its class. Pixels with the ignore label on either side are left out and
    classes absent from both maps are skipped (see metrics). `num_classes` defaults to the
    largest class id present plus one. Returns None when no pixel is comparable.
    """
    previous_labels = np.asarray(previous_labels)
    labels = np.asarray(labels)
    if num_classes is None:
        present = np.concatenate([previous_labels[previous_labels != ignore_label],
                                  labels[labels != ignore_label]])
        if present.size == 0:
            return None
        num_classes = int(present.max()) + 1
    miou = frame_miou(previous_labels, labels, num_classes, classes, ignore_label)
    return None if math.isnan(miou) else 1.0 - miou


def _check_range(name: str, value: float, low: float, high: float) -> None:
    if not (math.isfinite(value) and low <= value <= high):
        raise ValueError(f'{name} must be in [{low}, {high}], got {value}')


@dataclass(frozen=True)
class AsrConfig:
    """Parameters of Eq. 1; rates in frames/s, times in seconds of stamp time."""

    phi_target: float = 0.4  # the original code's target: consecutive-label mIoU of 0.6
    step_size: float = 2.0  # η_r: φ̄ 0.1 off target moves the rate 0.2 frames/s per step
    rate_min: float = 0.1  # paper §4.1
    rate_max: float = 1.0  # paper §4.1
    initial_rate: float = 1.0  # start at the top: the edge model is least adapted at start-up
    interval: float = 10.0  # δt, paper §3.2

    def __post_init__(self):
        _check_range('phi_target', self.phi_target, 0.0, 1.0)
        _check_range('step_size', self.step_size, 0.0, math.inf)
        _check_range('rate_min', self.rate_min, 1e-6, math.inf)
        _check_range('rate_max', self.rate_max, self.rate_min, math.inf)
        _check_range('initial_rate', self.initial_rate, self.rate_min, self.rate_max)
        _check_range('interval', self.interval, 1e-6, math.inf)


class AdaptiveSamplingRate:
    """Eq. 1: every δt, r <- clip(r + η_r (φ̄ - φ_target), r_min, r_max).

    Usage: `observe` the φ of every newly labelled frame, then call `update` with the newest
    stamp. Updates fall on a δt grid of stamp time starting at the first observation; an update
    that is due uses the mean φ of the observations made since the previous update. With
    T_update = δt (the paper's setting) that is the last δt window; with longer buffers (ATR)
    it is the whole new buffer, so no labelled frame is wasted. With no new observation the
    update waits for one. A stamp earlier than the newest seen means the clock restarted (bag
    loop): pending observations are dropped and the grid restarts; the rate is kept.
    """

    def __init__(self, config: AsrConfig | None = None):
        self.config = config or AsrConfig()
        self.rate = self.config.initial_rate
        self.last_phi_mean: float | None = None  # φ̄ used by the latest update
        self._pending: list[float] = []
        self._newest: float | None = None
        self._next_update: float | None = None

    def observe(self, stamp: float, phi: float | None) -> None:
        """Record φ of the frame captured at `stamp`; None (no comparable pixel) is skipped."""
        if self._newest is not None and stamp < self._newest:
            self._pending.clear()
            self._next_update = None
        self._newest = stamp
        if self._next_update is None:
            self._next_update = stamp + self.config.interval
        if phi is not None:
            self._pending.append(float(phi))

    def shift(self, offset: float) -> None:
        """Move the stamp-time state by `offset` seconds (the drone's clock was re-anchored).

        Stamps are only compared with each other, so from here on the controller acts as if
        every stamp so far had been on the new clock: no restart, the δt grid carries on.
        """
        if self._newest is not None:
            self._newest += offset
        if self._next_update is not None:
            self._next_update += offset

    def update(self, now: float) -> float | None:
        """Apply Eq. 1 if an update is due at stamp `now`; return the new rate, else None."""
        if self._next_update is None or now < self._next_update or not self._pending:
            return None
        config = self.config
        self.last_phi_mean = float(np.mean(self._pending))
        self._pending.clear()
        rate = self.rate + config.step_size * (self.last_phi_mean - config.phi_target)
        self.rate = min(max(rate, config.rate_min), config.rate_max)
        missed = math.floor((now - self._next_update) / config.interval)
        self._next_update += (missed + 1) * config.interval  # next grid point after `now`
        return self.rate


@dataclass(frozen=True)
class AtrConfig:
    """Parameters of the adaptive training rate; periods in seconds of stamp time."""

    enabled: bool = False  # off: the paper's evaluated setting is a fixed T_update of 10 s
    period_min: float = 10.0  # paper §3.1.1
    period_max: float = 40.0  # the top of the paper's T_update sweep (§4.2, Figure 4)
    growth: float = 1.5  # T_update factor per lengthening: 10, 15, 22.5, 33.75, 40
    phi_low: float = 0.2  # calm: φ̄ below this (half the ASR target)
    phi_high: float = 0.4  # busy: φ̄ above this (the ASR target)
    patience: int = 3  # calm windows in a row before each lengthening

    def __post_init__(self):
        _check_range('period_min', self.period_min, 1e-6, math.inf)
        _check_range('period_max', self.period_max, self.period_min, math.inf)
        _check_range('growth', self.growth, 1.0, math.inf)
        _check_range('phi_low', self.phi_low, 0.0, 1.0)
        _check_range('phi_high', self.phi_high, self.phi_low, 1.0)
        if not (isinstance(self.patience, int) and self.patience >= 1):
            raise ValueError(f'patience must be an integer >= 1, got {self.patience}')


class AdaptiveTrainingRate:
    """Lengthen T_update while the scene is stationary, snap back when it changes.

    The paper (§3.1.1) notes that a stationary video can use a longer T_update, and that each
    update costs downlink; its Appendix D rule is not available, so this is our rule. After
    each ASR update, with that update's φ̄:

    - φ̄ > phi_high (the scene changes faster than ASR's target): T_update snaps back to
      period_min at once. A changing scene makes the edge model stale fast, and a short period
      brings the next patch (and the next rate) soonest; shrinking in steps would leave it stale
      for several long periods.
    - φ̄ < phi_low for `patience` windows in a row: T_update *= growth, up to period_max. The
      labels barely change even at ASR's sampling rate, so an update would mostly resend what
      the model already knows; growing only after several calm windows keeps a brief lull from
      lengthening it, and growing multiplicatively reaches period_max in a few steps.
    - otherwise T_update holds and the calm count restarts.

    Disabled (the default), T_update stays at period_min.
    """

    def __init__(self, config: AtrConfig | None = None):
        self.config = config or AtrConfig()
        self.update_period = self.config.period_min
        self._calm_windows = 0

    def update(self, phi_mean: float) -> float:
        """Take one window's φ̄ and return T_update (s) from now on."""
        config = self.config
        if not config.enabled:
            return self.update_period
        if phi_mean > config.phi_high:
            self._calm_windows = 0
            self.update_period = config.period_min
        elif phi_mean < config.phi_low:
            self._calm_windows += 1
            if self._calm_windows >= config.patience:
                self._calm_windows = 0
                self.update_period = min(self.update_period * config.growth, config.period_max)
        else:
            self._calm_windows = 0
        return self.update_period
