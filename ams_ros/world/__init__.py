"""A deterministic synthetic aerial world: the data the project makes for itself.

A drone camera looks straight down on an unbounded procedural map of districts (urban, suburb,
rural, lakeside) with six classes, CLASS_NAMES: road, building, vegetation, water, field and
vehicles that drive along the roads. Flights mix cruise, fast and hover segments, climb and
descend (scale), turn (rotation), and fly through slowly changing light and haze. Everything is
a pure function of one integer seed, for any frame size:

    video = AerialVideo(seed=1003, duration_s=600.0, start_s=0.0)
    frame, label = video.render(t=42.0, height=256, width=512)  # uint8 HxWx3 RGB, uint8 HxW
    for stamp, frame, label in video.frames(fps=1.0, height=256, width=512): ...
    PerfectTeacher(video).label(frames, stamps)  # the true labels at those capture stamps

Districts share one bank of looks (colour + texture) but give them to different classes: what
is water in one district looks like roofs or a road in another. A student pretrained on many
flights therefore cannot read the class off the colour and has a real accuracy gap on a new
flight; specialising to the flight's recent frames closes it, as in the AMS paper.

Split convention: flights with seed < FIRST_HELD_OUT_SEED (1000) are for pretraining; seeds
from FIRST_HELD_OUT_SEED up are held-out evaluation flights, over worlds no pretrained model saw.
"""

import numpy as np

from ams_ros.world.flight import Flight, Pose, Segment
from ams_ros.world.map import CLASS_NAMES, NUM_CLASSES, PALETTE, World
from ams_ros.world.render import render_view
from ams_ros.world.teacher import PerfectTeacher
from ams_ros.world.video import AerialVideo

FIRST_HELD_OUT_SEED = 1000


def is_held_out(seed: int) -> bool:
    return seed >= FIRST_HELD_OUT_SEED


def colour_table(colours=None) -> np.ndarray:
    """Return class id -> RGB: `colours` (default PALETTE) first, then fixed colours.

    The ignore label is black.
    """
    colours = PALETTE if colours is None or not len(colours) else np.asarray(colours, np.uint8)
    lut = np.random.default_rng(0).integers(40, 256, (256, 3)).astype(np.uint8)
    lut[:len(colours)] = colours
    lut[255] = 0  # IGNORE_LABEL
    return lut


def colourise(label: np.ndarray) -> np.ndarray:
    """Return an RGB picture of a label map (colour_table)."""
    return colour_table()[label]


__all__ = [
    'AerialVideo', 'CLASS_NAMES', 'FIRST_HELD_OUT_SEED', 'Flight', 'NUM_CLASSES', 'PALETTE',
    'PerfectTeacher', 'Pose', 'Segment', 'World', 'colour_table', 'colourise', 'is_held_out',
    'render_view',
]
