"""`ams_camera`: a camera that publishes sensor_msgs/Image from the synthetic flight or a video.

Frames go out as rgb8 on `camera/image_raw` with sensor-data QoS (parameter `qos`), paced in
real time (parameter `rate`: 2.0 plays twice as fast, 0 as fast as possible). Header stamps are
the frame's capture time so that everything downstream works from stamps:

- `stamp_source: flight` (default): the flight's own time, `start_time + t` (for a video,
  `start_time` + the frame's presentation time);
- `stamp_source: clock`: the node clock at publication, which follows /clock under
  `use_sim_time`; the synthetic flight is then rendered at that stamp, so a perfect teacher for
  the same flight (seed, start_time) still labels it exactly.

With `publish_labels: true` the synthetic flight's true labels (mono8 class ids) go out on
`camera/labels` with the same header, for evaluation. A camera that cannot keep up skips frames
rather than falling behind (real cameras do not wait); `frames_skipped` counts them.
"""

from __future__ import annotations

import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import rclpy
from rclpy.node import Node
from sensor_msgs.msg import Image
from std_msgs.msg import Header

from ams_ros.ros.conversions import seconds_to_stamp, stamp_to_seconds
from ams_ros.ros.image_conversion import array_to_image
from ams_ros.ros.node_parameters import ParameterError
from ams_ros.ros.qos import qos_from_name
from ams_ros.ros.spin import run


@dataclass
class FrameRef:
    """A frame of a source not rendered yet: its offset from the source's start and its index.

    Rendering waits until the frame is due, so frames skipped by a late camera cost nothing.
    """

    t: float  # seconds since the source's first frame (video: its presentation time)
    index: int


class SyntheticSource:
    """Frames of the synthetic flight at `fps`, rendered lazily: skipped frames cost nothing."""

    has_labels = True

    def __init__(self, seed: int, duration: float, start_time: float, fps: float,
                 height: int, width: int):
        from ams_ros.world import AerialVideo

        self.video = AerialVideo(seed, duration, start_time)
        self.fps, self.height, self.width = fps, height, width
        self.count = int(np.floor(duration * fps + 1e-9)) + 1
        self.start_time = start_time

    def __iter__(self) -> Iterator[FrameRef]:
        for i in range(self.count):
            yield FrameRef(i / self.fps, i)

    def render(self, frame: FrameRef, stamp: float | None = None):
        """Return (rgb, label) of a frame, at flight time `stamp` when given."""
        if stamp is None:
            return self.video.render(frame.t, self.height, self.width)
        return self.video.render_at_stamp(stamp, self.height, self.width)


class VideoSource:
    """Frames of a video file, decoded with PyAV; resized when width and height are > 0."""

    has_labels = False

    def __init__(self, path: str, height: int, width: int, duration: float):
        self.path, self.height, self.width, self.duration = path, height, width, duration
        self.fps = None  # the stream's average frame rate, once opened
        self._pending: dict[int, np.ndarray] = {}

    def __iter__(self) -> Iterator[FrameRef]:
        import av

        with av.open(self.path) as container:
            stream = container.streams.video[0]
            stream.thread_type = 'AUTO'
            self.fps = float(stream.average_rate or 0) or None
            first = None
            for index, frame in enumerate(container.decode(stream)):
                t = float(frame.time if frame.time is not None else index / float(
                    stream.average_rate or 30))
                first = t if first is None else first
                if self.duration > 0 and t - first > self.duration:
                    return
                if self.width > 0 and self.height > 0:
                    frame = frame.reformat(width=self.width, height=self.height)
                self._pending = {index: frame.to_ndarray(format='rgb24')}
                yield FrameRef(t - first, index)

    def render(self, frame: FrameRef, stamp: float | None = None):
        return self._pending.pop(frame.index), None


class CameraNode(Node):
    """Publish a source's frames in real time, stamped with their capture time."""

    def __init__(self, **kwargs):
        super().__init__('ams_camera', **kwargs)
        p = self.declare_parameter
        self.source_name = p('source', 'synthetic').value  # 'synthetic' or a video file path
        seed = int(p('seed', 1003).value)
        self.fps = float(p('fps', 5.0).value)
        width, height = int(p('width', 256).value), int(p('height', 128).value)
        duration = float(p('duration', 600.0).value)
        self.start_time = float(p('start_time', 0.0).value)
        self.rate = float(p('rate', 1.0).value)  # 1 = real time, 0 = as fast as possible
        self.loop = bool(p('loop', False).value)
        self.frame_id = p('frame_id', 'camera').value
        self.stamp_source = p('stamp_source', 'flight').value  # 'flight' or 'clock'
        self.publish_labels = bool(p('publish_labels', False).value)
        self.exit_when_done = bool(p('exit_when_done', False).value)
        # Hold the first frame until this many image subscribers (and, with labels, a labels
        # subscriber) matched; 0: start at once.
        self.wait_for_subscribers = int(p('wait_for_subscribers', 0).value)
        self.wait_settle = float(p('wait_settle', 1.0).value)  # s after they matched
        try:
            qos = qos_from_name(p('qos', 'sensor_data').value, int(p('qos_depth', 0).value))
            labels_qos = qos_from_name(p('labels_qos', 'reliable').value)
        except ValueError as e:
            raise ParameterError(str(e)) from e
        if self.stamp_source not in ('flight', 'clock'):
            raise ParameterError(f"stamp_source must be 'flight' or 'clock', got "
                             f'{self.stamp_source!r}')
        if self.fps <= 0:
            raise ParameterError(f'fps must be > 0, got {self.fps}')

        if self.source_name == 'synthetic':
            self.source = SyntheticSource(seed, duration, self.start_time, self.fps, height, width)
            if self.loop:
                self.get_logger().warn('the synthetic flight does not loop (its stamps are its '
                                       'time): make duration longer instead')
                self.loop = False
        else:
            self.source = VideoSource(self.source_name, height, width, duration)
            if self.publish_labels:
                self.get_logger().warn('a video has no true labels: publish_labels ignored')
                self.publish_labels = False
        self.image_pub = self.create_publisher(Image, 'camera/image_raw', qos)
        self.label_pub = (self.create_publisher(Image, 'camera/labels', labels_qos)
                          if self.publish_labels else None)
        self.frames_published = 0
        self.frames_skipped = 0
        self._last_stamp = None
        self._last_t = 0.0
        self._loop_offset = 0.0
        self._waited = False
        self.done = threading.Event()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name='camera', daemon=True)
        self._thread.start()
        self.get_logger().info(
            f'camera: {self.source_name} at {self.fps:g} fps, rate {self.rate:g}, '
            f'stamps from {self.stamp_source}, labels {"on" if self.publish_labels else "off"}')

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5.0)

    def _run(self) -> None:
        try:
            if self.stamp_source == 'clock' and self.source.has_labels:
                self.source.render(FrameRef(0.0, 0))  # build the world before the clock runs
            while not self._stop.is_set():
                self._play_once()
                if not self.loop:
                    break
                # Stamps keep increasing from one pass to the next.
                self._loop_offset = self._last_t + 1.0 / (getattr(self.source, 'fps', None)
                                                          or self.fps)
        except Exception as exc:  # noqa: BLE001 - report and end, the node stays up
            self.get_logger().error(f'camera source failed: {type(exc).__name__}: {exc}')
        if self.context.ok():  # not when stopped by a shutdown: no logging then
            self.get_logger().info(f'source finished: {self.frames_published} frames '
                                   f'published, {self.frames_skipped} skipped')
        self.done.set()
        if self.exit_when_done:
            rclpy.try_shutdown()

    def _play_once(self) -> None:
        wall0 = None  # monotonic time of the source's t = 0, set when the first frame is ready
        for frame in self.source:
            if self._stop.is_set():
                return
            frame.t += self._loop_offset
            if wall0 is not None and self.rate > 0:
                late = time.monotonic() - (wall0 + frame.t / self.rate)
                period = 1.0 / (getattr(self.source, 'fps', None) or self.fps)
                if late > period / self.rate:  # late by a whole frame: skip it
                    self.frames_skipped += 1
                    continue
            # Flight stamps are known ahead, so the frame is rendered before its time comes.
            ready = None if self.stamp_source == 'clock' else self._render(frame)
            if wall0 is None:
                if not self._waited and not self._wait_for_subscribers():
                    return
                self._waited = True
                wall0 = time.monotonic() - (frame.t / self.rate if self.rate > 0 else 0.0)
            if self.rate > 0:
                delay = wall0 + frame.t / self.rate - time.monotonic()
                if delay > 0 and self._stop.wait(delay):
                    return
            ready = ready or self._render(frame)
            if self.stamp_source == 'clock' and ready[0] == self._last_stamp:
                self.frames_skipped += 1  # sim time stands still (a paused or finished bag)
                continue
            self._last_stamp = ready[0]
            self._last_t = frame.t
            self._publish(*ready)

    def _wait_for_subscribers(self) -> bool:
        """Wait for the subscribers asked for, and for /clock when stamps come from it."""
        def labels_unmatched():
            return (self.label_pub is not None and self.wait_for_subscribers > 0
                    and self.label_pub.get_subscription_count() < 1)

        while (self.image_pub.get_subscription_count() < self.wait_for_subscribers
               or labels_unmatched()
               or (self.stamp_source == 'clock' and self.get_clock().now().nanoseconds == 0)):
            if self._stop.wait(0.05):
                return False
        # Matching is not symmetric: a subscriber may learn of this publisher a moment after
        # it learned of the subscriber, and best-effort frames sent in between are lost.
        return not (self.wait_for_subscribers > 0 and self._stop.wait(self.wait_settle))

    def _render(self, frame: FrameRef):
        """Return (stamp msg, rgb, label) of a frame."""
        if self.stamp_source == 'clock':
            stamp_msg = self.get_clock().now().to_msg()
            stamp = stamp_to_seconds(stamp_msg)
            rgb, label = self.source.render(frame, stamp if self.source.has_labels else None)
        else:
            stamp_msg = seconds_to_stamp(self.start_time + frame.t)
            rgb, label = self.source.render(frame)
        return stamp_msg, rgb, label

    def _publish(self, stamp_msg, rgb: np.ndarray, label: np.ndarray | None) -> None:
        header = Header(stamp=stamp_msg, frame_id=self.frame_id)
        self.image_pub.publish(array_to_image(np.ascontiguousarray(rgb), 'rgb8', header))
        if self.label_pub is not None and label is not None:
            self.label_pub.publish(array_to_image(label, 'mono8', header))
        self.frames_published += 1


def main(args=None) -> int:
    """Run the camera node (`ams_camera`)."""
    return run(CameraNode, 'ams_camera', args)


if __name__ == '__main__':
    sys.exit(main())
