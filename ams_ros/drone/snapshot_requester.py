"""When the drone asks the ground for a whole-model snapshot.

At once when it needs one, then again while none has been applied, since the request or the
snapshot may be lost: the wait doubles from ``interval_s`` up to ``max_interval_s``, so a ground
that cannot answer is not flooded. A patch that arrives while a request waits shows that the
downlink works again, so it may re-arm the request at once (``at_once``): one request per patch at
most. Time is the caller's: the node's steady clock, the harness's simulated one.
"""

from __future__ import annotations

import math

from ams_ros.checks import positive_finite

MAX_INTERVAL_S = 60.0


class SnapshotRequester:
    """A pending snapshot request with a doubling back-off."""

    def __init__(self, interval_s: float = 2.0, max_interval_s: float = MAX_INTERVAL_S):
        self.interval_s = positive_finite('interval_s', interval_s)
        self.max_interval_s = max(positive_finite('max_interval_s', max_interval_s), interval_s)
        self.reason = ''  # why a snapshot is wanted; '' when none is
        self.sent = 0
        self._backoff = self.interval_s
        self._next = -math.inf

    def want(self, reason: str, *, at_once: bool = False) -> None:
        """Note that a snapshot is needed; a new (or re-armed) request is due at once."""
        if at_once or not self.reason:
            self._next = -math.inf
        self.reason = reason

    def due(self, now: float) -> str | None:
        """Return the reason to send a request with now (counted in `sent`), or None."""
        if not self.reason or now < self._next:
            return None
        self._next = now + self._backoff
        self._backoff = min(2 * self._backoff, self.max_interval_s)
        self.sent += 1
        return self.reason

    def answered(self) -> None:
        """Clear the request: a model was applied; the next request starts a new back-off."""
        self.reason = ''
        self._backoff = self.interval_s

    def set_interval(self, interval_s: float) -> None:
        """Change the first wait (a parameter update); a back-off in progress starts over."""
        self.interval_s = positive_finite('interval_s', interval_s)
        self._backoff = self.interval_s
