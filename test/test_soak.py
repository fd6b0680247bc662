"""The soak benchmark's verdicts (bench/soak.py) on synthetic series; the soak itself runs long."""

import argparse
import importlib.util
from pathlib import Path

import numpy as np
import pytest

SPEC = importlib.util.spec_from_file_location(
    'soak', Path(__file__).resolve().parents[1] / 'bench' / 'soak.py')
soak = importlib.util.module_from_spec(SPEC)
SPEC.loader.exec_module(soak)

MINUTES = np.arange(0, 30 * 60 + 1, 5.0)  # a 30-minute run sampled every 5 s


def test_vmrss_is_read_in_megabytes():
    assert soak.vmrss_mb('Name:\tpython\nVmRSS:\t  204800 kB\nThreads:\t4\n') == 200.0
    assert soak.vmrss_mb('Name:\tzombie\nState:\tZ\n') is None


def test_slope_is_per_hour():
    assert soak.slope_per_hour(MINUTES, 100 + MINUTES / 60) == pytest.approx(60.0)
    assert np.isnan(soak.slope_per_hour([1.0], [2.0]))


def memory(values, **limits):
    limits = {'max_growth_mb': 20.0, 'max_growth_pct': 5.0, **limits}
    return soak.memory_report(MINUTES, values, 300.0, MINUTES[-1], 60.0, **limits)


def test_flat_noisy_memory_passes_and_spikes_do_not_count():
    rng = np.random.default_rng(0)
    values = 500 + rng.normal(0, 2, MINUTES.size)
    values[-3] += 200  # one training phase's tensors at the very end
    report = memory(values)
    assert report['ok'] and abs(report['growth_mb']) < 3
    assert report['start_mb'] == pytest.approx(500, abs=2)


def test_growth_fails_only_above_both_limits():
    leak = 400 + MINUTES / 60  # 1 MB per minute: about 25 MB over the measured span
    assert not memory(leak)['ok']
    assert memory(leak, max_growth_pct=10.0)['ok']  # 10% of 405 MB is 40 MB
    assert memory(leak, max_growth_mb=30.0)['ok']


def test_memory_before_warmup_is_not_judged():
    filling = np.where(MINUTES < 240, 300 + MINUTES / 4, 360.0)  # the horizon filling up
    report = memory(filling)
    assert report['ok'] and report['growth_mb'] == pytest.approx(0.0)


def latency(t, ms):
    return soak.latency_report(t, ms, 300.0, 1800.0, 1.5)


def test_latency_thirds_and_ratio():
    t = np.arange(305.0, 1800.0, 10.0)
    report = latency(t, np.where(t < 800, 100.0, 140.0))
    assert report['first_third']['p50_ms'] == 100.0 and report['last_third']['p50_ms'] == 140.0
    assert report['p50_ratio'] == pytest.approx(1.4) and report['ok']
    assert not latency(t, np.where(t < 800, 100.0, 160.0))['ok']


def test_a_stalled_update_stream_fails():
    t = np.arange(305.0, 1200.0, 10.0)  # no swap in the last third
    report = latency(t, np.full(t.size, 100.0))
    assert report['stalled'] and not report['ok']


def test_frames_are_accounted_under_the_latest_frame_policy():
    counts = {'frames_received': 100, 'frames_inferred': 90, 'frames_dropped_stale': 9}
    assert soak.frame_accounting(counts) == {
        'frames_received': 100, 'masks_published': 90, 'frames_dropped_stale': 9,
        'unaccounted': 1}


def test_analyse_names_each_failure():
    args = argparse.Namespace(window=60.0, max_growth_mb=20.0, max_growth_pct=5.0,
                              max_latency_ratio=1.5, update_period=10.0)
    counts = {'patches_applied': 150, 'frames_received': 9000, 'frames_inferred': 9000}
    samples = [{'t': t, 'rss_mb': {'camera': 300.0, 'drone': 200.0, 'ground': 600 + t / 30},
                'drone': counts, 'masks': 9000} for t in MINUTES]
    swaps = [{'t': t, 'ms': 100.0} for t in np.arange(305.0, 1800.0, 10.0)]
    result = soak.analyse(samples, swaps, {'drone': counts, 'masks': 9000}, 300.0, args)
    assert not result['passed']
    assert [f.split()[0] for f in result['failures']] == ['ground']
    assert 'FAIL: ground memory grew' in soak.format_report(result)
