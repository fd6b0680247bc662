"""The procedural map: an unbounded grid of districts, each generated lazily from the seed.

A district is a square of DISTRICT_PX map pixels (METERS_PER_PX metres each) holding a class map,
its colour image (with a small mip pyramid for minified rendering) and the vehicles that drive
on its roads. Every district is a pure function of (world seed, district index), so districts
can be dropped from the cache and rebuilt identically.

Appearance is drawn from a fixed bank of looks (colour + texture). Each world assigns looks to
classes with a random permutation, and each district reassigns some of them, so one look is,
say, water in one district and roofs in the next: colour alone does not tell the class, the
district's context does.

How long a look stays in view is the world's drift. By default every district draws its own
departures, so a look stays in view for 26-45 s on flights 1000-1002 (AerialVideo.look_dwell_s);
with `look_region` R > 1 the departures are drawn once per block of R x R districts, so a look
persists over R times the distance (minutes of flight). The districts' layouts are the same at
any R.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass

import cv2
import numpy as np

CLASS_NAMES = ('road', 'building', 'vegetation', 'water', 'field', 'vehicle')
ROAD, BUILDING, VEGETATION, WATER, FIELD, VEHICLE = range(len(CLASS_NAMES))
NUM_CLASSES = len(CLASS_NAMES)

# Visualisation colours for label maps (RGB); unrelated to how the classes look in frames.
PALETTE = np.array([
    (128, 64, 128),   # road
    (220, 20, 60),    # building
    (60, 160, 40),    # vegetation
    (30, 110, 230),   # water
    (230, 200, 120),  # field
    (255, 230, 0),    # vehicle
], dtype=np.uint8)

METERS_PER_PX = 0.5
DISTRICT_PX = 1536  # 768 m: a cruising drone spends about a minute over one district
MIP_LEVELS = 4  # colour at 1, 1/2, 1/4, 1/8 resolution
BORDER_ROAD_PX = 12  # each district paves this much of its edge: neighbours join into one road
VEHICLE_REACH_PX = 16  # no part of a vehicle is farther than this from its centre


@dataclass(frozen=True)
class Look:
    """One appearance a class can take: mean colour, texture pattern and its contrast."""

    rgb: tuple[int, int, int]
    texture: str
    contrast: float


# Shared by all worlds: a pretrained student has seen every look, as every class.
LOOKS = (
    Look((74, 74, 78), 'grain', 0.12),       # asphalt grey
    Look((168, 82, 62), 'tiles', 0.16),      # terracotta
    Look((54, 94, 50), 'mottled', 0.28),     # dark canopy green
    Look((48, 96, 124), 'ripples', 0.14),    # blue-teal
    Look((192, 172, 124), 'stripes', 0.12),  # tan
    Look((158, 158, 152), 'grain', 0.08),    # concrete
    Look((122, 142, 62), 'stripes', 0.18),   # olive rows
    Look((42, 52, 62), 'smooth', 0.12),      # dark slate
    Look((124, 88, 58), 'mottled', 0.22),    # brown earth
    Look((214, 208, 198), 'tiles', 0.08),    # pale roofing
)


@dataclass(frozen=True)
class Kind:
    """Layout parameters of a district type."""

    name: str
    road_spacing: tuple[int, int] | None  # grid spacing in px; None: a few straight crossings
    lots: tuple[int, float, tuple[float, float]]  # pitch px, occupancy, building/lot size
    vegetation: float  # fraction of the district covered before roads and buildings
    water: float
    cars_per_px: float  # per lane


KINDS = (
    Kind('urban', (110, 180), (44, 0.9, (0.5, 0.95)), 0.10, 0.03, 1 / 70),
    Kind('suburb', (200, 320), (40, 0.7, (0.4, 0.75)), 0.28, 0.05, 1 / 140),
    Kind('rural', None, (64, 0.04, (0.3, 0.6)), 0.30, 0.07, 1 / 250),
    Kind('lakeside', None, (48, 0.08, (0.3, 0.6)), 0.32, 0.30, 1 / 200),
)
KIND_WEIGHTS = (0.3, 0.3, 0.25, 0.15)
# How many times a district departs from its world's looks (probability of 0, 1, 2 changes):
# the drift a flight-specialised student has to track as it crosses districts.
LOOK_CHANGES_P = (0.2, 0.5, 0.3)
# Land cover whose shape does not give its class away either: in some districts vegetation and
# water trade shapes (ragged ponds, smooth copses), in some the land is wooded with fields as
# clearings. A generic student is left guessing between them; one that has seen the flight's
# looks is not.
COVER_SHAPE_SWAP_P = 0.5
WOODLAND_P = 0.35
DEFAULT_LOOK_REGION = 1  # districts per side of a block that shares its looks


@dataclass(frozen=True)
class Vehicles:
    """Vehicles looping along straight lanes, in world map pixels: position(t) is closed-form."""

    start: np.ndarray      # (N, 2) lane start
    direction: np.ndarray  # (N, 2) unit vector along the lane
    lane_length: np.ndarray  # (N,)
    speed: np.ndarray      # (N,) px/s
    phase: np.ndarray      # (N,) px along the lane at t = 0
    size: np.ndarray       # (N, 2) length, width in px
    rgb: np.ndarray        # (N, 3) uint8

    def corners(self, t: float, lo: np.ndarray, hi: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Return (indices, (n, 4, 2) rectangle corners) of the vehicles near box lo-hi at t."""
        along = np.mod(self.phase + self.speed * t, self.lane_length)
        centre = self.start + self.direction * along[:, None]
        reach = VEHICLE_REACH_PX
        near = np.flatnonzero(((centre >= lo - reach) & (centre <= hi + reach)).all(1))
        centre, direction, size = centre[near], self.direction[near], self.size[near]
        ahead = direction * (size[:, :1] / 2)
        side = direction[:, ::-1] * np.array([-1.0, 1.0]) * (size[:, 1:] / 2)
        signs = np.array([[1, 1], [1, -1], [-1, -1], [-1, 1]], dtype=float)
        return near, (centre[:, None] + signs[None, :, :1] * ahead[:, None]
                      + signs[None, :, 1:] * side[:, None])


@dataclass(frozen=True)
class District:
    kind: str
    looks: tuple[int, ...]  # index into LOOKS for each class
    label: np.ndarray       # (DISTRICT_PX, DISTRICT_PX) uint8 static classes (no vehicles)
    colour: tuple[np.ndarray, ...]  # mip pyramid of RGBX uint8 images, level 0 first
    vehicles: Vehicles


class World:
    """An unbounded map made of districts; generated on demand and kept in a small cache."""

    def __init__(self, seed: int, cache_size: int = 8,
                 look_region: int = DEFAULT_LOOK_REGION):
        if not (isinstance(look_region, int) and look_region >= 1):
            raise ValueError(f'look_region must be a positive integer, got {look_region!r}')
        self.seed = int(seed)
        self.style = world_style(self.seed)
        self.look_region = look_region
        self.cache_size = cache_size
        self._cache: OrderedDict[tuple[int, int], District] = OrderedDict()

    def district(self, ix: int, iy: int) -> District:
        key = (int(ix), int(iy))
        if key in self._cache:
            self._cache.move_to_end(key)
            return self._cache[key]
        district = make_district(self.seed, self.style, *key, self.look_region)
        self._cache[key] = district
        if len(self._cache) > self.cache_size:
            self._cache.popitem(last=False)
        return district

    def looks_at(self, ix: int, iy: int) -> tuple[int, ...]:
        """Return district (ix, iy)'s looks without building it."""
        return _kind_and_looks(self.seed, self.style, ix, iy, self.look_region)[2]

    def district_index(self, x: float, y: float) -> tuple[int, int]:
        """Which district contains map point (x, y)."""
        return int(np.floor(x / DISTRICT_PX)), int(np.floor(y / DISTRICT_PX))

    def crop(self, layer: str, level: int, x0: int, y0: int, x1: int, y1: int) -> np.ndarray:
        """Copy the window [y0:y1, x0:x1] of 'label' or 'colour' (at mip level), across tiles."""
        size = DISTRICT_PX >> level
        sample = self._layer(self.district(x0 // size, y0 // size), layer, level)
        out = np.empty((y1 - y0, x1 - x0) + sample.shape[2:], sample.dtype)
        for iy in range(y0 // size, (y1 - 1) // size + 1):
            for ix in range(x0 // size, (x1 - 1) // size + 1):
                src = self._layer(self.district(ix, iy), layer, level)
                gx0, gx1 = max(x0, ix * size), min(x1, (ix + 1) * size)
                gy0, gy1 = max(y0, iy * size), min(y1, (iy + 1) * size)
                out[gy0 - y0:gy1 - y0, gx0 - x0:gx1 - x0] = \
                    src[gy0 - iy * size:gy1 - iy * size, gx0 - ix * size:gx1 - ix * size]
        return out

    @staticmethod
    def _layer(district: District, layer: str, level: int) -> np.ndarray:
        return district.label if layer == 'label' else district.colour[level]


# Purposes of the random streams drawn from one seed, so no two uses share a stream.
STYLE_STREAM, DISTRICT_STREAM, FLIGHT_STREAM, COVER_STREAM, REGION_STREAM = range(5)


def seeded_rng(seed: int, stream: int, *keys: int) -> np.random.Generator:
    """Return the generator for one purpose (stream) and index (keys, may be negative)."""
    # SeedSequence wants non-negative integers: fold the sign in.
    return np.random.default_rng([2 * k if k >= 0 else -2 * k - 1 for k in (seed, stream, *keys)])


def world_style(seed: int) -> tuple[int, ...]:
    """Return the world's default look for each class: distinct looks in a seeded order."""
    rng = seeded_rng(seed, STYLE_STREAM)
    return tuple(int(i) for i in rng.permutation(len(LOOKS))[:NUM_CLASSES])


def district_looks(style: tuple[int, ...], rng: np.random.Generator) -> tuple[int, ...]:
    """Reassign up to two classes' looks: swap two classes' or take a look the world lacks."""
    looks = list(style)
    for _ in range(rng.choice(len(LOOK_CHANGES_P), p=LOOK_CHANGES_P)):
        a = int(rng.integers(NUM_CLASSES))
        if rng.random() < 0.5:
            b = (a + 1 + int(rng.integers(NUM_CLASSES - 1))) % NUM_CLASSES
            looks[a], looks[b] = looks[b], looks[a]
        else:
            looks[a] = int(rng.choice([i for i in range(len(LOOKS)) if i not in looks]))
    return tuple(looks)


def _region_looks(seed: int, style: tuple[int, ...], ix: int, iy: int,
                  look_region: int) -> tuple[int, ...]:
    """Return the looks of district (ix, iy)'s block of look_region x look_region districts."""
    rng = seeded_rng(seed, REGION_STREAM, ix // look_region, iy // look_region)
    return district_looks(style, rng)


def _kind_and_looks(seed: int, style: tuple[int, ...], ix: int, iy: int, look_region: int):
    """Return (the district's generator, its Kind, its looks): the first draws of a district."""
    rng = seeded_rng(seed, DISTRICT_STREAM, ix, iy)
    kind = KINDS[rng.choice(len(KINDS), p=KIND_WEIGHTS)]
    looks = district_looks(style, rng)  # drawn at any region size: the layout stays the same
    if look_region > 1:
        looks = _region_looks(seed, style, ix, iy, look_region)
    return rng, kind, looks


def make_district(seed: int, style: tuple[int, ...], ix: int, iy: int,
                  look_region: int = DEFAULT_LOOK_REGION) -> District:
    rng, kind, looks = _kind_and_looks(seed, style, ix, iy, look_region)
    cover = seeded_rng(seed, COVER_STREAM, ix, iy)
    shapes = (_vegetation_field, _water_field)
    if cover.random() < COVER_SHAPE_SWAP_P:
        shapes = shapes[::-1]
    ground, patches = (VEGETATION, FIELD) if cover.random() < WOODLAND_P else (FIELD, VEGETATION)
    label = np.full((DISTRICT_PX, DISTRICT_PX), ground, np.uint8)
    label[_threshold(shapes[0](rng), kind.vegetation)] = patches
    label[_threshold(shapes[1](rng), kind.water)] = WATER
    lanes = _draw_roads(label, kind, rng)
    shade = _place_buildings(label, kind, lanes, rng)
    colour = _paint(label, shade, looks, rng)
    offset = np.array([ix, iy], float) * DISTRICT_PX
    vehicles = _make_vehicles(lanes, offset, kind, LOOKS[looks[VEHICLE]], rng)
    return District(kind.name, looks, label, _mips(colour), vehicles)


def smooth_noise(rng: np.random.Generator, size: int, cell: float) -> np.ndarray:
    """Return zero-mean, unit-std noise with features about `cell` pixels wide."""
    knots = int(np.ceil(size / cell)) + 1
    coarse = rng.standard_normal((knots, knots)).astype(np.float32)
    field = cv2.resize(coarse, (size, size), interpolation=cv2.INTER_CUBIC)
    sample = field[::4, ::4]
    return (field - sample.mean()) / (sample.std() + 1e-6)


def _vegetation_field(rng):
    # Mid-scale blobs with fine-scale ragged edges.
    return (smooth_noise(rng, DISTRICT_PX, 160) + 0.5 * smooth_noise(rng, DISTRICT_PX, 40)
            + 0.25 * smooth_noise(rng, DISTRICT_PX, 10))


def _water_field(rng):
    # Large blobs with smooth shores.
    return smooth_noise(rng, DISTRICT_PX, 380) + 0.3 * smooth_noise(rng, DISTRICT_PX, 120)


def _threshold(field: np.ndarray, fraction: float) -> np.ndarray:
    return field > np.quantile(field[::8, ::8], 1.0 - fraction)


def _draw_roads(label: np.ndarray, kind: Kind, rng) -> list[tuple[np.ndarray, np.ndarray, int]]:
    """Pave the border and internal roads; return the internal roads as (p0, p1, width)."""
    s, b = DISTRICT_PX, BORDER_ROAD_PX
    label[:b], label[-b:], label[:, :b], label[:, -b:] = ROAD, ROAD, ROAD, ROAD
    roads = []
    if kind.road_spacing is not None:
        for axis in (0, 1):
            pos = float(rng.uniform(*kind.road_spacing)) / 2
            while pos < s - kind.road_spacing[0] / 2:
                p = np.array([pos, 0.0]) if axis == 0 else np.array([0.0, pos])
                q = p + (np.array([0.0, s]) if axis == 0 else np.array([s, 0.0]))
                roads.append((p, q, int(rng.integers(14, 22))))
                pos += float(rng.uniform(*kind.road_spacing))
    else:
        for _ in range(int(rng.integers(1, 4))):
            roads.append(_crossing_road(rng))
    for p, q, width in roads:
        cv2.line(label, _pt(p), _pt(q), ROAD, width)
    return roads


def _crossing_road(rng):
    # A straight road through a random point at a random angle, from edge to edge.
    centre = rng.uniform(0.2, 0.8, 2) * DISTRICT_PX
    angle = rng.uniform(0, np.pi)
    d = np.array([np.cos(angle), np.sin(angle)])
    return centre - d * 2 * DISTRICT_PX, centre + d * 2 * DISTRICT_PX, int(rng.integers(14, 24))


def _pt(p) -> tuple[int, int]:
    return int(round(p[0])), int(round(p[1]))


def _lots(roads, axis: int, pitch: int) -> np.ndarray:
    """Split the district along one axis into (start, end) lots between the straight roads."""
    edges = [(0.0, BORDER_ROAD_PX), (DISTRICT_PX, BORDER_ROAD_PX)]
    edges += [(p[axis], w) for p, q, w in roads if p[axis] == q[axis]]
    edges.sort()
    lots = []
    for (left, lw), (right, rw) in zip(edges[:-1], edges[1:], strict=True):
        lo, hi = left + lw / 2, right - rw / 2
        n = max(int(round((hi - lo) / pitch)), 1)
        cuts = np.linspace(lo, hi, n + 1)
        lots += list(zip(cuts[:-1], cuts[1:], strict=True))
    return np.array(lots)


def _place_buildings(label: np.ndarray, kind: Kind, roads, rng) -> np.ndarray:
    """Put a rectangle in some lots of each block, where free of road and water; return shading."""
    pitch, occupancy, fill = kind.lots
    xs, ys = _lots(roads, 0, pitch), _lots(roads, 1, pitch)
    lot = np.array([(x0, y0, x1, y1) for y0, y1 in ys for x0, x1 in xs])
    span = lot[:, 2:] - lot[:, :2] - 6  # 3 px of every lot edge stay clear: a pavement
    size = span * rng.uniform(*fill, (len(lot), 2))
    corner = lot[:, :2] + 3 + rng.random((len(lot), 2)) * (span - size)
    x0, y0 = np.round(corner).astype(int).T
    x1, y1 = np.round(corner + size).astype(int).T
    blocked = cv2.integral(((label == ROAD) | (label == WATER)).view(np.uint8))
    a0, b0 = np.maximum(x0 - 1, 0), np.maximum(y0 - 1, 0)
    a1, b1 = np.minimum(x1 + 1, DISTRICT_PX), np.minimum(y1 + 1, DISTRICT_PX)
    hits = blocked[b1, a1] - blocked[b0, a1] - blocked[b1, a0] + blocked[b0, a0]
    keep = (hits == 0) & (rng.random(len(lot)) < occupancy) & (x1 > x0) & (y1 > y0)
    shade = np.ones(label.shape, np.float32)
    for i in np.flatnonzero(keep):
        label[y0[i]:y1[i], x0[i]:x1[i]] = BUILDING
        shade[y0[i]:y1[i], x0[i]:x1[i]] = rng.uniform(0.8, 1.2)
    # Cast shadows on whatever lies beside each building (sun from the upper left).
    dx, dy = rng.integers(3, 9, 2)
    roof = label == BUILDING
    behind = np.zeros_like(roof)
    behind[dy:, dx:] = roof[:-dy, :-dx]
    shade[behind & ~roof] *= 0.6
    return shade


def texture(name: str, rng: np.random.Generator, grain: np.ndarray) -> np.ndarray:
    """Return a zero-mean pattern, roughly in [-1, 1], the size of `grain` (fine noise)."""
    size = grain.shape[0]
    if name == 'grain':
        return grain
    if name == 'mottled':
        return 0.7 * smooth_noise(rng, size, 6) + 0.5 * smooth_noise(rng, size, 30) + 0.2 * grain
    if name == 'smooth':
        return 0.6 * smooth_noise(rng, size, 120) + 0.15 * grain
    axis = np.arange(size, dtype=np.float32)
    if name == 'stripes':
        angle, period = rng.uniform(0, np.pi), rng.uniform(6, 12)
        k = 2 * np.pi / period
        along = axis[None, :] * (k * np.cos(angle)) + axis[:, None] * (k * np.sin(angle))
        return np.sin(along + 1.5 * smooth_noise(rng, size, 90)) + 0.3 * grain
    if name == 'ripples':
        return np.sin(5 * smooth_noise(rng, size, 40)) * 0.8 + 0.2 * grain
    if name == 'tiles':
        wave = np.sin(axis * (2 * np.pi / rng.uniform(5, 9)))
        return np.sign(wave[None, :] * wave[:, None]) * 0.6 + 0.3 * grain
    raise ValueError(f'unknown texture {name!r}')


def _paint(label: np.ndarray, shade: np.ndarray, looks, rng) -> np.ndarray:
    """Colour each static class with its look, jittered per district."""
    base = np.array([LOOKS[i].rgb for i in looks], np.float32) * rng.uniform(0.9, 1.1, (6, 3))
    contrast = np.array([LOOKS[i].contrast for i in looks], np.float32) * rng.uniform(0.8, 1.25, 6)
    # Classes never share a pixel, so they can share one fine-noise field.
    grain = rng.standard_normal(label.shape, np.float32)
    grain = cv2.GaussianBlur(grain, (3, 3), 0.8)
    pattern = np.zeros(label.shape, np.float32)
    for c in range(NUM_CLASSES):
        if c != VEHICLE:  # vehicles are drawn per frame
            own = contrast[c] * texture(LOOKS[looks[c]].texture, rng, grain)
            pattern = cv2.copyTo(own, (label == c).view(np.uint8), pattern)
    gain = cv2.merge([(1.0 + pattern) * shade] * 3)
    lut = np.zeros((256, 1, 3), np.float32)
    lut[:len(base), 0] = base
    rgb = cv2.multiply(cv2.LUT(cv2.merge([label] * 3), lut), gain, dtype=cv2.CV_8U)
    # A fourth, unused channel: OpenCV warps 4-channel images about twice as fast as 3.
    return cv2.cvtColor(rgb, cv2.COLOR_RGB2RGBA)


def _mips(colour: np.ndarray) -> tuple[np.ndarray, ...]:
    levels = [colour]
    for _ in range(MIP_LEVELS - 1):
        h, w = levels[-1].shape[:2]
        levels.append(cv2.resize(levels[-1], (w // 2, h // 2), interpolation=cv2.INTER_AREA))
    return tuple(levels)


def _make_vehicles(roads, offset, kind: Kind, look: Look, rng) -> Vehicles:
    """Two opposite lanes per internal road, vehicles spread along each at their own speeds."""
    lanes = []
    for p, q, width in roads:
        p, q = _clip_to_district(p, q)
        d = (q - p) / np.linalg.norm(q - p)
        normal = np.array([-d[1], d[0]]) * width / 4
        lanes += [(p + normal, q + normal), (q - normal, p - normal)]
    start, direction, length = [], [], []
    for p, q in lanes:
        n = rng.poisson(np.linalg.norm(q - p) * kind.cars_per_px)
        start += [p + offset] * n
        direction += [(q - p) / np.linalg.norm(q - p)] * n
        length += [np.linalg.norm(q - p)] * n
    n = len(start)
    truck = rng.random(n) < 0.1
    size = np.stack([np.where(truck, rng.uniform(16, 24, n), rng.uniform(8, 11, n)),
                     np.where(truck, rng.uniform(5, 6, n), rng.uniform(4, 5, n))], axis=1)
    rgb = np.clip(np.array(look.rgb) * rng.uniform(0.75, 1.25, (n, 1)), 0, 255)
    return Vehicles(
        start=np.array(start, float).reshape(n, 2),
        direction=np.array(direction, float).reshape(n, 2),
        lane_length=np.array(length, float),
        speed=rng.uniform(4, 14, n) / METERS_PER_PX,
        phase=rng.uniform(0, 1, n) * np.array(length, float),
        size=size,
        rgb=rgb.astype(np.uint8),
    )


def _clip_to_district(p, q):
    """Return the part of segment p-q inside the district (roads run edge to edge)."""
    _, a, b = cv2.clipLine((0, 0, DISTRICT_PX, DISTRICT_PX), _pt(p), _pt(q))
    return np.array(a, float), np.array(b, float)
