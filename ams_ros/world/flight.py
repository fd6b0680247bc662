"""A seeded flight path: camera pose, lighting and haze as smooth functions of flight time.

The flight cruises between fast dashes and hovers, each segment with its own speed, turn rate
and altitude. The path is integrated once on a fine time grid and poses are interpolated from
it, so pose(t) is cheap and exactly repeatable.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ams_ros.world.map import DISTRICT_PX, FLIGHT_STREAM, METERS_PER_PX, seeded_rng

STEP_S = 0.1
PLAN_PAST_END_S = 10.0  # longer than any smoothing window, so the end is planned like the middle
BASE_FOOTPRINT_PX = 300  # ground width seen at altitude factor 1: 150 m

# Segment kinds: duration range (s), speed range (m/s), turn-rate std (rad/s).
SEGMENTS = {
    'cruise': ((20, 60), (6, 11), 0.05),
    'fast': ((10, 30), (18, 28), 0.02),
    'hover': ((8, 20), (0, 0), 0.0),
}


@dataclass(frozen=True)
class Pose:
    """Where the camera looks and under which light, at one instant."""

    x: float  # map px of the frame centre
    y: float
    heading: float  # rad; direction of travel in map coordinates, drawn as frame 'up'
    footprint: float  # map px across the frame width (grows with altitude)
    gain: tuple[float, float, float]  # per RGB channel illumination
    haze: float  # fraction of each pixel replaced by haze colour
    segment: str


@dataclass(frozen=True)
class Segment:
    kind: str
    start_s: float
    end_s: float
    speed: float  # m/s
    turn_rate: float  # rad/s
    altitude: float  # footprint factor the drone settles at


class Flight:
    """The path of a `duration_s` second flight; its frames are stamped start_s + t.

    A shorter flight of the same seed is a prefix of a longer one: every signal has its own
    random stream and is planned past the end.
    """

    def __init__(self, seed: int, duration_s: float = 600.0, start_s: float = 0.0):
        self.seed = int(seed)
        self.duration_s = float(duration_s)
        self.start_s = float(start_s)
        plan_rng, start_rng, *light_rng = (seeded_rng(self.seed, FLIGHT_STREAM, k)
                                           for k in range(5))
        plan = _plan(plan_rng, self.duration_s + PLAN_PAST_END_S)
        self.segments = [s for s in plan if s.start_s < self.duration_s]
        n = int(np.ceil((self.duration_s + PLAN_PAST_END_S) / STEP_S))
        index = np.searchsorted([s.end_s for s in plan], np.arange(n) * STEP_S, side='right')
        self._segment = [plan[i] for i in index]

        speed = _smooth([s.speed for s in self._segment], 2.0) / METERS_PER_PX
        heading = start_rng.uniform(0, 2 * np.pi) + np.cumsum(
            _smooth([s.turn_rate for s in self._segment], 2.0)) * STEP_S
        start = start_rng.uniform(0, 8 * DISTRICT_PX, 2)
        self._x = start[0] + np.cumsum(speed * np.cos(heading)) * STEP_S
        self._y = start[1] + np.cumsum(speed * np.sin(heading)) * STEP_S
        self._heading = heading
        altitude = np.log([s.altitude for s in self._segment])
        self._footprint = BASE_FOOTPRINT_PX * np.exp(_smooth(altitude, 6.0))
        self._light = 1.0 + 0.15 * _slow(light_rng[0], n, 40.0)
        self._tint = 0.05 * _slow(light_rng[1], n, 90.0)
        self._haze = np.clip(0.12 + 0.12 * _slow(light_rng[2], n, 60.0), 0.0, 0.4)

    def pose(self, t: float) -> Pose:
        """Return the camera pose at flight time t (s since take-off), held outside the flight."""
        i = float(np.clip(t, 0.0, self.duration_s)) / STEP_S
        i0 = int(i)
        w = i - i0

        def at(a):
            return float(a[i0] * (1 - w) + a[i0 + 1] * w)

        light, tint = at(self._light), at(self._tint)
        return Pose(
            x=at(self._x), y=at(self._y), heading=at(self._heading),
            footprint=at(self._footprint),
            gain=(light * (1 + tint), light, light * (1 - tint)),
            haze=at(self._haze),
            segment=self._segment[int(round(i))].kind,
        )


def _plan(rng, duration_s: float) -> list[Segment]:
    """Draw segments, each with the speed, turn rate and altitude it flies at, to cover a time."""
    segments, t, altitude = [], 0.0, 1.0
    kind = str(rng.choice(list(SEGMENTS)))
    while t < duration_s:
        lengths, speeds, turn_std = SEGMENTS[kind]
        length, speed, turn = rng.uniform(*lengths), rng.uniform(*speeds), rng.normal(0, turn_std)
        # Hovering holds the altitude it arrived at; moving segments climb or descend.
        new_altitude = float(np.exp(rng.uniform(-0.5, 0.5)))
        altitude = altitude if kind == 'hover' else new_altitude
        segments.append(Segment(kind, t, t + length, speed, turn, altitude))
        t += length
        kind = str(rng.choice(['fast', 'hover'])) if kind == 'cruise' else 'cruise'
    return segments


def _smooth(values, seconds: float) -> np.ndarray:
    """Average over a moving window of `seconds`, so speed, turn and altitude change gradually."""
    k = max(int(seconds / STEP_S), 1)
    padded = np.pad(np.asarray(values, float), (k // 2, k - 1 - k // 2), mode='edge')
    return np.convolve(padded, np.ones(k) / k, mode='valid')


def _slow(rng, n: int, period_s: float) -> np.ndarray:
    """Return a smooth random signal in about [-1, 1] that wanders over `period_s` seconds."""
    knots = rng.uniform(-1, 1, int(n * STEP_S / period_s) + 2)
    return np.interp(np.arange(n) * STEP_S / period_s, np.arange(len(knots)), knots)
