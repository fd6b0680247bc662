"""The camera: one pose of the world as an RGB frame and its exactly aligned label map.

A frame is an affine warp (rotation, scale, translation) of the map: labels are sampled with
nearest neighbour from the full-resolution class map, colours bilinearly from the mip level
nearest the frame's scale, with the same geometry. Vehicles are then filled as polygons into
both, and lighting and haze change the colours only.
"""

from __future__ import annotations

import cv2
import numpy as np

from ams_ros.world.flight import Pose
from ams_ros.world.map import DISTRICT_PX, MIP_LEVELS, VEHICLE, VEHICLE_REACH_PX, World

HAZE_RGB = np.array([200.0, 206.0, 214.0])
_SUBPIXEL_BITS = 4  # polygon vertices at 1/16 px, so vehicles move smoothly


def frame_to_map(pose: Pose, height: int, width: int) -> np.ndarray:
    """Return the 2x3 matrix taking frame pixel (u, v) to map pixel (x, y)."""
    scale = pose.footprint / width
    c, s = np.cos(pose.heading), np.sin(pose.heading)
    # Frame right is the travel direction turned clockwise on the map; frame up is travel.
    linear = scale * np.array([[-s, -c], [c, -s]])
    centre = np.array([(width - 1) / 2, (height - 1) / 2])
    return np.hstack([linear, (np.array([pose.x, pose.y]) - linear @ centre)[:, None]])


def render_view(world: World, pose: Pose, t: float, height: int, width: int):
    """Return (frame uint8 HxWx3 RGB, label uint8 HxW) seen from `pose` at time t."""
    to_map = frame_to_map(pose, height, width)
    corners = np.array([[0, 0, 1], [width, 0, 1], [0, height, 1], [width, height, 1]], float)
    ground = corners @ to_map.T
    lo, hi = ground.min(0), ground.max(0)

    label = _warp(world, 'label', 0, to_map, lo, hi, height, width)
    level = int(np.clip(np.floor(np.log2(max(pose.footprint / width, 1.0))), 0, MIP_LEVELS - 1))
    frame = _warp(world, 'colour', level, to_map, lo, hi, height, width)

    _draw_vehicles(world, t, to_map, lo, hi, frame, label)
    return _light(frame, pose), label


def _warp(world, layer, level, to_map, lo, hi, height, width) -> np.ndarray:
    """Sample one map layer at the frame's pixels; the map is read only inside the footprint."""
    k = 2 ** level
    # Level-k pixel i covers map pixels [i k, (i + 1) k): map x sits at (x + 0.5) / k - 0.5.
    x0, y0 = (np.floor((lo + 0.5) / k - 0.5) - 1).astype(int)
    x1, y1 = (np.ceil((hi + 0.5) / k - 0.5) + 2).astype(int)
    src = world.crop(layer, level, x0, y0, x1, y1)
    to_src = to_map / k
    to_src[:, 2] += 0.5 / k - 0.5 - np.array([x0, y0])
    interp = cv2.INTER_NEAREST if layer == 'label' else cv2.INTER_LINEAR
    return cv2.warpAffine(src, to_src, (width, height), flags=interp | cv2.WARP_INVERSE_MAP,
                          borderMode=cv2.BORDER_REPLICATE)


def _draw_vehicles(world, t, to_map, lo, hi, frame, label):
    """Fill every vehicle inside the footprint into frame (its colour) and label (VEHICLE)."""
    to_frame = cv2.invertAffineTransform(to_map)
    # A vehicle's lane lies inside its own district, but its body may overhang the edge.
    margin = VEHICLE_REACH_PX
    (ix0, iy0), (ix1, iy1) = np.floor((np.array([lo, hi]) + [[-margin], [margin]]) / DISTRICT_PX)
    polygons, colours = [], []
    for iy in range(int(iy0), int(iy1) + 1):
        for ix in range(int(ix0), int(ix1) + 1):
            vehicles = world.district(ix, iy).vehicles
            near, corners = vehicles.corners(t, lo, hi)
            pts = corners @ to_frame[:, :2].T + to_frame[:, 2]
            polygons += list(np.round(pts * 2 ** _SUBPIXEL_BITS).astype(np.int32))
            colours += [(*(int(v) for v in rgb), 0) for rgb in vehicles.rgb[near]]
    for polygon, rgb in zip(polygons, colours, strict=True):
        cv2.fillConvexPoly(frame, polygon, rgb, shift=_SUBPIXEL_BITS)
    for polygon in polygons:
        cv2.fillConvexPoly(label, polygon, VEHICLE, shift=_SUBPIXEL_BITS)


def _light(frame: np.ndarray, pose: Pose) -> np.ndarray:
    """Scale each channel by the light and blend towards haze (a per-channel table); drop X."""
    levels = np.arange(256.0)[:, None]
    rgb = levels * (np.array(pose.gain) * (1.0 - pose.haze)) + HAZE_RGB * pose.haze
    table = np.clip(np.round(np.hstack([rgb, levels])), 0, 255).astype(np.uint8)
    return cv2.cvtColor(cv2.LUT(frame, table[:, None, :]), cv2.COLOR_RGBA2RGB)
