"""What `ams demo` measures, live and at the end: no ROS here, the demo's monitor node feeds it.

The monitor hands over what it receives, keyed by header stamp: the camera's frames and true
labels, the drone's masks, and the drone's EdgeStatus. A frame counts once its mask and its
label have both arrived (frames the drone skipped never do). Its accuracy is kept as a
confusion matrix, so any stretch of the run can be pooled afterwards. For the same frames the
no-update baseline, the pretrained student the drone started from, runs here on a worker thread
(`baseline`: frame -> class ids); if it falls too far behind, frames are left out of the
comparison (and counted) rather than piling up. With a `video` (side_by_side.SideBySideWriter)
the same worker also writes each compared frame into a side-by-side video.

    monitor = DemoMonitor(CLASS_NAMES, baseline=student.infer)
    monitor.on_image(stamp_ns, rgb); monitor.on_label(stamp_ns, label)
    monitor.on_mask(stamp_ns, mask); monitor.on_status(fields)
    print(monitor.live_line())
    monitor.close(); summary = monitor.write_report('report/')  # summary.json + PNG plots
"""

from __future__ import annotations

import json
import math
import queue
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ams_ros.metrics import confusion_matrix, mean_iou
from ams_ros.pixels import resize_labels

STATUS_FIELDS = ('active_version', 'inference_fps', 'latency_p50_ms', 'latency_p99_ms',
                 'frames_received', 'frames_inferred', 'frames_sampled', 'batches_sent',
                 'bytes_up', 'bytes_down', 'patches_applied', 'patches_rejected')


@dataclass
class FrameScore:
    elapsed: float  # seconds since the monitor started, when the mask arrived
    stamp_ns: int
    version: int  # the drone's active version as last reported
    adapted: np.ndarray  # confusion matrix [label, prediction]
    baseline: np.ndarray | None = None


def _pooled(matrices: Sequence[np.ndarray]) -> float:
    return mean_iou(np.sum(matrices, axis=0)) if len(matrices) else float('nan')


def _frame_mean(matrices: Sequence[np.ndarray]) -> float:
    values = np.array([mean_iou(m) for m in matrices], dtype=np.float64)
    values = values[~np.isnan(values)]
    return float(values.mean()) if values.size else float('nan')


def _round(value, digits: int = 4):
    return None if value is None or (isinstance(value, float) and math.isnan(value)) \
        else round(float(value), digits)


class DemoMonitor:
    """Match frames, labels and masks by stamp; score the adapting student and the baseline."""

    def __init__(self, class_names: Sequence[str],
                 baseline: Callable[[np.ndarray], np.ndarray] | None = None,
                 window_s: float = 20.0, max_backlog: int = 300, pending_s: float = 10.0,
                 clock: Callable[[], float] = time.monotonic, video=None):
        self.class_names = list(class_names)
        self.num_classes = len(self.class_names)
        self.window_s = window_s
        self.max_backlog = max_backlog
        self.pending_ns = int(pending_s * 1e9)
        self._clock = clock
        self._t0 = clock()
        self._t_end = None
        self._lock = threading.Lock()
        self._pending: dict[int, dict] = {}
        self.frames: list[FrameScore] = []
        self._by_stamp: dict[int, FrameScore] = {}
        self.statuses: list[dict] = []
        self.updates: list[tuple[float, int]] = []  # (elapsed, version) when the version moved
        self.counts = {'images': 0, 'labels': 0, 'masks': 0, 'masks_unmatched': 0,
                       'baseline_skipped': 0}
        self._baseline = baseline
        self.video = video if baseline is not None else None  # it needs the baseline's masks
        self._queue: queue.Queue = queue.Queue()
        self._deadline: float | None = None
        self._worker = None
        if baseline is not None:
            self._worker = threading.Thread(target=self._baseline_loop, name='demo-baseline',
                                            daemon=True)
            self._worker.start()

    def start_clock(self) -> None:
        """Count elapsed time from now (e.g. when the camera starts)."""
        self._t0 = self._clock()
        self._t_end = None

    def stop_clock(self) -> None:
        """Mark the end of the run: the summary's duration (later inputs still count)."""
        self._t_end = self._clock()

    def elapsed(self) -> float:
        return self._clock() - self._t0

    def duration(self) -> float:
        return (self._t_end if self._t_end is not None else self._clock()) - self._t0

    # -- inputs ----------------------------------------------------------------------------

    def on_image(self, stamp_ns: int, rgb: np.ndarray) -> None:
        """Keep a camera frame for the baseline (ignored without one)."""
        if self._baseline is None:
            return
        self._add(stamp_ns, 'rgb', rgb, 'images')

    def on_label(self, stamp_ns: int, label: np.ndarray) -> None:
        self._add(stamp_ns, 'label', label, 'labels')

    def on_mask(self, stamp_ns: int, mask: np.ndarray) -> None:
        self._add(stamp_ns, 'mask', mask, 'masks')

    def on_status(self, fields: dict) -> None:
        """Record one EdgeStatus (as a dict of its fields)."""
        entry = {'elapsed': self.elapsed(), **{k: fields[k] for k in STATUS_FIELDS
                                               if k in fields}}
        with self._lock:
            previous = self.statuses[-1] if self.statuses else None
            if previous is not None:
                dt = max(entry['elapsed'] - previous['elapsed'], 1e-6)
                for key in ('up', 'down'):
                    delta = entry.get(f'bytes_{key}', 0) - previous.get(f'bytes_{key}', 0)
                    entry[f'kbps_{key}'] = max(delta, 0) * 8 / 1000 / dt
            version = int(entry.get('active_version', 0))
            if previous is not None and version != previous.get('active_version', 0):
                self.updates.append((entry['elapsed'], version))
            self.statuses.append(entry)

    def _add(self, stamp_ns: int, key: str, value: np.ndarray, counter: str) -> None:
        with self._lock:
            self.counts[counter] += 1
            entry = self._pending.setdefault(stamp_ns, {})
            entry[key] = value
            if 'mask' in entry and 'label' in entry and ('rgb' in entry or self._baseline is None):
                del self._pending[stamp_ns]
                self._score(stamp_ns, entry)
            if key == 'mask':
                self._prune(stamp_ns)

    def _score(self, stamp_ns: int, entry: dict) -> None:
        label = entry['label']
        mask = resize_labels(entry['mask'], *label.shape)
        version = int(self.statuses[-1].get('active_version', 0)) if self.statuses else 0
        score = FrameScore(self.elapsed(), stamp_ns, version,
                           confusion_matrix(label, mask, self.num_classes))
        self.frames.append(score)
        self._by_stamp[stamp_ns] = score
        if self._baseline is not None:
            if self._queue.qsize() >= self.max_backlog:
                self.counts['baseline_skipped'] += 1
            else:
                self._queue.put((stamp_ns, entry['rgb'], label, mask, version))

    def _prune(self, newest_ns: int) -> None:
        """Forget frames and labels the drone never answered (it skips frames when busy)."""
        stale = [s for s in self._pending if s < newest_ns - self.pending_ns]
        for stamp in stale:
            if 'mask' in self._pending.pop(stamp):
                self.counts['masks_unmatched'] += 1

    def _baseline_loop(self) -> None:
        while True:
            item = self._queue.get()
            if item is None:
                return
            stamp_ns, rgb, label, mask, version = item
            if self._deadline is not None and time.monotonic() > self._deadline:
                with self._lock:  # out of time at the end: left out of the comparison
                    self.counts['baseline_skipped'] += 1
                continue
            try:
                prediction = resize_labels(self._baseline(rgb), *label.shape)
                matrix = confusion_matrix(label, prediction, self.num_classes)
            except Exception:  # noqa: BLE001 - a failing baseline leaves the frame out
                prediction = matrix = None
            with self._lock:
                self._by_stamp[stamp_ns].baseline = matrix
            if self.video is not None:
                self.video.add(rgb, label, prediction, mask, version)

    def close(self, timeout: float = 60.0) -> None:
        """Let the baseline finish the frames it has (at most `timeout` seconds), then stop."""
        if self._worker is None:
            return
        self._deadline = time.monotonic() + timeout
        self._queue.put(None)
        self._worker.join(timeout + 10.0)
        self._worker = None
        if self.video is not None:
            self.video.close()

    # -- results ---------------------------------------------------------------------------

    def _window(self, start: float, end: float = math.inf):
        with self._lock:
            return [f for f in self.frames if start <= f.elapsed < end]

    def compare(self, frames: Sequence[FrameScore]) -> dict:
        """MIoU of the adapting student and the baseline over the frames both have.

        `*_miou` pools the pixels of all those frames (metrics.MiouAccumulator.miou);
        `*_frame_miou` is the mean of the per-frame mIoUs (every frame counts equally).
        """
        both = [f for f in frames if f.baseline is not None]
        return {'frames': len(frames), 'frames_compared': len(both),
                'adapted_miou_all': _pooled([f.adapted for f in frames]),
                'adapted_miou': _pooled([f.adapted for f in both]),
                'baseline_miou': _pooled([f.baseline for f in both]),
                'adapted_frame_miou': _frame_mean([f.adapted for f in both]),
                'baseline_frame_miou': _frame_mean([f.baseline for f in both])}

    def frames_from_version(self, version: int) -> list[FrameScore]:
        """Frames segmented while the drone reported `version` or a later one active."""
        with self._lock:
            return [f for f in self.frames if f.version >= version]

    def live_line(self) -> str:
        now = self.elapsed()
        recent = self.compare(self._window(now - self.window_s))
        with self._lock:
            status = dict(self.statuses[-1]) if self.statuses else {}
            window = [x for x in self.statuses if x['elapsed'] >= now - self.window_s]
            frames = len(self.frames)
        span = window[-1]['elapsed'] - window[0]['elapsed'] if len(window) > 1 else 0.0
        kbps = {key: (window[-1].get(f'bytes_{key}', 0) - window[0].get(f'bytes_{key}', 0))
                * 8 / 1000 / span if span > 0 else 0.0 for key in ('up', 'down')}

        def fmt(value):
            return '  -  ' if math.isnan(value) else f'{value:.3f}'

        adapted = recent['adapted_miou_all']
        return (f'{now:6.0f} s  frames {frames:5d}  fps {status.get("inference_fps", 0):4.1f}  '
                f'patches {status.get("patches_applied", 0):3d} '
                f'(v{status.get("active_version", 0)})  mIoU[{self.window_s:.0f} s] adapting '
                f'{fmt(adapted)} / no-update {fmt(recent["baseline_miou"])}  '
                f'up {kbps["up"]:6.1f} / down {kbps["down"]:6.1f} kbps')

    def summary(self) -> dict:
        """All figures of the run (plain JSON types)."""
        with self._lock:
            frames = list(self.frames)
            statuses = [dict(s) for s in self.statuses]
            updates = list(self.updates)
            counts = dict(self.counts)
        end = self.duration()
        overall = self.compare(frames)
        second_half = self.compare([f for f in frames if f.elapsed >= end / 2])
        last = statuses[-1] if statuses else {}
        first = statuses[0] if statuses else {}
        span = (last.get('elapsed', 0.0) - first.get('elapsed', 0.0)) if statuses else 0.0
        fps_values = [s['inference_fps'] for s in statuses if s.get('inference_fps', 0) > 0]

        def kbps(key):
            if span <= 0:
                return None
            return (last.get(key, 0) - first.get(key, 0)) * 8 / 1000 / span

        def rounded(d):
            return {k: _round(v) if isinstance(v, float) else v for k, v in d.items()}

        return {
            'duration_s': _round(end, 2),
            'classes': self.class_names,
            'accuracy': {'whole_run': rounded(overall), 'second_half': rounded(second_half),
                         'gain_whole_run': _round(overall['adapted_miou']
                                                  - overall['baseline_miou']),
                         'gain_second_half': _round(second_half['adapted_miou']
                                                    - second_half['baseline_miou'])},
            'model': {'final_version': last.get('active_version', 0),
                      'patches_applied': last.get('patches_applied', 0),
                      'patches_rejected': last.get('patches_rejected', 0),
                      'updates': [[_round(t, 2), v] for t, v in updates]},
            'bandwidth': {'bytes_up': last.get('bytes_up', 0),
                          'bytes_down': last.get('bytes_down', 0),
                          'kbps_up_mean': _round(kbps('bytes_up'), 2),
                          'kbps_down_mean': _round(kbps('bytes_down'), 2)},
            'inference': {'fps_mean': _round(float(np.mean(fps_values)), 2) if fps_values
                          else None,
                          'latency_p50_ms': _round(last.get('latency_p50_ms'), 2),
                          'latency_p99_ms': _round(last.get('latency_p99_ms'), 2),
                          'frames_received': last.get('frames_received', 0),
                          'frames_inferred': last.get('frames_inferred', 0),
                          'frames_sampled': last.get('frames_sampled', 0),
                          'batches_sent': last.get('batches_sent', 0)},
            'monitor': counts,
            'series': {
                'frames': [[_round(f.elapsed, 3), f.stamp_ns, f.version,
                            _round(mean_iou(f.adapted)),
                            None if f.baseline is None else _round(mean_iou(f.baseline))]
                           for f in frames],
                'frames_columns': ['elapsed_s', 'stamp_ns', 'version', 'adapted_miou',
                                   'baseline_miou'],
                'status': [{k: _round(v, 3) if isinstance(v, float) else v
                            for k, v in s.items()} for s in statuses],
            },
        }

    def write_report(self, folder: str | Path) -> dict:
        """Write summary.json, miou.png and bandwidth.png into folder; return the summary."""
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        summary = self.summary()
        summary['plots'] = plot_report(summary, folder, self.window_s)
        if self.video is not None and self.video.frames:
            summary['video'] = {'file': self.video.path.name, 'frames': self.video.frames}
        (folder / 'summary.json').write_text(json.dumps(summary, indent=1))
        return summary


def rolling_miou(elapsed: np.ndarray, per_frame: np.ndarray, window_s: float) -> np.ndarray:
    """Mean per-frame mIoU over the trailing window at each frame (NaN frames skipped)."""
    out = np.full(len(elapsed), np.nan)
    for i, t in enumerate(elapsed):
        chosen = per_frame[(elapsed > t - window_s) & (elapsed <= t)]
        chosen = chosen[~np.isnan(chosen)]
        if chosen.size:
            out[i] = chosen.mean()
    return out


def plot_report(summary: dict, folder: Path, window_s: float = 20.0) -> list[str]:
    """Draw mIoU over time (with the update instants) and kbps over time; return file names."""
    import matplotlib

    matplotlib.use('Agg')
    import matplotlib.pyplot as plt

    written = []
    rows = summary['series']['frames']
    fig, ax = plt.subplots(figsize=(10, 4.5))
    if rows:
        elapsed = np.array([r[0] for r in rows], float)
        adapted = np.array([np.nan if r[3] is None else r[3] for r in rows], float)
        baseline = np.array([np.nan if r[4] is None else r[4] for r in rows], float)
        ax.plot(elapsed, rolling_miou(elapsed, adapted, window_s), color='tab:blue',
                label='adapting student (AMS)')
        if not np.all(np.isnan(baseline)):
            ax.plot(elapsed, rolling_miou(elapsed, baseline, window_s), color='tab:gray',
                    label='same student, no updates')
    for i, (t, _) in enumerate(summary['model']['updates']):
        ax.axvline(t, color='tab:green', alpha=0.35, linewidth=0.8,
                   label='model update' if i == 0 else None)
    ax.set_xlabel('time since start (s)')
    ax.set_ylabel(f'mIoU vs true labels ({window_s:.0f} s mean)')
    ax.set_ylim(0, 1)
    ax.grid(alpha=0.3)
    ax.legend(loc='best')
    acc = summary['accuracy']['whole_run']
    ax.set_title(f"mIoU {acc['adapted_miou']} adapting vs {acc['baseline_miou']} without "
                 f"updates ({acc['frames_compared']} frames)")
    fig.tight_layout()
    fig.savefig(folder / 'miou.png', dpi=110)
    plt.close(fig)
    written.append('miou.png')

    statuses = summary['series']['status']
    fig, ax = plt.subplots(figsize=(10, 3.5))
    average_s = 20.0  # traffic comes in bursts (a batch, a patch per T_update): smooth it
    if len(statuses) > 1:
        t = np.array([s['elapsed'] for s in statuses])
        for key, label, colour in (('bytes_up', 'uplink (frames)', 'tab:orange'),
                                   ('bytes_down', 'downlink (patches, snapshots)',
                                    'tab:purple')):
            sent = np.array([s.get(key, 0) for s in statuses], float)
            back = np.searchsorted(t, t - average_s)
            span = np.maximum(t - t[back], 1e-9)
            rate = np.where(t - t[back] > 0, (sent - sent[back]) * 8 / 1000 / span, 0.0)
            ax.plot(t, rate, label=label, color=colour)
        ax.legend(loc='upper left')  # no status, no lines to name
    ax.set_xlabel('time since start (s)')
    ax.set_ylabel(f'kbit/s ({average_s:.0f} s mean)')
    ax.set_ylim(bottom=0)
    ax.grid(alpha=0.3)
    bw = summary['bandwidth']
    ax.set_title(f"mean uplink {bw['kbps_up_mean']} kbps, downlink {bw['kbps_down_mean']} kbps")
    fig.tight_layout()
    fig.savefig(folder / 'bandwidth.png', dpi=110)
    plt.close(fig)
    written.append('bandwidth.png')
    return written
