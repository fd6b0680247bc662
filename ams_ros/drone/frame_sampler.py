"""The edge's training-frame sampler (paper §3.2): sample at the ground's rate, buffer T_update.

Time is the frames' capture stamps (message headers), never the wall clock, so a bag replayed
with sim time or the offline harness samples exactly as a live flight would.

Sampling: the first frame is taken, then the first frame whose stamp reaches `next_due`, which
advances by 1/rate per sample. Advancing the due time rather than restarting it from the taken
frame keeps the long-run rate exact at any camera rate. After a stall (the frame taken is more
than half a period late) the schedule restarts from that frame instead of taking a burst of
catch-up frames.

Buffering: stamp time is cut into consecutive windows of T_update seconds starting at the first
frame. The first frame stamped at or after a window's end closes it: the window's samples are
emitted as one batch, and that frame belongs to the next window. Windows with no sample emit
nothing. The last partial window can be taken with `flush()`.

Both tests ("at or after") allow a slack of half the camera's last frame interval (at most half
the period being tested), so the frame nearest the due time is taken: camera jitter or rounded
stamps then cannot push a sample one whole camera frame later, which at a camera rate close to
the sampling rate would halve the rate.

Run-time changes. A new rate applies from the last sample: the next frame is due one new period
after it (at once if that time has passed). A new T_update applies to the open window: it closes
at its start plus the new period (at the next frame if that time has passed).

Stamps going backwards. A frame up to `reorder_tolerance_s` older than the newest stamp is
dropped (late delivery). A larger jump back means the clock restarted (bag loop, sim-time reset):
the open window's samples are discarded, since their stamps belong to the old timeline and would
lie in the future of the new one, and sampling restarts from that frame as from the first.

Frame size changes. A batch holds frames of one size (an H.264 stream has one). A frame taken
at another size than the buffered samples first emits them as a batch of their own, cut short
(counted in `size_flushes`); the window goes on, and its remaining samples follow at the new
size when it closes.

Full buffers. A window holds at most `max_frames` samples: the next sample first emits them
(counted in `full_flushes`), so a long window at a high rate cannot fill the memory or make a
batch the encoder refuses (at most 65535 frames). Whatever the rate, period and stamps, no
state makes every later frame fail: a jump too far for the window grid restarts the grid.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from ams_ros.checks import positive_finite

# 30 frames/s for 10 s: 118 MB of 256x512 frames, far more than the paper's buffers (<= 40).
MAX_BATCH_FRAMES = 300


@dataclass(frozen=True)
class SampleBatch:
    """One buffer of sampled frames, ready for the uplink encoder."""

    frames: tuple[np.ndarray, ...]  # HxWx3 uint8 RGB, oldest first
    stamps: tuple[float, ...]  # capture stamps (s), one per frame, increasing
    rate: float  # sampling rate (frames/s) in force when the batch was emitted
    update_period: float  # T_update (s) in force when the batch was emitted



class FrameSampler:
    """Sample frames at `rate` frames/s and emit them in batches spanning `update_period` s."""

    def __init__(self, rate: float = 1.0, update_period: float = 10.0,
                 reorder_tolerance_s: float = 0.5, max_frames: int = MAX_BATCH_FRAMES):
        self._rate = positive_finite('rate', rate)
        self._update_period = positive_finite('update_period', update_period)
        if not reorder_tolerance_s >= 0:
            raise ValueError(f'reorder_tolerance_s must be >= 0, got {reorder_tolerance_s}')
        if not (isinstance(max_frames, int) and max_frames >= 1):
            raise ValueError(f'max_frames must be a positive integer, got {max_frames!r}')
        self.reorder_tolerance_s = float(reorder_tolerance_s)
        self.max_frames = max_frames
        self.resets = 0  # times the clock jumped back and sampling restarted
        self.size_flushes = 0  # batches emitted early because the frame size changed
        self.full_flushes = 0  # batches emitted early because they held max_frames
        self._restart()

    def _restart(self) -> None:
        self._frames: list[np.ndarray] = []
        self._stamps: list[float] = []
        self._newest: float | None = None  # newest stamp seen
        self._last_taken: float | None = None
        self._next_due: float | None = None  # None: take the next frame
        self._window_start: float | None = None

    @property
    def rate(self) -> float:
        return self._rate

    @property
    def update_period(self) -> float:
        return self._update_period

    def set_rate(self, rate: float) -> None:
        """Sample at `rate` frames/s from now on: next frame due one new period after the last."""
        self._rate = positive_finite('rate', rate)
        if self._last_taken is not None:
            self._next_due = self._last_taken + 1.0 / self._rate

    def set_update_period(self, update_period: float) -> None:
        """Close the open window (and later ones) `update_period` s after it opened."""
        self._update_period = positive_finite('update_period', update_period)

    def add(self, stamp: float, frame: np.ndarray) -> SampleBatch | None:
        """Offer one camera frame; return a batch when this frame closes a window with samples.

        A frame taken at another size than the buffered samples returns them too (see above).
        Only sampled frames are copied, so offering every camera frame is cheap.
        """
        stamp = float(stamp)
        if not math.isfinite(stamp):
            raise ValueError(f'stamp must be finite, got {stamp}')
        if self._newest is not None and stamp < self._newest:
            if self._newest - stamp <= self.reorder_tolerance_s:
                return None  # late frame: its slot has been decided already
            self.resets += 1
            self._restart()
        # Half the camera's frame interval: the slack that takes the frame nearest a due time.
        half_interval = 0.0 if self._newest is None else (stamp - self._newest) / 2
        self._newest = stamp
        batch = self._close_window(stamp, half_interval)
        period = 1.0 / self._rate
        if self._next_due is None or stamp >= self._next_due - min(half_interval, period / 2):
            # batch is None here: a window that closed has no samples left to mix with.
            if self._frames and np.shape(frame) != self._frames[0].shape:
                self.size_flushes += 1
                batch = self._emit()
            elif len(self._frames) >= self.max_frames:
                self.full_flushes += 1
                batch = self._emit()
            self._take(stamp, frame)
        return batch

    def flush(self) -> SampleBatch | None:
        """Emit the open window's samples now (end of stream); None if it has none."""
        return self._emit()

    def _close_window(self, stamp: float, half_interval: float) -> SampleBatch | None:
        if self._window_start is None:
            self._window_start = stamp
            return None
        period = self._update_period
        reached = stamp - self._window_start + min(half_interval, period / 2)
        if reached < period:
            return None
        # The next window is on the T_update grid, skipping whole windows the stream missed; a
        # jump of infinitely many windows (math.floor would raise) starts a new grid here.
        windows = reached / period
        self._window_start = (stamp if math.isinf(windows)
                              else self._window_start + period * math.floor(windows))
        return self._emit()

    def _take(self, stamp: float, frame: np.ndarray) -> None:
        self._frames.append(np.array(frame, copy=True))  # the caller may reuse its buffer
        self._stamps.append(stamp)
        self._last_taken = stamp
        period = 1.0 / self._rate
        due = stamp + period if self._next_due is None else self._next_due + period
        if due < stamp + period / 2:  # more than half a period late: a stall, restart from here
            due = stamp + period
        self._next_due = due

    def _emit(self) -> SampleBatch | None:
        if not self._frames:
            return None
        batch = SampleBatch(tuple(self._frames), tuple(self._stamps), self._rate,
                            self._update_period)
        self._frames, self._stamps = [], []
        return batch
