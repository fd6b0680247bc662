"""Remote+Tracking and Just-In-Time on a tiny flight, optical-flow tracking, and the report."""

import json
import math
import re

import cv2
import numpy as np
import pytest
import torch
from support.tiny_student import calibrated_template

from ams_ros.evaluation.baselines import (
    SCHEMES,
    FarnebackParams,
    JustInTime,
    LabelTracker,
    RemoteTracking,
    backward_flow,
    to_gray,
    warp_labels,
)
from ams_ros.evaluation.core import EvalContext, SchemeResult
from ams_ros.evaluation.link import LinkConfig
from ams_ros.evaluation.report import matched_downlink, write_report
from ams_ros.evaluation.sources import CachedSource, SyntheticSource
from ams_ros.ground.drone_session import GroundConfig
from ams_ros.ground.trainer import TrainerConfig
from ams_ros.model.student import InputSpec

# -- optical-flow tracking --------------------------------------------------------------------


def translating_scene(steps, shift=2, height=96, width=160):
    """Frames of a smooth random texture panning right by `shift` px per frame, with labels."""
    rng = np.random.default_rng(0)
    canvas = cv2.GaussianBlur(rng.random((height, width + 64)).astype(np.float32), (0, 0), 4)
    canvas = (255 * (canvas - canvas.min()) / np.ptp(canvas)).astype(np.uint8)
    classes = np.digitize(canvas, np.quantile(canvas, [1 / 3, 2 / 3])).astype(np.uint8)
    frames, labels = [], []
    for k in range(steps):
        x0 = 32 - shift * k  # the window moves left, so the scene moves right
        frames.append(np.repeat(canvas[:, x0:x0 + width, None], 3, axis=2))
        labels.append(classes[:, x0:x0 + width])
    return frames, labels


def agreement(a, b, border=8):
    """Share of equal pixels, away from the borders (where new scene enters)."""
    return float((a[:, border:-border] == b[:, border:-border]).mean())


def test_window_scales_with_the_frame_width():
    params = FarnebackParams()
    assert params.window(1024) == 64 and params.window(256) == 16 and params.window(64) == 5


def test_warp_with_zero_flow_is_identity():
    label = np.arange(12, dtype=np.uint8).reshape(3, 4)
    assert (warp_labels(label, np.zeros((3, 4, 2), np.float32)) == label).all()


def test_tracking_moves_labels_with_a_translating_scene():
    frames, labels = translating_scene(6)
    flow = backward_flow(to_gray(frames[1]), to_gray(frames[0]))
    assert np.median(flow[16:-16, 16:-16, 0]) == pytest.approx(-2.0, abs=0.3)  # came from x-2
    tracker = LabelTracker()
    tracker.add_frame(0.0, frames[0])
    tracker.set_label(0.0, labels[0])
    for k in range(1, 6):
        tracker.add_frame(float(k), frames[k])
    warped, stale = agreement(tracker.mask, labels[5]), agreement(labels[0], labels[5])
    assert warped > 0.95 and warped > stale + 0.05
    # A label arriving late (for frame 0, after frame 5) is carried through the kept flows.
    late = LabelTracker()
    for k in range(6):
        late.add_frame(float(k), frames[k])
    late.set_label(0.0, labels[0])
    assert (late.mask == tracker.mask).all() and late.late_labels == 0
    late.forget_before(3.0)
    late.set_label(1.0, labels[1])
    assert late.late_labels == 1


# -- schemes on a tiny flight -----------------------------------------------------------------

SPEC = InputSpec(32, 64)


@pytest.fixture(scope='module', autouse=True)
def one_torch_thread():
    """Train on one thread: tiny batches on a shared 2-core machine run ~8x faster so."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope='module')
def template():
    return calibrated_template(SPEC)


@pytest.fixture(scope='module')
def flight():
    return CachedSource(SyntheticSource(1000, 3.0))


def context(template, flight, **kw):
    ground = GroundConfig(trainer=TrainerConfig(iterations=2, batch_size=2, channels_last=False))
    defaults = dict(fps=4.0, eval_stride=2, ground=ground, phase_time_s=0.2, seed=0,
                    link=LinkConfig.symmetric(None, 0.05))
    defaults.update(kw)
    return EvalContext(flight, flight.default_teacher(), template, **defaults)


def test_the_runner_finds_both_baselines():
    assert set(SCHEMES) == {'remote_tracking', 'just_in_time'}
    assert SCHEMES['just_in_time']().name == 'just_in_time'


def test_remote_tracking_sends_a_frame_a_second_and_tracks_the_labels(template, flight):
    r = RemoteTracking().run(context(template, flight))
    assert r.name == 'remote_tracking' and r.sampling == [(0.0, 1.0)]
    assert r.extra['frames_sent'] == 3 and r.extra['labels_received'] == 3
    # Unlimited bandwidth: each frame's bytes land in the second it was sent, one per second.
    per_second = r.bandwidth['uplink']
    assert len(per_second) == 3 and all(b > 0 for b in per_second)
    assert r.uplink_bytes == r.extra['uplink_by_kind']['frames'] == pytest.approx(sum(per_second))
    assert r.downlink_bytes == r.extra['downlink_by_kind']['labels'] > 0
    # A label arrives one latency + labelling (0.05 s: 0.2 / (2 x 2)) + latency after its frame.
    assert r.extra['mean_label_age_s'] == pytest.approx(0.15)
    assert r.updates == pytest.approx([k + 0.15 for k in range(3)])
    assert r.extra['frames_before_first_label'] == 1 and len(r.frame_miou) == 6
    assert r.miou > 0.4  # the perfect teacher's labels, warped: far above an untrained student


def test_just_in_time_streams_real_patches_at_most_every_266_ms(template, flight):
    # An 8 fps camera: a frame every 375 ms at JIT's top rate; each update is short (5 ms a
    # step), so the ground is never the bottleneck.
    r = JustInTime(max_updates=2, iteration_time_s=0.005).run(
        context(template, flight, fps=8.0, eval_stride=4))
    assert r.name == 'just_in_time'
    phases = r.extra['phases']
    assert r.extra['patches_sent'] > 0 and all(p['steps'] <= 2 for p in phases)
    assert r.downlink_bytes > 0 and r.extra['downlink_by_kind']['patch'] > 0
    assert r.updates == sorted(r.updates) and len(r.updates) >= 2
    assert all(b - a >= 8 / 30 - 1e-9 for a, b in zip(r.updates, r.updates[1:], strict=False))
    assert r.extra['final_version'] == 1 + len(r.updates) <= r.extra['ground_version']
    # Stride 266 ms at least: every third camera frame at most; frames go up one by one.
    assert r.sampling[0] == (0.0, pytest.approx(8 / 3))
    assert 3 <= r.extra['frames_sent'] <= 8 and r.extra['frames_skipped'] == 0
    assert r.uplink_bytes == r.extra['uplink_by_kind']['frames']
    for p in phases:
        assert 8 / 30 - 1e-9 <= p['stride_s'] <= 64 / 30 + 1e-9
    assert SchemeResult.from_dict(json.loads(json.dumps(r.to_dict()))).to_dict() == r.to_dict()


def test_just_in_time_backs_off_when_the_threshold_is_met(template, flight):
    r = JustInTime(threshold=0.0).run(context(template, flight))
    assert r.extra['patches_sent'] == 0 and r.updates == []
    assert set(r.extra['downlink_by_kind']) == {'control'}
    strides = [p['stride_s'] for p in r.extra['phases']]
    assert strides[:3] == pytest.approx([16 / 30, 32 / 30, 64 / 30])
    # What the 4 fps camera makes of them: every 2nd, 3rd, 5th, then 9th frame.
    assert [rate for _, rate in r.sampling] == pytest.approx([2, 4 / 3, 4 / 5, 4 / 9])


# -- the report -------------------------------------------------------------------------------

CLASSES = ('a', 'b')


def fabricated(name, flight, confusion, up_bytes, down_bytes, ablation=None, gain=0.0):
    """Return a structurally real SchemeResult: 10 frames over 10 s, given totals."""
    frames = [(float(t), 0.5 + gain + 0.01 * t) for t in range(10)]
    return SchemeResult(
        name, flight, 10.0, CLASSES, frames, np.asarray(confusion, np.int64),
        uplink_bytes=up_bytes, downlink_bytes=down_bytes, updates=[2.0, 7.0],
        sampling=[(0.0, 1.0), (5.0, 0.5)],
        bandwidth={'bin_s': 1.0, 'start': 0.0, 'uplink': [up_bytes / 10] * 10,
                   'downlink': [0.0] * 5 + [down_bytes / 5] * 5},
        extra={'ablation': ablation or {}})


@pytest.fixture(scope='module')
def report_inputs():
    results = []
    for i, flight in enumerate(('f1', 'f2')):
        results += [
            fabricated('no_customization', flight, [[50, 10], [10, 30 + i]], 0, 0),
            fabricated('just_in_time', flight, [[55, 5], [6, 34 + i]], 30000 + i, 400000,
                       gain=0.1),
            fabricated('ams', flight, [[58, 2], [4, 36 + i]], 2500, 2600 + 10 * i, gain=0.2),
            fabricated('ams[T_update=20]', flight, [[57, 3], [5, 35]], 2000, 1500,
                       {'kind': 't_update', 't_update': 20.0}),
            fabricated('just_in_time[threshold=0.5]', flight, [[52, 8], [8, 32]], 20000,
                       100000),
            fabricated('ams[full]', flight, [[59, 1], [2, 38]], 2500, 40000,
                       {'kind': 'selection', 'strategy': 'full', 'fraction': 1.0}),
            fabricated('ams[gradient_guided,0.05]', flight, [[58, 2], [3, 37]], 2500, 2600,
                       {'kind': 'selection', 'strategy': 'gradient_guided', 'fraction': 0.05}),
            fabricated('ams[random,0.05]', flight, [[56, 4], [4, 36]], 2500, 2600,
                       {'kind': 'selection', 'strategy': 'random', 'fraction': 0.05}),
        ]
    return results


def markdown_table(text, title):
    """Return the rows (lists of cells) of the Markdown table under heading `title`."""
    block = text.split(f'## {title}')[1].split('\n## ')[0]
    lines = [ln for ln in block.splitlines() if ln.startswith('|')]
    return [[c.strip() for c in ln.strip('|').split('|')] for ln in lines[2:]]


def test_report_writes_files_and_tables_equal_the_inputs(tmp_path, report_inputs):
    meta = {'profile': 'test', 'atr': {'period_min': 10.0}}
    written = write_report(report_inputs, tmp_path, metadata=meta)
    for name in ('tables.md', 'tables.txt', 'figures.json', 'miou_gain_cdf.png',
                 'fig4_miou_vs_downlink.png', 'miou_time_f1.png', 'bandwidth_f2.png',
                 'sampling_f1.png'):
        assert name in written['files'] and (tmp_path / name).stat().st_size > 0
        if name.endswith('.png'):
            assert (tmp_path / name).read_bytes()[:8] == b'\x89PNG\r\n\x1a\n'
    by_key = {(r.flight, r.name): r for r in report_inputs}
    rows = markdown_table((tmp_path / 'tables.md').read_text(), 'Table 1')
    header_schemes = ['No Customization', 'Just-In-Time', 'AMS']
    names = ['no_customization', 'just_in_time', 'ams']
    assert len(rows) == 6  # two rows per flight and the average
    for k, flight in enumerate(('f1', 'f2')):
        miou_row, bw_row = rows[2 * k], rows[2 * k + 1]
        assert miou_row[:2] == [flight, 'mIoU (%)'] and bw_row[1] == 'Up/Down BW (Kbps)'
        for j, name in enumerate(names):
            r = by_key[(flight, name)]
            assert float(miou_row[2 + j]) == pytest.approx(100 * r.miou, abs=0.005)
            up, down = (float(v) for v in bw_row[2 + j].split('/'))
            assert up == pytest.approx(r.uplink_kbps, abs=0.05)
            assert down == pytest.approx(r.downlink_kbps, abs=0.5)
    average = rows[4]
    for j, name in enumerate(names):
        mean = np.mean([by_key[(f, name)].miou for f in ('f1', 'f2')])
        assert float(average[2 + j]) == pytest.approx(100 * mean, abs=0.005)
    text = (tmp_path / 'tables.txt').read_text()
    assert all(s in text for s in header_schemes) and 'Table 3' in text
    figures = json.loads((tmp_path / 'figures.json').read_text())
    cell = figures['table1']['cells']['f2']['just_in_time']
    assert cell['miou'] == by_key[('f2', 'just_in_time')].miou
    assert cell['uplink_kbps'] == by_key[('f2', 'just_in_time')].uplink_kbps
    # Table 3: points relative to full-model training on the same flight, averaged.
    t3 = figures['table3']
    expected = np.mean([100 * (by_key[(f, 'ams[random,0.05]')].miou
                               - by_key[(f, 'ams[full]')].miou) for f in ('f1', 'f2')])
    assert t3['delta_miou_points']['random']['0.05'] == pytest.approx(expected)
    t3_rows = markdown_table((tmp_path / 'tables.md').read_text(), 'Table 3')
    assert t3_rows[0][0] == 'Random Selection' and t3_rows[0][1] == f'{expected:+.2f}'
    # Figure 4: the sweeps plus the main runs (T_update from the metadata, JIT's own config).
    points = {(p['name'], p['flight']): p for p in figures['fig4']['points']}
    assert points[('ams[T_update=20]', 'f1')]['value'] == 20.0
    assert points[('ams', 'f1')]['value'] == 10.0
    assert ('just_in_time[threshold=0.5]', 'f2') in points
    assert {m['name'] for m in figures['fig4']['matched']} == {'ams', 'ams[T_update=20]'}
    assert "Just-In-Time's downlink at AMS's accuracy" in text
    # Figure 5: gains per frame over No Customization, 20 frames over two flights.
    cdf = figures['miou_gain_cdf']
    assert cdf['ams']['frames'] == 20 and cdf['ams']['better'] == 1.0
    assert cdf['ams']['mean_gain'] == pytest.approx(20.0)
    assert set(cdf) == {'just_in_time', 'ams'}


def test_report_accepts_result_dicts(tmp_path, report_inputs):
    dicts = [json.loads(json.dumps(r.to_dict())) for r in report_inputs[:3]]
    write_report(dicts, tmp_path / 'a', metadata={'profile': 'x'})
    write_report(report_inputs[:3], tmp_path / 'b')
    a = (tmp_path / 'a' / 'tables.md').read_text()
    b = (tmp_path / 'b' / 'tables.md').read_text()
    assert re.sub(r'- profile.*\n', '', a) == b
    assert 'Table 3' not in b and not (tmp_path / 'b' / 'fig4_miou_vs_downlink.png').exists()
    assert not math.isnan(json.loads((tmp_path / 'b' / 'figures.json').read_text())
                          ['table1']['average']['ams']['miou'])


def test_jit_downlink_is_matched_to_ams_accuracy_on_its_monotone_curve():
    def point(scheme, flight, kbps, miou, name=None):
        return {'scheme': scheme, 'flight': flight, 'downlink_kbps': kbps, 'miou': miou,
                'name': name or scheme}

    jit = [point('just_in_time', 'f1', 100.0, 0.40), point('just_in_time', 'f1', 200.0, 0.38),
           point('just_in_time', 'f1', 300.0, 0.50)]
    ams = [point('ams', 'f1', 20.0, 0.45, 'ams'), point('ams', 'f1', 10.0, 0.35, 'ams[T=40]'),
           point('ams', 'f1', 30.0, 0.60, 'ams[T=5]'), point('ams', 'f2', 20.0, 0.45)]
    matched = {m['name']: m for m in matched_downlink(jit + ams)}
    # 200 kbps bought nothing over 100 (0.38 < 0.40): the curve is 0.40 up to 200, then rises.
    assert matched['ams']['jit_kbps'] == pytest.approx(250.0)
    assert matched['ams']['ratio'] == pytest.approx(12.5) and not matched['ams']['at_most']
    assert matched['ams[T=40]']['jit_kbps'] == 100.0 and matched['ams[T=40]']['at_most']
    assert matched['ams[T=5]']['jit_kbps'] is None and matched['ams[T=5]']['ratio'] is None
    assert len(matched) == 3  # f2 has no Just-In-Time sweep
