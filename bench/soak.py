"""Soak: a long replay with patches every T_update; node memory and patch-apply latency stay flat.

It starts the synthetic camera, the drone and the ground as separate processes over DDS, as
`ams demo` does (CPU ground settings, the packaged small student, the flight's perfect teacher),
and lets them run for --minutes. Every --sample-period seconds it records each node's resident
memory (VmRSS from /proc) and, from the drone's /diagnostics, the patches applied and the
frames received / inferred; every swap the drone reports is recorded with its patch-apply
latency (submit to active: the new weights written into the model, its session built, swapped).

At the end it prints, per node, the RSS after warm-up, at the middle and at the end, with the
slope of a linear fit in MB/hour; the patch-apply latency p50/p99 in the first and the last
third of the measured span; patches and frames. It writes soak.json (every sample and swap),
soak.png and the nodes' logs to --out, and exits 1 when the run fails a check:

  memory   a node's RSS (median of --window seconds) grew from warm-up to the end by more
           than --max-growth-mb and more than --max-growth-pct of its warm-up value
  latency  the last third's p50 exceeds the first third's by more than --max-latency-ratio
  patches  a third of the measured span saw no swap (the update stream stalled)

The warm-up (default 10 min) covers what fills up by design: the ground's training horizon
(240 s of frames) and the synthetic world's district cache (8 districts of about 15 MB, held by
the camera and by the ground's perfect teacher; flight 1003 has filled it after about 8 minutes).

The nodes run with glibc's mmap threshold fixed (--malloc-mmap-threshold, default 1 MiB), so
RSS follows live memory. With glibc's dynamic threshold the teacher's evicted districts stay in
the ground's malloc arenas: a 30-minute run then showed the ground growing by ~95 MB after
minute 10, in steps at each new district, while with the threshold fixed it stayed flat.

    PYTHONPATH=. python bench/soak.py --minutes 30                # the issue's soak
    PYTHONPATH=. python bench/soak.py --minutes 3 --warmup 1      # a quick shake-out
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import sys
import threading
import time
from datetime import datetime
from pathlib import Path

import numpy as np

NODES = ('camera', 'drone', 'ground')
CHECKED = ('drone', 'ground')  # the camera stands in for a real one: reported, not judged
# Drone diagnostics copied into every sample.
DRONE_COUNTS = ('patches_applied', 'patches_rejected', 'snapshots_applied', 'frames_received',
                'frames_inferred', 'frames_dropped_stale', 'frames_without_model', 'errors',
                'active_version')


# -- analysis (pure) ---------------------------------------------------------------------------

def vmrss_mb(status_text: str) -> float | None:
    """Return VmRSS in MB from the text of /proc/<pid>/status (None for a zombie)."""
    for line in status_text.splitlines():
        if line.startswith('VmRSS:'):
            return int(line.split()[1]) / 1024
    return None


def slope_per_hour(t_s, values) -> float:
    """Return the slope of a least-squares line through (t_s, values), per hour."""
    t, v = np.asarray(t_s, float), np.asarray(values, float)
    if t.size < 2 or np.ptp(t) == 0:
        return float('nan')
    return float(np.polyfit(t, v, 1)[0] * 3600)


def window_median(t_s, values, start: float, end: float) -> float:
    """Return the median of the values sampled in [start, end] (NaN if none)."""
    t, v = np.asarray(t_s, float), np.asarray(values, float)
    chosen = v[(t >= start) & (t <= end)]
    return float(np.median(chosen)) if chosen.size else float('nan')


def memory_report(t_s, rss_mb, warmup_s: float, end_s: float, window_s: float,
                  max_growth_mb: float, max_growth_pct: float) -> dict:
    """Judge one node's RSS series over [warmup_s, end_s].

    Start, middle and end are medians over window_s (one sample is noisy: a training phase's
    tensors come and go); growth is end - start; it fails only above both limits.
    """
    t, v = np.asarray(t_s, float), np.asarray(rss_mb, float)
    keep = (t >= warmup_s) & (t <= end_s)
    middle = (warmup_s + end_s) / 2
    start = window_median(t, v, warmup_s, warmup_s + window_s)
    mid = window_median(t, v, middle - window_s / 2, middle + window_s / 2)
    end = window_median(t, v, end_s - window_s, end_s)
    growth = end - start
    limit = max(max_growth_mb, start * max_growth_pct / 100)
    return {'start_mb': start, 'mid_mb': mid, 'end_mb': end, 'growth_mb': growth,
            'limit_mb': limit, 'slope_mb_per_h': slope_per_hour(t[keep], v[keep]),
            'ok': bool(np.isfinite(growth) and growth <= limit)}


def latency_report(t_s, latency_ms, warmup_s: float, end_s: float,
                   max_ratio: float) -> dict:
    """Judge patch-apply latencies: p50/p99 of the first and last third of [warmup_s, end_s].

    Fails when the last third's p50 exceeds the first's by more than max_ratio, or when a
    third holds no swap at all.
    """
    t, v = np.asarray(t_s, float), np.asarray(latency_ms, float)
    keep = (t >= warmup_s) & (t <= end_s)
    third = np.minimum(3 * (t[keep] - warmup_s) // max(end_s - warmup_s, 1e-9), 2)
    thirds = [v[keep][third == i] for i in range(3)]

    def percentiles(x):
        return ({'swaps': int(x.size), 'p50_ms': float(np.percentile(x, 50)),
                 'p99_ms': float(np.percentile(x, 99))} if x.size
                else {'swaps': 0, 'p50_ms': float('nan'), 'p99_ms': float('nan')})

    first, last = percentiles(thirds[0]), percentiles(thirds[-1])
    ratio = last['p50_ms'] / first['p50_ms'] if first['swaps'] and last['swaps'] else float('nan')
    return {'first_third': first, 'middle_third': percentiles(thirds[1]), 'last_third': last,
            'p50_ratio': ratio, 'max_ratio': max_ratio,
            'stalled': any(x.size == 0 for x in thirds),
            'ok': bool(all(x.size for x in thirds) and ratio <= max_ratio)}


def frame_accounting(counts: dict) -> dict:
    """Return frames in vs masks out at the drone, under its latest-frame policy.

    Every received frame is inferred (a mask published), replaced while waiting (dropped
    stale) or had no model yet; the rest (at most the frame in progress) are unaccounted.
    """
    received = counts.get('frames_received', 0)
    handled = sum(counts.get(k, 0) for k in
                  ('frames_inferred', 'frames_dropped_stale', 'frames_without_model'))
    return {'frames_received': received, 'masks_published': counts.get('frames_inferred', 0),
            'frames_dropped_stale': counts.get('frames_dropped_stale', 0),
            'unaccounted': received - handled}


def analyse(samples: list[dict], swaps: list[dict], final: dict, warmup_s: float,
            args) -> dict:
    """Return the figures and verdicts of a run: its samples, swaps and final counts."""
    end_s = samples[-1]['t'] if samples else 0.0
    t = [s['t'] for s in samples]
    memory = {name: memory_report(t, [s['rss_mb'][name] for s in samples], warmup_s, end_s,
                                  args.window, args.max_growth_mb, args.max_growth_pct)
              for name in NODES}
    latency = latency_report([s['t'] for s in swaps], [s['ms'] for s in swaps], warmup_s,
                             end_s, args.max_latency_ratio)
    failures = [f'{name} memory grew {memory[name]["growth_mb"]:.1f} MB (limit '
                f'{memory[name]["limit_mb"]:.1f} MB)' for name in CHECKED
                if not memory[name]['ok']]
    if latency['stalled']:
        failures.append('a third of the measured span applied no patch')
    elif not latency['ok']:
        failures.append(f'patch-apply p50 rose {latency["p50_ratio"]:.2f}x (limit '
                        f'{args.max_latency_ratio:g}x)')
    counts = final['drone']
    return {'duration_s': end_s, 'warmup_s': warmup_s, 'memory': memory, 'latency': latency,
            'patches': {'applied': counts.get('patches_applied', 0),
                        'rejected': counts.get('patches_rejected', 0),
                        'swaps_seen': len(swaps), 'final_version': counts.get('active_version'),
                        'expected': int(end_s / args.update_period)},
            'frames': {**frame_accounting(counts), 'masks_received': final['masks']},
            'failures': failures, 'passed': not failures}


def format_report(result: dict) -> str:
    """Return the printed table of an analysed run."""
    def f(value, digits=1):
        return 'n/a' if value is None or not np.isfinite(value) else f'{value:.{digits}f}'

    mem, lat = result['memory'], result['latency']
    lines = [f'\nsoak: {result["duration_s"] / 60:.1f} min, measured after '
             f'{result["warmup_s"] / 60:.1f} min of warm-up',
             f'  {"RSS (MB)":<10}{"start":>9}{"middle":>9}{"end":>9}{"growth":>9}{"limit":>8}'
             f'{"MB/hour":>10}']
    for name in NODES:
        m = mem[name]
        verdict = ('ok' if m['ok'] else 'GREW') if name in CHECKED else '(not judged)'
        lines.append(f'  {name:<10}{f(m["start_mb"]):>9}{f(m["mid_mb"]):>9}{f(m["end_mb"]):>9}'
                     f'{f(m["growth_mb"]):>9}{f(m["limit_mb"]):>8}{f(m["slope_mb_per_h"]):>10}'
                     f'  {verdict}')
    lines.append(f'  {"patch apply":<12}{"swaps":>7}{"p50 ms":>9}{"p99 ms":>9}')
    for key in ('first_third', 'middle_third', 'last_third'):
        third = lat[key]
        lines.append(f'  {key.replace("_", " "):<12}{third["swaps"]:>7}{f(third["p50_ms"]):>9}'
                     f'{f(third["p99_ms"]):>9}')
    lines.append(f'  last/first p50: {f(lat["p50_ratio"], 2)}x (limit {lat["max_ratio"]:g}x)')
    p, fr = result['patches'], result['frames']
    lines += [f'  patches: {p["applied"]} applied (about {p["expected"]} expected), '
              f'{p["rejected"]} rejected, final version {p["final_version"]}',
              f'  frames: {fr["frames_received"]} received by the drone, '
              f'{fr["masks_published"]} masks published ({fr["masks_received"]} received here), '
              f'{fr["frames_dropped_stale"]} dropped stale, {fr["unaccounted"]} unaccounted',
              '  verdict: ' + ('PASS' if result['passed'] else
                               'FAIL: ' + '; '.join(result['failures']))]
    return '\n'.join(lines)


# -- the run -----------------------------------------------------------------------------------

class Probe:
    """What the soak hears: masks counted, the drone's diagnostics, its swaps as they happen."""

    def __init__(self, client_id: str):
        self.drone_name = f'ams_drone: {client_id}'
        self.masks = 0
        self.drone: dict = {}
        self.swaps: list[dict] = []
        self.reports = 0  # drone diagnostics received
        self.started = time.monotonic()
        self._changed = threading.Condition()

    def on_mask(self, _stamp_ns, _mask) -> None:
        self.masks += 1

    def on_label(self, _stamp_ns, _label) -> None:
        """Ignore labels: the soak's camera publishes none."""

    def on_status(self, _fields) -> None:
        """Ignore EdgeStatus: /diagnostics carries the same counts and the swaps."""

    def on_diagnostics(self, msg) -> None:
        for status in msg.status:
            if status.name != self.drone_name:
                continue
            values = {kv.key: kv.value for kv in status.values}
            with self._changed:
                self.reports += 1
                self._changed.notify_all()
                self.drone = {k: int(values.get(k, 0)) for k in DRONE_COUNTS}
                version = int(values.get('swap_version', 0))
                if version and (not self.swaps or self.swaps[-1]['version'] != version):
                    self.swaps.append({'t': time.monotonic() - self.started,
                                       'version': version,
                                       'ms': float(values['swap_ms_last'])})

    def wait_for_reports(self, count: int, timeout: float) -> None:
        with self._changed:
            target = self.reports + count
            self._changed.wait_for(lambda: self.reports >= target, timeout)

    def sample(self, pids: dict[str, int]) -> dict:
        with self._changed:
            return {'t': time.monotonic() - self.started, 'rss_mb': {
                name: read_rss_mb(pid) for name, pid in pids.items()},
                'drone': dict(self.drone), 'masks': self.masks}


def read_rss_mb(pid: int) -> float:
    """Return a process's resident memory in MB (NaN once it is gone)."""
    try:
        value = vmrss_mb(Path(f'/proc/{pid}/status').read_text())
    except OSError:
        value = None
    return float('nan') if value is None else value


def plot(samples: list[dict], swaps: list[dict], warmup_s: float, path: Path) -> None:
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt

    fig, (mem, lat) = plt.subplots(2, 1, figsize=(9, 6), sharex=True)
    minutes = [s['t'] / 60 for s in samples]
    for name in NODES:
        mem.plot(minutes, [s['rss_mb'][name] for s in samples], label=name)
    mem.set_ylabel('RSS (MB)')
    mem.legend()
    lat.plot([s['t'] / 60 for s in swaps], [s['ms'] for s in swaps], '.')
    lat.set_ylabel('patch apply (ms)')
    lat.set_xlabel('minutes')
    for ax in (mem, lat):
        ax.axvline(warmup_s / 60, color='grey', linestyle=':')
        ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def run(args) -> int:
    import rclpy
    from diagnostic_msgs.msg import DiagnosticArray
    from rclpy.signals import SignalHandlerOptions

    from ams_ros.launcher import middleware_env
    from ams_ros.model.pretrain import SMALL_CHECKPOINT
    from ams_ros.ros.demo import (
        MonitorNode,
        Processes,
        start_ground_and_drone,
        student_files,
        wait_until_listening,
    )

    # Only loopback, in a domain of this run's own; the nodes inherit both.
    os.environ['ROS_AUTOMATIC_DISCOVERY_RANGE'] = 'LOCALHOST'
    os.environ['ROS_DOMAIN_ID'] = str(args.domain_id)
    os.environ.update(middleware_env(False))
    if args.malloc_mmap_threshold:
        os.environ['MALLOC_MMAP_THRESHOLD_'] = str(args.malloc_mmap_threshold)
    folder = Path(args.out or f'reports/soak_{datetime.now():%Y%m%d-%H%M%S}')
    folder.mkdir(parents=True, exist_ok=True)
    checkpoint, onnx_path = student_files(Path(SMALL_CHECKPOINT), folder)
    duration_s, warmup_s = 60 * args.minutes, 60 * args.warmup
    flight_s = duration_s + 120.0  # the camera and the teacher outlast the run
    print(f'soak: {args.minutes:g} min, domain {args.domain_id}, T_update '
          f'{args.update_period:g} s; output in {folder}', flush=True)

    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    rclpy.init(signal_handler_options=SignalHandlerOptions.NO)
    procs = Processes(folder, '/' + args.namespace.strip('/'))
    probe = Probe(args.namespace.strip('/'))
    monitor_node = MonitorNode(probe, procs.namespace, with_images=False)
    monitor_node.node.create_subscription(DiagnosticArray, '/diagnostics',
                                          probe.on_diagnostics, 10)
    samples: list[dict] = []
    try:
        start_ground_and_drone(procs, checkpoint, onnx_path, args.seed, args.start_time,
                               flight_s, {'ground': {'atr.enabled': False,
                                                     'atr.period_min': args.update_period},
                                          'drone': {}})
        why = wait_until_listening(monitor_node, procs, stop, 1, args.startup_timeout)
        if why:
            return failed(procs, why)
        procs.start_node('camera', {
            'seed': args.seed, 'start_time': float(args.start_time), 'duration': flight_s,
            'fps': float(args.fps), 'wait_for_subscribers': 1}, None, procs.namespace)
        pids = {name: proc.pid for name, proc in procs.children.items()}
        probe.started = time.monotonic()
        next_line = args.progress_period
        while not stop.wait(args.sample_period):
            samples.append(probe.sample(pids))
            ended = procs.exited()
            if ended:
                return failed(procs, f'{", ".join(ended)} exited')
            now = samples[-1]
            if now['t'] >= next_line:
                print(progress_line(now, probe.swaps), flush=True)
                next_line += args.progress_period
            if now['t'] >= duration_s:
                break
        if stop.is_set():
            print('interrupted: judging the run so far', flush=True)
        # The camera stops first, so that the drone's last report counts every frame's mask.
        procs.children['camera'].send_signal(signal.SIGINT)
        probe.wait_for_reports(2, timeout=10.0)
        final = probe.sample({})
    finally:
        procs.stop()
        monitor_node.close()
        rclpy.try_shutdown()
    result = analyse(samples, probe.swaps, final, warmup_s, args)
    (folder / 'soak.json').write_text(json.dumps(
        {'args': vars(args), 'result': result, 'samples': samples, 'swaps': probe.swaps,
         'final': final},
        indent=1))
    plot(samples, probe.swaps, warmup_s, folder / 'soak.png')
    print(format_report(result))
    print(f'  report: {folder}/soak.json, {folder}/soak.png')
    return 0 if result['passed'] else 1


def progress_line(sample: dict, swaps: list[dict]) -> str:
    rss = '  '.join(f'{name} {sample["rss_mb"][name]:.0f}' for name in NODES)
    drone = sample['drone']
    last = f'{swaps[-1]["ms"]:.0f} ms' if swaps else 'n/a'
    return (f'{sample["t"] / 60:5.1f} min  RSS MB: {rss}  patches '
            f'{drone.get("patches_applied", 0)} (last apply {last})  frames '
            f'{drone.get("frames_received", 0)} in / '
            f'{drone.get("frames_inferred", 0)} masks')


def failed(procs, why: str) -> int:
    procs.stop()
    print(f'soak: {why}', file=sys.stderr)
    for name in procs.children:
        print(f'--- {name}.log (last lines)\n{procs.tail(name)}', file=sys.stderr)
    return 2


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--minutes', type=float, default=30.0, help='run length (default 30)')
    parser.add_argument('--warmup', type=float, default=10.0,
                        help='minutes before memory and latency are judged (default 10: the '
                        "ground's training horizon and the world's district cache fill first)")
    parser.add_argument('--update-period', type=float, default=10.0,
                        help='T_update in seconds (fixed: adaptive T_update off)')
    parser.add_argument('--fps', type=float, default=5.0, help='camera frames per second')
    parser.add_argument('--seed', type=int, default=1003, help='synthetic flight')
    parser.add_argument('--start-time', type=float, default=1000.0,
                        help='stamp of the flight start (s)')
    parser.add_argument('--namespace', default='drone1', help="the drone's namespace")
    parser.add_argument('--domain-id', type=int, default=random.randint(100, 200),
                        help='ROS_DOMAIN_ID of the run (default: random in 100-200)')
    parser.add_argument('--out', help='output folder (default reports/soak_<date-time>)')
    parser.add_argument('--sample-period', type=float, default=5.0, help='seconds')
    parser.add_argument('--progress-period', type=float, default=60.0, help='seconds')
    parser.add_argument('--window', type=float, default=60.0,
                        help='seconds of samples behind each start / middle / end RSS figure')
    parser.add_argument('--max-growth-mb', type=float, default=20.0)
    parser.add_argument('--max-growth-pct', type=float, default=5.0)
    parser.add_argument('--max-latency-ratio', type=float, default=1.5,
                        help='last-third p50 / first-third p50 of the patch-apply latency')
    parser.add_argument('--startup-timeout', type=float, default=180.0)
    parser.add_argument('--malloc-mmap-threshold', type=int, default=1 << 20, metavar='BYTES',
                        help="the nodes' MALLOC_MMAP_THRESHOLD_ (default 1 MiB; 0: glibc's "
                        'dynamic threshold)')
    return parser


def main(argv=None) -> int:
    return run(build_parser().parse_args(argv))


if __name__ == '__main__':
    sys.exit(main())
