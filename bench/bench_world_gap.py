"""Measure the world's specialisation gap: generic pretrained student vs flight-specialised.

For each held-out flight (seed >= 1000) the flight's frames are rendered at --fps over
--duration seconds with their true labels, and the table shows mean per-frame mIoU of:

- pretrained: the generic checkpoint as it is (what a drone starts from);
- oracle: a copy fine-tuned on all of those frames, scored on the same frames (what
  specialising to this flight can achieve at this resolution and capacity);
- split: a copy fine-tuned only on the first --train-s seconds of every --block seconds and
  scored on the rest (later, unseen frames, mostly over the same districts), next to the
  pretrained score on those same frames.

Fine-tuning freezes BatchNorm statistics and trains all parameters with Adam, as the ground's
on-line training does (but with every parameter applied and all frames given at once).

Run: PYTHONPATH=. python bench/bench_world_gap.py [--checkpoint ams_ros/data/...pt]
     [--seeds 1000,1001,1002] [--fps 1] [--duration 300] [--steps 150] [--batch-size 8]
     [--device cuda --render-workers 3]
About 2 minutes per flight for the small student on 2 idle CPU cores (150 steps of 8 frames,
twice); the gain grows a little with more fine-tuning (e.g. --steps 200 --batch-size 16).
"""

import argparse
import json
import time

import numpy as np
import torch

from ams_ros.model.pretrain import (
    SMALL_CHECKPOINT,
    flight_frames,
    load_student,
    predict,
    score,
    specialise,
    world_fingerprint,
)


def measure_gap(model, spec, seeds, fps=1.0, duration=300.0, steps=150, batch_size=8,
                lr=1e-3, block=60.0, train_s=40.0, split=True, device='cpu', render_workers=1,
                log=print):
    """Return one row of mean per-frame mIoUs per flight (see the module docstring)."""
    seeds = [int(s) for s in seeds]
    if render_workers > 1:  # render the flights in parallel (forked: same world settings)
        import multiprocessing
        from concurrent.futures import ProcessPoolExecutor

        with ProcessPoolExecutor(min(render_workers, len(seeds)),
                                 mp_context=multiprocessing.get_context('fork')) as pool:
            flights = list(pool.map(flight_frames, seeds, [spec] * len(seeds),
                                    [fps] * len(seeds), [duration] * len(seeds)))
    else:
        flights = (flight_frames(seed, spec, fps, duration) for seed in seeds)
    rows = []
    for seed, (stamps, frames, labels) in zip(seeds, flights, strict=True):
        start = time.perf_counter()
        model = model.to(device).eval()
        before = predict(model, frames, spec, device)
        row = {'seed': seed, 'frames': len(frames),
               'pretrained': score(labels, before)['mean_frame_miou']}
        tuned, losses = specialise(model, frames, labels, spec, steps, batch_size, lr,
                                   seed=seed, device=device)
        row['oracle'] = score(labels, predict(tuned, frames, spec, device))['mean_frame_miou']
        if split:
            t = stamps - stamps[0]
            train = np.mod(t, block) < train_s
            tuned, _ = specialise(model, frames[train], labels[train], spec, steps, batch_size,
                                  lr, seed=seed, device=device)
            row['split_pretrained'] = score(labels[~train], before[~train])['mean_frame_miou']
            row['split'] = score(labels[~train], predict(tuned, frames[~train], spec,
                                                         device))['mean_frame_miou']
        row['seconds'] = round(time.perf_counter() - start, 1)
        rows.append(row)
        log(_format(row))
    return rows


def table(rows) -> str:
    """Format rows (and their mean) as a markdown table."""
    lines = ['| flight | pretrained | oracle | gain | split: pretrained | split: specialised '
             '| gain |', '|---|---|---|---|---|---|---|']
    lines += [_format(row, markdown=True) for row in rows + [_mean(rows)]]
    return '\n'.join(lines)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--checkpoint', default=str(SMALL_CHECKPOINT))
    parser.add_argument('--seeds', default='1000,1001,1002')
    parser.add_argument('--fps', type=float, default=1.0)
    parser.add_argument('--duration', type=float, default=300.0)
    parser.add_argument('--steps', type=int, default=150)
    parser.add_argument('--batch-size', type=int, default=8)
    parser.add_argument('--lr', type=float, default=1e-3)
    parser.add_argument('--block', type=float, default=60.0)
    parser.add_argument('--train-s', type=float, default=40.0)
    parser.add_argument('--no-split', action='store_true', help='skip the split measurement')
    parser.add_argument('--device', default='cpu')
    parser.add_argument('--render-workers', type=int, default=1)
    parser.add_argument('--threads', type=int, default=None)
    parser.add_argument('--json', help='also write the results here')
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    model, meta = load_student(args.checkpoint)
    spec = meta.input_spec
    if meta.world_fingerprint != world_fingerprint():
        print('WARNING: the world changed since this checkpoint was pretrained')
    print(f'{args.checkpoint}: {meta.arch} {spec.height}x{spec.width}, '
          f'{meta.pretrain.get("steps_done")} pretraining steps')
    rows = measure_gap(model, spec, args.seeds.split(','), args.fps, args.duration, args.steps,
                       args.batch_size, args.lr, args.block, args.train_s, not args.no_split,
                       args.device, args.render_workers, log=lambda line: print(line, flush=True))
    print()
    print(table(rows))
    if args.json:
        with open(args.json, 'w') as f:
            json.dump({'checkpoint': args.checkpoint, 'args': vars(args), 'rows': rows}, f,
                      indent=2)


def _mean(rows):
    keys = [k for k in rows[0] if k not in ('seed', 'frames', 'seconds')]
    return {'seed': 'mean', **{k: float(np.mean([r[k] for r in rows])) for k in keys}}


def _format(row, markdown=False):
    def pct(key):
        return f'{100 * row[key]:.1f}' if key in row else '-'

    def gain(a, b):
        return f'{100 * (row[b] - row[a]):+.1f}' if a in row and b in row else '-'

    cells = [str(row['seed']), pct('pretrained'), pct('oracle'), gain('pretrained', 'oracle'),
             pct('split_pretrained'), pct('split'), gain('split_pretrained', 'split')]
    if markdown:
        return '| ' + ' | '.join(cells) + ' |'
    return (f'flight {cells[0]}: pretrained {cells[1]}  oracle {cells[2]} ({cells[3]})  '
            f'split {cells[4]} -> {cells[5]} ({cells[6]})  [{row.get("seconds", 0)} s]')


if __name__ == '__main__':
    main()
