"""Time the synthetic world: district generation and frame rendering at a few resolutions.

Run: PYTHONPATH=. python bench/bench_world.py [--seed 1000] [--frames 300]
Rendering is measured with the districts along the path already built (steady state), and
district generation is reported separately (it happens once per district a flight enters).
"""

import argparse
import time

import cv2
import numpy as np

from ams_ros.world import AerialVideo, World
from ams_ros.world.map import DISTRICT_PX


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--seed', type=int, default=1000)
    parser.add_argument('--frames', type=int, default=300)
    parser.add_argument('--threads', type=int, default=1, help='OpenCV threads')
    args = parser.parse_args()
    cv2.setNumThreads(args.threads)

    world = World(args.seed + 1)
    wall, cpu = time.perf_counter(), time.process_time()
    for ix in range(4):
        world.district(ix, 0)
    print(f'district generation ({DISTRICT_PX}x{DISTRICT_PX} px, once per district entered): '
          f'{1e3 * (time.process_time() - cpu) / 4:.0f} ms CPU, '
          f'{1e3 * (time.perf_counter() - wall) / 4:.0f} ms wall')

    video = AerialVideo(args.seed, duration_s=120.0)
    times = np.linspace(0, video.flight.duration_s, args.frames)
    for t in times:  # build every district the path touches, so the loop below is steady state
        video.render(t, 16, 32)

    for height, width in ((128, 256), (256, 512), (512, 1024)):
        wall, cpu = [], []
        for t in times:
            start, start_cpu = time.perf_counter(), time.process_time()
            video.render(t, height, width)
            wall.append(time.perf_counter() - start)
            cpu.append(time.process_time() - start_cpu)
        # CPU time is the stable figure on a shared machine; wall time includes waiting.
        print(f'render {height}x{width}: {1e3 * np.mean(cpu):.2f} ms CPU, '
              f'{1e3 * np.median(wall):.2f} ms wall (median) per frame, '
              f'{args.threads} OpenCV thread(s)')


if __name__ == '__main__':
    main()
