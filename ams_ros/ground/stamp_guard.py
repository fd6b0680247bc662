"""Per-drone check of a frame batch's capture stamps before they reach the horizon buffer.

The horizon buffer measures T_horizon back from the newest stamp it has seen, so a single batch
stamped far in the future would evict every frame and leave nothing to train on until real
time caught up with it. The guard keeps the drone's clock (the newest stamp it accepted) and
judges each batch against it:

- ``bad-stamps``: no stamps, a stamp that is not finite, negative or beyond ``MAX_STAMP_S`` (no
  ROS time is), stamps not in capture order, or a batch spanning more than ``max_spread_s``
  (a drone sends one update period per batch).
- On the clock: every stamp within ``max_jump_s`` of it. When the caller gives ``now`` (its own
  monotonic time of arrival), the clock may also have run on by the time elapsed since it last
  advanced, so a drone that kept its clock through a long silence just continues; a paused sim
  clock continues too.
- Off the clock: refused as ``stamp-jump`` and remembered as a candidate clock. When the next
  ``confirmations`` batches all continue from the candidate (on it, by the same rule), the drone's
  clock really jumped (GPS time sync, a bag that loops): the last of them is accepted with reason
  ``reanchor`` and an ``offset``, which the caller adds to every stamp it keeps from the old clock
  (``HorizonBuffer.shift``), so buffered frames stay usable. The old clock's newest stamp is placed
  on the new clock's first one: the true gap between them is unknown and at most a few update
  periods. A batch back on the old clock drops the candidate, so a single forged batch changes
  nothing.

The very first batch sets the clock. Not thread-safe: one caller per drone.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from ams_ros.checks import positive_finite

BAD_STAMPS = 'bad-stamps'
STAMP_JUMP = 'stamp-jump'
REANCHOR = 'reanchor'
# builtin_interfaces/Time holds int32 seconds (and < 4.3 s of nanoseconds): no message
# carries a later stamp.
MAX_STAMP_S = float(2**31 + 5)


@dataclass(frozen=True)
class StampGuardConfig:
    # Far beyond the gap between two batches (T_update, at most atr.period_max = 40 s by
    # default), far below a clock error that matters (hours, years).
    max_jump_s: float = 300.0
    # Batches after the jumped one that must continue from its clock: a forger has to send
    # three batches in a row, a real jump costs two.
    confirmations: int = 2
    # 4 x the longest update period (atr.period_max, 40 s by default): a batch holds one period.
    max_spread_s: float = 160.0

    def __post_init__(self):
        positive_finite('max_jump_s', self.max_jump_s)
        if not (isinstance(self.confirmations, int) and self.confirmations >= 1):
            raise ValueError(f'confirmations must be an integer >= 1, got {self.confirmations}')
        if not (math.isfinite(self.max_spread_s) and self.max_spread_s >= 0):
            raise ValueError(f'max_spread_s must be >= 0 and finite, got {self.max_spread_s}')


@dataclass(frozen=True)
class StampVerdict:
    accepted: bool
    reason: str = ''  # refused: BAD_STAMPS or STAMP_JUMP; accepted: '' or REANCHOR
    offset: float = 0.0  # REANCHOR: seconds to add to every stamp kept from the old clock
    detail: str = ''  # what was wrong, for the log


class StampRefused(Exception):
    """A batch whose stamps the guard refused; `reason` is the verdict's reason."""

    def __init__(self, verdict: StampVerdict):
        super().__init__(f'{verdict.reason}: {verdict.detail}')
        self.reason = verdict.reason
        self.verdict = verdict


@dataclass
class _Clock:
    newest: float  # newest stamp on this clock
    received: float | None  # caller's time when that stamp arrived
    first: float  # first stamp seen on this clock (a candidate's re-anchoring point)

    def holds(self, stamps: list[float], now: float | None, max_jump_s: float) -> bool:
        elapsed = 0.0
        if now is not None and self.received is not None:
            elapsed = max(0.0, now - self.received)
        return (self.newest - max_jump_s <= stamps[0]
                and stamps[-1] <= self.newest + elapsed + max_jump_s)

    def advance(self, stamps: list[float], now: float | None) -> None:
        if stamps[-1] > self.newest:
            self.newest, self.received = stamps[-1], now


class StampGuard:
    """Accept, refuse or re-anchor each batch of one drone (see the module docstring)."""

    def __init__(self, config: StampGuardConfig | None = None):
        self.config = config or StampGuardConfig()
        self._clock: _Clock | None = None
        self._candidate: _Clock | None = None
        self._confirmed = 0  # batches that continued from the candidate so far

    @property
    def newest_stamp(self) -> float | None:
        """The drone's clock: the newest stamp accepted."""
        return None if self._clock is None else self._clock.newest

    def check(self, stamps, now: float | None = None) -> StampVerdict:
        """Judge a batch's stamps (seconds); `now`: the caller's monotonic arrival time."""
        stamps = [float(s) for s in stamps]
        problem = self._malformed(stamps)
        if problem:
            return StampVerdict(False, BAD_STAMPS, detail=problem)
        config = self.config
        if self._clock is None:
            self._clock = _Clock(stamps[-1], now, stamps[0])
            return StampVerdict(True)
        if self._clock.holds(stamps, now, config.max_jump_s):
            self._clock.advance(stamps, now)
            self._candidate = None
            return StampVerdict(True)
        candidate = self._candidate
        if candidate is None or not candidate.holds(stamps, now, config.max_jump_s):
            self._candidate = _Clock(stamps[-1], now, stamps[0])
            self._confirmed = 0
            return self._jump(stamps)
        candidate.advance(stamps, now)
        self._confirmed += 1
        if self._confirmed < config.confirmations:
            return self._jump(stamps)
        offset = candidate.first - self._clock.newest
        self._clock, self._candidate = candidate, None
        return StampVerdict(True, REANCHOR, offset,
                            f'clock jumped by {offset:+.3f} s, confirmed by '
                            f'{config.confirmations} batches')

    def _jump(self, stamps: list[float]) -> StampVerdict:
        return StampVerdict(False, STAMP_JUMP, detail=(
            f'stamps {stamps[0]:.3f}..{stamps[-1]:.3f} s, the drone\'s clock is at '
            f'{self._clock.newest:.3f} s ({self._confirmed}/{self.config.confirmations} '
            'batches confirm the new clock)'))

    def _malformed(self, stamps: list[float]) -> str:
        if not stamps:
            return 'no stamps'
        if not all(math.isfinite(s) and 0.0 <= s <= MAX_STAMP_S for s in stamps):
            return f'a stamp is not finite or outside [0, {MAX_STAMP_S:.0f}] s'
        if any(b < a for a, b in zip(stamps, stamps[1:], strict=False)):
            return 'stamps are not in capture order'
        if stamps[-1] - stamps[0] > self.config.max_spread_s:
            return (f'stamps span {stamps[-1] - stamps[0]:.3f} s, more than '
                    f'{self.config.max_spread_s:g} s')
        return ''
