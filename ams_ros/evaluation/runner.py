"""`ams eval`: run the schemes (and ablations) on flights, write results JSON and a report.

Profiles (every option can still be given on its own):

- ``--quick`` (the default; a CPU machine): the small student at 128x256, 180-s flights, a
  1 fps camera scored on every frame, K = 20 iterations of batch 8 (the paper's; K = 5 lost to
  No Customization: too few steps per phase to generalise past the frames it trains on),
  the AMS profile's T_update (6 s), and each ground phase assumed to take 3 s (a 2-core CPU's
  wall time says nothing about a ground GPU and varies with whatever else runs). One held-out
  flight with the default schemes took 5.6 minutes of wall time here (``--threads 1``, with
  another run sharing the two cores): AMS 2.6, the paper's AMS 1.6, One-Time 0.9 and the three
  Remote+Tracking runs 0.6 minutes.
- ``--full`` (a GPU): the full student at 256x512, 600-s flights, K = 20 (the paper's), phases
  taking their measured wall time, training on CUDA where available. The 256x512 student is not
  committed: the first ``--full`` run pretrains it (about 5 minutes on one H100) and caches it
  (``ams_ros.model.pretrain.packaged_student``).

Sources: synthetic flights (``--seeds``; seeds >= 1000 are held out from pretraining), or a video
file (``--video``) with either a teacher (``--teacher``: a make_teacher config as JSON text or a
.json file, or ``onnx:PATH`` / ``torchscript:PATH``) whose labels are the ground truth, or a
folder of precomputed ``gt_%06d.png`` labels (``--labels``), which also serve as the teacher.

Schemes (``--schemes``; default: No Customization, One-Time, AMS, AMS with the paper's profile
and Remote+Tracking): ``ams`` runs the project's settings (``--ams-profile``, ams_ros.profiles;
single options such as ``--strategy`` override one value), ``ams_paper`` always the paper's
Algorithms 1-2, so every table shows what the departures buy. ``remote_tracking`` runs once per
one-way latency of ``--remote-latencies`` (0.1, 0.3 and 1 s), named ``remote_tracking@0.3s``,
with the camera at ``--remote-fps`` (5 frames/s), so the tracker follows the scene between
labels as it would on a real camera; it is scored on the same frames as the others.

Ablations (``--ablation``, repeatable) add variants to every flight, named ``scheme[...]``:
``selection`` (Table 3: strategy x fraction, plus full-model training as the reference),
``t_update`` (Figure 4: T_update 10-40 s), ``jit_threshold`` (Figure 4's other curve:
Just-In-Time at several accuracy thresholds), ``asr`` (sampling rate fixed at r_max),
``patch_codec`` (the paper's gzip/fp16 format against ours), ``uplink_codec`` (JPEG frames
instead of H.264). ``drift`` flies every flight again over worlds whose looks persist
longer (``--look-regions``: blocks of R x R districts share their looks; the flights are named
``synthetic-1000-looks4``) and the report's drift sweep gives each scheme's mIoU against the
mean time a look stayed in view.

Output folder: ``results.json`` ({'meta': ..., 'results': [SchemeResult.to_dict(), ...]}),
``table.txt``, and the report (``report.write_report``: tables, PNG plots, ``figures.json``).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import platform
import sys
import time
import traceback
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ams_ros import IGNORE_LABEL
from ams_ros.drone.agent import DroneConfig
from ams_ros.evaluation.baselines import REMOTE_TRACKING, JustInTime, RemoteTracking
from ams_ros.evaluation.baselines import SCHEMES as BASELINES
from ams_ros.evaluation.core import EvalContext, SchemeResult
from ams_ros.evaluation.link import ChannelConfig, LinkConfig
from ams_ros.evaluation.report import write_report
from ams_ros.evaluation.schemes import SCHEMES, Ams
from ams_ros.evaluation.sources import (
    CachedLabelTeacher,
    CachedSource,
    SyntheticSource,
    VideoFileSource,
)
from ams_ros.ground.drone_session import GroundConfig
from ams_ros.ground.phase_scheduler import POLICIES
from ams_ros.ground.rate_control import AsrConfig, AtrConfig
from ams_ros.ground.selection import (
    FIRST_LAST,
    FIRST_LAYERS,
    FULL,
    GRADIENT_GUIDED,
    GRADIENT_MAGNITUDE,
    LAST_LAYERS,
    RANDOM,
    STRATEGIES,
)
from ams_ros.ground.trainer import TrainerConfig
from ams_ros.profiles import AMS, DEFAULT_PROFILE, PAPER, AmsProfile
from ams_ros.profiles import PROFILES as AMS_PROFILES
from ams_ros.wire.frame_codec import CodecSettings
from ams_ros.wire.patch_codec import PAPER_FORMAT, VALUE_MODES
from ams_ros.world.map import DEFAULT_LOOK_REGION

ABLATIONS = ('selection', 't_update', 'jit_threshold', 'asr', 'patch_codec', 'uplink_codec',
             'fleet', 'drift')
TABLE3_STRATEGIES = (LAST_LAYERS, FIRST_LAYERS, FIRST_LAST, RANDOM, GRADIENT_GUIDED,
                     GRADIENT_MAGNITUDE)
TABLE3_FRACTIONS = (0.2, 0.1, 0.05, 0.01)
FIG4_T_UPDATE = (10.0, 20.0, 30.0, 40.0)
FIG4_JIT_THRESHOLDS = (0.6, 0.7, 0.8, 0.9)
DRIFT_LOOK_REGIONS = (1, 2, 4, 8)
# Remote+Tracking on realistic links: one-way latencies (s), at a camera rate the tracker can use.
REMOTE_LATENCIES = (0.1, 0.3, 1.0)
REMOTE_FPS = 5.0
PAPER_SCHEME = 'ams_paper'  # AMS with the paper's profile, beside the defaults
DEFAULT_SCHEMES = ('no_customization', 'one_time', 'ams', PAPER_SCHEME, REMOTE_TRACKING)


@dataclass(frozen=True)
class Profile:
    arch: str
    height: int
    width: int
    duration_s: float
    fps: float
    eval_fps: float
    iterations: int
    batch_size: int
    phase_time_s: float | None  # None: measured
    student: str  # packaged student (ams_ros.model.pretrain.PACKAGED)


PROFILES = {
    'quick': Profile('deeplabv3_mbv2_small', 128, 256, 180.0, 1.0, 1.0, 20, 8, 3.0,
                     'pretrained_small'),
    'full': Profile('deeplabv3_mbv2', 256, 512, 600.0, 1.0, 1.0, 20, 8, None, 'pretrained'),
}


@dataclass(frozen=True)
class Variant:
    """One scheme run on every flight: a scheme and the changes to the base context.

    A fleet variant flies every flight at once, each drone served by one ground.
    """

    scheme: object
    label: str
    ablation: dict
    ground: GroundConfig | None = None
    drone: DroneConfig | None = None
    fleet: bool = False
    link: LinkConfig | None = None
    fps: float | None = None  # camera rate (the evaluated frames stay the same)


# -- the student ------------------------------------------------------------------------------

def evaluation_student(path: str | Path | None, arch: str, size: tuple[int, int], seed: int,
                       log=print, class_names: Sequence[str] | None = None,
                       images: Sequence[np.ndarray] | None = None):
    """Return (StudentTemplate, description): the checkpoint's, or a BN-calibrated fresh one.

    class_names: the task's (None: the synthetic world's); a checkpoint must have them.
    images: RGB frames to calibrate a fresh student's BatchNorm on (None: a pretraining flight).
    """
    from ams_ros.model.template import StudentTemplate, from_checkpoint
    from ams_ros.world import CLASS_NAMES

    class_names = tuple(class_names or CLASS_NAMES)
    if path is not None:
        template = from_checkpoint(path)
        if template.class_names != class_names:
            raise ValueError(f'the student {path} has classes {list(template.class_names)}, '
                             f'the task {list(class_names)}')
        spec = template.input_spec
        if (spec.height, spec.width) != tuple(size):
            log(f'note: the checkpoint takes {spec.height}x{spec.width}; evaluating at that size')
        return template, {'kind': 'checkpoint', 'path': str(path)}
    log('note: a freshly initialised student with calibrated BatchNorm statistics '
        '(No Customization will be near chance)')
    model, spec = calibrated_student(arch, size, seed, len(class_names), images)
    return (StudentTemplate.from_model(model, arch, class_names, spec),
            {'kind': 'fresh-bn-calibrated', 'arch': arch})


def calibrated_student(arch: str, size: tuple[int, int], seed: int, num_classes: int | None = None,
                       images: Sequence[np.ndarray] | None = None, frames: int = 16):
    """Build a fresh student whose BatchNorm statistics come from `images`.

    Without images, `frames` of one pretraining flight (seed < 1000): few districts to build.
    """
    import torch

    from ams_ros.ground.trainer import frames_to_input
    from ams_ros.model.student import InputSpec, build_student, pixel_normalisation
    from ams_ros.world import NUM_CLASSES, AerialVideo

    torch.manual_seed(seed)
    spec = InputSpec(*size)
    model = build_student(arch, num_classes or NUM_CLASSES)
    mean, std = pixel_normalisation(spec)
    for module in model.modules():
        if isinstance(module, torch.nn.modules.batchnorm._BatchNorm):
            module.momentum = None  # cumulative average over the calibration batches
    if images is None:
        video = AerialVideo(seed % 1000, 600.0)
        images = [video.render(2.0 * i, *size)[0] for i in range(frames)]
    model.train()
    with torch.no_grad():
        for b in range(0, len(images), 8):
            model(frames_to_input(images[b:b + 8], size, mean, std, False))
    return model.eval(), spec


def calibration_frames(source, size: tuple[int, int], count: int = 16) -> list[np.ndarray]:
    """Return `count` frames spread over a video source, at `size`, for BatchNorm."""
    fps = count / max(source.duration_s, 1e-3)
    return [frame for _, frame, _ in source.frames(fps, *size)][:count]


# -- options -> contexts ----------------------------------------------------------------------

def parse_teacher(spec: str):
    from ams_ros.ground.teachers import make_teacher

    text = spec.strip()
    if text.startswith('{'):
        config = json.loads(text)
    elif text.endswith('.json') and Path(text).is_file():
        config = json.loads(Path(text).read_text())
    elif ':' in text:
        kind, path = text.split(':', 1)
        config = {'kind': kind, 'path': path}
    else:
        raise ValueError(f'cannot read teacher {spec!r}: give JSON, a .json file or KIND:PATH')
    return make_teacher(config)


def make_sources(args) -> list:
    if args.video:
        ignore = args.task.ignore_label if args.task else IGNORE_LABEL
        return [VideoFileSource(args.video, args.labels, args.duration, ignore_label=ignore)]
    regions = [args.look_region] + [r for r in args.look_regions
                                    if 'drift' in args.ablation and r != args.look_region]
    return [SyntheticSource(seed, args.duration, look_region=region)
            for region in regions for seed in args.seeds]


def ams_settings(args) -> AmsProfile:
    """Return the AMS profile the command line names, with the single values it overrides."""
    profile = AMS_PROFILES[args.ams_profile]
    given = {'strategy': args.strategy, 'fraction': args.fraction,
             'learning_rate': args.learning_rate, 'class_balance': args.class_balance,
             'horizon_s': args.horizon, 't_update': args.t_update}
    changes = {name: value for name, value in given.items() if value is not None}
    if args.patch_values is not None:
        changes['patch_format'] = dataclasses.replace(profile.patch_format,
                                                      value_mode=args.patch_values)
    return dataclasses.replace(profile, **changes)


def base_configs(args) -> tuple[GroundConfig, DroneConfig]:
    """Return the ground and drone configs the command line describes (profile defaults filled)."""
    settings = ams_settings(args)
    trainer = TrainerConfig(iterations=args.iterations, batch_size=args.batch_size,
                            device=args.device)
    ground = settings.ground(GroundConfig(trainer=trainer, asr=AsrConfig(), atr=AtrConfig()))
    drone = settings.drone(DroneConfig(uplink=CodecSettings(codec='h264',
                                                            bitrate_kbps=args.uplink_bitrate)))
    return ground, drone


def base_link(args) -> LinkConfig:
    return LinkConfig(ChannelConfig(args.uplink_kbps, args.latency, args.loss),
                      ChannelConfig(args.downlink_kbps, args.latency, args.loss))


def make_variants(args, ground: GroundConfig, drone: DroneConfig) -> list[Variant]:
    variants = []
    replace = dataclasses.replace
    for name in args.schemes:
        if name == PAPER_SCHEME:
            variants.append(Variant(Ams(PAPER_SCHEME), PAPER_SCHEME, {}, PAPER.ground(ground),
                                    PAPER.drone(drone)))
        elif name == REMOTE_TRACKING:
            link = base_link(args)
            for latency in args.remote_latencies:
                label = f'{REMOTE_TRACKING}@{latency:g}s'
                channels = [replace(c, latency_s=latency) for c in (link.uplink, link.downlink)]
                variants.append(Variant(RemoteTracking(label), label, {}, link=LinkConfig(
                    *channels), fps=max(args.remote_fps, args.fps)))
        else:
            scheme = _scheme(name)
            variants.append(Variant(scheme, scheme.name, {}))
    for ablation in args.ablation:
        if ablation == 'selection':
            full = replace(ground.trainer, strategy=FULL, fraction=1.0)
            variants.append(Variant(Ams('ams[full]'), 'ams[full]',
                                    {'kind': 'selection', 'strategy': FULL, 'fraction': 1.0},
                                    replace(ground, trainer=full)))
            for strategy in args.strategies:
                for fraction in args.fractions:
                    label = f'ams[{strategy},{fraction:g}]'
                    trainer = replace(ground.trainer, strategy=strategy, fraction=fraction)
                    variants.append(Variant(Ams(label), label, {
                        'kind': 'selection', 'strategy': strategy, 'fraction': fraction},
                        replace(ground, trainer=trainer)))
        elif ablation == 't_update':
            for period in args.t_updates:
                label = f'ams[T_update={period:g}]'
                atr = replace(ground.atr, period_min=period, period_max=max(period, 40.0))
                variants.append(Variant(Ams(label), label,
                                        {'kind': 't_update', 't_update': period},
                                        replace(ground, atr=atr),
                                        replace(drone, update_period=period)))
        elif ablation == 'jit_threshold':
            for threshold in args.jit_thresholds:
                label = f'just_in_time[threshold={threshold:g}]'
                variants.append(Variant(JustInTime(label, threshold=threshold), label,
                                        {'kind': 'jit_threshold', 'threshold': threshold}))
        elif ablation == 'asr':
            asr = replace(ground.asr, step_size=0.0, initial_rate=ground.asr.rate_max)
            variants.append(Variant(Ams('ams[asr=off]'), 'ams[asr=off]',
                                    {'kind': 'asr', 'asr': False}, replace(ground, asr=asr)))
        elif ablation == 'patch_codec':
            for label, fmt in (('paper', PAPER_FORMAT), ('ours', AMS.patch_format)):
                name = f'ams[patch={label}]'
                variants.append(Variant(Ams(name), name, {'kind': 'patch_codec', 'codec': label},
                                        replace(ground, patch_format=fmt)))
        elif ablation == 'uplink_codec':
            for codec in ('h264', 'jpeg'):
                name = f'ams[uplink={codec}]'
                variants.append(Variant(Ams(name), name, {'kind': 'uplink_codec', 'codec': codec},
                                        drone=replace(drone, uplink=replace(drone.uplink,
                                                                            codec=codec))))
        elif ablation == 'fleet':
            for policy in args.policies:
                name = f'ams[fleet,{policy}]'
                variants.append(Variant(Ams(name, policy=policy), name,
                                        {'kind': 'fleet', 'policy': policy}, fleet=True))
        elif ablation != 'drift':  # drift adds flights, not variants (make_sources)
            raise ValueError(f'unknown ablation {ablation!r}; expected one of {ABLATIONS}')
    return variants


def _scheme(name: str):
    known = {**SCHEMES, **BASELINES}
    if name in known:
        return known[name]()
    raise ValueError(f'unknown scheme {name!r}; known: {sorted(known)}')


# -- running ----------------------------------------------------------------------------------

def run_evaluation(args, log=print) -> tuple[list[SchemeResult], dict]:
    """Run every variant on every flight; return the results and the run's metadata."""
    from tqdm import tqdm

    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    profile = PROFILES[args.profile]
    if args.device == 'auto':
        import torch

        args.device = 'cuda' if torch.cuda.is_available() else 'cpu'
    size = (args.height, args.width)
    task = args.task
    real = task is not None and task.teacher['kind'] != 'synthetic'
    sources = make_sources(args)
    if args.student == 'fresh' or (real and args.student is None):
        checkpoint = task.student.get('path') if real and args.student is None else None
    else:
        from ams_ros.model.pretrain import packaged_student

        checkpoint = args.student or packaged_student(profile.student, log, args.device)
    if real and args.student is None and 'input' in task.student:  # the user's own file
        from ams_ros.model.onnx_student import task_student_template

        template = task_student_template(task.student, task.class_names, task.class_colours)
        kind = 'onnx' if 'onnx' in task.student else 'torchscript'
        student = {'kind': kind, 'path': task.student[kind]}
    else:
        images = calibration_frames(sources[0], size) if real and checkpoint is None else None
        template, student = evaluation_student(checkpoint, args.arch, size, args.seed, log,
                                               task.class_names if task else None, images)
    spec = template.input_spec
    frame_size = args.frame_size or (spec.height, spec.width)
    ground, drone = base_configs(args)
    if task is not None and task.uplink_size:
        drone = dataclasses.replace(drone, uplink_size=task.uplink_size)
    variants = make_variants(args, ground, drone)
    if real:
        from ams_ros.ground.teachers import make_teacher

        shared_teacher = make_teacher(task.teacher)
    else:
        shared_teacher = parse_teacher(args.teacher) if args.teacher else None
    link = base_link(args)
    phase_time = None if args.phase_time == 'measured' else float(args.phase_time)
    total = sum(s.duration_s for s in sources) * len(variants)
    results: list[SchemeResult] = []
    timings = []
    started = time.perf_counter()
    with tqdm(total=round(total), unit='sim-s', disable=args.no_progress, file=sys.stderr,
              dynamic_ncols=True) as bar:

        def context(source, teacher, variant: Variant) -> EvalContext:
            fps = variant.fps or args.fps
            return EvalContext(
                source=source, teacher=teacher, template=template, fps=fps,
                eval_stride=max(1, round(fps / args.eval_fps)), frame_size=frame_size,
                link=variant.link or link, ground=variant.ground or ground,
                drone=variant.drone or drone,
                phase_time_s=phase_time, one_time_s=args.one_time, seed=args.seed,
                progress=_Progress(bar, source.duration_s))

        worlds = {source.name: source.world() for source in sources
                  if isinstance(source, SyntheticSource)}

        def record(variant: Variant, run_results: list[SchemeResult], wall: float) -> None:
            for result in run_results:
                result.extra['ablation'] = variant.ablation
                if result.flight in worlds:
                    result.extra['world'] = worlds[result.flight]
                result.extra['wall_s'] = wall
                results.append(result)
                timings.append({'flight': result.flight, 'scheme': result.name,
                                'wall_s': wall})
                log(f'{result.flight:>16} {result.name:<24} mIoU {_pct(result.miou):>6} '
                    f'up {result.uplink_kbps:7.1f} kbps  down {result.downlink_kbps:7.1f} '
                    f'kbps  ({wall:.0f} s)')

        fleets = {variant.label: [] for variant in variants if variant.fleet}
        for source in sources:
            teacher = shared_teacher or source.default_teacher()
            if teacher is None:
                raise ValueError(f'{source.name}: a video file needs --teacher or --labels')
            cached = CachedSource(source)
            if shared_teacher is None and isinstance(source, SyntheticSource):
                teacher = CachedLabelTeacher(cached, teacher)  # the flight's labels are exact
            # The cache holds the frames of one camera rate: the base rate's variants go first.
            for variant in sorted(variants, key=lambda v: v.fps is not None):
                ctx = context(cached, teacher, variant)
                if variant.fleet:
                    fleets[variant.label].append(ctx)  # flown with the others, below
                    continue
                bar.set_description(f'{source.name} {variant.label}')
                t0 = time.perf_counter()
                result = variant.scheme.run(ctx)
                ctx.progress.finish()
                record(variant, [result], time.perf_counter() - t0)
        for variant in variants:
            if variant.fleet:
                bar.set_description(f'fleet {variant.label}')
                t0 = time.perf_counter()
                fleet_results = variant.scheme.run_fleet(fleets[variant.label])
                for ctx in fleets[variant.label]:
                    ctx.progress.finish()
                record(variant, fleet_results, time.perf_counter() - t0)
    meta = {
        'profile': args.profile, 'command': sys.argv, 'student': student,
        'task': {'name': task.name, 'file': task.source} if task else None,
        'input_size': [spec.height, spec.width], 'frame_size': list(frame_size),
        'class_names': list(template.class_names), 'flights': [s.name for s in sources],
        'duration_s': [s.duration_s for s in sources], 'fps': args.fps,
        'eval_fps': args.eval_fps, 'seed': args.seed, 'phase_time_s': phase_time,
        'link': link.to_dict(), 'trainer': _plain(ground.trainer), 'asr': _plain(ground.asr),
        'atr': _plain(ground.atr), 'patch_format': _plain(ground.patch_format),
        'uplink': _plain(drone.uplink), 'one_time_s': args.one_time,
        'schemes': [v.label for v in variants], 'timings': timings,
        'ams_profile': args.ams_profile,
        'wall_s': time.perf_counter() - started, 'device': args.device,
        'host': platform.node(), 'python': platform.python_version(),
    }
    return results, meta


class _Progress:
    """Advance the bar by the simulated seconds a run reports, and by the rest when it ends."""

    def __init__(self, bar, duration_s: float):
        self.bar, self.duration_s, self.done = bar, duration_s, 0.0

    def __call__(self, elapsed: float, duration: float) -> None:
        self.bar.update(max(0.0, elapsed - self.done))
        self.done = max(self.done, elapsed)

    def finish(self) -> None:
        self(self.duration_s, self.duration_s)


def _plain(obj) -> dict:
    return json.loads(json.dumps(dataclasses.asdict(obj), default=str))


def _pct(value: float) -> str:
    return 'n/a' if value is None or math.isnan(value) else f'{100 * value:.2f}'


def summary_rows(results: Sequence[SchemeResult]) -> list[dict]:
    """Per scheme: mean over flights of mIoU and kbps, and per-flight values."""
    rows: dict[str, dict] = {}
    for r in results:
        row = rows.setdefault(r.name, {'scheme': r.name, 'flights': {}})
        row['flights'][r.flight] = {'miou': r.miou, 'uplink_kbps': r.uplink_kbps,
                                    'downlink_kbps': r.downlink_kbps, 'updates': len(r.updates)}
    for row in rows.values():
        values = list(row['flights'].values())
        for key in ('miou', 'uplink_kbps', 'downlink_kbps'):
            row[key] = float(np.nanmean([v[key] for v in values]))
    return list(rows.values())


def format_table(results: Sequence[SchemeResult]) -> str:
    """Plain-text table: mIoU (%) and up/down kbps per scheme and flight, then the means."""
    rows = summary_rows(results)
    flights = list(dict.fromkeys(r.flight for r in results))
    lines = [f'{"scheme":<26}' + ''.join(f'{f:>28}' for f in flights) + f'{"mean":>28}',
             f'{"":<26}' + f'{"mIoU% up/down kbps":>28}' * (len(flights) + 1)]
    for row in rows:
        cells = []
        for flight in flights:
            v = row['flights'].get(flight)
            cells.append('' if v is None else _cell(v['miou'], v['uplink_kbps'],
                                                    v['downlink_kbps']))
        cells.append(_cell(row['miou'], row['uplink_kbps'], row['downlink_kbps']))
        lines.append(f'{row["scheme"]:<26}' + ''.join(f'{c:>28}' for c in cells))
    base = {row['scheme']: row['miou'] for row in rows}
    for ams in ('ams', PAPER_SCHEME):
        for reference in ('no_customization', 'one_time'):
            if ams in base and reference in base:
                lines.append(f'{ams} gain over {reference}: '
                             f'{100 * (base[ams] - base[reference]):+.2f} mIoU points (mean over '
                             'flights)')
    return '\n'.join(lines) + '\n'


def _cell(miou, up, down) -> str:
    return f'{_pct(miou)} {up:.1f}/{down:.1f}'


def write_outputs(results: list[SchemeResult], meta: dict, out_dir: Path, log=print) -> None:
    out_dir.mkdir(parents=True, exist_ok=True)
    data = {'meta': meta, 'results': [r.to_dict() for r in results]}
    (out_dir / 'results.json').write_text(json.dumps(data, indent=1))
    table = format_table(results)
    (out_dir / 'table.txt').write_text(table)
    log(table)
    try:
        write_report(results, out_dir, metadata=meta)
    except Exception as exc:  # the JSON and table are written; a plotting failure is reported
        log(f'warning: the report failed: {type(exc).__name__}: {exc}')
        log(traceback.format_exc())


# -- command line -----------------------------------------------------------------------------

def build_parser(parser: argparse.ArgumentParser | None = None) -> argparse.ArgumentParser:
    parser = parser or argparse.ArgumentParser(prog='ams eval', description=__doc__,
                                               formatter_class=argparse.RawTextHelpFormatter)
    profile = parser.add_mutually_exclusive_group()
    profile.add_argument('--quick', dest='profile', action='store_const', const='quick',
                         help='CPU profile (default): 128x256, 180-s flights, K=20')
    profile.add_argument('--full', dest='profile', action='store_const', const='full',
                         help='GPU profile: 256x512, 600-s flights, K=20, measured phase time')
    parser.set_defaults(profile='quick')
    src = parser.add_argument_group('source')
    src.add_argument('--seeds', type=int, nargs='+', default=[1000, 1001, 1002],
                     help='synthetic flights (>= 1000 are held out; default 1000 1001 1002)')
    src.add_argument('--task', help='task file, or the name of a shipped one (config/tasks/): '
                     'the classes, the teacher and the student')
    src.add_argument('--video', help='a video file instead of synthetic flights')
    src.add_argument('--teacher', help="teacher: JSON config, a .json file, or KIND:PATH "
                     "(onnx:teacher.onnx, torchscript:teacher.pt); ground truth for --video")
    src.add_argument('--labels', help='folder of gt_%%06d.png labels (by frame index) for --video')
    src.add_argument('--duration', type=float, help='flight length, s (profile default)')
    src.add_argument('--look-region', type=int, default=DEFAULT_LOOK_REGION,
                     help='the synthetic world\'s drift: looks are shared by blocks of this many '
                          f'districts a side (default {DEFAULT_LOOK_REGION})')
    src.add_argument('--look-regions', type=int, nargs='+', default=list(DRIFT_LOOK_REGIONS),
                     help='drift ablation: the flights again over worlds of these look regions')
    run = parser.add_argument_group('schemes')
    run.add_argument('--schemes', nargs='+', default=list(DEFAULT_SCHEMES),
                     help=f'schemes to run (default: {" ".join(DEFAULT_SCHEMES)})')
    run.add_argument('--ablation', action='append', default=[], choices=ABLATIONS,
                     help='add AMS variants (repeatable); fleet flies every flight at once, '
                          'one drone each on one ground, once per --policies')
    run.add_argument('--strategies', nargs='+', default=list(TABLE3_STRATEGIES),
                     help='selection ablation strategies')
    run.add_argument('--fractions', type=float, nargs='+', default=list(TABLE3_FRACTIONS),
                     help='selection ablation fractions')
    run.add_argument('--t-updates', type=float, nargs='+', default=list(FIG4_T_UPDATE),
                     help='t_update ablation periods, s')
    run.add_argument('--policies', nargs='+', default=list(POLICIES), choices=POLICIES,
                     help='ground schedulers of the fleet ablation (default: all)')
    run.add_argument('--jit-thresholds', type=float, nargs='+',
                     default=list(FIG4_JIT_THRESHOLDS),
                     help='jit_threshold ablation: Just-In-Time accuracy thresholds')
    model = parser.add_argument_group('student and training')
    model.add_argument('--student', help="student checkpoint (.pt; default: the profile's "
                       'packaged one, pretrained and cached on first use if not shipped), or '
                       "'fresh': an untrained student (BatchNorm calibrated) at --size")
    model.add_argument('--arch', help='student architecture without a checkpoint')
    model.add_argument('--size', help='HxW of the student without a checkpoint (profile '
                       'default)')
    model.add_argument('--frame-size', help='HxW frames are rendered/decoded at and the '
                       'teacher labels (default: the student\'s input size)')
    model.add_argument('--iterations', type=int, help='K per phase (profile default)')
    model.add_argument('--batch-size', type=int, help='mini-batch size (profile default)')
    model.add_argument('--ams-profile', choices=sorted(AMS_PROFILES), default=DEFAULT_PROFILE,
                       help="AMS's settings (ams_ros.profiles): the project's ('ams', default) "
                            "or the paper's; the options below override single values. The "
                            f"scheme {PAPER_SCHEME} always runs the paper's")
    model.add_argument('--fraction', type=float, help="gamma (the profile's)")
    model.add_argument('--strategy', choices=STRATEGIES, help="selection strategy (the "
                       "profile's)")
    model.add_argument('--learning-rate', type=float, help="alpha (the profile's)")
    model.add_argument('--horizon', type=float, help="T_horizon, s (the profile's)")
    model.add_argument('--class-balance', type=float, help="weigh each class by its pixel "
                       "share ** -b in the training loss (the profile's; 0: plain)")
    model.add_argument('--patch-values', choices=VALUE_MODES, help="precision of patch values "
                       "(the profile's)")
    model.add_argument('--t-update', type=float, help="T_update, s (the profile's)")
    model.add_argument('--one-time', type=float, default=60.0, help='One-Time window, s')
    model.add_argument('--device', default='auto', help='training device: auto, cpu, cuda')
    model.add_argument('--phase-time', help="simulated phase duration, s, or 'measured'")
    model.add_argument('--threads', type=int, default=0, help='torch threads (0: default)')
    net = parser.add_argument_group('camera and link')
    net.add_argument('--fps', type=float, help='simulated camera frame rate')
    net.add_argument('--eval-fps', type=float, help='evaluated frames per second')
    net.add_argument('--uplink-bitrate', type=float, default=200.0, help='H.264 kbps cap')
    net.add_argument('--uplink-kbps', type=float, help='uplink bandwidth (default unlimited)')
    net.add_argument('--downlink-kbps', type=float, help='downlink bandwidth (default unlimited)')
    net.add_argument('--latency', type=float, default=0.05, help='one-way latency, s')
    net.add_argument('--remote-latencies', type=float, nargs='+', default=list(REMOTE_LATENCIES),
                     help=f'{REMOTE_TRACKING}: one-way latencies it runs at, one variant each '
                          '(default: %(default)s s)')
    net.add_argument('--remote-fps', type=float, default=REMOTE_FPS,
                     help=f'{REMOTE_TRACKING}: camera frame rate (default %(default)s; the '
                          'evaluated frames stay those of --eval-fps)')
    net.add_argument('--loss', type=float, default=0.0, help='message loss probability')
    parser.add_argument('--seed', type=int, default=0)
    parser.add_argument('--merge', nargs='+', metavar='DIR', help='write one report of the '
                        'results of these output folders (runs split by seed or flight) '
                        'instead of running')
    parser.add_argument('--out', default='eval_out', help='output folder (default eval_out)')
    parser.add_argument('--no-progress', action='store_true', help='no progress bar')
    return parser


def resolve(args) -> argparse.Namespace:
    """Fill the task's and the profile's defaults into options left unset."""
    profile = PROFILES[args.profile]
    task = args.task = _task(args)
    own = task.student if task is not None and task.teacher['kind'] != 'synthetic' else {}
    args.arch = args.arch or own.get('arch') or profile.arch
    if args.size:
        args.height, args.width = _size(args.size)
    else:
        args.height, args.width = own.get('input_size') or (profile.height, profile.width)
    args.frame_size = _size(args.frame_size) if args.frame_size else None
    args.duration = args.duration or (None if args.video else profile.duration_s)
    args.iterations = args.iterations or profile.iterations
    args.batch_size = args.batch_size or profile.batch_size
    args.fps = args.fps or profile.fps
    args.eval_fps = min(args.eval_fps or profile.eval_fps, args.fps)
    if args.phase_time is None:
        args.phase_time = 'measured' if profile.phase_time_s is None else profile.phase_time_s
    if args.labels and not args.video:
        raise SystemExit('--labels needs --video')
    if args.video and 'drift' in args.ablation:
        raise SystemExit('--ablation drift varies the synthetic world: it needs --seeds, not '
                         '--video')
    return args


def _task(args):
    """Load --task; a task with a real teacher needs a video and no --teacher."""
    if not args.task:
        return None
    from ams_ros.task import TaskError, load_task

    try:
        task = load_task(args.task)
    except TaskError as e:
        raise SystemExit(f'ams eval: {e}') from e
    if task.teacher['kind'] != 'synthetic':
        if not args.video:
            raise SystemExit(f'ams eval: task {task.name!r} has no synthetic flights: give '
                             '--video')
        if args.teacher:
            raise SystemExit('ams eval: the task names the teacher: drop --teacher')
    return task


def _size(text: str) -> tuple[int, int]:
    height, width = (int(v) for v in text.lower().split('x'))
    return height, width


def main(argv: Sequence[str] | None = None) -> int:
    return run(build_parser().parse_args(argv))


def merge_runs(folders: Sequence[str | Path]) -> tuple[list[SchemeResult], dict]:
    """Return the results of several `ams eval` output folders and the first one's metadata.

    Runs split over processes or machines (e.g. one per training seed) report as one. When
    the runs used several training seeds, each flight is named with its seed
    (``synthetic-1000 seed 1``), so the tables average over every flight and seed.
    """
    runs = [json.loads((Path(folder) / 'results.json').read_text()) for folder in folders]
    seeds = sorted({data['meta'].get('seed') for data in runs})
    results = []
    for data in runs:
        for item in data['results']:
            result = SchemeResult.from_dict(item)
            if len(seeds) > 1:
                result.flight = f'{result.flight} seed {data["meta"].get("seed")}'
            results.append(result)
    meta = dict(runs[0]['meta'], merged=[str(f) for f in folders], seeds=seeds)
    return results, meta


def run(args) -> int:
    """Run a parsed `ams eval` command."""
    if args.merge:
        results, meta = merge_runs(args.merge)
        write_outputs(results, meta, Path(args.out), log=print)
        return 0
    args = resolve(args)
    results, meta = run_evaluation(args, log=lambda m: print(m, file=sys.stderr))
    write_outputs(results, meta, Path(args.out), log=print)
    return 0


if __name__ == '__main__':
    sys.exit(main())
