"""The drone node (`ams_drone`): segment the camera with the streamed student, feed the ground.

A thin adapter around ``DroneAgent``: messages in, engine calls, messages out. Topics (relative
names, so each drone lives in its own namespace, e.g. ``/drone1``):

    in   <camera_topic>          sensor_msgs/Image          camera (QoS: camera_qos, depth 1)
    out  ~/mask                  sensor_msgs/Image          mono8 class ids, the frame's header
    out  ~/mask_color            sensor_msgs/Image          rgb8 colours (publish_color_mask)
    out  ams/frames              ams_msgs/FrameBatch        sampled frames for the ground
    in   ams/patch               ams_msgs/ModelPatch        sparse model updates
    in   ams/snapshot            ams_msgs/ModelSnapshot     whole models (transient-local)
    in   ams/sampling            ams_msgs/SamplingControl   sampling rate and T_update (latched)
    out  ams/snapshot_request    ams_msgs/SnapshotRequest   when patches cannot be applied
    out  ams/status              ams_msgs/EdgeStatus        every status_period
    out  /diagnostics            diagnostic_msgs/DiagnosticArray

Threads. The camera callback only stores the message: a worker takes the latest frame
(``deque(maxlen=1)``), so a slow model skips frames instead of building a backlog; frames
replaced before the worker reached them are counted as dropped. A second worker feeds the
inferred frames to the uplink sampler and encodes batches, so an H.264 encode never delays a
mask. Patches and snapshots are handled in the executor's thread; the agent builds new
sessions off the inference path. Sampling uses header stamps (bag replay, ``use_sim_time``);
status, diagnostics and snapshot-request retries run on the steady clock, so they keep
working while sim time is paused.

Messages for another client_id (a shared topic, a remapping mistake) are counted and ignored.
With ``auth_key_file`` set, every message is signed on the way out and verified (tag and the
sender's counter, see link_auth) on the way in, before anything else. What the drone runs follows
model_version's rules: a snapshot it did not ask for is only a resync of the model it runs, and
it reports ``warn`` until a patch from the ground builds on that version; a SamplingControl
outside ``limits.*`` is refused and the last good settings stay.
"""

from __future__ import annotations

import dataclasses
import functools
import sys
import threading
import time
from collections import Counter, deque
from pathlib import Path

import numpy as np
import rclpy
from diagnostic_msgs.msg import DiagnosticArray
from rcl_interfaces.msg import SetParametersResult
from rclpy.clock import Clock, ClockType
from rclpy.executors import ExternalShutdownException
from rclpy.node import Node
from rclpy.qos import (
    DurabilityPolicy,
    HistoryPolicy,
    QoSProfile,
    ReliabilityPolicy,
    qos_profile_sensor_data,
)
from sensor_msgs.msg import Image

from ams_msgs.msg import (
    EdgeStatus,
    FrameBatch,
    ModelPatch,
    ModelSnapshot,
    SamplingControl,
    SnapshotRequest,
)
from ams_ros.auth import load_key
from ams_ros.drone_agent import DroneAgent, DroneConfig
from ams_ros.edge_runtime import DEFAULT_PROVIDER_ORDER, RuntimeConfig
from ams_ros.frame_codec import CODECS, RATE_CONTROLS, X264_PRESETS, CodecSettings
from ams_ros.model_version import APPLIED, NEEDS_SNAPSHOT, OUT_OF_ORDER, REJECTED
from ams_ros.ros import conversions as conv
from ams_ros.ros.image_conversion import ImageConversionError, array_to_image, image_to_rgb
from ams_ros.ros.link_auth import LinkSigner, LinkVerifier
from ams_ros.ros.node_parameters import (
    Param,
    ParameterError,
    check,
    declare_all,
    list_type,
    read,
)

NODE_NAME = 'ams_drone'
CAMERA_QOS = ('sensor_data', 'reliable', 'best_effort')
MAX_REQUEST_BACKOFF_S = 60.0
AUTH_REFUSALS = ('unsigned', 'bad-signature', 'replayed')

PARAMETERS = (
    Param('client_id', '', "this drone's id in every ams message; empty: the node's namespace "
          "without slashes ('drone' in the root namespace)"),
    Param('camera_topic', 'camera/image_raw', 'sensor_msgs/Image input (relative names resolve '
          "in the node's namespace)"),
    Param('camera_qos', 'sensor_data', 'camera subscription QoS (depth 1): sensor_data and '
          'best_effort match any camera; reliable only matches reliable publishers',
          choices=CAMERA_QOS),
    Param('max_image_pixels', 4096 * 4096, 'camera images with more pixels (width x height) are '
          'refused, counted as bad_images.too-large (default 4096 x 4096: 4K and 12 MP cameras '
          'pass)', low=1, high=2**32),
    Param('model_path', '', 'exported student ONNX (with the ams metadata) to start from; empty: '
          "wait for the ground's snapshot"),
    Param('model_version', 1, 'version of the model in model_path (the ground starts every drone '
          'at version 1, its template)', low=1, high=2**62),
    Param('mask_resolution', 'input', 'size of ~/mask: input (the camera frame) or model (the '
          "model's input size, cheaper)", choices=('input', 'model'), read_only=False),
    Param('publish_color_mask', False, 'also publish ~/mask_color (rgb8 class colours)',
          read_only=False),
    Param('uplink.codec', 'h264', 'how sampled frames are encoded for the ground',
          choices=CODECS, read_only=False),
    Param('uplink.bitrate_kbps', 200.0, 'h264: uplink budget in kbit/s (paper: 200)', above=0.0,
          read_only=False),
    Param('uplink.rate_control', 'vbv', "h264: 'vbv' (one pass) or 'two-pass' (the paper's)",
          choices=RATE_CONTROLS, read_only=False),
    Param('uplink.preset', 'medium', 'h264: x264 preset (paper: medium; faster presets cost '
          'less CPU)', choices=X264_PRESETS, read_only=False),
    Param('uplink.threads', 1, 'h264: encoder threads (0: x264 decides)', low=0, high=64,
          read_only=False),
    Param('uplink.jpeg_quality', 75, 'jpeg: quality 0..100', low=0, high=100, read_only=False),
    Param('uplink.height', 0, 'height of the frames sent (pixels); 0 (with width 0): the '
          "model's input size", low=0, high=65535),
    Param('uplink.width', 0, 'width of the frames sent (pixels); 0 (with height 0): the '
          "model's input size", low=0, high=65535),
    Param('sampling_rate', 1.0, 'frames/s sampled for training until the ground sets the rate',
          above=0.0),
    Param('update_period', 10.0, 'T_update: seconds of frames per FrameBatch until the ground '
          'sets it', above=0.0),
    Param('limits.sampling_rate_min', 0.01, 'lowest sampling rate the ground may set (frames/s); '
          'a SamplingControl outside the limits is refused and the last good one kept',
          above=0.0),
    Param('limits.sampling_rate_max', 30.0, 'highest sampling rate the ground may set', above=0.0),
    Param('limits.update_period_min', 0.5, 'shortest T_update the ground may set (s)', above=0.0),
    Param('limits.update_period_max', 600.0, 'longest T_update the ground may set (s)',
          above=0.0),
    Param('ort.threads', 0, 'ONNX Runtime intra-op threads per inference (0: its default)',
          low=0, high=1024),
    Param('ort.providers', list_type('string'), 'ONNX Runtime providers in order of preference; '
          'empty: ' + ', '.join(DEFAULT_PROVIDER_ORDER) + ' where available'),
    Param('ort.use_tensorrt', False, 'allow TensorRT: fastest inference, but every model swap '
          'compiles an engine (seconds to minutes)'),
    Param('max_pending_patches', 4, 'out-of-order patches held while waiting for a gap to fill',
          low=1, high=1000),
    Param('status_period', 1.0, 'seconds between ams/status and /diagnostics messages',
          above=0.0, read_only=False),
    Param('snapshot_request_interval', 2.0, 'seconds before a snapshot request is repeated '
          '(doubling while unanswered, up to 60 s)', above=0.0, read_only=False),
    Param('auth_key_file', '', 'file with the key shared with the ground (HMAC-SHA256); empty: '
          'messages are not authenticated'),
)

RELIABLE = QoSProfile(depth=10, reliability=ReliabilityPolicy.RELIABLE)
# State that must reach late joiners, like a map: the last model and the last sampling control.
LATCHED = QoSProfile(depth=1, history=HistoryPolicy.KEEP_LAST,
                     reliability=ReliabilityPolicy.RELIABLE,
                     durability=DurabilityPolicy.TRANSIENT_LOCAL)


def guarded(callback):
    """Wrap a ROS callback: an unexpected exception is logged and counted, never fatal.

    An exception escaping a callback would end ``rclpy.spin`` and with it the node.
    """
    @functools.wraps(callback)
    def run_guarded(self, *args):
        try:
            return callback(self, *args)
        except Exception as e:  # noqa: BLE001 - the node must outlive any one message
            if self.context.ok():
                self.on_callback_error(callback.__name__, e)
    return run_guarded


def camera_qos(name: str) -> QoSProfile:
    """Return the camera subscription's QoS: depth 1, so only the newest frame waits."""
    if name == 'sensor_data':
        profile = QoSProfile(depth=1, reliability=qos_profile_sensor_data.reliability,
                             durability=qos_profile_sensor_data.durability)
    else:
        profile = QoSProfile(depth=1, reliability=(ReliabilityPolicy.RELIABLE
                                                   if name == 'reliable'
                                                   else ReliabilityPolicy.BEST_EFFORT))
    return profile


def default_client_id(namespace: str) -> str:
    """Return the client id a drone in this namespace uses by default ('drone' at the root)."""
    return namespace.strip('/') or 'drone'


def colour_table() -> np.ndarray:
    """Return class id -> RGB: the synthetic world's palette first, fixed colours after it."""
    from ams_ros.world import PALETTE

    lut = np.random.default_rng(0).integers(40, 256, (256, 3)).astype(np.uint8)
    lut[:len(PALETTE)] = PALETTE
    lut[255] = 0  # IGNORE_LABEL
    return lut


class DroneNode(Node):
    """ROS adapter of one drone's DroneAgent."""

    def __init__(self, **node_kwargs):
        super().__init__(NODE_NAME, **node_kwargs)
        self._params = declare_all(self, PARAMETERS)
        p = {name: read(self, name) for name in self._params}
        self.client_id = p['client_id'] or default_client_id(self.get_namespace())
        if bool(p['uplink.height']) != bool(p['uplink.width']):
            raise ParameterError('uplink.height and uplink.width must both be 0 or both be set')
        try:
            uplink = self._codec_settings(p)
            key = load_key(p['auth_key_file'] or None)
        except (ValueError, OSError) as e:
            raise ParameterError(str(e)) from e
        runtime = RuntimeConfig(
            providers=tuple(p['ort.providers']) or DEFAULT_PROVIDER_ORDER,
            use_tensorrt=p['ort.use_tensorrt'], intra_op_threads=p['ort.threads'])
        try:
            config = DroneConfig(
                client_id=self.client_id, uplink=uplink, runtime=runtime,
                uplink_size=((p['uplink.height'], p['uplink.width']) if p['uplink.height']
                             else None),
                max_pending_patches=p['max_pending_patches'], sampling_rate=p['sampling_rate'],
                update_period=p['update_period'],
                sampling_rate_min=p['limits.sampling_rate_min'],
                sampling_rate_max=p['limits.sampling_rate_max'],
                update_period_min=p['limits.update_period_min'],
                update_period_max=p['limits.update_period_max'])
        except ValueError as e:
            raise ParameterError(str(e)) from e
        self.agent = DroneAgent(config)
        # The link is authenticated message by message; the agent sees verified payloads.
        self._signer, self._verifier = LinkSigner(key), LinkVerifier(key)
        self._mask_resolution = p['mask_resolution']
        self._max_image_pixels = p['max_image_pixels']
        self._camera_size: tuple[int, int] | None = None  # (height, width) of the last frame
        self._publish_colour = p['publish_color_mask']
        self._colours = colour_table()

        self.counts: Counter[str] = Counter()  # frames, batches, bytes, errors by reason
        self.patch_outcomes: Counter[str] = Counter()
        self.snapshot_outcomes: Counter[str] = Counter()
        self.last_error = ''
        self._period_counts: Counter[str] = Counter()  # since the last status report
        self._last_report = time.monotonic()
        self._counts_lock = threading.Lock()
        self._agent_lock = threading.Lock()  # the agent's sampler and config
        self._request_backoff = p['snapshot_request_interval']
        self._next_request = 0.0
        self._pending_request = ''
        # A version that came in a snapshot the drone did not ask for: the ground confirms it
        # by building its next patch on it (or by answering a request).
        self._unconfirmed_version: int | None = None

        if p['model_path']:
            self._load_model_file(Path(p['model_path']).expanduser(), p['model_version'])

        steady = Clock(clock_type=ClockType.STEADY_TIME)
        self.mask_pub = self.create_publisher(Image, '~/mask', 5)
        self.colour_pub = self.create_publisher(Image, '~/mask_color', 5)
        self.frames_pub = self.create_publisher(FrameBatch, 'ams/frames', 5)
        self.request_pub = self.create_publisher(SnapshotRequest, 'ams/snapshot_request',
                                                 RELIABLE)
        self.status_pub = self.create_publisher(EdgeStatus, 'ams/status', RELIABLE)
        self.diagnostics_pub = self.create_publisher(DiagnosticArray, '/diagnostics',
                                                     10)
        self.create_subscription(ModelPatch, 'ams/patch', self._on_patch, RELIABLE)
        self.create_subscription(ModelSnapshot, 'ams/snapshot', self._on_snapshot, LATCHED)
        self.create_subscription(SamplingControl, 'ams/sampling', self._on_sampling, LATCHED)
        self.create_subscription(Image, p['camera_topic'], self._on_image,
                                 camera_qos(p['camera_qos']))
        self.status_timer = self.create_timer(p['status_period'], self._report, clock=steady)
        self.request_timer = self.create_timer(0.25, self._retry_request, clock=steady)
        self.add_on_set_parameters_callback(self._check_parameters)
        self.add_post_set_parameters_callback(self._apply_parameters)

        self._closed = False
        self._frames: deque = deque(maxlen=1)
        self._frame_ready = threading.Condition()
        self._uplink: deque = deque(maxlen=1)
        self._uplink_ready = threading.Condition()
        self._workers = [threading.Thread(target=self._inference_loop, name='ams-inference',
                                          daemon=True),
                         threading.Thread(target=self._uplink_loop, name='ams-uplink',
                                          daemon=True)]
        for worker in self._workers:
            worker.start()
        if self.agent.runtime is None:
            self._want_snapshot('startup')
        self.get_logger().info(
            f"client '{self.client_id}': camera {self.resolve_topic_name(p['camera_topic'])} "
            f"({p['camera_qos']}), model "
            + (f'v{self.agent.version} from {p["model_path"]}' if p['model_path']
               else "from the ground's snapshot"))

    # -- parameters ------------------------------------------------------------------------

    @staticmethod
    def _codec_settings(p: dict) -> CodecSettings:
        return CodecSettings(codec=p['uplink.codec'], bitrate_kbps=p['uplink.bitrate_kbps'],
                             rate_control=p['uplink.rate_control'], preset=p['uplink.preset'],
                             threads=p['uplink.threads'], jpeg_quality=p['uplink.jpeg_quality'])

    def _check_parameters(self, parameters) -> SetParametersResult:
        reason = check(self._params, parameters)
        if not reason and any(x.name.startswith('uplink.') for x in parameters):
            merged = {name: read(self, name) for name in self._params}
            merged.update({x.name: x.value for x in parameters})
            try:
                self._codec_settings(merged)
            except ValueError as e:
                reason = str(e)
        return SetParametersResult(successful=not reason, reason=reason)

    def _apply_parameters(self, parameters) -> None:
        names = {x.name for x in parameters}
        self._mask_resolution = read(self, 'mask_resolution')
        self._publish_colour = read(self, 'publish_color_mask')
        if any(name.startswith('uplink.') for name in names):
            settings = self._codec_settings({name: read(self, name) for name in self._params})
            with self._agent_lock:
                self.agent.config = dataclasses.replace(self.agent.config, uplink=settings)
        if 'status_period' in names:
            self.status_timer.timer_period_ns = int(read(self, 'status_period') * 1e9)
            self.status_timer.reset()
        if 'snapshot_request_interval' in names:
            self._request_backoff = read(self, 'snapshot_request_interval')

    # -- model updates ---------------------------------------------------------------------

    def _load_model_file(self, path: Path, version: int) -> None:
        try:
            outcome = self.agent.load_model_file(path.read_bytes(), version)
        except Exception as e:  # noqa: BLE001 - a file that is not a usable model
            raise ParameterError(f"model_path '{path}': not a usable exported student "
                                 f'({type(e).__name__}: {e})') from e
        if outcome.kind != APPLIED:
            raise ParameterError(f"model_path '{path}': {outcome.kind} ({outcome.reason})")

    @guarded
    def _on_patch(self, msg) -> None:
        if msg.client_id != self.client_id:
            self._count('foreign_messages')
            return
        self._count('bytes_down', len(msg.index_data) + len(msg.value_data))
        try:
            payload = conv.patch_from_msg(msg, verifier=self._verifier)
        except conv.MessageError as e:
            self._error(f'patch {msg.base_version}->{msg.version} refused: {e}',
                        f'bad_patch.{e.reason}')
            self.patch_outcomes[f'{REJECTED}:{e.reason}'] += 1
            return
        outcome = self.agent.offer_patch(payload)
        self.patch_outcomes[f'{outcome.kind}:{outcome.reason}' if outcome.reason
                            else outcome.kind] += 1
        if outcome.kind == APPLIED:
            self._count('patches_applied', len(outcome.applied_versions))
            self._unconfirmed_version = None
            self._model_changed()
        elif outcome.kind == REJECTED or (outcome.kind == NEEDS_SNAPSHOT
                                          and outcome.reason != 'startup'):
            self._count('patches_rejected')
            self._error(f'patch {payload.base_version}->{payload.version}: {outcome.kind} '
                        f'({outcome.reason})', None)
        if outcome.needs_snapshot:
            self._want_snapshot(outcome.reason, at_once=True)
        elif outcome.kind == OUT_OF_ORDER:
            # Patches arrive in order over one reliable publisher, so a gap means lost patches
            # or a stale model (e.g. an old latched snapshot after a restart): ask now rather
            # than after max_pending_patches update periods.
            self._want_snapshot('gap', at_once=True)

    @guarded
    def _on_snapshot(self, msg) -> None:
        if msg.client_id != self.client_id:
            self._count('foreign_messages')
            return
        self._count('bytes_down', len(msg.model_data))
        try:
            payload = conv.snapshot_from_msg(msg, verifier=self._verifier)
        except conv.MessageError as e:
            self.snapshot_outcomes[f'{REJECTED}:{e.reason}'] += 1
            self._error(f'snapshot v{msg.version} refused: {e}', f'bad_snapshot.{e.reason}')
            if e.reason not in AUTH_REFUSALS:  # a forgery is no sign that the model is lost
                self._want_snapshot(f'snapshot-{e.reason}')
            return
        requested = bool(self._pending_request)
        outcome = self.agent.load_snapshot(payload, requested=requested)
        self.snapshot_outcomes[f'{outcome.kind}:{outcome.reason}' if outcome.reason
                               else outcome.kind] += 1
        if outcome.kind == APPLIED:
            self._count('snapshots_applied')
            self.get_logger().info(f'snapshot v{payload.version} of {payload.model_id} '
                                   f'verified ({len(payload.model_data)} bytes'
                                   + ('' if requested else ', not asked for') + ')')
            self._unconfirmed_version = None if requested else self.agent.version
            self._model_changed()
        elif outcome.reason == 'stale':
            self._count('snapshots_stale')  # e.g. the latched first snapshot of a model we run
        else:
            self._error(f'snapshot v{payload.version} not used: {outcome.kind} '
                        f'({outcome.reason})', 'snapshots_refused')
            if outcome.needs_snapshot and (requested or self.agent.runtime is None):
                # Only a model the drone asked for and still lacks is worth asking again;
                # a bad snapshot it did not ask for leaves the model it runs as good as it was.
                self._want_snapshot(outcome.reason)

    @guarded
    def _on_sampling(self, msg) -> None:
        try:
            client_id, rate, period = conv.sampling_from_msg(msg, verifier=self._verifier)
        except conv.MessageError as e:
            self._error(f'sampling control refused: {e}', f'bad_sampling.{e.reason}')
            return
        if client_id != self.client_id:
            self._count('foreign_messages')
            return
        with self._agent_lock:
            changed = (rate, period) != (self.agent.sampler.rate,
                                         self.agent.sampler.update_period)
            try:
                self.agent.set_sampling(rate, period)
            except ValueError as e:  # the last good settings stay
                self._error(f'sampling control refused: {e}', 'bad_sampling.out-of-range')
                return
        if changed:
            self.get_logger().info(f'sampling {rate:.3g} frames/s, T_update {period:.3g} s')

    def _model_changed(self) -> None:
        self._pending_request = ''
        self._request_backoff = read(self, 'snapshot_request_interval')

    def _want_snapshot(self, reason: str, at_once: bool = False) -> None:
        """Ask for a snapshot now, then again with a growing interval until one is applied.

        A pending request waits out its back-off unless `at_once`: a patch that just came
        shows the downlink works again, so a snapshot may get through now (one request per
        patch at most, so per update period).
        """
        if at_once or not self._pending_request:
            self._next_request = 0.0
        self._pending_request = reason
        self._retry_request()

    @guarded
    def _retry_request(self) -> None:
        if not self._pending_request or time.monotonic() < self._next_request:
            return
        self.request_pub.publish(conv.snapshot_request(
            self.client_id, self.agent.model_id, self.agent.version, self._pending_request,
            self.get_clock().now().to_msg(), signer=self._signer))
        self._count('snapshot_requests')
        self._next_request = time.monotonic() + self._request_backoff
        self._request_backoff = min(2 * self._request_backoff, MAX_REQUEST_BACKOFF_S)

    # -- frames ----------------------------------------------------------------------------

    def _on_image(self, msg) -> None:
        with self._frame_ready:
            if self._frames:
                self._count('frames_dropped_stale')
            self._frames.append(msg)
            self._count('frames_received')
            self._frame_ready.notify()

    def _inference_loop(self) -> None:
        while True:
            with self._frame_ready:
                self._frame_ready.wait_for(lambda: self._frames or self._closed)
                if self._closed:
                    return
                msg = self._frames.popleft()
            try:
                self._process(msg)
            except Exception as e:  # noqa: BLE001 - one bad frame never stops the node
                if self._closed or not self.context.ok():
                    return  # shutting down: publishers are gone
                self._error(f'frame failed: {type(e).__name__}: {e}', 'frame_errors')

    def _process(self, msg) -> None:
        try:
            rgb = image_to_rgb(msg, self._max_image_pixels)
        except ImageConversionError as e:
            self._error(f'camera image refused ({e})', f'bad_images.{e.reason}')
            return
        if rgb.shape[:2] != self._camera_size:
            if self._camera_size is not None:
                # Masks follow the new size; the uplink resizes frames to its own fixed size.
                self._count('camera_size_changes')
                self.get_logger().info(
                    f'camera resolution changed: {self._camera_size[1]}x{self._camera_size[0]}'
                    f' -> {rgb.shape[1]}x{rgb.shape[0]}', throttle_duration_sec=2.0)
            self._camera_size = rgb.shape[:2]
        stamp = conv.stamp_to_seconds(msg.header.stamp)
        if stamp == 0.0:  # an unstamped camera: sample on receive time instead
            self._count('unstamped_frames')
            stamp = self.get_clock().now().nanoseconds * 1e-9
        mask = self.agent.infer(rgb, resize_to_input=self._mask_resolution == 'input')
        if mask is None:
            self._count('frames_without_model')
            return
        self.mask_pub.publish(array_to_image(mask, 'mono8', msg.header))
        if self._publish_colour:
            self.colour_pub.publish(array_to_image(self._colours[mask], 'rgb8', msg.header))
        self._count('frames_inferred')
        with self._uplink_ready:
            self._uplink.append((stamp, rgb, msg.header.frame_id, msg.encoding))
            self._uplink_ready.notify()

    def _uplink_loop(self) -> None:
        while True:
            with self._uplink_ready:
                self._uplink_ready.wait_for(lambda: self._uplink or self._closed)
                if self._closed:
                    return
                stamp, rgb, frame_id, encoding = self._uplink.popleft()
            try:
                with self._agent_lock:
                    batch = self.agent.sample(stamp, rgb)
                if batch is None:
                    continue
                msg = conv.batch_to_msg(batch, frame_id, encoding, signer=self._signer)
                self.frames_pub.publish(msg)
            except Exception as e:  # noqa: BLE001 - an encoder failure skips one batch
                if self._closed or not self.context.ok():
                    return
                self._error(f'uplink batch failed: {type(e).__name__}: {e}', 'uplink_errors')
                continue
            self._count('batches_sent')
            self._count('frames_sampled', len(batch.stamps))
            self._count('bytes_up', len(batch.data))

    # -- status ----------------------------------------------------------------------------

    def on_callback_error(self, where: str, error: Exception) -> None:
        self._error(f'{where} failed: {type(error).__name__}: {error}', 'callback_errors')

    def _count(self, key: str, n: int = 1) -> None:
        with self._counts_lock:
            self.counts[key] += n
            self._period_counts[key] += n

    def _error(self, text: str, key: str | None) -> None:
        if key:
            self._count(key)
            self._count('errors')
        self.last_error = text
        self.get_logger().warning(text, throttle_duration_sec=2.0)

    @guarded
    def _report(self) -> None:
        now = time.monotonic()
        with self._counts_lock:
            counts, period = dict(self.counts), dict(self._period_counts)
            self._period_counts.clear()
            elapsed = max(now - self._last_report, 1e-6)
            self._last_report = now
        runtime = self.agent.runtime
        status = runtime.status() if runtime is not None else None
        latency = status.latency if status is not None else None
        fps = period.get('frames_inferred', 0) / elapsed
        stamp = self.get_clock().now().to_msg()
        active = status.active_version if status else 0
        self.status_pub.publish(conv.edge_status(
            stamp, signer=self._signer, client_id=self.client_id, model_id=self.agent.model_id,
            active_version=active, active_digest=self.agent.state.digest_of(active) or b'',
            sampling_rate=self.agent.sampler.rate,
            update_period=self.agent.sampler.update_period, inference_fps=fps,
            latency_p50_ms=latency.p50_ms if latency else 0.0,
            latency_p99_ms=latency.p99_ms if latency else 0.0,
            frames_received=counts.get('frames_received', 0),
            frames_inferred=counts.get('frames_inferred', 0),
            frames_sampled=counts.get('frames_sampled', 0),
            batches_sent=counts.get('batches_sent', 0), bytes_up=counts.get('bytes_up', 0),
            bytes_down=counts.get('bytes_down', 0),
            patches_applied=counts.get('patches_applied', 0),
            patches_rejected=counts.get('patches_rejected', 0), last_error=self.last_error))
        level, message = self._health(status, period)
        # Patch-apply latency (submit to active) of the swaps the runtime keeps, newest last.
        swaps = runtime.swap_history if runtime is not None else []
        swap_ms = [1e3 * r.submit_to_active_s for r in swaps]
        values = {
            'client_id': self.client_id, 'model_id': self.agent.model_id,
            'active_version': status.active_version if status else 0,
            'verified_version': self.agent.version,
            # What the ground's mirror of this version must hash to (the mirror invariant).
            'verified_digest': (self.agent.state.digest or b'').hex(),
            'unconfirmed_version': self._unconfirmed_version or 0,
            'fps': fps,
            'latency_p50_ms': latency.p50_ms if latency else float('nan'),
            'latency_p99_ms': latency.p99_ms if latency else float('nan'),
            'providers': ','.join(status.providers) if status else '',
            'sampling_rate': self.agent.sampler.rate,
            'update_period': self.agent.sampler.update_period,
            **{k: v for k, v in sorted(counts.items())},
            **{f'patch.{k}': v for k, v in sorted(self.patch_outcomes.items())},
            **{f'snapshot.{k}': v for k, v in sorted(self.snapshot_outcomes.items())},
            'swaps_failed': status.counters.swaps_failed if status else 0,
            'swap_version': swaps[-1].version if swaps else 0,
            'swap_ms_last': swap_ms[-1] if swaps else float('nan'),
            'swap_ms_p50': float(np.percentile(swap_ms, 50)) if swaps else float('nan'),
            'swap_ms_p99': float(np.percentile(swap_ms, 99)) if swaps else float('nan'),
            'last_error': self.last_error,
        }
        self.diagnostics_pub.publish(conv.diagnostic_array(
            [conv.diagnostic_status(f'{NODE_NAME}: {self.client_id}', level, message,
                                    self.client_id, values)], stamp))

    def _health(self, status, period: dict) -> tuple[str, str]:
        bad = sum(v for k, v in period.items() if k.startswith('bad_images.'))
        received = period.get('frames_received', 0)
        if received and bad >= received:
            return 'error', f'every camera image in the last period was refused: {self.last_error}'
        if status is None:
            return 'warn', 'no model yet: waiting for a snapshot from the ground'
        if status.last_swap is not None and status.last_swap.outcome == 'failed':
            return 'error', f'the latest model failed to build: {status.last_swap.error}'
        if period.get('errors', 0):
            return 'warn', f"{period['errors']} errors in the last period: {self.last_error}"
        if self._unconfirmed_version is not None:
            return 'warn', (f'v{self._unconfirmed_version} running, from a snapshot the drone '
                            'did not ask for; no patch from the ground has confirmed it yet')
        if not received:
            return 'warn', f'v{status.active_version} running; no camera frames'
        return 'ok', f'v{status.active_version} running'

    def close(self) -> None:
        """Stop the workers and the model runtime."""
        self._closed = True
        for ready in (self._frame_ready, self._uplink_ready):
            with ready:
                ready.notify_all()
        for worker in self._workers:
            worker.join(timeout=5.0)
        self.agent.close()


def run(node_class, name: str, args=None) -> int:
    """Init rclpy, build and spin a node; a refused parameter exits with status 2."""
    rclpy.init(args=args)
    node = None
    try:
        node = node_class()
        rclpy.spin(node)
    except ParameterError as e:
        print(f'[{name}] refused to start: {e}', file=sys.stderr)
        return 2
    except (KeyboardInterrupt, ExternalShutdownException):
        pass
    finally:
        if node is not None:
            node.close()
            node.destroy_node()
        rclpy.try_shutdown()
    return 0


def main(args=None) -> int:
    """Run the drone node (`ams_drone`)."""
    return run(DroneNode, NODE_NAME, args)


if __name__ == '__main__':
    sys.exit(main())
