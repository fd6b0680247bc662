"""The drone node's parameters (with defaults and ranges) and the engine config they make."""

from __future__ import annotations

from pathlib import Path

from ams_ros.drone.agent import DroneAgent, DroneConfig
from ams_ros.drone.edge_runtime import DEFAULT_PROVIDER_ORDER, RuntimeConfig
from ams_ros.ros.node_parameters import Param, ParameterError, list_type
from ams_ros.ros.qos import CAMERA_QOS
from ams_ros.wire.frame_codec import CODECS, RATE_CONTROLS, X264_PRESETS, CodecSettings
from ams_ros.wire.model_version import APPLIED

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


def default_client_id(namespace: str) -> str:
    """Return the client id a drone in this namespace uses by default ('drone' at the root)."""
    return namespace.strip('/') or 'drone'


def codec_settings(p: dict) -> CodecSettings:
    """Return the uplink encoder settings of the uplink.* parameters (ValueError if invalid)."""
    return CodecSettings(codec=p['uplink.codec'], bitrate_kbps=p['uplink.bitrate_kbps'],
                         rate_control=p['uplink.rate_control'], preset=p['uplink.preset'],
                         threads=p['uplink.threads'], jpeg_quality=p['uplink.jpeg_quality'])


def drone_config(p: dict, client_id: str) -> DroneConfig:
    """Return the DroneAgent's config; ParameterError when the parameters disagree."""
    if bool(p['uplink.height']) != bool(p['uplink.width']):
        raise ParameterError('uplink.height and uplink.width must both be 0 or both be set')
    runtime = RuntimeConfig(
        providers=tuple(p['ort.providers']) or DEFAULT_PROVIDER_ORDER,
        use_tensorrt=p['ort.use_tensorrt'], intra_op_threads=p['ort.threads'])
    try:
        return DroneConfig(
            client_id=client_id, uplink=codec_settings(p), runtime=runtime,
            uplink_size=(p['uplink.height'], p['uplink.width']) if p['uplink.height'] else None,
            max_pending_patches=p['max_pending_patches'], sampling_rate=p['sampling_rate'],
            update_period=p['update_period'],
            sampling_rate_min=p['limits.sampling_rate_min'],
            sampling_rate_max=p['limits.sampling_rate_max'],
            update_period_min=p['limits.update_period_min'],
            update_period_max=p['limits.update_period_max'])
    except ValueError as e:
        raise ParameterError(str(e)) from e


def check_uplink(current: dict, changes) -> str:
    """Return why parameter `changes` would make the uplink settings invalid ('' if not)."""
    if not any(x.name.startswith('uplink.') for x in changes):
        return ''
    try:
        codec_settings({**current, **{x.name: x.value for x in changes}})
    except ValueError as e:
        return str(e)
    return ''


def start_from_file(agent: DroneAgent, model_path: str, version: int) -> None:
    """Load `model_path` (an exported student) into the agent; ParameterError if unusable."""
    path = Path(model_path).expanduser()
    try:
        outcome = agent.load_model_file(path.read_bytes(), version)
    except Exception as e:  # noqa: BLE001 - a file that is not a usable model
        raise ParameterError(f"model_path '{path}': not a usable exported student "
                             f'({type(e).__name__}: {e})') from e
    if outcome.kind != APPLIED:
        raise ParameterError(f"model_path '{path}': {outcome.kind} ({outcome.reason})")
