"""Uplink codecs on a synthetic aerial-like pan: kbps, bytes/frame, PSNR, encode/decode time.

The scene is a smooth, textured landscape (multi-octave value noise with sharp-edged blocks,
like fields and roofs) seen through a window that pans across it, as from a drone flying
straight. Frames are sampled at the given rate and sent in buffers of the given length, as the
edge does. Times are per buffer (median over buffers) and depend on the machine's load.

    python bench/bench_uplink.py [--width 512 --height 256 --frames 10 --rate 1 --buffers 3]
"""

from __future__ import annotations

import argparse
import time

import av
import cv2
import numpy as np

from ams_ros.wire.frame_codec import CodecSettings, decode_frames, encode_frames, psnr


def landscape(height: int, width: int, seed: int = 0) -> np.ndarray:
    """Make a textured RGB image: smooth colour fields, fine texture and sharp blocks."""
    rng = np.random.default_rng(seed)
    image = np.zeros((height, width, 3), np.float32)
    for cell, weight in ((128, 0.45), (32, 0.25), (8, 0.15), (2, 0.08)):
        grid = rng.random((height // cell + 2, width // cell + 2, 3)).astype(np.float32)
        image += weight * cv2.resize(grid, (width, height), interpolation=cv2.INTER_CUBIC)
    image /= 0.93
    for _ in range(width * height // 4000):  # buildings / fields with hard edges
        top, left = rng.integers(0, height - 8), rng.integers(0, width - 8)
        size_y, size_x = rng.integers(6, 40, 2)
        image[top:top + size_y, left:left + size_x] = rng.random(3) * 0.8 + 0.1
    return (image.clip(0, 1) * 255).astype(np.uint8)


def panning_frames(count: int, height: int, width: int, pan: int) -> np.ndarray:
    """Crop `count` frames from the landscape, moving `pan` pixels right per frame."""
    world = landscape(height, width + pan * count)
    return np.stack([world[:, k * pan:k * pan + width] for k in range(count)])


def yuv420p_ceiling(buffers: list[np.ndarray]) -> float:
    """PSNR of the RGB -> yuv420p -> RGB round trip alone: the best any h264 row can reach."""
    return float(np.mean([
        psnr(frame, av.VideoFrame.from_ndarray(frame, format='rgb24')
             .reformat(format='yuv420p').to_ndarray(format='rgb24'))
        for frames in buffers for frame in frames]))


def measure(buffers: list[np.ndarray], settings: CodecSettings, rate: float) -> dict:
    sizes, quality, encode_ms, decode_ms = [], [], [], []
    for frames in buffers:
        start = time.perf_counter()
        blob = encode_frames(frames, settings, frame_rate=rate)
        encode_ms.append((time.perf_counter() - start) * 1000)
        count, height, width, _ = frames.shape
        start = time.perf_counter()
        decoded = decode_frames(blob, settings.codec, width, height, count)
        decode_ms.append((time.perf_counter() - start) * 1000)
        sizes.append(len(blob))
        quality.append(psnr(frames, decoded))
    frames_per_buffer = len(buffers[0])
    return {
        'kbps': np.mean(sizes) * 8 / (frames_per_buffer / rate) / 1000,
        'bytes_per_frame': np.mean(sizes) / frames_per_buffer,
        'psnr': np.mean(quality),
        'encode_ms': np.median(encode_ms),
        'decode_ms': np.median(decode_ms),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--width', type=int, default=512)
    parser.add_argument('--height', type=int, default=256)
    parser.add_argument('--frames', type=int, default=10, help='frames per buffer')
    parser.add_argument('--rate', type=float, default=1.0, help='sampling rate, frames/s')
    parser.add_argument('--buffers', type=int, default=3)
    parser.add_argument('--pan', type=int, default=24, help='pixels the view moves per frame')
    parser.add_argument('--bitrate', type=float, default=200.0, help='h264 target, kbps')
    args = parser.parse_args()

    frames = panning_frames(args.frames * args.buffers, args.height, args.width, args.pan)
    buffers = [frames[k:k + args.frames] for k in range(0, len(frames), args.frames)]
    rows = [
        (f'h264 vbv {args.bitrate:g}k', CodecSettings('h264', args.bitrate, 'vbv')),
        (f'h264 two-pass {args.bitrate:g}k', CodecSettings('h264', args.bitrate, 'two-pass')),
        ('jpeg q75', CodecSettings('jpeg', jpeg_quality=75)),
        ('png', CodecSettings('png')),
        ('raw', CodecSettings('raw')),
    ]
    print(f'{args.buffers} buffers of {args.frames} frames, {args.width}x{args.height}, '
          f'{args.rate:g} frames/s, pan {args.pan} px/frame')
    print(f'h264 quality ceiling (yuv420p chroma subsampling alone): '
          f'{yuv420p_ceiling(buffers):.2f} dB PSNR')
    print('| codec | kbps | bytes/frame | PSNR dB | encode ms | decode ms |')
    print('|---|---:|---:|---:|---:|---:|')
    for name, settings in rows:
        result = measure(buffers, settings, args.rate)
        print(f"| {name} | {result['kbps']:.1f} | {result['bytes_per_frame']:.0f} | "
              f"{result['psnr']:.2f} | {result['encode_ms']:.0f} | {result['decode_ms']:.0f} |")


if __name__ == '__main__':
    main()
