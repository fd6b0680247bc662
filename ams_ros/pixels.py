"""Resizing camera frames and class-id maps: one convention for the drone, the ground and scores.

Frames (uint8 RGB) are resized with area averaging when shrinking (every source pixel counts)
and bilinearly when growing. Class-id maps are resized nearest-neighbour with the pixel-centre
convention: output pixel i takes input pixel ``floor((i + 0.5) * in / out)``, torch's
'nearest-exact', so a map scaled down and back up does not drift by half a pixel; ids are
never interpolated, which would invent classes. Masks, teacher labels, training targets and
scores all go through ``resize_labels``, so the demo and ``ams eval`` score the same mask
the same way.
"""

from __future__ import annotations

import cv2
import numpy as np


def resize_frame(frame_rgb: np.ndarray, height: int, width: int) -> np.ndarray:
    """Resize an RGB uint8 frame to height x width: area averaging down, bilinear up."""
    frame_rgb = np.asarray(frame_rgb)
    if frame_rgb.dtype != np.uint8 or frame_rgb.ndim != 3 or frame_rgb.shape[2] != 3:
        raise ValueError(f'expected a uint8 HxWx3 frame, got {frame_rgb.dtype} {frame_rgb.shape}')
    if frame_rgb.shape[:2] == (height, width):
        return np.ascontiguousarray(frame_rgb)
    shrinking = frame_rgb.shape[0] * frame_rgb.shape[1] > height * width
    return cv2.resize(frame_rgb, (width, height),
                      interpolation=cv2.INTER_AREA if shrinking else cv2.INTER_LINEAR)


def resize_labels(labels: np.ndarray, height: int, width: int) -> np.ndarray:
    """Resize a class-id map (..., h, w) of any integer type to height x width (module doc)."""
    labels = np.asarray(labels)
    in_height, in_width = labels.shape[-2:]
    if (in_height, in_width) == (height, width):
        return labels
    rows = ((np.arange(height) + 0.5) * in_height / height).astype(np.int64)
    cols = ((np.arange(width) + 0.5) * in_width / width).astype(np.int64)
    return np.take(np.take(labels, rows, axis=-2), cols, axis=-1)
