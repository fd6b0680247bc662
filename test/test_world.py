"""The synthetic world: determinism, geometry, motion, conflicting looks, the perfect teacher."""

import itertools

import cv2
import numpy as np
import pytest

from ams_ros.world import (
    CLASS_NAMES,
    NUM_CLASSES,
    PALETTE,
    AerialVideo,
    Flight,
    PerfectTeacher,
    World,
    colourise,
    is_held_out,
)
from ams_ros.world.map import VEHICLE
from ams_ros.world.render import frame_to_map

H, W = 64, 128


@pytest.fixture(scope='module')
def video():
    return AerialVideo(seed=1000, duration_s=300.0)


@pytest.fixture(scope='module')
def short():
    return AerialVideo(seed=7, duration_s=10.0, start_s=1000.0)


@pytest.fixture(scope='module')
def world3():
    return World(3)


def middles(video, kind):
    return [(s.start_s + s.end_s) / 2 for s in video.flight.segments
            if s.kind == kind and s.end_s < video.flight.duration_s]


def test_class_names_and_palette_cover_the_classes():
    assert len(CLASS_NAMES) == NUM_CLASSES == len(PALETTE) == 6
    assert len({tuple(c) for c in PALETTE}) == NUM_CLASSES
    assert colourise(np.array([[0, 5, 255]], np.uint8)).shape == (1, 3, 3)


def test_held_out_split():
    assert not is_held_out(0) and not is_held_out(999)
    assert is_held_out(1000)


def test_same_seed_renders_identical_frames(video):
    again = AerialVideo(seed=1000, duration_s=300.0)
    for t in (0.0, 4.2):  # within the first district, to keep the test quick
        frame, label = video.render(t, H, W)
        frame2, label2 = again.render(t, H, W)
        assert np.array_equal(frame, frame2) and np.array_equal(label, label2)


def test_a_district_is_a_function_of_seed_and_index_only(world3):
    fresh = World(3, cache_size=1).district(1, 1)
    cached = world3.district(1, 1)
    assert fresh is not cached
    assert np.array_equal(fresh.label, cached.label)
    assert np.array_equal(fresh.colour[0], cached.colour[0])
    assert np.array_equal(fresh.vehicles.phase, cached.vehicles.phase)


def test_different_seeds_differ(video):
    other = AerialVideo(seed=1001, duration_s=300.0)
    frame, label = video.render(10.0, H, W)
    frame2, label2 = other.render(10.0, H, W)
    assert np.abs(frame.astype(int) - frame2).mean() > 10
    assert not np.array_equal(label, label2)


def test_render_any_resolution_dtypes_and_label_range(video):
    for height, width in ((37, 91), (128, 256), (256, 512)):
        frame, label = video.render(50.0, height, width)
        assert frame.shape == (height, width, 3) and frame.dtype == np.uint8
        assert label.shape == (height, width) and label.dtype == np.uint8
        assert label.max() < NUM_CLASSES


def test_all_classes_appear_over_a_flight(video):
    seen = set()
    for _, _, label in video.frames(fps=0.1, height=H, width=W):
        seen |= set(np.unique(label).tolist())
    assert seen == set(range(NUM_CLASSES))


def test_flight_crosses_several_districts_and_has_every_segment_kind(video):
    flight = video.flight
    visited = {video.world.district_index(p.x, p.y)
               for p in (flight.pose(t) for t in np.arange(0, 300, 5.0))}
    assert len(visited) >= 3
    assert {s.kind for s in flight.segments} == {'cruise', 'fast', 'hover'}
    footprints = [flight.pose(t).footprint for t in np.arange(0, 300, 5.0)]
    assert max(footprints) > 1.3 * min(footprints)  # altitude changes


def test_a_shorter_flight_is_a_prefix_of_a_longer_one(video):
    short = Flight(1000, duration_s=100.0)
    for t in (0.0, 33.3, 99.9):
        assert short.pose(t) == video.flight.pose(t)
    assert [s.kind for s in short.segments] == [
        s.kind for s in video.flight.segments if s.start_s < 100.0]


def test_the_frame_looks_forward_along_the_path(video):
    """Flying forward, the ground streams from the top of the frame to the bottom."""
    t = middles(video, 'fast')[0]
    a, b = (cv2.cvtColor(video.render(t + dt, 128, 256)[0], cv2.COLOR_RGB2GRAY)
            for dt in (0.0, 0.2))
    (dx, dy), _ = cv2.phaseCorrelate(a.astype(np.float32), b.astype(np.float32))
    assert dy > 2.0 and abs(dx) < dy / 3


def test_labels_match_the_map_under_the_frame_geometry(video):
    """Each frame pixel's label is the map's class at the ground point the pixel looks at."""
    t = 20.0
    pose = video.flight.pose(t)
    frame, label = video.render(t, H, W)
    v, u = np.mgrid[0:H, 0:W]
    ground = np.stack([u.ravel(), v.ravel(), np.ones(u.size)], 1) @ frame_to_map(pose, H, W).T
    x, y = np.round(ground).astype(int).T
    truth = np.array([video.world.crop('label', 0, xi, yi, xi + 1, yi + 1)[0, 0]
                      for xi, yi in zip(x, y, strict=True)])
    static = label.ravel() != VEHICLE
    assert (truth[static] == label.ravel()[static]).mean() > 0.99


def test_colours_line_up_with_labels(video):
    """Classifying pixels by their frame's class colours agrees best with the unshifted label."""

    def agreement(frame, label, shift):
        label = np.roll(label, shift, axis=(0, 1))
        pixels = frame.reshape(-1, 3).astype(float)
        classes = [c for c in range(NUM_CLASSES) if (label == c).sum() > 50]
        means = np.array([pixels[label.ravel() == c].mean(0) for c in classes])
        nearest = np.array(classes)[np.argmin(((pixels[:, None] - means) ** 2).sum(-1), 1)]
        return (nearest == label.ravel()).mean()

    views = [video.render(t, 128, 256) for t in (5.0, 60.0, 100.0, 150.0, 200.0)]
    aligned = np.mean([agreement(f, lab, (0, 0)) for f, lab in views])
    shifted = np.mean([agreement(f, lab, (1, 1)) for f, lab in views])
    # Textures blur the class colours, so agreement is high but not 1; one pixel off costs more.
    assert aligned > 0.85
    assert aligned > shifted + 0.03


def test_world_crop_stitches_districts(world3):
    world = world3
    size = 1536
    window = world.crop('label', 0, size - 5, size - 7, size + 9, size + 4)
    expected = np.block([
        [world.district(0, 0).label[-7:, -5:], world.district(1, 0).label[-7:, :9]],
        [world.district(0, 1).label[:4, -5:], world.district(1, 1).label[:4, :9]],
    ])
    assert np.array_equal(window, expected)


def test_vehicles_drive_along_their_lanes(world3):
    vehicles = world3.district(0, 0).vehicles
    everywhere = (np.array([-1e9, -1e9]), np.array([1e9, 1e9]))
    near0, corners0 = vehicles.corners(0.0, *everywhere)
    near1, corners1 = vehicles.corners(0.5, *everywhere)
    assert len(near0) == len(near1) == len(vehicles.speed) > 20
    moved = np.linalg.norm(corners1.mean(1) - corners0.mean(1), axis=1)
    wrapped = moved > 2 * vehicles.speed.max()  # looped back to the lane start
    assert np.allclose(moved[~wrapped], 0.5 * vehicles.speed[~wrapped])
    assert wrapped.mean() < 0.1


def test_hover_is_still_but_vehicles_move_and_fast_flight_changes_the_view(video):
    def change(t):
        (f0, l0), (f1, l1) = video.render(t, H, W), video.render(t + 0.5, H, W)
        return np.abs(f0.astype(int) - f1).mean(), l0, l1

    fast, _, _ = change(middles(video, 'fast')[0])
    hovers = map(change, middles(video, 'hover'))
    hover, l0, l1 = next(c for c in hovers if (c[1] == VEHICLE).any())  # traffic in view
    assert hover < 1.5
    assert fast > 10 * hover

    # Over a hover only vehicles change the labels, and they do.
    differ = l0 != l1
    assert differ.any()
    assert ((l0[differ] == VEHICLE) | (l1[differ] == VEHICLE)).all()


def test_same_look_is_a_different_class_elsewhere(world3, video):
    """Some class in one district has the mean colour of another class in a different district."""
    districts = [world3.district(ix, iy) for ix, iy in itertools.product((0, 1), (0, 1))]
    poses = [video.flight.pose(t) for t in (0.0, 150.0)]
    districts += [video.world.district(*video.world.district_index(p.x, p.y)) for p in poses]
    means = {}
    for i, district in enumerate(districts):
        label, colour = district.label[::4, ::4], district.colour[0][::4, ::4, :3]
        means[i] = {c: colour[label == c].mean(0) for c in range(NUM_CLASSES)
                    if (label == c).sum() > 200}
    across, within = [], []
    for (a, ma), (b, mb) in itertools.product(means.items(), repeat=2):
        for x, y in itertools.product(ma, mb):
            if x != y:
                (within if a == b else across).append(np.linalg.norm(ma[x] - mb[y]))
    # Within a district classes look different; across districts some pair looks alike.
    assert min(within) > 20
    assert min(across) < 0.3 * min(within)


def test_frames_iterate_at_the_frame_rate_with_stamps_from_the_flight_start(short):
    video = short
    items = list(video.frames(fps=2.0, height=H, width=W, start_t=1.0, stop_t=3.0))
    stamps = [stamp for stamp, _, _ in items]
    assert stamps == [1001.0, 1001.5, 1002.0, 1002.5, 1003.0]
    stamp, frame, label = items[2]
    assert np.array_equal(frame, video.render(2.0, H, W)[0])


def test_perfect_teacher_returns_the_rendered_labels(short):
    stamps, frames, labels = zip(*short.frames(fps=1.0, height=H, width=W, stop_t=4.0),
                                 strict=True)
    teacher = PerfectTeacher(short)
    # Labels depend on the stamps, not on the pixels (which a codec may have changed).
    noisy = np.clip(np.array(frames, int) + 7, 0, 255).astype(np.uint8)
    out = teacher.label(noisy, list(stamps))
    assert out.shape == (len(stamps), H, W) and out.dtype == np.uint8
    assert np.array_equal(out, np.array(labels))
    assert not np.array_equal(out[0], out[-1])
    with pytest.raises(ValueError):
        teacher.label(noisy, stamps[:-1])


def test_a_look_region_shares_looks_across_its_districts_and_keeps_their_layouts():
    plain, regional = World(3), World(3, look_region=4)
    block = list(itertools.product(range(4), range(4)))
    assert len({regional.looks_at(ix, iy) for ix, iy in block}) == 1
    assert len({plain.looks_at(ix, iy) for ix, iy in block}) > 1
    # The next block draws its own; the districts' layouts are those of the plain world.
    assert {regional.looks_at(4 + ix, iy) for ix, iy in block} != {regional.looks_at(0, 0)}
    assert any(regional.looks_at(4 * bx, 0) != regional.looks_at(0, 0) for bx in range(1, 5))
    for ix, iy in ((0, 0), (5, 2)):
        a, b = plain.district(ix, iy), regional.district(ix, iy)
        assert a.looks == plain.looks_at(ix, iy) and b.looks == regional.looks_at(ix, iy)
        assert a.kind == b.kind and np.array_equal(a.label, b.label)
    with pytest.raises(ValueError, match='look_region'):
        World(3, look_region=0)


def test_looks_stay_in_view_longer_over_larger_look_regions():
    dwell = [AerialVideo(1001, 300.0, look_region=r).look_dwell_s() for r in (1, 2, 8)]
    assert dwell[0] < dwell[1] <= dwell[2] <= 300.0
    assert dwell[0] < 120.0  # the default world's districts change looks every minute or so
