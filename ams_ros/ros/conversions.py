"""ams_msgs <-> the engine's dataclasses, field for field; stamps <-> builtin_interfaces/Time.

The engine never sees a ROS message and the nodes never build one by hand: everything that
crosses DDS goes through here.

Payloads survive the trip: a reader returns what the builder was given, because every field
comes back with the type it went with: ``uint8[]`` (an ``array.array`` from rclpy) becomes
``bytes``, ``uint32[]`` shapes become tuples of ints, ``float32[3]`` normalisation (a numpy
array from rclpy) becomes a tuple of floats. Those floats are float32-exact
(``snapshot.build_snapshot`` rounds them), so they are unchanged by the wire.

A message the engine cannot take (wrong type, impossible field) raises ``MessageError`` with
a short ``reason`` code for counting; nothing else escapes for any received message.

Link authentication (ams_ros.ros.link_auth). Every builder takes ``signer=``: the finished
message gets its counter and tag. Every reader takes ``verifier=`` (and ``sender=``, by default
the message's client_id for what drones send and ``GROUND`` for what the ground sends) and
refuses a message it does not accept, reason 'unsigned', 'bad-signature' or 'replayed', before
using any field. The counter and tag live on the message only: no payload carries them.
"""

from __future__ import annotations

import dataclasses
import functools
import math

import numpy as np
from builtin_interfaces.msg import Time

from ams_ros.ros.link_auth import LinkSigner, LinkVerifier
from ams_ros.wire.model_version import PatchPayload
from ams_ros.wire.snapshot import SnapshotPayload
from ams_ros.wire.uplink_batch import UplinkBatch

DIGEST_BYTES = 32  # SHA-256
GROUND = 'ground'  # the sender, for verification, of every ground-to-drone message
MAX_BATCH_FRAMES = 65535  # the frame blob's header counts frames in 16 bits
MAX_SIDE = 65535


class MessageError(ValueError):
    """A message that cannot be converted; ``reason`` is a short code for counting."""

    def __init__(self, reason: str, message: str):
        super().__init__(f'{reason}: {message}')
        self.reason = reason


# -- time ---------------------------------------------------------------------------------------

def stamp_to_seconds(stamp) -> float:
    """Return a builtin_interfaces/Time as float seconds."""
    return int(stamp.sec) + int(stamp.nanosec) * 1e-9


def seconds_to_stamp(seconds: float) -> Time:
    """Return float seconds (>= 0, finite) as a builtin_interfaces/Time, rounded to the ns."""
    seconds = float(seconds)
    if not math.isfinite(seconds) or seconds < 0:
        raise MessageError('bad-stamp', f'a stamp must be finite and >= 0, got {seconds}')
    total_ns = round(seconds * 1e9)
    sec, nanosec = divmod(total_ns, 1_000_000_000)
    if sec >= 2**31:
        raise MessageError('bad-stamp', f'{seconds} s does not fit a builtin_interfaces/Time')
    return Time(sec=int(sec), nanosec=int(nanosec))


def _header(stamp, frame_id: str = ''):
    from std_msgs.msg import Header

    if stamp is None:
        stamp = Time()
    elif not isinstance(stamp, Time):
        stamp = seconds_to_stamp(stamp)
    return Header(stamp=stamp, frame_id=frame_id)


# -- helpers ------------------------------------------------------------------------------------

def _check_type(msg, type_name: str) -> None:
    if type(msg).__name__ != type_name:
        raise MessageError('wrong-type', f'expected ams_msgs/{type_name}, got '
                                         f'{type(msg).__module__}.{type(msg).__name__}')


_UINT_BITS = {'uint8': 8, 'uint16': 16, 'uint32': 32, 'uint64': 64}


def _field_problem(kind: str, value) -> str:
    """Return why value cannot go into a field of this rosidl type, or ''."""
    if kind in _UINT_BITS:
        if not isinstance(value, int) or isinstance(value, bool):
            return 'is not an integer'
        if not 0 <= value < 2 ** _UINT_BITS[kind]:
            return f'is outside {kind}'
    elif kind == 'string':
        if not isinstance(value, str):
            return 'is not a string'
    elif kind == 'sequence<uint8>':
        if not isinstance(value, (bytes, bytearray)):
            return 'is not bytes'
    elif kind in ('float', 'double'):
        if not isinstance(value, float):
            return 'is not a float'
    return ''


def _fill(msg, fields: dict) -> None:
    """Assign fields after checking them against the message's field types.

    rclpy checks nothing on assignment by default (ROS_PYTHON_CHECK_FIELDS), so a bad value
    would only fail at publish time, in C, without saying which field was wrong.
    """
    types = type(msg).get_fields_and_field_types()
    for name, value in fields.items():
        problem = _field_problem(types[name], value)
        try:
            if not problem:
                setattr(msg, name, value)
        except (AssertionError, TypeError, ValueError, OverflowError) as e:
            problem = str(e)
        if problem:
            raise MessageError('bad-field', f'{type(msg).__name__}.{name} = {value!r:.60}: '
                                            f'{problem}')


def _as_bytes(value) -> bytes:
    if isinstance(value, bytes):
        return value
    try:
        return memoryview(value).tobytes()
    except TypeError as e:
        raise MessageError('bad-field', f'expected bytes, got {type(value).__name__}') from e


def _building(function):
    """Report a payload that cannot become a message as MessageError, whatever went wrong."""
    @functools.wraps(function)
    def build(*args, **kwargs):
        try:
            return function(*args, **kwargs)
        except MessageError:
            raise
        except (TypeError, ValueError, OverflowError) as e:
            raise MessageError('bad-field', f'{function.__name__}: {e}') from e
    return build


def _digest(value, what: str) -> bytes:
    digest = _as_bytes(value)
    if len(digest) != DIGEST_BYTES:
        raise MessageError('bad-digest', f'{what} digest has {len(digest)} bytes, '
                                         f'expected {DIGEST_BYTES}')
    return digest


def _positive_finite(value: float, name: str) -> float:
    value = float(value)
    if not (math.isfinite(value) and value > 0):
        raise MessageError('bad-field', f'{name} must be positive and finite, got {value}')
    return value


def _non_negative_finite(value: float, name: str) -> float:
    value = float(value)
    if not (math.isfinite(value) and value >= 0):
        raise MessageError('bad-field', f'{name} must be finite and >= 0, got {value}')
    return value


def _check_client(client_id: str, what: str) -> str:
    if not client_id:
        raise MessageError('no-client-id', f'{what} has an empty client_id')
    return client_id


def _signed(msg, signer: LinkSigner | None):
    return msg if signer is None else signer.sign(msg)


def _authenticate(msg, verifier: LinkVerifier | None, sender: str) -> None:
    if verifier is None:
        return
    reason = verifier.verify(msg, sender)
    if reason:
        raise MessageError(reason, f'{type(msg).__name__} from {sender!r}, counter '
                                   f'{msg.auth_counter}')


# -- ModelPatch ---------------------------------------------------------------------------------

@_building
def patch_to_msg(payload: PatchPayload, stamp=None, *, signer: LinkSigner | None = None):
    """Build an ams_msgs/ModelPatch from a PatchPayload."""
    from ams_msgs.msg import ModelPatch

    msg = ModelPatch(header=_header(stamp))
    _fill(msg, {
        'client_id': payload.client_id, 'model_id': payload.model_id,
        'base_version': int(payload.base_version), 'version': int(payload.version),
        'num_params': int(payload.num_params), 'index_codec': payload.index_codec,
        'index_data': _as_bytes(payload.index_data), 'value_codec': payload.value_codec,
        'value_data': _as_bytes(payload.value_data), 'digest': _as_bytes(payload.digest)})
    return _signed(msg, signer)


def patch_from_msg(msg, *, verifier: LinkVerifier | None = None,
                   sender: str | None = None) -> PatchPayload:
    """Return the PatchPayload an ams_msgs/ModelPatch carries."""
    _check_type(msg, 'ModelPatch')
    _authenticate(msg, verifier, sender or GROUND)
    return PatchPayload(
        client_id=_check_client(msg.client_id, 'ModelPatch'), model_id=msg.model_id,
        base_version=int(msg.base_version), version=int(msg.version),
        num_params=int(msg.num_params), index_codec=msg.index_codec,
        index_data=_as_bytes(msg.index_data), value_codec=msg.value_codec,
        value_data=_as_bytes(msg.value_data), digest=_digest(msg.digest, 'patch'))


# -- ModelSnapshot ------------------------------------------------------------------------------

@_building
def snapshot_to_msg(payload: SnapshotPayload, stamp=None, *, signer: LinkSigner | None = None):
    """Build an ams_msgs/ModelSnapshot from a SnapshotPayload."""
    from ams_msgs.msg import ModelSnapshot, ParameterSpec

    specs = []
    for name, shape, offset in payload.parameters:
        spec = ParameterSpec()
        _fill(spec, {'name': name, 'offset': int(offset)})
        shape = [int(d) for d in shape]
        if not all(0 <= d < 2**32 for d in shape):
            raise MessageError('bad-field', f'ParameterSpec {name}: shape {shape}')
        spec.shape = shape
        specs.append(spec)
    msg = ModelSnapshot(header=_header(stamp))
    _fill(msg, {
        'client_id': payload.client_id, 'model_id': payload.model_id,
        'version': int(payload.version), 'format': payload.format,
        'model_data': _as_bytes(payload.model_data), 'parameters': specs,
        'class_names': list(payload.class_names), 'input_height': int(payload.input_height),
        'input_width': int(payload.input_width),
        'mean': np.asarray(payload.mean, np.float32), 'std': np.asarray(payload.std, np.float32),
        'digest': _as_bytes(payload.digest)})
    return _signed(msg, signer)


def snapshot_from_msg(msg, *, verifier: LinkVerifier | None = None,
                      sender: str | None = None) -> SnapshotPayload:
    """Return the SnapshotPayload an ams_msgs/ModelSnapshot carries."""
    _check_type(msg, 'ModelSnapshot')
    _authenticate(msg, verifier, sender or GROUND)
    if not (msg.input_height > 0 and msg.input_width > 0):
        raise MessageError('bad-field', f'input size {msg.input_width}x{msg.input_height}')
    if len(msg.mean) != 3 or len(msg.std) != 3:
        raise MessageError('bad-field', 'mean and std need three values each')
    return SnapshotPayload(
        client_id=_check_client(msg.client_id, 'ModelSnapshot'), model_id=msg.model_id,
        version=int(msg.version), format=msg.format, model_data=_as_bytes(msg.model_data),
        parameters=tuple((p.name, tuple(int(d) for d in p.shape), int(p.offset))
                         for p in msg.parameters),
        class_names=tuple(msg.class_names), input_height=int(msg.input_height),
        input_width=int(msg.input_width), mean=tuple(float(v) for v in msg.mean),
        std=tuple(float(v) for v in msg.std), digest=_digest(msg.digest, 'snapshot'))


# -- FrameBatch ---------------------------------------------------------------------------------

@_building
def batch_to_msg(batch: UplinkBatch, frame_id: str = '', source_encoding: str = 'rgb8', *,
                 signer: LinkSigner | None = None):
    """Build an ams_msgs/FrameBatch; its header stamp is the last frame's capture stamp."""
    from ams_msgs.msg import FrameBatch

    if not batch.stamps:
        raise MessageError('bad-field', 'a frame batch needs at least one stamp')
    msg = FrameBatch(header=_header(batch.stamps[-1], frame_id))
    _fill(msg, {
        'client_id': batch.client_id, 'seq': int(batch.seq), 'codec': batch.codec,
        'width': int(batch.width), 'height': int(batch.height),
        'source_encoding': source_encoding,
        'stamps': [seconds_to_stamp(s) for s in batch.stamps],
        'data': _as_bytes(batch.data), 'sampling_rate': float(batch.sampling_rate),
        'update_period': float(batch.update_period)})
    return _signed(msg, signer)


def batch_from_msg(msg, *, verifier: LinkVerifier | None = None,
                   sender: str | None = None) -> UplinkBatch:
    """Return the UplinkBatch an ams_msgs/FrameBatch carries, after checking its fields."""
    _check_type(msg, 'FrameBatch')
    _authenticate(msg, verifier, sender or msg.client_id)
    if not msg.stamps or len(msg.stamps) > MAX_BATCH_FRAMES:
        raise MessageError('bad-field', f'{len(msg.stamps)} stamps: a batch holds 1 to '
                                        f'{MAX_BATCH_FRAMES} frames')
    if not (1 <= msg.width <= MAX_SIDE and 1 <= msg.height <= MAX_SIDE):
        raise MessageError('bad-field', f'frame size {msg.width}x{msg.height}')
    return UplinkBatch(
        client_id=_check_client(msg.client_id, 'FrameBatch'), seq=int(msg.seq),
        codec=msg.codec, width=int(msg.width), height=int(msg.height),
        stamps=tuple(stamp_to_seconds(s) for s in msg.stamps), data=_as_bytes(msg.data),
        sampling_rate=_positive_finite(msg.sampling_rate, 'sampling_rate'),
        update_period=_positive_finite(msg.update_period, 'update_period'))


# -- small messages -----------------------------------------------------------------------------

@_building
def sampling_control(client_id: str, sampling_rate: float, update_period: float, stamp=None,
                     *, signer: LinkSigner | None = None):
    """Build an ams_msgs/SamplingControl."""
    from ams_msgs.msg import SamplingControl

    msg = SamplingControl(header=_header(stamp))
    _fill(msg, {'client_id': client_id,
                'sampling_rate': _positive_finite(sampling_rate, 'sampling_rate'),
                'update_period': _positive_finite(update_period, 'update_period')})
    return _signed(msg, signer)


def sampling_from_msg(msg, *, verifier: LinkVerifier | None = None,
                      sender: str | None = None) -> tuple[str, float, float]:
    """Return (client_id, sampling_rate, update_period) of an ams_msgs/SamplingControl."""
    _check_type(msg, 'SamplingControl')
    _authenticate(msg, verifier, sender or GROUND)
    return (_check_client(msg.client_id, 'SamplingControl'),
            _positive_finite(msg.sampling_rate, 'sampling_rate'),
            _positive_finite(msg.update_period, 'update_period'))


@_building
def snapshot_request(client_id: str, model_id: str, active_version: int, reason: str,
                     stamp=None, *, signer: LinkSigner | None = None):
    """Build an ams_msgs/SnapshotRequest."""
    from ams_msgs.msg import SnapshotRequest

    msg = SnapshotRequest(header=_header(stamp))
    _fill(msg, {'client_id': client_id, 'model_id': model_id,
                'active_version': int(active_version), 'reason': reason})
    return _signed(msg, signer)


@dataclasses.dataclass(frozen=True)
class SnapshotRequestInfo:
    client_id: str
    model_id: str
    active_version: int
    reason: str


def request_from_msg(msg, *, verifier: LinkVerifier | None = None,
                     sender: str | None = None) -> SnapshotRequestInfo:
    """Return what an ams_msgs/SnapshotRequest asks for."""
    _check_type(msg, 'SnapshotRequest')
    _authenticate(msg, verifier, sender or msg.client_id)
    return SnapshotRequestInfo(
        client_id=_check_client(msg.client_id, 'SnapshotRequest'), model_id=msg.model_id,
        active_version=int(msg.active_version), reason=msg.reason)


# -- EdgeStatus ---------------------------------------------------------------------------------

@_building
def edge_status(stamp=None, *, signer: LinkSigner | None = None, **fields):
    """Build an ams_msgs/EdgeStatus from keyword fields (names as in the message).

    Non-finite floats become 0; active_digest is b'' when no model runs.
    """
    from ams_msgs.msg import EdgeStatus

    msg = EdgeStatus(header=_header(stamp))
    clean = {}
    for name, value in fields.items():
        if isinstance(value, (float, np.floating)):
            value = float(value) if math.isfinite(value) else 0.0
        elif isinstance(value, (int, np.integer)) and not isinstance(value, bool):
            value = int(value)
        clean[name] = value
    _fill(msg, clean)
    return _signed(msg, signer)


@dataclasses.dataclass(frozen=True)
class EdgeStatusInfo:
    client_id: str
    model_id: str
    active_version: int
    active_digest: bytes  # b'' when no model runs, else DIGEST_BYTES
    inference_fps: float
    latency_p50_ms: float
    latency_p99_ms: float
    frames_received: int
    frames_inferred: int
    frames_sampled: int
    batches_sent: int
    bytes_up: int
    bytes_down: int
    patches_applied: int
    patches_rejected: int
    sampling_rate: float
    update_period: float
    last_error: str


_STATUS_COUNTERS = ('frames_received', 'frames_inferred', 'frames_sampled', 'batches_sent',
                    'bytes_up', 'bytes_down', 'patches_applied', 'patches_rejected')


def status_from_msg(msg, *, verifier: LinkVerifier | None = None,
                    sender: str | None = None) -> EdgeStatusInfo:
    """Return what an ams_msgs/EdgeStatus reports, after checking its fields."""
    _check_type(msg, 'EdgeStatus')
    _authenticate(msg, verifier, sender or msg.client_id)
    digest = _as_bytes(msg.active_digest)
    return EdgeStatusInfo(
        client_id=_check_client(msg.client_id, 'EdgeStatus'), model_id=msg.model_id,
        active_version=int(msg.active_version),
        active_digest=_digest(digest, 'active') if digest else b'',
        inference_fps=_non_negative_finite(msg.inference_fps, 'inference_fps'),
        latency_p50_ms=_non_negative_finite(msg.latency_p50_ms, 'latency_p50_ms'),
        latency_p99_ms=_non_negative_finite(msg.latency_p99_ms, 'latency_p99_ms'),
        **{name: int(getattr(msg, name)) for name in _STATUS_COUNTERS},
        sampling_rate=_positive_finite(msg.sampling_rate, 'sampling_rate'),
        update_period=_positive_finite(msg.update_period, 'update_period'),
        last_error=msg.last_error)


# -- diagnostics --------------------------------------------------------------------------------

def diagnostic_status(name: str, level: str, message: str, hardware_id: str = '',
                      values: dict | None = None):
    """Build a diagnostic_msgs/DiagnosticStatus; level is 'ok', 'warn', 'error' or 'stale'."""
    from diagnostic_msgs.msg import DiagnosticStatus, KeyValue

    levels = {'ok': DiagnosticStatus.OK, 'warn': DiagnosticStatus.WARN,
              'error': DiagnosticStatus.ERROR, 'stale': DiagnosticStatus.STALE}
    return DiagnosticStatus(level=levels[level], name=name, message=message,
                            hardware_id=hardware_id,
                            values=[KeyValue(key=str(k), value=_diagnostic_text(v))
                                    for k, v in (values or {}).items()])


def diagnostic_array(statuses, stamp=None):
    """Build a diagnostic_msgs/DiagnosticArray."""
    from diagnostic_msgs.msg import DiagnosticArray

    return DiagnosticArray(header=_header(stamp), status=list(statuses))


def _diagnostic_text(value) -> str:
    if isinstance(value, (float, np.floating)):
        return 'nan' if not math.isfinite(value) else f'{float(value):.4g}'
    return str(value)
