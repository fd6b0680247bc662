"""Hand the newest item to a worker thread: no backlog ever grows behind a slow worker."""

from __future__ import annotations

import threading


class LatestSlot:
    """One item waiting for a worker; a newer item replaces it (the drone's frame policy)."""

    def __init__(self):
        self._item = None
        self._full = False
        self._closed = False
        self._ready = threading.Condition()

    def put(self, item) -> bool:
        """Offer an item; return True when it replaced one the worker had not taken."""
        with self._ready:
            replaced, self._item, self._full = self._full, item, True
            self._ready.notify()
            return replaced

    def take(self):
        """Wait for the next item; None once the slot is closed."""
        with self._ready:
            self._ready.wait_for(lambda: self._full or self._closed)
            if self._closed:
                return None
            item, self._item, self._full = self._item, None, False
            return item

    def close(self) -> None:
        with self._ready:
            self._closed = True
            self._ready.notify_all()
