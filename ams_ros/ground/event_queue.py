"""What the ground's message callbacks hand its worker: a bounded queue of drone events.

Callbacks must never block on training, and no drone may fill the memory by sending faster
than the worker trains: the queue keeps at most ``max_batches`` frame batches (the oldest go
first, counted in ``batches_dropped``) and only the newest status of each drone. The worker
takes everything at once, contacts and snapshot requests before batches, so a request waits for
at most the phase in progress. Thread-safe.
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

CONTACT, SNAPSHOT, STATUS, BATCH = 'contact', 'snapshot', 'status', 'batch'


@dataclass(frozen=True)
class DroneEvent:
    kind: str  # CONTACT, SNAPSHOT (a request; data: its reason), STATUS or BATCH
    client_id: str
    data: object = None


class EventQueue:
    """Bounded FIFO of drone events (see the module docstring)."""

    def __init__(self, max_batches: int = 32):
        if not (isinstance(max_batches, int) and max_batches >= 1):
            raise ValueError(f'max_batches must be an integer >= 1, got {max_batches}')
        self.max_batches = max_batches
        self.batches_dropped = 0
        self.closed = False
        self._events: deque[DroneEvent] = deque()
        self._ready = threading.Condition()

    def __len__(self) -> int:
        with self._ready:
            return len(self._events)

    def put(self, event: DroneEvent) -> None:
        with self._ready:
            if event.kind in (BATCH, STATUS):
                queued = [e for e in self._events if e.kind == event.kind
                          and (event.kind == BATCH or e.client_id == event.client_id)]
                if len(queued) >= (self.max_batches if event.kind == BATCH else 1):
                    self._events.remove(queued[0])
                    self.batches_dropped += event.kind == BATCH
            self._events.append(event)
            self._ready.notify()

    def take(self, timeout: float, work_waiting: Callable[[], bool]) -> list[DroneEvent] | None:
        """Wait up to `timeout` s for events (or for `work_waiting()`); None once closed."""
        with self._ready:
            self._ready.wait_for(lambda: self._events or self.closed or work_waiting(),
                                 timeout=timeout)
            if self.closed:
                return None
            events = sorted(self._events, key=lambda e: e.kind == BATCH)  # stable
            self._events.clear()
            return events

    def close(self) -> None:
        with self._ready:
            self.closed = True
            self._ready.notify_all()
