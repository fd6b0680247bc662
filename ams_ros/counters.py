"""Event counters a node reports: totals, the counts of the last report period, the last error."""

from __future__ import annotations

import threading
import time
from collections import Counter


class Counters:
    """Thread-safe counts by key (frames, bytes, errors by reason) and the last error's text."""

    def __init__(self):
        self.totals: Counter[str] = Counter()
        self.last_error = ''
        self._period: Counter[str] = Counter()
        self._period_start = time.monotonic()
        self._lock = threading.Lock()

    def count(self, key: str, n: int = 1) -> None:
        with self._lock:
            self.totals[key] += n
            self._period[key] += n

    def error(self, text: str, key: str = '') -> None:
        """Note an error; with a key it is counted under it and under 'errors'."""
        with self._lock:
            if key:
                for name in (key, 'errors'):
                    self.totals[name] += 1
                    self._period[name] += 1
            self.last_error = text

    def take_period(self) -> tuple[dict, dict, float]:
        """Return (totals, counts since the last call, seconds since the last call)."""
        now = time.monotonic()
        with self._lock:
            totals, period = dict(self.totals), dict(self._period)
            elapsed = max(now - self._period_start, 1e-6)
            self._period.clear()
            self._period_start = now
        return totals, period, elapsed
