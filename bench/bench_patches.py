"""Patch size and speed: the paper's format against ours, per selection pattern and fraction.

For each index-selection pattern and fraction it makes one patch (a base vector, indices, new
values), encodes it with every codec configuration, and reports the bytes (index / values /
total, and kbps at one update per 10 s), the encode time (candidate search included), the
decode+apply time and the largest |decoded - target|.

Synthetic patterns over N parameters (2.1 M, the student's size):
  uniform     indices uniformly at random (the first phase of gradient-guided selection)
  layers      contiguous: half the budget on the first indices, half on the last
  clustered   top-|u| of a synthetic update whose magnitude varies per tensor and per channel,
              as Adam's does, so whole tensors and channels are picked together
With --real (needs torch): indices and values of a real training phase (phase 2, gradient-guided
from phase 1's update) of the DeepLabV3-MobileNetV2 student on the synthetic aerial world.

    python bench/bench_patches.py                # all patterns, 20/10/5/1 %
    python bench/bench_patches.py --real --fractions 0.05
"""

from __future__ import annotations

import argparse
import dataclasses
import time

import numpy as np

from ams_ros.wire.patch_codec import PAPER_FORMAT, PatchFormat, apply_patch, encode_patch

UPDATE_PERIOD_S = 10.0   # the paper's T_update: turns bytes per patch into a bitrate


def codecs(zstd_level: int) -> dict[str, PatchFormat]:
    ours = PatchFormat(zstd_level=zstd_level)
    return {
        'paper (bitmask+gzip, fp16)': PAPER_FORMAT,
        'ours fp16': dataclasses.replace(ours, value_mode='fp16'),
        'ours fp16-delta': ours,
        'ours q8-delta': dataclasses.replace(ours, value_mode='q8-delta'),
        'ours fp32 (exact)': dataclasses.replace(ours, value_mode='fp32'),
    }


def synthetic_update(n: int, rng: np.random.Generator) -> np.ndarray:
    """Update magnitudes with per-tensor and per-channel scales (what top-|u| picks from)."""
    sizes = np.maximum(64, rng.lognormal(9.0, 1.5, size=400)).astype(np.int64)
    sizes = sizes[np.cumsum(sizes) < n]
    sizes = np.append(sizes, n - sizes.sum())
    tensor_scale = np.repeat(rng.lognormal(0.0, 1.0, sizes.size), sizes)
    channel = rng.choice([9, 16, 32, 144, 576], size=sizes.size)
    channel_scale = np.concatenate([np.repeat(rng.lognormal(0.0, 0.5, -(-s // c)), c)[:s]
                                    for s, c in zip(sizes, channel, strict=True)])
    return tensor_scale * channel_scale * np.abs(rng.standard_normal(n))


def synthetic_patch(pattern: str, n: int, fraction: float, seed: int):
    """Return (base, indices, target values) for a synthetic pattern."""
    rng = np.random.default_rng(seed)
    base = (rng.standard_normal(n) * 0.05).astype(np.float32)
    k = max(1, round(fraction * n))
    if pattern == 'uniform':
        idx = rng.choice(n, k, replace=False)
    elif pattern == 'layers':
        idx = np.concatenate([np.arange(k // 2), np.arange(n - (k - k // 2), n)])
    else:
        u = synthetic_update(n, rng)
        idx = np.argpartition(u, n - k)[n - k:]
    # About what K = 20 Adam steps at lr 1e-3 move a parameter: up to 0.02.
    delta = 0.02 * np.clip(rng.normal(0.0, 0.5, idx.size), -1, 1)
    return base, idx, (base[idx] + delta).astype(np.float32)


def real_patch(fraction: float, iterations: int, seed: int):
    """Return (base, indices, target values) of a real second training phase."""
    import torch

    from ams_ros.ground.horizon_buffer import HorizonBuffer
    from ams_ros.ground.trainer import Trainer, TrainerConfig
    from ams_ros.model.manifest import ParameterManifest
    from ams_ros.model.student import InputSpec, build_student
    from ams_ros.world import NUM_CLASSES, AerialVideo

    torch.manual_seed(seed)
    spec = InputSpec(height=128, width=256)
    model = build_student('deeplabv3_mbv2', NUM_CLASSES)
    trainer = Trainer(model, ParameterManifest.from_module(model),
                      TrainerConfig(iterations=iterations, batch_size=2, fraction=fraction),
                      seed=seed, input_spec=spec)
    buffer = HorizonBuffer()
    for stamp, frame, label in AerialVideo(1003, 60.0).frames(0.5, spec.height, spec.width):
        buffer.add(stamp, frame, label)
    now = buffer.newest_stamp
    trainer.run_phase(buffer, now)            # phase 1: random indices; gives u_1
    base = trainer.weights()
    result = trainer.run_phase(buffer, now)   # phase 2: top-|u_1|, as every later phase
    return base, result.indices, result.values


def measure(base, idx, target, fmt: PatchFormat, repeat: int) -> dict:
    encode_s, apply_s = [], []
    for _ in range(repeat):
        start = time.perf_counter()
        body, mirror = encode_patch(base, idx, target, fmt)
        encode_s.append(time.perf_counter() - start)
        start = time.perf_counter()
        edge = apply_patch(base, body)
        apply_s.append(time.perf_counter() - start)
    assert edge.tobytes() == mirror.tobytes()
    return {
        'index codec': body.index_codec,
        'value codec': body.value_codec,
        'idx kB': len(body.index_data) / 1e3,
        'val kB': len(body.value_data) / 1e3,
        'total kB': body.nbytes / 1e3,
        'kbps': body.nbytes * 8 / UPDATE_PERIOD_S / 1e3,
        'enc ms': min(encode_s) * 1e3,
        'dec+apply ms': min(apply_s) * 1e3,
        'max err': float(np.abs(edge[idx] - target).max()),
    }


def print_table(rows: list[dict]) -> None:
    columns = list(rows[0])
    cells = [[_format(row[c]) for c in columns] for row in rows]
    widths = [max(len(c), *(len(r[i]) for r in cells)) for i, c in enumerate(columns)]
    print(' | '.join(c.ljust(w) for c, w in zip(columns, widths, strict=True)))
    print('-|-'.join('-' * w for w in widths))
    for r in cells:
        print(' | '.join(v.ljust(w) for v, w in zip(r, widths, strict=True)))


def _format(value) -> str:
    if not isinstance(value, float):
        return str(value)
    if value == 0 or abs(value) >= 100:
        return f'{value:.0f}'
    return f'{value:.2e}' if abs(value) < 0.01 else f'{value:.3g}'


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--n', type=int, default=2_100_000, help='parameters (synthetic)')
    parser.add_argument('--patterns', nargs='*', default=['uniform', 'layers', 'clustered'],
                        choices=['uniform', 'layers', 'clustered'])
    parser.add_argument('--fractions', nargs='+', type=float, default=[0.2, 0.1, 0.05, 0.01])
    parser.add_argument('--zstd-level', type=int, default=PatchFormat().zstd_level)
    parser.add_argument('--repeat', type=int, default=3, help='timings are the best of these')
    parser.add_argument('--real', action='store_true',
                        help='also a real training phase of the student (torch, slow)')
    parser.add_argument('--real-iterations', type=int, default=20, help='K for --real')
    parser.add_argument('--seed', type=int, default=0)
    args = parser.parse_args(argv)

    cases = [(p, f, lambda p=p, f=f: synthetic_patch(p, args.n, f, args.seed))
             for p in args.patterns for f in args.fractions]
    if args.real:
        cases += [('real', f, lambda f=f: real_patch(f, args.real_iterations, args.seed))
                  for f in args.fractions]
    rows = []
    for pattern, fraction, make in cases:
        base, idx, target = make()
        for name, fmt in codecs(args.zstd_level).items():
            row = {'pattern': pattern, 'N': base.size, 'frac %': fraction * 100, 'codec': name}
            rows.append(row | measure(base, idx, target, fmt, args.repeat))
    print(f'zstd level {args.zstd_level}; times are the best of {args.repeat}; '
          f'kbps at one patch per {UPDATE_PERIOD_S:.0f} s')
    print_table(rows)


if __name__ == '__main__':
    main()
