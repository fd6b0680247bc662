"""The drone's two frame workers: inference on the newest camera frame, then the uplink sampler.

The camera callback only offers frames; a slow model skips frames (the offer says so, to be
counted as dropped) instead of building a backlog, and an H.264 encode on the uplink worker never
delays a mask. Each worker survives a failure of one item; once the pipeline is closed, or the
owner says it is shutting down, a failure ends the worker quietly.
"""

from __future__ import annotations

import threading
from collections.abc import Callable

from ams_ros.drone.latest_slot import LatestSlot


class FramePipeline:
    """Camera frames → `infer` (returns what the uplink needs, or None) → `send`."""

    def __init__(self, infer: Callable[[object], object | None], send: Callable[[object], None],
                 on_error: Callable[[str, Exception], None],
                 shutting_down: Callable[[], bool] = lambda: False):
        self._infer, self._send = infer, send
        self._on_error = on_error  # (worker name, error)
        self._shutting_down = shutting_down
        self._closed = False
        self._frames = LatestSlot()  # newest camera frame
        self._inferred = LatestSlot()  # newest inferred frame, for the sampler
        self._workers = [
            threading.Thread(target=self._serve, args=(self._frames, self._infer_one, 'frame'),
                             name='ams-inference', daemon=True),
            threading.Thread(target=self._serve, args=(self._inferred, self._send, 'uplink'),
                             name='ams-uplink', daemon=True)]
        for worker in self._workers:
            worker.start()

    def offer(self, frame) -> bool:
        """Hand over a camera frame; True when it replaced one inference had not reached."""
        return self._frames.put(frame)

    def close(self, timeout: float = 5.0) -> None:
        self._closed = True
        self._frames.close()
        self._inferred.close()
        for worker in self._workers:
            worker.join(timeout=timeout)

    def _infer_one(self, frame) -> None:
        inferred = self._infer(frame)
        if inferred is not None:
            self._inferred.put(inferred)

    def _serve(self, slot: LatestSlot, handle: Callable[[object], None], name: str) -> None:
        while (item := slot.take()) is not None:
            try:
                handle(item)
            except Exception as e:  # noqa: BLE001 - one bad item never stops the worker
                if self._closed or self._shutting_down():
                    return  # the owner's publishers may be gone
                self._on_error(name, e)
