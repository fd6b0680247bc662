"""What the drone notices about its camera stream: a new resolution, frames without a stamp."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from ams_ros.counters import Counters


@dataclass
class CameraWatch:
    counters: Counters
    size: tuple[int, int] | None = None  # (height, width) of the last frame

    def resolution(self, shape: tuple[int, ...]) -> str | None:
        """Note a frame's size; return 'WxH -> WxH' (and count it) when it differs from the last.

        Masks follow the new size; the uplink resizes frames to its own fixed size, so a change
        is worth a log line, not an error.
        """
        size = (int(shape[0]), int(shape[1]))
        old, self.size = self.size, size
        if old is None or old == size:
            return None
        self.counters.count('camera_size_changes')
        return f'{old[1]}x{old[0]} -> {size[1]}x{size[0]}'

    def sample_stamp(self, header_stamp: float, receive_time: Callable[[], float]) -> float:
        """Return the stamp to sample on: the header's, or receive time for an unstamped camera."""
        if header_stamp != 0.0:
            return header_stamp
        self.counters.count('unstamped_frames')
        return receive_time()
