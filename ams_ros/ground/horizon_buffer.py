"""The server's training buffer (Algorithm 1, line 3): labelled frames keyed by capture time.

Training samples mini-batches uniformly from the frames of the last T_horizon seconds (line 12).
Frames older than the horizon are evicted as newer ones arrive, so memory stays bounded by the
sampling rate times the horizon (240 frames at the paper's 1 fps maximum and 240 s).
"""

from __future__ import annotations

import bisect
import math
from dataclasses import dataclass, replace

import numpy as np

DEFAULT_HORIZON_S = 240.0


@dataclass(frozen=True)
class LabelledFrame:
    """One training example: a camera frame and the teacher's label map for it."""

    stamp: float  # capture time in seconds (message stamp, not wall clock)
    frame: np.ndarray  # uint8 HxWx3 RGB
    label: np.ndarray  # uint8 hxw class ids, IGNORE_LABEL where the teacher abstains


def check_labelled_frame(frame: np.ndarray, label: np.ndarray) -> None:
    if frame.dtype != np.uint8 or frame.ndim != 3 or frame.shape[2] != 3:
        raise ValueError(f'frame must be uint8 HxWx3, got {frame.dtype} {frame.shape}')
    if label.dtype != np.uint8 or label.ndim != 2:
        raise ValueError(f'label must be uint8 HxW, got {label.dtype} {label.shape}')


class HorizonBuffer:
    """Labelled frames from the last `horizon_s` seconds, sampled uniformly for training.

    Stamps may arrive out of order; a second frame with the same stamp replaces the first.
    The horizon is measured back from the newest stamp seen (or a later `now` given to
    `evict`), which only moves forward, so an evicted frame never becomes eligible again.
    Only `shift` moves it otherwise, with every frame: the drone's clock was re-anchored.
    """

    def __init__(self, horizon_s: float = DEFAULT_HORIZON_S):
        if not horizon_s > 0:
            raise ValueError('horizon_s must be positive')
        self.horizon_s = float(horizon_s)
        self._stamps: list[float] = []  # sorted, so window queries are two bisections
        self._items: dict[float, LabelledFrame] = {}
        self._latest: float | None = None

    def __len__(self) -> int:
        return len(self._stamps)

    @property
    def newest_stamp(self) -> float | None:
        """Latest capture time seen (kept even if that frame was later replaced or evicted)."""
        return self._latest

    def add(self, stamp: float, frame: np.ndarray, label: np.ndarray) -> bool:
        """Insert a labelled frame; return False if it is already older than the horizon."""
        check_labelled_frame(frame, label)
        stamp = float(stamp)
        if stamp not in self._items:
            bisect.insort(self._stamps, stamp)
        self._items[stamp] = LabelledFrame(stamp, frame, label)
        self.evict(stamp)
        return stamp in self._items

    def evict(self, now: float | None = None) -> int:
        """Drop frames older than the horizon before max(now, newest stamp); return how many."""
        if now is not None:
            self._latest = float(now) if self._latest is None else max(self._latest, float(now))
        if self._latest is None:
            return 0
        cut = bisect.bisect_left(self._stamps, self._latest - self.horizon_s)
        for stamp in self._stamps[:cut]:
            del self._items[stamp]
        del self._stamps[:cut]
        return cut

    def shift(self, offset: float) -> None:
        """Add `offset` seconds to every stamp (the drone's clock was re-anchored).

        The frames, their order and the newest stamp move together, so the buffer holds and
        samples exactly what it did, on the new clock.
        """
        offset = float(offset)
        if not math.isfinite(offset):
            raise ValueError(f'offset must be finite, got {offset}')
        # Rebuilt rather than shifted in place: rounding may merge two nearby stamps.
        items = {}
        for stamp in self._stamps:
            items[stamp + offset] = replace(self._items[stamp], stamp=stamp + offset)
        self._items = items
        self._stamps = sorted(items)
        if self._latest is not None:
            self._latest += offset

    def window(self, now: float | None = None,
               horizon_s: float | None = None) -> list[LabelledFrame]:
        """Frames with now - horizon <= stamp <= now, oldest first (now: newest stamp)."""
        if now is None:
            now = self._latest
        if now is None:
            return []
        horizon = self.horizon_s if horizon_s is None else float(horizon_s)
        lo = bisect.bisect_left(self._stamps, now - horizon)
        hi = bisect.bisect_right(self._stamps, now)
        return [self._items[s] for s in self._stamps[lo:hi]]

    def sample(self, batch_size: int, rng: np.random.Generator, now: float | None = None,
               horizon_s: float | None = None) -> list[LabelledFrame]:
        """Uniform mini-batch from the window, without replacement.

        When the window holds fewer than `batch_size` frames the batch is the whole window
        (early in a flight), rather than repeating frames.
        """
        frames = self.window(now, horizon_s)
        count = min(int(batch_size), len(frames))
        picks = rng.choice(len(frames), size=count, replace=False)
        return [frames[i] for i in picks]
