"""Edge inference: the student in ONNX Runtime against torch eager, and what swaps cost it.

Phases, each --seconds long, all in one process on the same frames:
  torch eager   uint8 frame -> normalise -> student -> argmax, under torch.inference_mode
  ORT           EdgeRuntime.infer on frames already at the model's size
  ORT + swaps   the same, while a thread submits a new vector every --swap-period seconds
                (5% of the parameters perturbed, as a patch would); the runtime builds each
                new session on its worker thread and swaps it in
It prints frames/s (and the ORT / torch ratio), p50/p99 frame latency with and without
swaps, and the time from submit to the swapped-in model (median, p90).

    python bench/bench_edge.py                                    # deeplabv3_mbv2, 256x512
    python bench/bench_edge.py --arch deeplabv3_mbv2_small --height 128 --width 256
"""

from __future__ import annotations

import argparse
import threading
import time

import numpy as np
import torch

from ams_ros.drone.edge_runtime import APPLIED, EdgeRuntime, RuntimeConfig
from ams_ros.model.manifest import module_to_vector
from ams_ros.model.onnx_export import export_student_onnx
from ams_ros.model.student import STUDENT_ARCHS, InputSpec, build_student


def perturbed(base: np.ndarray, fraction: float, rng: np.random.Generator) -> np.ndarray:
    flat = base.copy()
    idx = rng.choice(flat.size, int(fraction * flat.size), replace=False)
    flat[idx] += 0.01 * rng.standard_normal(idx.size).astype(np.float32)
    return flat


def timed_loop(step, seconds: float) -> np.ndarray:
    """Call step() repeatedly for `seconds`; return each call's latency in seconds."""
    latencies = []
    stop = time.perf_counter() + seconds
    while time.perf_counter() < stop:
        started = time.perf_counter()
        step()
        latencies.append(time.perf_counter() - started)
    return np.array(latencies)


def torch_step(model, frame: np.ndarray, spec: InputSpec):
    mean = torch.tensor(spec.mean).view(1, 3, 1, 1)
    std = torch.tensor(spec.std).view(1, 3, 1, 1)
    image = torch.from_numpy(frame)[None]

    def step():
        with torch.inference_mode():
            x = (image.permute(0, 3, 1, 2).float() / 255 - mean) / std
            model(x).argmax(dim=1).to(torch.uint8).numpy()
    return step


def run_with_swaps(runtime: EdgeRuntime, frame: np.ndarray, vectors: list[np.ndarray],
                   seconds: float, period: float) -> np.ndarray:
    """Segment frames for `seconds` while another thread submits a vector every `period`."""
    stop = threading.Event()

    def swapper():
        version = runtime.active_version
        while not stop.wait(period):
            version += 1
            runtime.submit(vectors[version % len(vectors)], version)

    thread = threading.Thread(target=swapper)
    thread.start()
    try:
        return timed_loop(lambda: runtime.infer(frame), seconds)
    finally:
        stop.set()
        thread.join()
        runtime.wait_until_idle(timeout=60)


def latency_row(name: str, latencies: np.ndarray, seconds: float) -> str:
    p50, p99 = 1e3 * np.percentile(latencies, [50, 99])
    return (f'{name:<14} {len(latencies) / seconds:8.1f} {p50:9.1f} {p99:9.1f} '
            f'{1e3 * latencies.max():9.1f} {len(latencies):7d}')


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--arch', default='deeplabv3_mbv2', choices=sorted(STUDENT_ARCHS))
    parser.add_argument('--height', type=int, default=256)
    parser.add_argument('--width', type=int, default=512)
    parser.add_argument('--classes', type=int, default=6)
    parser.add_argument('--seconds', type=float, default=10.0, help='per phase')
    parser.add_argument('--threads', type=int, default=1,
                        help='intra-op threads for torch and for ONNX Runtime')
    parser.add_argument('--swap-period', type=float, default=1.0)
    parser.add_argument('--fraction', type=float, default=0.05,
                        help='share of parameters each swap changes')
    parser.add_argument('--no-tensorrt', action='store_true')
    args = parser.parse_args()

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    spec = InputSpec(args.height, args.width)
    model = build_student(args.arch, args.classes).eval()
    export = export_student_onnx(model, spec)
    base = module_to_vector(model, export.manifest)
    rng = np.random.default_rng(0)
    vectors = [perturbed(base, args.fraction, rng) for _ in range(3)]
    frame = rng.integers(0, 256, (args.height, args.width, 3), np.uint8)
    config = RuntimeConfig(use_tensorrt=not args.no_tensorrt, intra_op_threads=args.threads,
                           swap_history=10_000)

    with EdgeRuntime(export.model_bytes, export.manifest, config=config) as runtime:
        print(f'{args.arch}, {base.size / 1e6:.2f} M parameters, {args.height}x{args.width}, '
              f'{args.threads} thread(s), providers {runtime.providers}, '
              f'{args.seconds:g} s per phase')
        torch_latencies = timed_loop(torch_step(model, frame, spec), 1.0)  # warm-up
        torch_latencies = timed_loop(torch_step(model, frame, spec), args.seconds)
        timed_loop(lambda: runtime.infer(frame), 1.0)  # warm-up
        ort_latencies = timed_loop(lambda: runtime.infer(frame), args.seconds)
        swap_latencies = run_with_swaps(runtime, frame, vectors, args.seconds,
                                        args.swap_period)
        records = runtime.swap_history

    print(f'\n{"phase":<14} {"frames/s":>8} {"p50 ms":>9} {"p99 ms":>9} {"max ms":>9} '
          f'{"frames":>7}')
    print(latency_row('torch eager', torch_latencies, args.seconds))
    print(latency_row('ORT', ort_latencies, args.seconds))
    print(latency_row('ORT + swaps', swap_latencies, args.seconds))
    ratio = len(ort_latencies) / len(torch_latencies)
    print(f'\nORT / torch eager frames/s: {ratio:.2f}x;  '
          f'p99 with swaps / without: '
          f'{np.percentile(swap_latencies, 99) / np.percentile(ort_latencies, 99):.2f}x')

    applied = [r for r in records if r.outcome == APPLIED]
    if applied:
        to_active = 1e3 * np.array([r.submit_to_active_s for r in applied])
        build = 1e3 * np.array([r.build_s for r in applied])
        print(f'swaps: {len(applied)} applied of {len(records)} built; submit -> active '
              f'median {np.median(to_active):.0f} ms, p90 {np.percentile(to_active, 90):.0f} ms '
              f'(build median {np.median(build):.0f} ms)')
    failed = [r for r in records if r.outcome != APPLIED]
    for record in failed:
        print(f'  version {record.version}: {record.outcome} {record.error or ""}')


if __name__ == '__main__':
    main()
