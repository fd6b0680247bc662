"""Per-drone budget of downlink bytes for whole-model snapshots.

A snapshot is the whole model (2.42 MB for the small student, about 8.5 MB for the 256x512 one)
where a patch is a few kB, and any drone that sends a malformed patch or a snapshot request can
ask for one. Two limits keep snapshots a small share of the downlink whatever a drone asks:

- A token bucket of bytes: ``rate_kbps`` on average, up to ``burst_bytes`` at once. A snapshot
  may go when the bucket holds its size (or is full, for one larger than the bucket), and its
  bytes are taken out, leaving the bucket in debt if need be.
- Exponential back-off while the drone does not confirm: after each snapshot the next one to
  this drone waits ``backoff_min_s``, then twice as long after each further unconfirmed one, up
  to ``backoff_max_s``. ``confirmed()`` (the drone reports running the snapshot's model) ends it.

The defaults keep snapshots at 100 kbit/s on average, 10% of a 1 Mbit/s downlink: one small
snapshot every 194 s once the burst is spent. The burst is two small snapshots (the first one
and a recovery right after it go at once); a ground serving the 256x512 student passes
``burst_bytes=2 * snapshot size``. Against a drone that asks without end this is about 1/190
of the 19 Mbit/s that one snapshot per second costs.

Requests are coalesced: ``request`` only notes that the drone wants a snapshot and says how long
until one may go; the caller answers once, when the wait is over (``pending`` says a request is
still unanswered), and calls ``sent``. Times are the caller's monotonic seconds. Not
thread-safe: one caller (the node's worker).
"""

from __future__ import annotations

import math

from ams_ros.checks import positive_finite


class SnapshotBudget:
    """Decide when the next snapshot to one drone may go (see the module docstring)."""

    def __init__(self, rate_kbps: float = 100.0, burst_bytes: int = 5_000_000,
                 backoff_min_s: float = 10.0, backoff_max_s: float = 300.0):
        # backoff_min_s: a drone repeats its request every 2 s until the snapshot arrives, and a
        # 2.42 MB snapshot takes 19 s on a 1 Mbit/s link; 10 s sends at most one extra copy.
        # backoff_max_s: the time the default rate takes to earn 1.5 small snapshots; a drone
        # still not running one by then needs an operator, not more snapshots.
        self.rate_bytes_s = positive_finite('rate_kbps', rate_kbps) * 1000 / 8
        self.burst_bytes = positive_finite('burst_bytes', burst_bytes)
        self.backoff_min_s = positive_finite('backoff_min_s', backoff_min_s)
        self.backoff_max_s = positive_finite('backoff_max_s', backoff_max_s)
        if self.backoff_max_s < self.backoff_min_s:
            raise ValueError('backoff_max_s must not be below backoff_min_s')
        self.pending = False  # a request not answered yet
        self._tokens = self.burst_bytes
        self._filled_at: float | None = None
        self._backoff = self.backoff_min_s  # wait after the next snapshot
        self._not_before = -math.inf  # no snapshot before this time (back-off)
        self._unconfirmed = False  # a snapshot went and the drone has not confirmed it

    def request(self, now: float, size_bytes: int) -> float:
        """Note a request for a snapshot of `size_bytes`; return the seconds until it may go."""
        self._refill(now)
        self.pending = True
        missing = min(float(size_bytes), self.burst_bytes) - self._tokens
        return max(0.0, missing / self.rate_bytes_s, self._not_before - now)

    def sent(self, now: float, size_bytes: int) -> None:
        """Record a snapshot of `size_bytes` sent at `now`: it answers every pending request."""
        self._refill(now)
        self._tokens -= float(size_bytes)
        self._not_before = now + self._backoff
        self._backoff = min(2 * self._backoff, self.backoff_max_s)
        self._unconfirmed = True
        self.pending = False

    def confirmed(self) -> None:
        """Record that the drone runs the model of the last snapshot sent: back-off ends.

        Call it when the drone's status shows that snapshot's model and version; it does
        nothing until another snapshot goes, so every such status may call it. Requests made
        meanwhile were for that snapshot, then on its way, and are dropped.
        """
        if not self._unconfirmed:
            return
        self._unconfirmed = False
        self._backoff = self.backoff_min_s
        self._not_before = -math.inf
        self.pending = False

    def _refill(self, now: float) -> None:
        if self._filled_at is not None and now > self._filled_at:
            self._tokens = min(self.burst_bytes,
                               self._tokens + (now - self._filled_at) * self.rate_bytes_s)
        if self._filled_at is None or now > self._filled_at:
            self._filled_at = now
