"""One batch of sampled frames on its way from a drone to the ground (ams_msgs/FrameBatch)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ams_ros.wire.frame_codec import decode_frames


@dataclass(frozen=True)
class UplinkBatch:
    """One ams_msgs/FrameBatch message's content (all but the header)."""

    client_id: str
    seq: int
    codec: str
    width: int
    height: int
    stamps: tuple[float, ...]
    data: bytes
    sampling_rate: float
    update_period: float


def decode_batch(batch: UplinkBatch) -> np.ndarray:
    """Return the batch's frames (N x H x W x 3 RGB); FrameCodecError if the data is damaged."""
    return decode_frames(batch.data, batch.codec, batch.width, batch.height, len(batch.stamps))
