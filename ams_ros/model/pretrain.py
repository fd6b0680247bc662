"""The generic student: pretrained on many flights of the synthetic world, before any drone flies.

AMS starts every drone from a student pretrained on generic data (the paper's Cityscapes
checkpoint); the ground then specialises it to the drone's own video. Here the generic data are
flights over pretraining worlds (seeds below FIRST_HELD_OUT_SEED), rendered on the fly: each
episode picks a seed and a stretch of its flight and renders frames at random instants in it
(the districts it crosses are built once per episode), and episodes feed a shuffled pool that
mini-batches are drawn from. Flight, altitude, light and haze already vary; flips and colour
jitter are added on top. BatchNorm runs in ordinary training mode: its running statistics are
learned here, and the on-line fine-tuning later freezes them.

A checkpoint is two files: `NAME.pt`, a torch state_dict (running statistics included), and
`NAME.json`, its metadata (architecture, class names, input size and normalisation, how it was
pretrained and how well it did on held-out flights):

    model, meta = load_student('ams_ros/data/student_small_128x256.pt')
    template = from_checkpoint('ams_ros/data/student_small_128x256.pt')  # ams_ros.model.template
    export_onnx(model, meta, 'student.onnx')  # the drone's model, with AMS metadata

Command line (`python -m ams_ros.model.pretrain --help`, also `ams pretrain`):

    python -m ams_ros.model.pretrain --arch deeplabv3_mbv2_small --height 128 --width 256 \
        --steps 2000 --out ams_ros/data/student_small_128x256.pt --onnx

Cost: the small student at 128x256, batch 16, takes about 0.7 s per step on 2 idle CPU cores
(about 0.15 s more to render fresh frames), so 2000 steps take about half an hour; on a busy
machine give it `--threads 1`, since several threads per process thrash when cores are shared.
On one H100 (`--device cuda`, render workers) the small student did about 21 steps of 32 frames
a second and the full one (`deeplabv3_mbv2`, 256x512, batch 16) about 19, with three such runs
sharing the GPU and its 16 cores.
`--init CHECKPOINT` continues from an earlier checkpoint (e.g. one pretrained on an older
version of the world); the metadata then records both stages.

With `--task FILE --videos ...` the command distils a task's teacher into its student over
unlabelled footage instead (ams_ros.model.distill).

Held-out flights (seed >= FIRST_HELD_OUT_SEED) are never rendered for training: the
configuration refuses them. `bench/bench_world_gap.py` measures the checkpoint against the
same student specialised to each held-out flight.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import platform
import sys
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from ams_ros.metrics import MiouAccumulator
from ams_ros.model.student import (
    STUDENT_ARCHS,
    InputSpec,
    build_student,
    check_arch,
    pixel_normalisation,
)
from ams_ros.world import CLASS_NAMES, FIRST_HELD_OUT_SEED, NUM_CLASSES, AerialVideo

FORMAT = 'ams-student-checkpoint/1'
DATA_DIR = Path(__file__).resolve().parents[1] / 'data'
# The packaged checkpoints: the CPU demo / --quick profile (committed) and the full profile
# (256x512; shipped where one was made, else pretrained once on first use: see packaged_student).
SMALL_CHECKPOINT = DATA_DIR / 'student_small_128x256.pt'
FULL_CHECKPOINT = DATA_DIR / 'student_256x512.pt'
FLIGHT_S = 600.0  # pretraining flights are this long; episodes are stretches of them
EVAL_SEEDS = (1000, 1001, 1002)


@dataclass(frozen=True)
class PretrainConfig:
    """What to pretrain and how; the defaults are the CPU demo student."""

    arch: str = 'deeplabv3_mbv2_small'
    height: int = 128
    width: int = 256
    steps: int = 2000
    batch_size: int = 16
    learning_rate: float = 2e-3  # peak; warm-up then cosine decay to zero
    weight_decay: float = 1e-4  # AdamW, decoupled
    warmup_steps: int = 100
    seeds: tuple[int, int] = (0, FIRST_HELD_OUT_SEED)  # [first, stop) of the pretraining worlds
    episode_frames: int = 24  # frames rendered per episode (one seed, one stretch of flight)
    episode_s: float = 60.0  # length of that stretch
    pool_size: int = 768  # shuffled frames that batches are drawn from
    fresh_per_step: int = 3  # pool slots refilled with new frames after each step (0: fixed)
    augment: bool = True
    device: str = 'cpu'
    workers: int = 0  # render in this many processes (0: in the training process)
    time_budget_s: float | None = None  # stop early (schedule compressed) past this wall time
    seed: int = 0
    init: str | None = None  # start from this checkpoint's weights (same arch) instead

    def __post_init__(self):
        check_arch(self.arch)
        first, stop = self.seeds
        if not 0 <= first < stop <= FIRST_HELD_OUT_SEED:
            raise ValueError(f'pretraining seeds must lie in [0, {FIRST_HELD_OUT_SEED}): '
                             f'held-out flights are for evaluation only, got {self.seeds}')
        if min(self.steps, self.batch_size, self.episode_frames) < 1 or self.fresh_per_step < 0:
            raise ValueError('steps, batch_size, episode_frames must be >= 1, fresh_per_step >= 0')
        if self.pool_size < self.batch_size:
            raise ValueError('pool_size must be at least batch_size')


@dataclass(frozen=True)
class StudentMetadata:
    """The JSON side of a checkpoint: enough to rebuild, run and export the student."""

    arch: str
    class_names: tuple[str, ...]
    height: int
    width: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    num_parameters: int = 0
    weights_sha256: str = ''
    world_fingerprint: str = ''  # of the world it was pretrained on (see world_fingerprint)
    pretrain: dict = field(default_factory=dict)  # config, time, device, losses, evaluation
    format: str = FORMAT
    class_colours: tuple[tuple[int, int, int], ...] = ()  # a task's, for colour masks

    @property
    def input_spec(self) -> InputSpec:
        return InputSpec(self.height, self.width, tuple(self.mean), tuple(self.std))

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2, sort_keys=True) + '\n'

    @classmethod
    def from_json(cls, text: str) -> StudentMetadata:
        data = json.loads(text)
        if data.get('format') != FORMAT:
            raise ValueError(f'not an AMS student checkpoint (format {data.get("format")!r})')
        for key in ('class_names', 'mean', 'std'):
            data[key] = tuple(data[key])
        data['class_colours'] = tuple(tuple(c) for c in data.get('class_colours', ()))
        return cls(**data)


@dataclass(frozen=True)
class PretrainResult:
    model: torch.nn.Module
    metadata: StudentMetadata
    losses: list[float]  # per step


# ---------------------------------------------------------------------------------------------
# Data: episodes of pretraining flights, a shuffled pool, augmentation.

def render_episode(seed: int, rng: np.random.Generator, frames: int, episode_s: float,
                   height: int, width: int, flight_s: float = FLIGHT_S) -> list:
    """Render `frames` (frame, label) pairs at random instants of one stretch of flight `seed`."""
    video = AerialVideo(seed, duration_s=flight_s)
    start = rng.uniform(0.0, max(flight_s - episode_s, 0.0))
    stamps = np.sort(start + rng.uniform(0.0, episode_s, frames))
    return [video.render(float(t), height, width) for t in stamps]


class EpisodeStream(torch.utils.data.IterableDataset):
    """An endless stream of (frame, label) from random episodes of the pretraining flights."""

    def __init__(self, config: PretrainConfig):
        super().__init__()
        self.config = config

    def __iter__(self) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        info = torch.utils.data.get_worker_info()
        worker = 0 if info is None else info.id + 1
        rng = np.random.default_rng([self.config.seed, worker])
        c = self.config
        while True:
            seed = int(rng.integers(*c.seeds))
            yield from render_episode(seed, rng, c.episode_frames, c.episode_s, c.height,
                                      c.width)


def _frame_stream(config: PretrainConfig) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    if config.workers == 0:
        return iter(EpisodeStream(config))
    import cv2

    cv2.setNumThreads(1)  # inherited by the workers: one render per core
    loader = torch.utils.data.DataLoader(
        EpisodeStream(config), batch_size=None, num_workers=config.workers,
        collate_fn=lambda item: item, prefetch_factor=4 * config.episode_frames,
        persistent_workers=True)
    return iter(loader)


class FramePool:
    """Frames from several episodes, shuffled together; a few are replaced after each batch."""

    def __init__(self, stream: Iterator, size: int, rng: np.random.Generator):
        self.stream = stream
        self.rng = rng
        first = [next(stream) for _ in range(size)]
        self.frames = np.stack([f for f, _ in first])
        self.labels = np.stack([lab for _, lab in first])
        # Episodes arrive in order; the random refill positions mix them.

    def batch(self, size: int) -> tuple[np.ndarray, np.ndarray]:
        index = self.rng.choice(len(self.frames), size, replace=False)
        return self.frames[index], self.labels[index]

    def refresh(self, count: int) -> None:
        for i in self.rng.choice(len(self.frames), count, replace=False):
            self.frames[i], self.labels[i] = next(self.stream)


def augment_batch(x: torch.Tensor, y: torch.Tensor, generator: torch.Generator
                  ) -> tuple[torch.Tensor, torch.Tensor]:
    """Randomly mirror each sample and jitter its colours (on 0..255 float pixels, NCHW)."""
    n = x.shape[0]
    device = x.device

    def uniform(*shape, low, high):
        return torch.rand(*shape, generator=generator, device=device) * (high - low) + low

    flip = torch.rand(n, generator=generator, device=device) < 0.5
    x = torch.where(flip[:, None, None, None], x.flip(3), x)
    y = torch.where(flip[:, None, None], y.flip(2), y)
    gain = uniform(n, 1, 1, 1, low=0.8, high=1.2) * uniform(n, 3, 1, 1, low=0.92, high=1.08)
    mean = x.mean(dim=(1, 2, 3), keepdim=True)
    contrast = uniform(n, 1, 1, 1, low=0.8, high=1.2)
    x = (x - mean) * contrast + mean
    x = x * gain + uniform(n, 1, 1, 1, low=-12.0, high=12.0)
    noise = uniform(n, 1, 1, 1, low=0.0, high=4.0)
    x = x + noise * torch.randn(x.shape, generator=generator, device=device)
    return x.clamp(0.0, 255.0), y


def _to_input(frames: np.ndarray, spec: InputSpec, device: torch.device) -> torch.Tensor:
    """Uint8 NHWC frames (already at the input size) -> float NCHW pixels 0..255."""
    return torch.from_numpy(frames).to(device).permute(0, 3, 1, 2).float()


def _normalise(x: torch.Tensor, spec: InputSpec) -> torch.Tensor:
    mean, std = pixel_normalisation(spec, x.device)
    return (x - mean) / std


# ---------------------------------------------------------------------------------------------
# Training.

def learning_rate(config: PretrainConfig, progress: float, step: int) -> float:
    """Linear warm-up over warmup_steps, then cosine decay to zero at progress 1."""
    warm = min(1.0, (step + 1) / max(config.warmup_steps, 1))
    return config.learning_rate * warm * 0.5 * (1.0 + math.cos(math.pi * min(progress, 1.0)))


def pretrain(config: PretrainConfig, log: Callable[[str], None] = print,
             eval_seeds: Sequence[int] = (), eval_fps: float = 0.2,
             eval_duration_s: float = 300.0, checkpoint: Path | None = None,
             checkpoint_every_s: float = 600.0) -> PretrainResult:
    """Pretrain a student (fresh, or from config.init); score it on held-out `eval_seeds`.

    With `checkpoint`, the model so far is also saved there every `checkpoint_every_s`.
    """
    start = time.perf_counter()
    torch.manual_seed(config.seed)
    device = torch.device(config.device)
    spec = InputSpec(config.height, config.width)
    model = build_student(config.arch, NUM_CLASSES)
    init_info = None
    if config.init:
        start_model, start_meta = load_student(config.init)
        if start_meta.arch != config.arch or tuple(start_meta.class_names) != CLASS_NAMES:
            raise ValueError(f'{config.init} is a {start_meta.arch} over '
                             f'{start_meta.class_names}, not a {config.arch} over {CLASS_NAMES}')
        model.load_state_dict(start_model.state_dict())
        init_info = {'path': Path(config.init).name, 'weights_sha256': start_meta.weights_sha256,
                     'world_fingerprint': start_meta.world_fingerprint,
                     'height': start_meta.height, 'width': start_meta.width,
                     'pretrain': start_meta.pretrain}
    model = model.to(device)
    cpu = device.type == 'cpu'
    if cpu:
        model = model.to(memory_format=torch.channels_last)  # about half the CPU step time
    optimizer = torch.optim.AdamW(model.parameters(), lr=config.learning_rate,
                                  weight_decay=config.weight_decay)
    rng = np.random.default_rng([config.seed, 1 << 20])
    generator = torch.Generator(device=device).manual_seed(config.seed)
    pool = FramePool(_frame_stream(config), config.pool_size, rng)
    log(f'pool of {config.pool_size} frames ready after {time.perf_counter() - start:.0f} s')

    model.train()
    losses: list[float] = []
    last_save = time.perf_counter()
    step = 0
    for step in range(config.steps):
        elapsed = time.perf_counter() - start
        progress = step / config.steps
        if config.time_budget_s:
            if elapsed >= config.time_budget_s:
                log(f'time budget reached after {step} steps')
                break
            progress = max(progress, elapsed / config.time_budget_s)
        for group in optimizer.param_groups:
            group['lr'] = learning_rate(config, progress, step)
        frames, labels = pool.batch(config.batch_size)
        x = _to_input(frames, spec, device)
        y = torch.from_numpy(labels).to(device).long()
        if config.augment:
            x, y = augment_batch(x, y, generator)
        x = _normalise(x, spec)
        if cpu:
            x = x.contiguous(memory_format=torch.channels_last)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=not cpu):
            logits = model(x)
        loss = F.cross_entropy(logits.float(), y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
        pool.refresh(config.fresh_per_step)
        if step % 50 == 0 or step == config.steps - 1:
            recent = np.mean(losses[-50:])
            log(f'step {step:5d}  loss {recent:.4f}  lr {optimizer.param_groups[0]["lr"]:.2e}  '
                f'{time.perf_counter() - start:6.0f} s')
        if checkpoint is not None and time.perf_counter() - last_save > checkpoint_every_s:
            save_student(checkpoint, model, _metadata(config, model, losses, step + 1, start,
                                                      {}, final=False, init=init_info))
            last_save = time.perf_counter()
    else:
        step = config.steps
    train_seconds = time.perf_counter() - start
    del pool  # stops the render workers, if any
    model.eval()
    evaluation = {}
    if eval_seeds:
        evaluation = evaluate_flights(model, spec, eval_seeds, fps=eval_fps,
                                      duration_s=eval_duration_s, device=device)
        log(f'held-out mean per-frame mIoU {evaluation["mean_frame_miou"]:.4f} over seeds '
            f'{list(eval_seeds)}')
    metadata = _metadata(config, model, losses, step, start, evaluation,
                         train_seconds=train_seconds, init=init_info)
    model = model.to('cpu', memory_format=torch.contiguous_format)
    if checkpoint is not None:
        save_student(checkpoint, model, metadata)
    return PretrainResult(model, metadata, losses)


def _metadata(config: PretrainConfig, model, losses, steps, start, evaluation, final=True,
              train_seconds=None, init=None) -> StudentMetadata:
    spec = InputSpec(config.height, config.width)
    settings = asdict(config)
    settings['seeds'] = list(config.seeds)
    info = {
        'config': settings,
        'steps_done': int(steps),
        'frames_seen': int(steps) * config.batch_size,
        'final': final,
        'loss_first_50': float(np.mean(losses[:50])) if losses else None,
        'loss_last_50': float(np.mean(losses[-50:])) if losses else None,
        'train_seconds': round(train_seconds or time.perf_counter() - start, 1),
        'device': _device_name(config.device),
        'threads': torch.get_num_threads(),
        'torch': torch.__version__,
        'python': platform.python_version(),
        'evaluation': evaluation,
    }
    if init is not None:
        info['init'] = init  # pretrained in stages: this one continued from `init`
    return StudentMetadata(
        arch=config.arch, class_names=tuple(CLASS_NAMES), height=spec.height, width=spec.width,
        mean=tuple(spec.mean), std=tuple(spec.std),
        num_parameters=sum(p.numel() for p in model.parameters()),
        world_fingerprint=world_fingerprint(), pretrain=info)


def _device_name(device: str) -> str:
    if device.startswith('cuda') and torch.cuda.is_available():
        return torch.cuda.get_device_name(torch.device(device))
    return f'cpu ({platform.processor() or platform.machine()})'


# ---------------------------------------------------------------------------------------------
# Evaluation.

@torch.no_grad()
def predict(model: torch.nn.Module, frames: np.ndarray, spec: InputSpec,
            device: torch.device | str = 'cpu', batch_size: int = 16) -> np.ndarray:
    """Class ids (uint8 NxHxW) for uint8 NxHxWx3 frames already at the input size."""
    device = torch.device(device)
    out = [np.zeros((0, *np.shape(frames)[1:3]), np.uint8)]
    for i in range(0, len(frames), batch_size):
        x = _normalise(_to_input(np.ascontiguousarray(frames[i:i + batch_size]), spec, device),
                       spec)
        out.append(model(x).argmax(1).to(torch.uint8).cpu().numpy())
    return np.concatenate(out)


def flight_frames(seed: int, spec: InputSpec, fps: float, duration_s: float,
                  start_t: float = 0.0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(stamps, frames, labels) of held-out (or any) flight `seed` at `fps` over a stretch."""
    video = AerialVideo(seed, duration_s=max(start_t + duration_s, 1.0))
    items = list(video.frames(fps, spec.height, spec.width, start_t=start_t,
                              stop_t=start_t + duration_s - 1e-6))
    stamps, frames, labels = zip(*items, strict=True)
    return np.array(stamps), np.stack(frames), np.stack(labels)


def score(labels: np.ndarray, predictions: np.ndarray) -> dict:
    """Mean per-frame mIoU (the paper's per-frame view) and pooled mIoU, per-class IoU."""
    acc = MiouAccumulator(NUM_CLASSES)
    for label, prediction in zip(labels, predictions, strict=True):
        acc.add(label, prediction)
    return {'mean_frame_miou': round(acc.mean_frame_miou(), 4),
            'pooled_miou': round(acc.miou(), 4),
            'class_iou': {name: (None if np.isnan(v) else round(float(v), 4))
                          for name, v in zip(CLASS_NAMES, acc.class_iou(), strict=True)}}


def specialise(model: torch.nn.Module, frames: np.ndarray, labels: np.ndarray, spec: InputSpec,
               steps: int = 200, batch_size: int = 16, learning_rate: float = 1e-3,
               seed: int = 0, device: torch.device | str = 'cpu') -> tuple[torch.nn.Module, list]:
    """Fine-tune a copy of the model on one flight's labelled frames: what specialising can do.

    As in the on-line fine-tuning, BatchNorm statistics stay frozen and all parameters train
    with Adam; unlike it, every parameter is applied and the frames are given all at once.
    Returns (the copy, in eval mode, and its per-step losses).
    """
    import copy

    from ams_ros.model.student import freeze_batchnorm_statistics

    device = torch.device(device)
    tuned = copy.deepcopy(model).to(device)
    optimizer = torch.optim.Adam(tuned.parameters(), lr=learning_rate)
    rng = np.random.default_rng(seed)
    freeze_batchnorm_statistics(tuned)
    losses = []
    for _ in range(steps):
        index = rng.choice(len(frames), min(batch_size, len(frames)), replace=False)
        x = _normalise(_to_input(frames[index], spec, device), spec)
        y = torch.from_numpy(labels[index]).to(device).long()
        loss = F.cross_entropy(tuned(x), y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    return tuned.eval(), losses


def evaluate_flights(model: torch.nn.Module, spec: InputSpec, seeds: Iterable[int],
                     fps: float = 0.2, duration_s: float = 300.0,
                     device: torch.device | str = 'cpu') -> dict:
    """Score the model on each flight; the summary is the mean over flights."""
    model.eval()
    per_seed = {}
    for seed in seeds:
        _, frames, labels = flight_frames(seed, spec, fps, duration_s)
        per_seed[str(seed)] = score(labels, predict(model, frames, spec, device))
    return {
        'seeds': [int(s) for s in per_seed], 'fps': fps, 'duration_s': duration_s,
        'mean_frame_miou': round(float(np.mean([r['mean_frame_miou']
                                                for r in per_seed.values()])), 4),
        'per_seed': per_seed,
    }


# ---------------------------------------------------------------------------------------------
# Checkpoints.

def world_fingerprint() -> str:
    """Hash a few rendered pixels: the result changes whenever the world generator does."""
    video = AerialVideo(seed=FIRST_HELD_OUT_SEED - 1, duration_s=30.0)
    digest = hashlib.sha256()
    for t in (0.0, 20.0):
        frame, label = video.render(t, 24, 48)
        digest.update(frame.tobytes())
        digest.update(label.tobytes())
    return digest.hexdigest()[:16]


def metadata_path(path: str | Path) -> Path:
    return Path(path).with_suffix('.json')


def save_student(path: str | Path, model: torch.nn.Module, metadata: StudentMetadata) -> None:
    """Write the state_dict to `path` (.pt) and the metadata beside it (.json)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    tmp = path.with_suffix('.pt.tmp')
    torch.save(state, tmp)
    sha = hashlib.sha256(tmp.read_bytes()).hexdigest()
    tmp.replace(path)
    meta = StudentMetadata(**{**asdict(metadata), 'weights_sha256': sha})
    metadata_path(path).write_text(meta.to_json())


def load_student(path: str | Path, device: str = 'cpu', verify: bool = True
                 ) -> tuple[torch.nn.Module, StudentMetadata]:
    """Rebuild a checkpoint's student (in eval mode) and return it with its metadata."""
    path = Path(path)
    metadata = StudentMetadata.from_json(metadata_path(path).read_text())
    data = path.read_bytes()
    if verify and metadata.weights_sha256 and \
            hashlib.sha256(data).hexdigest() != metadata.weights_sha256:
        raise ValueError(f'{path} does not match the digest in {metadata_path(path)}')
    model = build_student(metadata.arch, len(metadata.class_names))
    state = torch.load(path, map_location='cpu', weights_only=True)
    model.load_state_dict(state)
    return model.to(device).eval(), metadata


# Packaged students by the name the ground node and `ams eval` use, with the recipe that makes
# one when its file is not shipped. The full student's recipe is about 5 minutes on one H100
# (render workers on its CPU cores); on a CPU it takes hours, so make it on a GPU machine.
PACKAGED = {
    'pretrained_small': (SMALL_CHECKPOINT, PretrainConfig()),
    'pretrained': (FULL_CHECKPOINT, PretrainConfig(
        arch='deeplabv3_mbv2', height=256, width=512, steps=6000, batch_size=16,
        pool_size=1536, warmup_steps=200)),
}


def cache_dir() -> Path:
    """Where students pretrained on first use are kept ($XDG_CACHE_HOME/ams_ros)."""
    return Path(os.environ.get('XDG_CACHE_HOME') or '~/.cache').expanduser() / 'ams_ros'


def cached_student(shipped: Path, cache: Path | None = None) -> Path:
    """Where the pretrained copy of a student that is not shipped is kept, for this world."""
    return (cache or cache_dir()) / f'{shipped.stem}-{world_fingerprint()}.pt'


def packaged_student(name: str, log: Callable[[str], None] = print,
                     device: str | None = None) -> Path:
    """Return the checkpoint file of a packaged student (a key of PACKAGED)."""
    shipped, recipe = PACKAGED[name]
    return shipped_or_pretrained(shipped, recipe, cache_dir(), log, device)


def shipped_or_pretrained(shipped: Path, recipe: PretrainConfig, cache: Path,
                          log: Callable[[str], None] = print, device: str | None = None) -> Path:
    """Return `shipped` if it exists, else a student pretrained by `recipe`, made once.

    The pretrained copy is cached under `cache`, keyed by the world's fingerprint, so a changed
    world generator makes a new one rather than reusing a student of another world.
    """
    if shipped.is_file():
        return shipped
    cached = cached_student(shipped, cache)
    if cached.is_file():
        return cached
    device = device or ('cuda' if torch.cuda.is_available() else 'cpu')
    workers = min(12, (os.cpu_count() or 1) - 1) if device.startswith('cuda') else 0
    config = replace(recipe, device=device, workers=max(0, workers))
    log(f'{shipped.name} is not shipped: pretraining a {config.arch} student at '
        f'{config.height}x{config.width} once ({config.steps} steps on {device}; minutes on a '
        f'GPU, hours on a CPU) into {cached}')
    result = pretrain(config, log=log)  # saved only once finished: no partial student is reused
    save_student(cached, result.model, result.metadata)
    return cached


def export_onnx(model: torch.nn.Module, metadata: StudentMetadata,
                path: str | Path | None = None) -> bytes:
    """Export the drone's ONNX model (model id, class names, manifest in its metadata)."""
    from ams_ros.model.template import StudentTemplate

    template = StudentTemplate.from_model(model, metadata.arch, metadata.class_names,
                                          metadata.input_spec, metadata.class_colours)
    if path is not None:
        Path(path).write_bytes(template.onnx_bytes)
    return template.onnx_bytes


# ---------------------------------------------------------------------------------------------
# Command line.

def build_parser(parser: argparse.ArgumentParser | None = None) -> argparse.ArgumentParser:
    """Add the pretraining options to `parser` (e.g. an `ams pretrain` sub-parser)."""
    parser = parser or argparse.ArgumentParser(
        prog='ams pretrain', description='Pretrain the generic student on the synthetic world, '
        "or (--task) distil a task's teacher into its student over unlabelled footage.")
    d = PretrainConfig()
    parser.add_argument('--arch', default=d.arch, choices=sorted(STUDENT_ARCHS))
    parser.add_argument('--height', type=int, default=None,
                        help=f"input height (default {d.height}; with --task the task's)")
    parser.add_argument('--width', type=int, default=None,
                        help=f"input width (default {d.width}; with --task the task's)")
    parser.add_argument('--steps', type=int, default=None,
                        help=f'training steps (default {d.steps}; with --task 600)')
    parser.add_argument('--batch-size', type=int, default=d.batch_size)
    parser.add_argument('--lr', type=float, default=d.learning_rate)
    parser.add_argument('--seeds', default=f'{d.seeds[0]}:{d.seeds[1]}',
                        help='pretraining worlds FIRST:STOP (below %(default)s)')
    parser.add_argument('--pool-size', type=int, default=d.pool_size)
    parser.add_argument('--no-augment', action='store_true')
    parser.add_argument('--device', default='cuda' if torch.cuda.is_available() else 'cpu')
    parser.add_argument('--workers', type=int, default=None,
                        help='render processes (default: 0 on CPU, 12 on CUDA)')
    parser.add_argument('--threads', type=int, default=None, help='torch CPU threads')
    parser.add_argument('--time-budget', type=float, default=None, metavar='S',
                        help='stop after S seconds of training (the schedule is compressed)')
    parser.add_argument('--seed', type=int, default=d.seed)
    parser.add_argument('--init', default=None, metavar='CHECKPOINT',
                        help='continue from this checkpoint (same arch) instead of from scratch')
    parser.add_argument('--warmup', type=int, default=None,
                        help=f'warm-up steps (default {d.warmup_steps}; with --task 50)')
    parser.add_argument('--eval-seeds', default=','.join(map(str, EVAL_SEEDS)),
                        help='held-out flights to score at the end ("" for none)')
    parser.add_argument('--eval-fps', type=float, default=0.2)
    parser.add_argument('--eval-duration', type=float, default=300.0)
    parser.add_argument('--out', type=Path, default=None,
                        help='checkpoint .pt (metadata goes beside it as .json; default: the '
                             'packaged student, or student_TASK.pt with --task)')
    parser.add_argument('--onnx', action='store_true',
                        help='also export the drone model beside it (.onnx; needs onnx)')
    task = parser.add_argument_group('distillation (ams_ros.model.distill)')
    task.add_argument('--task', help="task file or shipped name: distil its teacher into its "
                      "student (the .onnx is always written)")
    task.add_argument('--videos', nargs='+', help='unlabelled videos to distil over')
    task.add_argument('--images', help='and/or a folder of images')
    task.add_argument('--sample-fps', type=float, default=2.0,
                      help='frames taken per second of video (default 2)')
    task.add_argument('--holdout', type=float, default=0.2,
                      help='share of the files held out to measure agreement (default 0.2)')
    task.add_argument('--checkpoint-every', type=float, default=300.0, metavar='S',
                      help='save a resumable checkpoint every S seconds (default 300)')
    task.add_argument('--no-progress', action='store_true', help='no progress bar')
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return run(args)


def run(args: argparse.Namespace) -> int:
    """Run a parsed `ams pretrain` command line."""
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.task:
        from ams_ros.model.distill import run_distillation

        return run_distillation(args, log=lambda line: print(line, flush=True))
    args.out = args.out or SMALL_CHECKPOINT
    first, stop = (int(v) for v in args.seeds.split(':'))
    workers = args.workers if args.workers is not None else (
        12 if args.device.startswith('cuda') else 0)
    config = PretrainConfig(
        arch=args.arch, height=args.height or PretrainConfig.height,
        width=args.width or PretrainConfig.width, steps=args.steps or PretrainConfig.steps,
        batch_size=args.batch_size, learning_rate=args.lr, seeds=(first, stop),
        pool_size=args.pool_size, augment=not args.no_augment, device=args.device, workers=workers,
        time_budget_s=args.time_budget, seed=args.seed, init=args.init,
        warmup_steps=args.warmup or PretrainConfig.warmup_steps)
    eval_seeds = [int(s) for s in args.eval_seeds.split(',') if s.strip()]
    result = pretrain(config, log=lambda line: print(line, flush=True), eval_seeds=eval_seeds,
                      eval_fps=args.eval_fps, eval_duration_s=args.eval_duration,
                      checkpoint=args.out)
    print(f'wrote {args.out} and {metadata_path(args.out)}')
    if args.onnx:
        onnx_path = args.out.with_suffix('.onnx')
        export_onnx(result.model, result.metadata, onnx_path)
        print(f'wrote {onnx_path}')
    return 0


if __name__ == '__main__':
    sys.exit(main())
