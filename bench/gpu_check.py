"""GPU check (issue 13): the 256x512 student, `ams eval --full`, and drones per GPU.

Run, on the GPU machine (one H200, 16 cores) or, at toy scale, on any CPU:

    PYTHONPATH=. python bench/gpu_check.py --out DIR            # under 10 minutes
    PYTHONPATH=. python bench/gpu_check.py --out DIR --toy      # under a minute on 2 CPU cores

It writes DIR/gpu_check.json (every figure, rewritten after each stage, so a run cut short keeps
what it measured), DIR/gpu_check.md (the tables), the student it used (DIR/student_*.pt and
.json: give it back with ``--student`` to skip stage 1 next time) and DIR/runs.tar.gz (each
`ams eval` call's results.json and table.txt). The calls' own folders go to ``--runs``. It
needs the project's packages: av and zstandard are not on the GPU machine's image (carry them
as wheels). Exit status 1 when a stage failed (its error is in the JSON).

Stages, all within ``--deadline-s`` (default 560 s: the machine's 10-minute limit less the
start), each printing its figures as it goes:

0. environment: versions, the GPU, and one forward/backward pass of the 256x512 student so that
   CUDA's start-up is not counted in the first measured phase.
1. student: the packaged 256x512 student (`ams_ros.model.pretrain.PACKAGED['pretrained']`)
   if shipped or cached, else pretrained by its recipe through `shipped_or_pretrained`, with
   the recipe's ``time_budget_s`` set to ``--pretrain-budget-s`` (default 280 s; the recipe
   took about 5 minutes on an H100 shared with two other runs): a run that hits the budget
   finishes the compressed schedule, the JSON says how many of its steps it took, and it is
   cached apart (``~/.cache/ams_ros/gpu_check``) so that it never stands in for the packaged
   student elsewhere.
2. eval: `ams eval --full` (the runner's own entry points) on flights 1000, 1001 and 1002 with
   no_customization, ams and just_in_time, one call per flight: mIoU, uplink and downlink kbps
   and the measured phase time per scheme. The flights are as long as this stage's share of
   the time left allows (at most the profile's 600 s; ``--eval-duration`` fixes it), and a
   flight that no longer fits is skipped, and listed.
3. fleet: drones per GPU (paper Appendix E). N drones fly flights 1000..1000+N-1 at once on one
   ground with phi-weighted scheduling (`ams eval --ablation fleet --policies phi_weighted`),
   phases taking their measured GPU time, for N = 1, 5, 10, 20, 40 in turn; a fleet that no
   longer fits is skipped. For each N: the mean (and worst) mIoU loss, in points, of its drones
   against the same drones flying alone (`--schemes ams`, same flights), the ground's busy
   share (training time / flight time), phases per drone and the mean wait for a phase. The
   issue's goal: 20 drones or more on one GPU at under 1 point of loss.
   Flights are shorter here (sized to the budget, at least 60 s and at most 300 s;
   ``--fleet-duration`` fixes it). The fleets are nested (fleet N flies the first N flights),
   so flying the first ``--alone`` K (default 10) drones alone serves every fleet: loss is
   exact for N <= K and, for larger fleets, measured on the K drones they share with the
   smaller ones. The flights are independent draws of the same world, so those K are a fair
   sample of the fleet's drones, and flying all 40 alone would cost as much again as the
   fleets of 1 to 20 together. The fleet of one, against its own flight alone, shows the
   noise floor that measured phase times leave.

How long: stage 1 takes up to ``--pretrain-budget-s`` when no student is cached, and nothing
otherwise; stages 2 and 3 share what is left (stage 2 gets EVAL_SHARE of it) and size their
flights from the wall time per simulated drone-second they measure (a guess until the first
call). ``--toy``: a 32x64 student pretrained for 2 steps, 12-s flights, K = 1 iteration of
batch 2, T_update 5 s, phases fixed at 1 s, on the CPU, fleets of 1 and 2 drones.
"""

from __future__ import annotations

import argparse
import importlib.util
import io
import json
import math
import os
import platform
import shutil
import sys
import tarfile
import tempfile
import time
import traceback
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from ams_ros.evaluation.runner import (
    build_parser,
    resolve,
    run_evaluation,
    summary_rows,
    write_outputs,
)
from ams_ros.model.pretrain import (
    PACKAGED,
    PretrainConfig,
    StudentMetadata,
    cache_dir,
    cached_student,
    metadata_path,
    shipped_or_pretrained,
)

EVAL_SEEDS = (1000, 1001, 1002)
EVAL_SCHEMES = ('no_customization', 'ams', 'just_in_time')
FLEET_POLICY = 'phi_weighted'
GOAL_DRONES, GOAL_LOSS_POINTS = 20, 1.0
EVAL_SHARE = 0.4  # of the time after stage 1; the fleets, the costlier stage, get the rest
RESERVE_S = 15.0  # kept back for the final files
# Flights are sized to fill this share of their stage's time: the cost per drone-second varies
# by 10-20 % between flights, and a fleet that does not fit in what is left is skipped.
PLAN_SHARE = 0.85
MIN_REST_S = 200.0  # stages 2 and 3 need at least this after pretraining
NEEDED = ('av', 'zstandard', 'onnxruntime', 'cv2', 'onnx', 'yaml', 'matplotlib', 'tqdm')


@dataclass(frozen=True)
class Scale:
    """What the GPU run and the toy run differ in."""

    eval_options: tuple[str, ...]  # added to every `ams eval`
    device: str
    eval_duration_s: float | None  # None: sized to the budget
    fleet_duration_s: float | None
    fleet_sizes: tuple[int, ...]
    alone: int
    deadline_s: float
    recipe: PretrainConfig


GPU = Scale(('--full',), 'auto', None, None, (1, 5, 10, 20, 40), 10, 560.0,
            PACKAGED['pretrained'][1])
TOY = Scale(('--full', '--iterations', '1', '--batch-size', '2', '--t-update', '5',
             '--phase-time', '1'), 'cpu', 12.0, 12.0, (1, 2), 2, 300.0,
            replace(PACKAGED['pretrained'][1], arch='deeplabv3_mbv2_small', height=32, width=64,
                    steps=2, batch_size=2, pool_size=4, episode_frames=2, warmup_steps=1))


class Budget:
    """The run's deadline."""

    def __init__(self, seconds: float):
        self.start = time.perf_counter()
        self.end = self.start + seconds

    def left(self) -> float:
        return self.end - time.perf_counter()

    def elapsed(self) -> float:
        return time.perf_counter() - self.start


@dataclass
class Cost:
    """Wall time of one `ams eval` call: its setup and report, plus a rate per drone-second."""

    per_call_s: float = 15.0  # guesses for the GPU machine until a call is measured
    per_drone_s: float = 0.05

    def predict(self, drone_seconds: float, calls: int = 1) -> float:
        return calls * self.per_call_s + drone_seconds * self.per_drone_s

    def learn(self, call: Call) -> None:
        loop = call.meta['wall_s']
        self.per_call_s = max(0.0, call.wall_s - loop)
        self.per_drone_s = loop / call.drone_seconds


@dataclass
class Call:
    """One `ams eval` call: its results, metadata and wall time."""

    results: list
    meta: dict
    wall_s: float

    @property
    def drone_seconds(self) -> float:
        return sum(r.duration_s for r in self.results)


def longest_flight(budget_s: float, drone_flights: int, calls: int, cost: Cost, low: float,
                   high: float) -> float:
    """Return the longest flight (whole s, in [low, high]) that fits the calls in `budget_s`.

    `calls` calls fly `drone_flights` drone-flights in all, in PLAN_SHARE of the budget.
    """
    spare = PLAN_SHARE * budget_s - calls * cost.per_call_s
    seconds = spare / (drone_flights * cost.per_drone_s)
    return float(min(high, max(low, math.floor(seconds))))


def shortfall(cost: Cost, drone_seconds: float, left: float) -> str | None:
    """Return why a call flying `drone_seconds` does not fit in `left` s; None if it does."""
    need = cost.predict(drone_seconds)
    return f'needs ~{need:.0f} s, {left:.0f} s left' if need > left else None


class Check:
    """The figures so far: `save` rewrites the JSON and the markdown table."""

    def __init__(self, out: Path, budget: Budget, meta: dict):
        self.out, self.budget = out, budget
        self.data = {'meta': meta}

    def log(self, message: str) -> None:
        print(f'[{self.budget.elapsed():5.0f} s] {message}', file=sys.stderr, flush=True)

    def stage(self, name: str, work) -> dict | None:
        """Run one stage; record its figures, or its error, and save."""
        started = time.perf_counter()
        self.log(f'== {name}')
        try:
            figures = work()
        except Exception as exc:  # the next stages may still run; the error is kept
            self.log(traceback.format_exc())
            figures = None
            self.data[name] = {'error': f'{type(exc).__name__}: {exc}'}
        else:
            self.data[name] = figures
        self.data[name]['wall_s'] = round(time.perf_counter() - started, 1)
        self.save()
        return figures

    def save(self) -> None:
        self.data['meta']['wall_s'] = round(self.budget.elapsed(), 1)
        text = json.dumps(_finite(self.data), indent=1)
        (self.out / 'gpu_check.json').write_text(text)
        (self.out / 'gpu_check.md').write_text(markdown(self.data))


# -- stage 0: environment ---------------------------------------------------------------------

def environment(scale: Scale, device: str) -> dict:
    import onnxruntime
    import torch

    missing = [name for name in NEEDED if importlib.util.find_spec(name) is None]
    if missing:
        raise RuntimeError(f'missing packages: {missing} (carry them as wheels)')
    cuda = torch.cuda.is_available() and device != 'cpu'
    figures = {'python': platform.python_version(), 'torch': torch.__version__,
               'onnxruntime': onnxruntime.__version__,
               'onnxruntime_providers': onnxruntime.get_available_providers(),
               'cpus': os.cpu_count(), 'torch_threads': torch.get_num_threads(),
               'host': platform.node(), 'cuda': cuda,
               'gpu': torch.cuda.get_device_name() if cuda else None}
    if cuda:
        figures['warmup_s'] = round(warm_up(scale.recipe), 2)
    return figures


def warm_up(recipe: PretrainConfig) -> float:
    """One forward/backward of the student on the GPU: CUDA and cuDNN start once, here."""
    import torch

    from ams_ros.model.student import build_student
    from ams_ros.world import NUM_CLASSES

    started = time.perf_counter()
    model = build_student(recipe.arch, NUM_CLASSES).cuda()
    x = torch.rand(8, 3, recipe.height, recipe.width, device='cuda')
    model(x).float().mean().backward()
    torch.cuda.synchronize()
    return time.perf_counter() - started


# -- stage 1: the student ---------------------------------------------------------------------

def student(args, scale: Scale, budget: Budget, check: Check) -> dict:
    """Find the student, or pretrain it within the budget; copy it to the output folder."""
    if args.student:
        path, source = Path(args.student), 'given'
    elif args.toy:
        path, source = pretrained(args.runs / 'student_toy_32x64.pt', scale.recipe,
                                  [args.runs / 'cache'], 600.0, check.log, 'cpu')
    else:
        room = min(args.pretrain_budget_s, budget.left() - MIN_REST_S - RESERVE_S)
        device = None if args.device in (None, 'auto') else args.device  # None: CUDA if any
        path, source = pretrained(PACKAGED['pretrained'][0], scale.recipe,
                                  [cache_dir(), cache_dir() / 'gpu_check'], room, check.log,
                                  device)
    meta = StudentMetadata.from_json(metadata_path(path).read_text())
    copy = None
    if source != 'given':  # handed back, to be given next time
        copy = path.name
        shutil.copyfile(path, args.out / copy)
        shutil.copyfile(metadata_path(path), metadata_path(args.out / copy))
    info = meta.pretrain
    figures = {'path': str(path), 'source': source, 'copy': copy, 'arch': meta.arch,
               'input_size': [meta.height, meta.width],
               'steps_done': info.get('steps_done'),
               'recipe_steps': info.get('config', {}).get('steps'),
               'train_seconds': info.get('train_seconds'), 'device': info.get('device')}
    check.log(f'student: {figures}')
    return figures


def pretrained(shipped: Path, recipe: PretrainConfig, caches: list[Path], budget_s: float,
               log, device: str | None) -> tuple[Path, str]:
    """Return (checkpoint, 'found' or 'pretrained'), pretraining only when none is kept.

    The shipped file, then each cache; else `recipe` made within `budget_s` into the last cache.
    """
    for path in (shipped, *(cached_student(shipped, cache) for cache in caches)):
        if path.is_file():
            return path, 'found'
    if budget_s < 30.0:
        raise RuntimeError(f'only {budget_s:.0f} s left to pretrain the student')
    recipe = replace(recipe, time_budget_s=budget_s)
    return shipped_or_pretrained(shipped, recipe, caches[-1], log, device), 'pretrained'


# -- calls of `ams eval` ----------------------------------------------------------------------

def evaluate(options: list[str], out: Path, log, schemes: list[str] | None = None) -> Call:
    """Run one `ams eval` through the runner's entry points; write its folder."""
    started = time.perf_counter()
    args = resolve(build_parser().parse_args([*options, '--out', str(out), '--no-progress']))
    if schemes is not None:
        args.schemes = schemes  # [] for a fleet only: the parser wants at least one scheme
    results, meta = run_evaluation(args, log=log)
    write_outputs(results, meta, out, log=log)
    return Call(results, meta, time.perf_counter() - started)


def base_options(args, scale: Scale, student_path: str) -> list[str]:
    options = [*scale.eval_options, '--student', student_path,
               '--device', args.device or scale.device]
    return options + (['--threads', str(args.threads)] if args.threads else [])


def seeds(first: int, count: int) -> list[str]:
    return [str(seed) for seed in range(first, first + count)]


# -- stage 2: ams eval --full -----------------------------------------------------------------

def eval_stage(args, scale: Scale, options: list[str], budget: Budget, cost: Cost,
               check: Check) -> dict:
    """Fly the three schemes on flights 1000-1002, one call per flight."""
    room = EVAL_SHARE * (budget.left() - RESERVE_S)
    per_flight = len(EVAL_SCHEMES)
    duration = args.eval_duration or scale.eval_duration_s or longest_flight(
        room, per_flight * len(EVAL_SEEDS), len(EVAL_SEEDS), cost, 60.0, 600.0)
    check.log(f'eval: {duration:g}-s flights, {room:.0f} s for this stage')
    stage_end = time.perf_counter() + room
    results, skipped = [], []
    for seed in EVAL_SEEDS:
        left = min(stage_end - time.perf_counter(), budget.left() - RESERVE_S)
        reason = shortfall(cost, per_flight * duration, left)
        if reason:
            skipped.append({'seed': seed, 'reason': reason})
            check.log(f'eval of flight {seed}: skipped, {reason}')
            continue
        call = evaluate([*options, '--seeds', str(seed), '--duration', str(duration),
                         '--schemes', *EVAL_SCHEMES], args.runs / f'eval-{seed}', check.log)
        cost.learn(call)
        results += call.results
    schemes = {}
    for row in summary_rows(results):
        walls = [r.extra.get('mean_phase_wall_s') for r in results if r.name == row['scheme']]
        walls = [w for w in walls if w is not None]
        row['mean_phase_wall_s'] = float(np.mean(walls)) if walls else None
        name = row.pop('scheme')
        schemes[name] = row
        check.log(f'eval {name}: mIoU {_num(row["miou"], 100)} %, up {row["uplink_kbps"]:.1f} '
                  f'kbps, down {row["downlink_kbps"]:.1f} kbps, phase '
                  f'{_num(row["mean_phase_wall_s"])} s')
    return {'duration_s': duration, 'flights': sorted({r.flight for r in results}),
            'skipped': skipped, 'schemes': schemes,
            'ams_drone_rate': ams_drone_rate(results)}


def ams_drone_rate(results: list) -> float | None:
    """Return the wall seconds per simulated second of an AMS drone that renders its frames.

    Within a call the flight's frames are rendered once, in its first run (no_customization),
    and reused: so an AMS drone on its own costs about its run plus that one.
    """
    flown = sum(r.duration_s for r in results if r.name == 'ams')
    walls = [r.extra['wall_s'] for r in results if r.name in ('ams', 'no_customization')]
    return sum(walls) / flown if flown else None


# -- stage 3: drones per GPU ------------------------------------------------------------------

def fleet_stage(args, scale: Scale, options: list[str], budget: Budget, cost: Cost,
                drone_rate: float | None, check: Check) -> dict:
    """Fly fleets of each size on one ground, and their first drones alone."""
    sizes = args.fleet_sizes or scale.fleet_sizes
    alone_count = min(args.alone or scale.alone, max(sizes))
    room = budget.left() - RESERVE_S
    fleet_cost = replace(cost, per_drone_s=drone_rate or cost.per_drone_s)
    duration = args.fleet_duration or scale.fleet_duration_s or longest_flight(
        room, alone_count + sum(sizes), 1 + len(sizes), fleet_cost, 60.0, 300.0)
    check.log(f'fleet: {duration:g}-s flights, {room:.0f} s for this stage')
    first = EVAL_SEEDS[0]
    timing = ['--duration', str(duration)]
    reason = shortfall(fleet_cost, alone_count * duration, budget.left() - RESERVE_S)
    if reason:
        raise RuntimeError(f'no time to fly the drones alone: {reason}')
    call = evaluate([*options, *timing, '--seeds', *seeds(first, alone_count),
                     '--schemes', 'ams'], args.runs / 'alone', check.log)
    fleet_cost.learn(call)
    alone = {r.flight: r.miou for r in call.results}
    rows = []
    for size in sizes:
        reason = shortfall(fleet_cost, size * duration, budget.left() - RESERVE_S)
        if reason:
            rows.append({'drones': size, 'skipped': reason})
            check.log(f'fleet of {size}: skipped, {reason}')
            continue
        call = evaluate([*options, *timing, '--seeds', *seeds(first, size),
                         '--ablation', 'fleet', '--policies', FLEET_POLICY],
                        args.runs / f'fleet-{size}', check.log, schemes=[])
        fleet_cost.learn(call)
        row = fleet_row(size, call, alone, duration)
        rows.append(row)
        check.log(f'fleet of {size}: loss {_num(row["loss_points"])} points (worst '
                  f'{_num(row["worst_loss_points"])}) over {row["compared"]} drones, ground '
                  f'busy {_num(row["ground_busy_share"], 100, 0)} %, phase '
                  f'{_num(row["mean_phase_wall_s"])} s, wait {_num(row["mean_wait_s"])} s')
    return {'policy': FLEET_POLICY, 'duration_s': duration, 'alone_miou_by_flight': alone,
            'rows': rows, 'goal': goal(rows)}


def fleet_row(size: int, call: Call, alone: dict[str, float], duration: float) -> dict:
    results = call.results
    losses = [100.0 * (alone[r.flight] - r.miou) for r in results if r.flight in alone]
    phases = [p for r in results for p in r.extra['phases']]
    fleet = results[0].extra['fleet']
    return {
        'drones': size, 'compared': len(losses),
        'loss_points': float(np.mean(losses)), 'worst_loss_points': float(np.max(losses)),
        'fleet_miou': float(np.mean([r.miou for r in results])),
        'alone_miou': float(np.mean([alone[r.flight] for r in results if r.flight in alone])),
        'ground_busy_share': fleet['ground_busy_s'] / duration,
        'phases_per_drone': len(phases) / size,
        'mean_phase_wall_s': float(np.mean([p['wall_s'] for p in phases])) if phases else None,
        'mean_wait_s': float(np.mean([p['waited_s'] for p in phases])) if phases else None,
        'wall_s': round(call.wall_s, 1)}


def goal(rows: list[dict]) -> dict:
    """Return the largest fleet measured under the loss goal, and whether it is big enough."""
    measured = [row for row in rows if 'loss_points' in row]
    within = [row['drones'] for row in measured if row['loss_points'] < GOAL_LOSS_POINTS]
    largest = max(within, default=0)
    reached = largest >= GOAL_DRONES
    decided = reached or any(row['drones'] >= GOAL_DRONES for row in measured)
    return {'drones': GOAL_DRONES, 'loss_points': GOAL_LOSS_POINTS,
            'largest_fleet_within': largest, 'met': reached if decided else None}


# -- output -----------------------------------------------------------------------------------

def markdown(data: dict) -> str:
    meta = data['meta']
    env = data.get('environment', {})
    lines = [f'# GPU check (issue 13){" — toy scale" if meta["toy"] else ""}', '',
             f'Device: {env.get("gpu") or "cpu"}; {meta["wall_s"]:.0f} s of a '
             f'{meta["deadline_s"]:.0f}-s budget.', '']
    for name in ('environment', 'student', 'eval', 'fleet'):
        if 'error' in data.get(name, {}):
            lines += [f'**{name} failed**: {data[name]["error"]}', '']
    s = data.get('student')
    if s and 'error' not in s:
        lines += [f'Student: {s["arch"]} {s["input_size"][0]}x{s["input_size"][1]}, {s["source"]}'
                  f', {s["steps_done"]} of {s["recipe_steps"]} steps, {s["train_seconds"]} s '
                  f'({s["copy"] or s["path"]}).', '']
    e = data.get('eval')
    if e and 'error' not in e:
        lines += [f'## `ams eval --full`: {", ".join(e["flights"])}, {e["duration_s"]:g}-s '
                  'flights', '', '| scheme | mIoU % | uplink kbps | downlink kbps | phase s |',
                  '|---|---:|---:|---:|---:|']
        for name, row in e['schemes'].items():
            lines.append(f'| {name} | {_num(row["miou"], 100)} | {row["uplink_kbps"]:.1f} | '
                         f'{row["downlink_kbps"]:.1f} | {_num(row["mean_phase_wall_s"])} |')
        skipped = ', '.join(f'{item["seed"]} ({item["reason"]})' for item in e['skipped'])
        lines += [f'\nSkipped flights: {skipped}.' if skipped else '', '']
    f = data.get('fleet')
    if f and 'error' not in f:
        lines += [f'## Drones per GPU: {f["policy"]}, {f["duration_s"]:g}-s flights', '',
                  'Loss: mIoU points lost against the same drones flying alone.', '',
                  '| drones | compared | loss | worst | ground busy % | phases/drone | '
                  'phase s | wait s |', '|---:|---:|---:|---:|---:|---:|---:|---:|']
        for row in f['rows']:
            if 'skipped' in row:
                lines.append(f'| {row["drones"]} | skipped: {row["skipped"]} |||||||')
                continue
            lines.append(
                f'| {row["drones"]} | {row["compared"]} | {_num(row["loss_points"])} | '
                f'{_num(row["worst_loss_points"])} | {_num(row["ground_busy_share"], 100, 0)} | '
                f'{row["phases_per_drone"]:.1f} | {_num(row["mean_phase_wall_s"])} | '
                f'{_num(row["mean_wait_s"])} |')
        g = f['goal']
        verdict = {True: 'met', False: 'not met', None: 'not measured'}[g['met']]
        lines += ['', f'Goal, {g["drones"]}+ drones at < {g["loss_points"]:g} point: {verdict} '
                  f'(largest fleet within: {g["largest_fleet_within"]}).', '']
    return '\n'.join(lines)


def _num(value, scale: float = 1.0, digits: int = 2) -> str:
    if value is None or not math.isfinite(value):
        return 'n/a'
    return f'{scale * value:.{digits}f}'


def _finite(value):
    """JSON without NaN: non-finite floats become null."""
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(v) for v in value]
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def pack_runs(runs: Path, out: Path, limit: int = 15 << 20) -> None:
    """Archive each call's results.json and table.txt into out/runs.tar.gz (if under `limit`)."""
    target = out / 'runs.tar.gz'
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode='w:gz') as tar:
        for path in sorted([*runs.glob('*/results.json'), *runs.glob('*/table.txt')]):
            tar.add(path, arcname=str(path.relative_to(runs)))
    if buffer.tell() <= limit:
        target.write_bytes(buffer.getvalue())


# -- main -------------------------------------------------------------------------------------

def build_arg_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--out', type=Path, required=True, help='output folder')
    parser.add_argument('--toy', action='store_true', help='toy scale on the CPU')
    parser.add_argument('--deadline-s', type=float,
                        help='whole-run budget, s (default 560; toy 300)')
    parser.add_argument('--pretrain-budget-s', type=float, default=280.0,
                        help='at most this long pretraining the student (default 280)')
    parser.add_argument('--student', help='a checkpoint (.pt, .json beside it): skip stage 1')
    parser.add_argument('--eval-duration', type=float, help='stage 2 flight length, s')
    parser.add_argument('--fleet-duration', type=float, help='stage 3 flight length, s')
    parser.add_argument('--fleet-sizes', type=int, nargs='+', help='drones per fleet')
    parser.add_argument('--alone', type=int, help='drones also flown alone (default 10)')
    parser.add_argument('--device', help="training device (default auto; toy 'cpu')")
    parser.add_argument('--threads', type=int, default=0, help='torch threads (0: default)')
    parser.add_argument('--runs', type=Path, help="an empty folder for the calls' own outputs "
                        '(default: a new one in the temporary folder)')
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_arg_parser().parse_args(argv)
    scale = TOY if args.toy else GPU
    budget = Budget(args.deadline_s or scale.deadline_s)
    args.runs = fresh_folder(args.runs)
    args.out.mkdir(parents=True, exist_ok=True)
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    check = Check(args.out, budget, {'toy': args.toy, 'deadline_s': budget.end - budget.start,
                                     'command': sys.argv, 'runs': str(args.runs)})
    run_stages(args, scale, budget, check)
    pack_runs(args.runs, args.out)
    check.save()
    print(markdown(check.data))
    stages = [name for name in check.data if name != 'meta']
    failed = len(stages) < 4 or any('error' in check.data[name] for name in stages)
    return 1 if failed else 0


def run_stages(args, scale: Scale, budget: Budget, check: Check) -> None:
    """Run the stages in turn; one that the later ones need stops the run if it fails."""
    if check.stage('environment', lambda: environment(scale, args.device or scale.device)) is None:
        return
    found = check.stage('student', lambda: student(args, scale, budget, check))
    if found is None:
        return
    options = base_options(args, scale, found['path'])
    cost = Cost()
    evaluated = check.stage(
        'eval', lambda: eval_stage(args, scale, options, budget, cost, check)) or {}
    check.stage('fleet', lambda: fleet_stage(args, scale, options, budget, cost,
                                             evaluated.get('ams_drone_rate'), check))


def fresh_folder(path: Path | None) -> Path:
    """Return `path`, created and checked empty, or a new temporary folder."""
    if path is None:
        return Path(tempfile.mkdtemp(prefix='gpu_check_runs_'))
    path.mkdir(parents=True, exist_ok=True)
    if any(path.iterdir()):
        raise SystemExit(f'--runs {path} is not empty')
    return path


if __name__ == '__main__':
    sys.exit(main())
