"""bench/gpu_check.py, the GPU check of issue 13, run end to end at toy scale on the CPU."""

import importlib.util
import json
import math
import os
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / 'bench' / 'gpu_check.py'
SPEC = importlib.util.spec_from_file_location('gpu_check', SCRIPT)
gpu_check = importlib.util.module_from_spec(SPEC)
sys.modules[SPEC.name] = gpu_check  # its dataclasses look their module up
SPEC.loader.exec_module(gpu_check)

TOY_PHASE_S = 1.0  # the toy's --phase-time
TOY_FLIGHT_S = 12.0


@pytest.fixture(scope='module')
def toy_run(tmp_path_factory):
    """Run the script once with --toy; return (exit status, output folder, its JSON)."""
    base = tmp_path_factory.mktemp('gpu_check')
    out = base / 'out'
    env = {**os.environ, 'PYTHONPATH': str(ROOT)}
    done = subprocess.run(
        [sys.executable, str(SCRIPT), '--toy', '--out', str(out), '--runs', str(base / 'runs'),
         '--threads', '1'], cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    data = json.loads((out / 'gpu_check.json').read_text())
    return done, out, data


def test_every_stage_ran_without_error(toy_run):
    done, out, data = toy_run
    assert done.returncode == 0, done.stderr[-3000:]
    for stage in ('environment', 'student', 'eval', 'fleet'):
        assert stage in data and 'error' not in data[stage], data.get(stage)
    assert data['meta']['toy'] and data['meta']['wall_s'] < data['meta']['deadline_s']


def test_the_student_is_pretrained_and_handed_back(toy_run):
    _, out, data = toy_run
    student = data['student']
    assert student['source'] == 'pretrained'
    assert student['steps_done'] == student['recipe_steps'] == 2
    assert student['input_size'] == [32, 64]
    assert (out / student['copy']).is_file() and (out / student['copy']).with_suffix(
        '.json').is_file()


def test_each_scheme_has_an_miou_and_its_traffic(toy_run):
    _, _, data = toy_run
    stage = data['eval']
    assert stage['flights'] == ['synthetic-1000', 'synthetic-1001', 'synthetic-1002']
    assert stage['skipped'] == [] and stage['duration_s'] == TOY_FLIGHT_S
    schemes = stage['schemes']
    assert list(schemes) == list(gpu_check.EVAL_SCHEMES)
    for name, row in schemes.items():
        assert math.isfinite(row['miou']) and 0.0 <= row['miou'] <= 1.0, name
        assert set(row['flights']) == set(stage['flights'])
    assert schemes['no_customization']['uplink_kbps'] == 0.0
    assert schemes['no_customization']['downlink_kbps'] == 0.0
    for name in ('ams', 'just_in_time'):
        assert schemes[name]['uplink_kbps'] > 0 and schemes[name]['downlink_kbps'] > 0
        assert schemes[name]['mean_phase_wall_s'] > 0


def test_each_fleet_has_a_loss_and_a_busy_share(toy_run):
    _, _, data = toy_run
    stage = data['fleet']
    assert stage['policy'] == 'phi_weighted'
    assert set(stage['alone_miou_by_flight']) == {'synthetic-1000', 'synthetic-1001'}
    rows = {row['drones']: row for row in stage['rows']}
    assert sorted(rows) == [1, 2]
    for size, row in rows.items():
        assert 'skipped' not in row
        assert row['compared'] == size
        assert math.isfinite(row['loss_points']) and row['worst_loss_points'] >= row['loss_points']
        # Phases take the fixed toy time, so the busy share is the phases' count.
        busy = row['phases_per_drone'] * size * TOY_PHASE_S / TOY_FLIGHT_S
        assert row['ground_busy_share'] == pytest.approx(busy)
        assert 0.0 < row['ground_busy_share'] <= 1.0
    # One drone on its own ground is the drone flying alone: the same run, no loss.
    assert rows[1]['loss_points'] == pytest.approx(0.0, abs=1e-9)
    assert stage['goal']['met'] is None  # no fleet of 20 at toy scale


def test_the_table_and_the_runs_are_written(toy_run):
    _, out, _ = toy_run
    table = (out / 'gpu_check.md').read_text()
    assert '## `ams eval --full`' in table and '## Drones per GPU' in table
    assert '| just_in_time |' in table and '| 2 | 2 |' in table
    with tarfile.open(out / 'runs.tar.gz') as tar:
        names = set(tar.getnames())
    assert {'eval-1000/results.json', 'alone/results.json', 'fleet-2/results.json'} <= names


def test_flights_are_sized_to_the_budget():
    cost = gpu_check.Cost(per_call_s=10.0, per_drone_s=0.05)
    # 3 calls of 9 drone-flights in 85 % of 100 s: (85 - 30) / (9 * 0.05) = 122.2 s.
    assert gpu_check.PLAN_SHARE == 0.85
    assert gpu_check.longest_flight(100.0, 9, 3, cost, 60.0, 600.0) == 122.0
    assert gpu_check.longest_flight(10.0, 9, 3, cost, 60.0, 600.0) == 60.0
    assert gpu_check.longest_flight(1e5, 9, 3, cost, 60.0, 600.0) == 600.0
    assert cost.predict(122.0 * 9, calls=3) == pytest.approx(84.9)
    assert gpu_check.shortfall(cost, 100.0, 20.0) is None  # 10 + 100 * 0.05 = 15 s
    assert gpu_check.shortfall(cost, 300.0, 20.0) == 'needs ~25 s, 20 s left'


def test_the_goal_needs_a_fleet_of_twenty_within_one_point():
    def rows(*pairs):
        return [{'drones': n, 'loss_points': loss} for n, loss in pairs]

    assert gpu_check.goal(rows((10, 0.2), (20, 0.8), (40, 3.0)))['met'] is True
    assert gpu_check.goal(rows((10, 0.2), (20, 1.5)))['largest_fleet_within'] == 10
    assert gpu_check.goal(rows((10, 0.2), (20, 1.5)))['met'] is False
    skipped = [{'drones': 20, 'skipped': 'no time'}]
    assert gpu_check.goal(rows((10, 0.2)) + skipped)['met'] is None
