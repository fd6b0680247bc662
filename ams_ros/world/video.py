"""A flight over its world as a video: render any instant, or iterate frames at a frame rate."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np

from ams_ros.world.flight import Flight
from ams_ros.world.map import DEFAULT_LOOK_REGION, World
from ams_ros.world.render import render_view


class AerialVideo:
    """Flight `seed` over World(seed, look_region=...); frame stamps are flight.start_s + t."""

    def __init__(self, seed: int, duration_s: float = 600.0, start_s: float = 0.0,
                 look_region: int = DEFAULT_LOOK_REGION):
        self.world = World(seed, look_region=look_region)
        self.flight = Flight(seed, duration_s, start_s)

    def render(self, t: float, height: int, width: int) -> tuple[np.ndarray, np.ndarray]:
        """Return (frame uint8 HxWx3 RGB, label uint8 HxW) at flight time t."""
        return render_view(self.world, self.flight.pose(t), t, height, width)

    def look_dwell_s(self, step_s: float = 1.0) -> float:
        """Mean time (s) the camera centre stays under one set of looks during the flight.

        Consecutive districts that happen to draw the same looks count as one stretch; the
        flight's first and last stretches are cut by its ends, so this is at most its length.
        """
        flight, world = self.flight, self.world
        looks = []
        for t in np.arange(0.0, flight.duration_s, step_s):
            pose = flight.pose(float(t))
            looks.append(world.looks_at(*world.district_index(pose.x, pose.y)))
        changes = sum(a != b for a, b in zip(looks[:-1], looks[1:], strict=True))
        return flight.duration_s / (changes + 1)

    def render_at_stamp(self, stamp: float, height: int, width: int):
        return self.render(stamp - self.flight.start_s, height, width)

    def frames(self, fps: float, height: int, width: int, start_t: float = 0.0,
               stop_t: float | None = None) -> Iterator[tuple[float, np.ndarray, np.ndarray]]:
        """Yield (stamp, frame, label) every 1/fps seconds from start_t up to stop_t."""
        stop_t = self.flight.duration_s if stop_t is None else stop_t
        # Count frames rather than adding 1/fps repeatedly, so stamps do not drift.
        for i in range(int(np.floor((stop_t - start_t) * fps + 1e-9)) + 1):
            t = start_t + i / fps
            yield (self.flight.start_s + t, *self.render(t, height, width))
