"""The drone node (`ams_drone`): segment the camera with the streamed student, feed the ground.

A thin adapter around ``DroneAgent`` and ``ModelUpdates`` (ams_ros.drone has the rules).
Topics (relative names, so each drone lives in its own namespace, e.g. ``/drone1``):

    in   <camera_topic>          sensor_msgs/Image          camera (QoS: camera_qos, depth 1)
    out  ~/mask, ~/mask_color    sensor_msgs/Image          mono8 class ids (rgb8 colours)
    out  ams/frames              ams_msgs/FrameBatch        sampled frames for the ground
    in   ams/patch, ams/snapshot ams_msgs/ModelPatch, ModelSnapshot (the latter latched)
    in   ams/sampling            ams_msgs/SamplingControl   sampling rate and T_update (latched)
    out  ams/snapshot_request    ams_msgs/SnapshotRequest   when patches cannot be applied
    out  ams/status, /diagnostics  EdgeStatus, DiagnosticArray every status_period

Threads: the camera callback only offers the frame to a FramePipeline (an inference worker on
the newest frame, an uplink worker that samples and encodes). Sampling uses header stamps (bag
replay, ``use_sim_time``); status and snapshot-request retries run on the steady clock. With
``auth_key_file`` set every message is signed on the way out and verified on the way in
(link_auth) before anything else; messages for another client id are counted and ignored.
"""

from __future__ import annotations

import dataclasses
import sys
import threading
import time

from diagnostic_msgs.msg import DiagnosticArray
from rcl_interfaces.msg import SetParametersResult
from rclpy.clock import Clock, ClockType
from rclpy.node import Node
from sensor_msgs.msg import Image

from ams_msgs.msg import (
    EdgeStatus,
    FrameBatch,
    ModelPatch,
    ModelSnapshot,
    SamplingControl,
    SnapshotRequest,
)
from ams_ros.counters import Counters
from ams_ros.drone.agent import DroneAgent
from ams_ros.drone.camera_watch import CameraWatch
from ams_ros.drone.frame_pipeline import FramePipeline
from ams_ros.drone.model_updates import ModelUpdates
from ams_ros.drone.snapshot_requester import SnapshotRequester
from ams_ros.drone.status import status_report
from ams_ros.ros import conversions as conv
from ams_ros.ros.drone_parameters import (
    PARAMETERS,
    check_uplink,
    codec_settings,
    default_client_id,
    drone_config,
    start_from_file,
)
from ams_ros.ros.image_conversion import ImageConversionError, array_to_image, image_to_rgb
from ams_ros.ros.link_auth import link_ends
from ams_ros.ros.node_parameters import check, declare_all, read
from ams_ros.ros.qos import LATCHED, RELIABLE, camera_qos
from ams_ros.ros.spin import guarded, run
from ams_ros.world import colour_table

NODE_NAME = 'ams_drone'


class DroneNode(Node):
    """ROS adapter of one drone's DroneAgent and ModelUpdates."""

    def __init__(self, **node_kwargs):
        super().__init__(NODE_NAME, **node_kwargs)
        self._params = declare_all(self, PARAMETERS)
        p = {name: read(self, name) for name in self._params}
        self.client_id = p['client_id'] or default_client_id(self.get_namespace())
        self.agent = DroneAgent(drone_config(p, self.client_id))
        self.updates = ModelUpdates(self.agent,
                                    SnapshotRequester(p['snapshot_request_interval']))
        # The link is authenticated message by message; the engine sees verified payloads.
        self._signer, self._verifier = link_ends(p['auth_key_file'])
        self._mask_resolution = p['mask_resolution']
        self._max_image_pixels = p['max_image_pixels']
        self._publish_colour = p['publish_color_mask']
        self.counters = Counters()
        self._camera = CameraWatch(self.counters)
        self._colour_lut = (None, None)  # (the colours it was built for, the table)
        self._agent_lock = threading.Lock()  # the agent's sampler and config
        if p['model_path']:
            start_from_file(self.agent, p['model_path'], p['model_version'])

        steady = Clock(clock_type=ClockType.STEADY_TIME)
        self.mask_pub = self.create_publisher(Image, '~/mask', 5)
        self.colour_pub = self.create_publisher(Image, '~/mask_color', 5)
        self.frames_pub = self.create_publisher(FrameBatch, 'ams/frames', 5)
        self.request_pub = self.create_publisher(SnapshotRequest, 'ams/snapshot_request',
                                                 RELIABLE)
        self.status_pub = self.create_publisher(EdgeStatus, 'ams/status', RELIABLE)
        self.diagnostics_pub = self.create_publisher(DiagnosticArray, '/diagnostics', 10)
        self.create_subscription(ModelPatch, 'ams/patch', self._on_patch, RELIABLE)
        self.create_subscription(ModelSnapshot, 'ams/snapshot', self._on_snapshot, LATCHED)
        self.create_subscription(SamplingControl, 'ams/sampling', self._on_sampling, LATCHED)
        self.create_subscription(Image, p['camera_topic'], self._on_image,
                                 camera_qos(p['camera_qos']))
        self.status_timer = self.create_timer(p['status_period'], self._report, clock=steady)
        self.create_timer(0.25, self._send_request, clock=steady)
        self.add_on_set_parameters_callback(self._check_parameters)
        self.add_post_set_parameters_callback(self._apply_parameters)

        self._pipeline = FramePipeline(self._process, self._send_frames, self._worker_failed,
                                       shutting_down=lambda: not self.context.ok())
        self.updates.ask_for_model()
        self._send_request()
        self.get_logger().info(
            f"client '{self.client_id}': camera {self.resolve_topic_name(p['camera_topic'])} "
            f"({p['camera_qos']}), model "
            + (f'v{self.agent.version} from {p["model_path"]}' if p['model_path']
               else "from the ground's snapshot"))

    # -- parameters ------------------------------------------------------------------------

    def _check_parameters(self, parameters) -> SetParametersResult:
        reason = check(self._params, parameters) or check_uplink(
            {name: read(self, name) for name in self._params}, parameters)
        return SetParametersResult(successful=not reason, reason=reason)

    def _apply_parameters(self, parameters) -> None:
        names = {x.name for x in parameters}
        self._mask_resolution = read(self, 'mask_resolution')
        self._publish_colour = read(self, 'publish_color_mask')
        if any(name.startswith('uplink.') for name in names):
            settings = codec_settings({name: read(self, name) for name in self._params})
            with self._agent_lock:
                self.agent.config = dataclasses.replace(self.agent.config, uplink=settings)
        if 'status_period' in names:
            self.status_timer.timer_period_ns = int(read(self, 'status_period') * 1e9)
            self.status_timer.reset()
        if 'snapshot_request_interval' in names:
            self.updates.requester.set_interval(read(self, 'snapshot_request_interval'))

    # -- model updates ---------------------------------------------------------------------

    @guarded
    def _on_patch(self, msg) -> None:
        self._on_update('patch', msg, len(msg.index_data) + len(msg.value_data),
                        conv.patch_from_msg, self.updates.patch,
                        f'patch {msg.base_version}->{msg.version}')

    @guarded
    def _on_snapshot(self, msg) -> None:
        self._on_update('snapshot', msg, len(msg.model_data), conv.snapshot_from_msg,
                        self.updates.snapshot, f'snapshot v{msg.version}')

    def _on_update(self, kind: str, msg, nbytes: int, convert, offer, what: str) -> None:
        """Verify a patch or snapshot, hand it to ModelUpdates, count and log what it did."""
        if self._foreign(msg.client_id):
            return
        self._count('bytes_down', nbytes)
        try:
            delivery = offer(convert(msg, verifier=self._verifier))
        except conv.MessageError as e:
            delivery = self.updates.refused(kind, e.reason, f'{what} refused: {e}')
        for key, n in delivery.counts.items():
            self._count(key, n)
        if delivery.info:
            self.get_logger().info(delivery.info)
        if delivery.warning:
            self._error(delivery.warning, delivery.error_key)
        self._send_request()

    @guarded
    def _send_request(self) -> None:
        reason = self.updates.request_due(time.monotonic())
        if reason is not None:
            self.request_pub.publish(conv.snapshot_request(
                self.client_id, self.agent.model_id, self.agent.version, reason,
                self.get_clock().now().to_msg(), signer=self._signer))

    @guarded
    def _on_sampling(self, msg) -> None:
        try:
            client_id, rate, period = conv.sampling_from_msg(msg, verifier=self._verifier)
        except conv.MessageError as e:
            self._error(f'sampling control refused: {e}', f'bad_sampling.{e.reason}')
            return
        if self._foreign(client_id):
            return
        try:
            with self._agent_lock:
                changed = self.agent.set_sampling(rate, period)
        except ValueError as e:  # the last good settings stay
            self._error(f'sampling control refused: {e}', 'bad_sampling.out-of-range')
            return
        if changed:
            self.get_logger().info(f'sampling {rate:.3g} frames/s, T_update {period:.3g} s')

    def _foreign(self, client_id: str) -> bool:
        """Count a message for another drone (a shared topic, a remapping mistake)."""
        if client_id == self.client_id:
            return False
        self._count('foreign_messages')
        return True

    # -- frames ----------------------------------------------------------------------------

    def _on_image(self, msg) -> None:
        self._count('frames_received')
        if self._pipeline.offer(msg):
            self._count('frames_dropped_stale')

    def _worker_failed(self, worker: str, e: Exception) -> None:
        self._error(f'{worker} failed: {type(e).__name__}: {e}', f'{worker}_errors')

    def _process(self, msg) -> tuple | None:
        """Infer one camera frame and publish its mask; return what the uplink samples."""
        try:
            rgb = image_to_rgb(msg, self._max_image_pixels)
        except ImageConversionError as e:
            self._error(f'camera image refused ({e})', f'bad_images.{e.reason}')
            return None
        if (change := self._camera.resolution(rgb.shape)) is not None:
            self.get_logger().info(f'camera resolution changed: {change}',
                                   throttle_duration_sec=2.0)
        stamp = self._camera.sample_stamp(conv.stamp_to_seconds(msg.header.stamp),
                                          lambda: self.get_clock().now().nanoseconds * 1e-9)
        mask = self.agent.infer(rgb, resize_to_input=self._mask_resolution == 'input')
        if mask is None:
            self._count('frames_without_model')
            return None
        self.mask_pub.publish(array_to_image(mask, 'mono8', msg.header))
        if self._publish_colour:
            self.colour_pub.publish(array_to_image(self._colours()[mask], 'rgb8', msg.header))
        self._count('frames_inferred')
        return stamp, rgb, msg.header.frame_id, msg.encoding

    def _colours(self):
        """Class id -> RGB of the running model (else the world's), rebuilt only on change."""
        colours = self.agent.class_colours
        if self._colour_lut[0] != colours:
            self._colour_lut = (colours, colour_table(colours))
        return self._colour_lut[1]

    def _send_frames(self, item: tuple) -> None:
        """Sample an inferred frame; publish the batch it completes."""
        stamp, rgb, frame_id, encoding = item
        with self._agent_lock:
            batch = self.agent.sample(stamp, rgb)
        if batch is None:
            return
        self.frames_pub.publish(conv.batch_to_msg(batch, frame_id, encoding,
                                                  signer=self._signer))
        self._count('batches_sent')
        self._count('frames_sampled', len(batch.stamps))
        self._count('bytes_up', len(batch.data))

    # -- status ----------------------------------------------------------------------------

    def on_callback_error(self, where: str, error: Exception) -> None:
        self._error(f'{where} failed: {type(error).__name__}: {error}', 'callback_errors')

    def _count(self, key: str, n: int = 1) -> None:
        self.counters.count(key, n)

    def _error(self, text: str, key: str) -> None:
        self.counters.error(text, key)
        self.get_logger().warning(text, throttle_duration_sec=2.0)

    @guarded
    def _report(self) -> None:
        report = status_report(self.updates, self.counters)
        stamp = self.get_clock().now().to_msg()
        self.status_pub.publish(conv.edge_status(stamp, signer=self._signer,
                                                 **report.edge_status))
        self.diagnostics_pub.publish(conv.diagnostic_array([conv.diagnostic_status(
            f'{NODE_NAME}: {self.client_id}', report.level, report.message, self.client_id,
            report.values)], stamp))

    def close(self) -> None:
        """Stop the workers and the model runtime."""
        self._pipeline.close()
        self.agent.close()


def main(args=None) -> int:
    """Run the drone node (`ams_drone`)."""
    return run(DroneNode, NODE_NAME, args)


if __name__ == '__main__':
    sys.exit(main())
