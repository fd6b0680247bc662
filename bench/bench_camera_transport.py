"""Which camera image sizes reach a subscriber over Fast DDS, per QoS: frames sent vs received.

A child process publishes rgb8 images of each size at the given rate; this process subscribes
with the drone's camera QoS (depth 1) and counts what arrives. Images that the transport drops
never reach the drone node, so the node cannot count them: this shows where that starts on this
machine's default Fast DDS settings (loopback, the ROS_DOMAIN_ID of the environment).

    python bench/bench_camera_transport.py [--sizes 640x480 1920x1080 ...] [--frames 20] [--fps 5]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time

PUBLISHER = '''
import sys, time, rclpy
from rclpy.qos import QoSProfile, ReliabilityPolicy, qos_profile_sensor_data
from sensor_msgs.msg import Image
width, height, frames, fps, qos = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), \\
    float(sys.argv[4]), sys.argv[5]
rclpy.init()
node = rclpy.create_node('bench_camera')
profile = qos_profile_sensor_data if qos == 'sensor_data' else QoSProfile(
    depth=1, reliability=ReliabilityPolicy.RELIABLE)
pub = node.create_publisher(Image, '/bench/image_raw', profile)
deadline = time.monotonic() + 20
while pub.get_subscription_count() == 0 and time.monotonic() < deadline:
    rclpy.spin_once(node, timeout_sec=0.05)
msg = Image(width=width, height=height, encoding='rgb8', step=3 * width,
            data=bytes(3 * width * height))
for n in range(frames):
    msg.header.stamp.sec = n + 1
    pub.publish(msg)
    rclpy.spin_once(node, timeout_sec=1.0 / fps)
time.sleep(1.0)
'''


def measure(width: int, height: int, frames: int, fps: float, qos: str) -> int:
    """Return how many of `frames` images of width x height arrived."""
    import rclpy
    from sensor_msgs.msg import Image

    from ams_ros.ros.qos import camera_qos

    node = rclpy.create_node('bench_camera_sink')
    stamps = set()
    node.create_subscription(Image, '/bench/image_raw',
                             lambda m: stamps.add(m.header.stamp.sec), camera_qos(qos))
    child = subprocess.Popen([sys.executable, '-c', PUBLISHER, str(width), str(height),
                              str(frames), str(fps), qos], env=os.environ)
    while child.poll() is None:
        rclpy.spin_once(node, timeout_sec=0.05)
    end = time.monotonic() + 1.0
    while time.monotonic() < end:
        rclpy.spin_once(node, timeout_sec=0.05)
    node.destroy_node()
    return len(stamps)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--sizes', nargs='+', default=['640x480', '1920x1080', '2592x1944',
                                                         '3840x2160', '4096x3072'])
    parser.add_argument('--frames', type=int, default=20)
    parser.add_argument('--fps', type=float, default=5.0)
    args = parser.parse_args()
    os.environ.setdefault('ROS_AUTOMATIC_DISCOVERY_RANGE', 'LOCALHOST')
    import rclpy

    rclpy.init()
    print(f"{'size':>10} {'MB':>6} {'sensor_data':>12} {'reliable':>9}   (received of "
          f'{args.frames} at {args.fps:g} frames/s)')
    for size in args.sizes:
        width, height = map(int, size.split('x'))
        counts = [measure(width, height, args.frames, args.fps, qos)
                  for qos in ('sensor_data', 'reliable')]
        print(f'{size:>10} {3 * width * height / 1e6:6.1f} {counts[0]:>12} {counts[1]:>9}')
    rclpy.try_shutdown()


if __name__ == '__main__':
    main()
