"""A student for a task: distil the task's teacher into it over the user's own unlabelled footage.

The paper's students start from a generic pretraining (Cityscapes); a user has no labelled data
set but has the teacher and hours of their own video. `ams pretrain --task FILE --videos ...`:

1. samples frames across every video (``sample_fps``) and image folder, at the student's size;
2. labels them with the teacher, once: labels are cached on disk per file, keyed by the
   teacher's config and model file, the file and the sampling, so a rerun does not relabel;
3. holds out the last files (or, with a single file, its last stretch) and trains the student
   on the rest (AdamW, warm-up then cosine decay, flips and colour jitter, cross-entropy that
   ignores what the teacher abstains on), with a progress bar and its ETA;
4. checkpoints every few minutes (``OUT.resume.pt``: weights, optimiser, step), so a stopped run
   resumes where it was;
5. reports the student's agreement with the teacher (mIoU) on the held-out frames, and writes
   the student as the drone and ground use it: ``OUT.pt`` + ``OUT.json`` (the task's classes) and
   ``OUT.onnx``.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from ams_ros import IGNORE_LABEL
from ams_ros.metrics import MiouAccumulator
from ams_ros.model.pretrain import (
    StudentMetadata,
    augment_batch,
    cache_dir,
    export_onnx,
    learning_rate,
    predict,
    save_student,
)
from ams_ros.model.student import InputSpec, build_student, check_arch, pixel_normalisation
from ams_ros.pixels import resize_frame, resize_labels
from ams_ros.task import Task

IMAGE_SUFFIXES = ('.png', '.jpg', '.jpeg', '.bmp')
LABEL_BATCH = 8  # frames per teacher call


@dataclass(frozen=True)
class DistillConfig:
    """What to distil and how; steps and sizes default to a CPU-friendly run."""

    videos: tuple[str, ...] = ()
    images: str | None = None
    arch: str = 'deeplabv3_mbv2_small'
    height: int = 144
    width: int = 176
    sample_fps: float = 2.0  # frames taken per second of each video
    holdout: float = 0.2  # share of the files (or of a single file's frames) held out
    steps: int = 600
    batch_size: int = 16
    learning_rate: float = 2e-3
    weight_decay: float = 1e-4
    warmup_steps: int = 50
    augment: bool = True
    device: str = 'cpu'
    seed: int = 0
    checkpoint_every_s: float = 300.0

    def __post_init__(self):
        check_arch(self.arch)
        if not self.videos and not self.images:
            raise ValueError('give --videos and/or --images to distil over')
        if not 0.0 <= self.holdout < 1.0:
            raise ValueError(f'holdout must lie in [0, 1), got {self.holdout}')
        if min(self.steps, self.batch_size) < 1 or not self.sample_fps > 0:
            raise ValueError('steps and batch_size must be >= 1, sample_fps positive')


@dataclass
class Footage:
    """Frames (N x H x W x 3 uint8, at the student's size) and the teacher's labels of them."""

    name: str
    frames: np.ndarray
    labels: np.ndarray


# -- frames and the teacher's labels, cached -----------------------------------------------------

def video_frames(path: str | Path, fps: float) -> list[np.ndarray]:
    """Decode a video's frames at `fps` (the first frame at or after each due time), full size."""
    import av

    frames, due = [], 0.0
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        rate = float(stream.average_rate or stream.guessed_rate or 25)
        for index, decoded in enumerate(container.decode(stream)):
            if index / rate + 0.5 / rate >= due:
                frames.append(decoded.to_ndarray(format='rgb24'))
                due += 1.0 / fps
    if not frames:
        raise ValueError(f'{path}: no frames decoded')
    return frames


def folder_images(folder: str | Path) -> list[tuple[str, np.ndarray]]:
    import cv2

    found = []
    for path in sorted(Path(folder).iterdir()):
        if path.suffix.lower() in IMAGE_SUFFIXES:
            image = cv2.imread(str(path), cv2.IMREAD_COLOR)
            if image is None:
                raise ValueError(f'cannot read image {path}')
            found.append((path.name, image[..., ::-1].copy()))
    if not found:
        raise ValueError(f'no images ({", ".join(IMAGE_SUFFIXES)}) in {folder}')
    return found


def teacher_key(task: Task) -> str:
    """Hash the teacher's config and its model files: a new teacher never reuses old labels."""
    digest = hashlib.sha256(json.dumps(task.teacher, sort_keys=True, default=str).encode())
    for key in ('path', 'weights'):
        if key in task.teacher:
            digest.update(Path(task.teacher[key]).read_bytes())
    return digest.hexdigest()[:16]


def file_key(path: Path, detail: str) -> str:
    stat = path.stat()
    return hashlib.sha256(f'{path.resolve()}|{stat.st_size}|{stat.st_mtime_ns}|{detail}'
                          .encode()).hexdigest()[:16]


def labelled(name: str, frames: list[np.ndarray], teacher, size: tuple[int, int],
             cache: Path, key: str, log: Callable[[str], None]) -> Footage:
    """Label full-size frames with the teacher (or load the cached labels); resize both."""
    small = np.stack([resize_frame(f, *size) for f in frames])
    cached = cache / f'{key}.npz'
    if cached.is_file():
        with np.load(cached) as data:
            labels = data['labels']
        if labels.shape == small.shape[:3]:
            log(f'{name}: {len(frames)} labels from the cache')
            return Footage(name, small, labels)
    labels = []
    started = time.perf_counter()
    for i in range(0, len(frames), LABEL_BATCH):
        chunk = frames[i:i + LABEL_BATCH]
        if len({f.shape for f in chunk}) > 1:  # image folders mix sizes: one at a time
            out = [teacher.label(f[None], [0.0])[0] for f in chunk]
        else:
            out = teacher.label(np.stack(chunk), [0.0] * len(chunk))
        labels += [resize_labels(label, *size) for label in out]
    labels = np.stack(labels)
    cache.mkdir(parents=True, exist_ok=True)
    tmp = cached.with_suffix('.tmp.npz')
    np.savez_compressed(tmp, labels=labels)
    tmp.replace(cached)
    log(f'{name}: labelled {len(frames)} frames in {time.perf_counter() - started:.0f} s')
    return Footage(name, small, labels)


def gather(config: DistillConfig, task: Task, teacher, cache: Path,
           log: Callable[[str], None]) -> list[Footage]:
    size = (config.height, config.width)
    tkey = teacher_key(task)
    footage = []
    for video in config.videos:
        path = Path(video)
        if not path.is_file():
            raise FileNotFoundError(f'no video file {path}')
        frames = video_frames(path, config.sample_fps)
        key = file_key(path, f'{tkey}|{config.sample_fps}|{size}')
        footage.append(labelled(path.name, frames, teacher, size, cache, key, log))
    if config.images:
        images = folder_images(config.images)
        folder = Path(config.images)
        key = file_key(folder, f'{tkey}|{[n for n, _ in images]}|{size}')
        footage.append(labelled(folder.name, [image for _, image in images], teacher, size,
                                cache, key, log))
    return footage


def split(footage: list[Footage], holdout: float) -> tuple[Footage, Footage | None]:
    """(training, held out): the last files, or a single file's last stretch."""
    if holdout == 0.0:
        return _join(footage, 'train'), None
    if len(footage) >= 2:
        n = max(1, round(holdout * len(footage)))
        return _join(footage[:-n], 'train'), _join(footage[-n:], 'held out')
    (only,) = footage
    cut = max(1, min(len(only.frames) - 1, round((1.0 - holdout) * len(only.frames))))
    return (Footage(only.name, only.frames[:cut], only.labels[:cut]),
            Footage(only.name, only.frames[cut:], only.labels[cut:]))


def _join(footage: list[Footage], name: str) -> Footage:
    return Footage(name, np.concatenate([f.frames for f in footage]),
                   np.concatenate([f.labels for f in footage]))


# -- training ------------------------------------------------------------------------------------

def agreement(model, footage: Footage, spec: InputSpec, device, num_classes: int) -> dict:
    """Return how far the student agrees with the teacher on `footage` (mIoU, IoU per class)."""
    acc = MiouAccumulator(num_classes)
    for label, prediction in zip(footage.labels, predict(model, footage.frames, spec, device),
                                 strict=True):
        acc.add(label, prediction)
    return {'frames': len(footage.frames), 'pooled_miou': round(acc.miou(), 4),
            'mean_frame_miou': round(acc.mean_frame_miou(), 4),
            'class_iou': [None if np.isnan(v) else round(float(v), 4) for v in acc.class_iou()]}


def distil(config: DistillConfig, task: Task, teacher, out: Path,
           log: Callable[[str], None] = print, cache: Path | None = None,
           progress: bool = True) -> tuple[torch.nn.Module, StudentMetadata]:
    """Distil `teacher` into a fresh student of `config.arch` for `task`; write it to `out`."""
    from tqdm import tqdm

    started = time.perf_counter()
    footage = gather(config, task, teacher, cache or cache_dir() / 'labels', log)
    train, held_out = split(footage, config.holdout)
    log(f'{len(train.frames)} frames to train on, '
        f'{0 if held_out is None else len(held_out.frames)} held out')
    torch.manual_seed(config.seed)
    device = torch.device(config.device)
    spec = InputSpec(config.height, config.width)
    model = build_student(config.arch, task.num_classes).to(device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=config.learning_rate,
                                  weight_decay=config.weight_decay)
    losses: list[float] = []
    resume = out.with_suffix('.resume.pt')
    signature = _signature(config, task)
    step = _resume(resume, signature, model, optimizer, losses, log)
    rng = np.random.default_rng([config.seed, step])
    generator = torch.Generator(device=device).manual_seed(config.seed + step)
    mean, std = pixel_normalisation(spec, device)
    model.train()
    last_save = time.perf_counter()
    with tqdm(total=config.steps, initial=step, unit='step', disable=not progress,
              dynamic_ncols=True) as bar:
        while step < config.steps:
            for group in optimizer.param_groups:
                group['lr'] = learning_rate(config, step / config.steps, step)
            index = rng.choice(len(train.frames), config.batch_size,
                               replace=len(train.frames) < config.batch_size)
            x = torch.from_numpy(train.frames[index]).to(device).permute(0, 3, 1, 2).float()
            y = torch.from_numpy(train.labels[index]).to(device).long()
            if config.augment:
                x, y = augment_batch(x, y, generator)
            loss = F.cross_entropy(model((x - mean) / std), y, ignore_index=IGNORE_LABEL)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            losses.append(loss.item())
            step += 1
            bar.update(1)
            bar.set_postfix(loss=f'{np.mean(losses[-20:]):.3f}')
            if time.perf_counter() - last_save > config.checkpoint_every_s:
                _save_resume(resume, signature, model, optimizer, losses, step)
                last_save = time.perf_counter()
    _save_resume(resume, signature, model, optimizer, losses, step)
    model.eval()
    evaluation = {} if held_out is None else agreement(model, held_out, spec, device,
                                                       task.num_classes)
    if evaluation:
        log(f'held-out student-teacher agreement: mIoU {evaluation["pooled_miou"]:.4f} over '
            f'{evaluation["frames"]} frames')
    settings = asdict(config)
    settings['videos'] = [Path(v).name for v in config.videos]
    metadata = StudentMetadata(
        arch=config.arch, class_names=task.class_names, height=spec.height, width=spec.width,
        mean=tuple(spec.mean), std=tuple(spec.std), class_colours=task.class_colours,
        num_parameters=sum(p.numel() for p in model.parameters()),
        pretrain={'kind': 'distillation', 'task': task.name, 'teacher': task.teacher,
                  'config': settings, 'steps_done': step,
                  'loss_first_20': float(np.mean(losses[:20])),
                  'loss_last_20': float(np.mean(losses[-20:])),
                  'train_frames': len(train.frames),
                  'seconds': round(time.perf_counter() - started, 1),
                  'evaluation': evaluation})
    model = model.to('cpu')
    save_student(out, model, metadata)
    export_onnx(model, metadata, out.with_suffix('.onnx'))
    resume.unlink(missing_ok=True)  # finished: a rerun starts afresh
    return model, metadata


def _signature(config: DistillConfig, task: Task) -> str:
    """Return the hash of what a resumed run must share with the one it continues."""
    fields = asdict(config)
    fields.pop('checkpoint_every_s')
    return hashlib.sha256(json.dumps([fields, task.class_names, task.teacher], sort_keys=True,
                                     default=str).encode()).hexdigest()


def _resume(path: Path, signature: str, model, optimizer, losses: list,
            log: Callable[[str], None]) -> int:
    if not path.is_file():
        return 0
    state = torch.load(path, map_location='cpu', weights_only=True)
    if state.get('signature') != signature:
        log(f'{path} is from another configuration: starting afresh')
        return 0
    model.load_state_dict(state['model'])
    optimizer.load_state_dict(state['optimizer'])
    losses += state['losses']
    log(f'resuming from step {state["step"]} ({path})')
    return int(state['step'])


def _save_resume(path: Path, signature: str, model, optimizer, losses: list, step: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix('.tmp')
    torch.save({'signature': signature, 'model': model.state_dict(),
                'optimizer': optimizer.state_dict(), 'losses': losses, 'step': step}, tmp)
    tmp.replace(path)


def run_distillation(args, log: Callable[[str], None] = print) -> int:
    """Run `ams pretrain --task FILE --videos ...` (parsed by pretrain.build_parser)."""
    from ams_ros.ground.teachers import make_teacher
    from ams_ros.task import load_task

    task = load_task(args.task)
    if task.teacher['kind'] == 'synthetic':
        raise SystemExit('the synthetic task pretrains on rendered flights: drop --task')
    if 'input' in task.student:  # the user's own model file: nothing to distil, only to wrap
        from ams_ros.model.onnx_student import task_student_template

        out = Path(args.out or f'student_{task.name}.onnx').with_suffix('.onnx')
        out.write_bytes(task_student_template(task.student, task.class_names,
                                              task.class_colours).onnx_bytes)
        log(f"the task's student is your own model file: nothing to distil; wrote the drone's "
            f'model {out} (your graph with its pixel convention, argmax/threshold and AMS '
            'metadata)')
        return 0
    own = task.student if 'arch' in task.student else {}
    height, width = own.get('input_size', (DistillConfig.height, DistillConfig.width))
    config = DistillConfig(
        videos=tuple(args.videos or ()), images=args.images,
        arch=own.get('arch', args.arch), height=args.height or height,
        width=args.width or width,
        sample_fps=args.sample_fps, holdout=args.holdout,
        steps=args.steps or DistillConfig.steps, batch_size=args.batch_size,
        learning_rate=args.lr, warmup_steps=args.warmup or DistillConfig.warmup_steps,
        augment=not args.no_augment, device=args.device, seed=args.seed,
        checkpoint_every_s=args.checkpoint_every)
    out = Path(args.out or f'student_{task.name}.pt')
    distil(config, task, make_teacher(task.teacher), out, log=log, progress=not args.no_progress)
    log(f'wrote {out}, {out.with_suffix(".json")} and {out.with_suffix(".onnx")}')
    return 0
