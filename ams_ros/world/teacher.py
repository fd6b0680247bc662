"""A teacher that knows the world: it renders the true labels of a known flight."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from ams_ros.world.video import AerialVideo


class PerfectTeacher:
    """Labels frames of `video` from their capture stamps, at the frames' resolution.

    Only the frames' shape is read: the labels come from the world itself, so they are exact
    whatever the codec did to the pixels.
    """

    def __init__(self, video: AerialVideo):
        self.video = video

    def label(self, frames: np.ndarray, stamps: Sequence[float]) -> np.ndarray:
        frames = np.asarray(frames)
        if len(frames) != len(stamps):
            raise ValueError(f'{len(frames)} frames but {len(stamps)} stamps')
        height, width = frames.shape[1:3]
        labels = np.empty((len(frames), height, width), np.uint8)
        for i, stamp in enumerate(stamps):
            labels[i] = self.video.render_at_stamp(float(stamp), height, width)[1]
        return labels
