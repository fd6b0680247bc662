"""A hostile publisher on the drone's DDS domain: forged, malformed and abusive messages.

Run as a separate process beside the real nodes::

    python hostile_publisher.py --namespace /drone1 [--key-file F]

Like rogue_publisher.py it first listens: it reads the ground's latched snapshot on
``<ns>/ams/snapshot`` and the drone's status on ``<ns>/ams/status`` until the drone runs that
snapshot's model. It keeps listening (to snapshots, patches, status and frame batches) so every
probe is forged against what the drone runs at that moment: its client id, the ground's model
id, its active version and vector, its clock.

Protocol (stdout, one line each, flushed):

- ``ready v<version>`` once its publishers on ``<ns>`` have each matched a subscription of the
  real nodes; ``<version>`` is the snapshot version the drone runs.
- then it reads probe names (PROBES) from stdin, one per line. For each it publishes the
  probe's message(s), spins a moment so they go out, and prints
  ``sent <probe> <n messages>``; a probe on another namespace (which the ground subscribes to
  only after discovering it) appends ``matched`` or ``unmatched``: whether a subscription
  matched within ``--match-timeout`` before the messages went out.
- ``unknown <name>`` or ``error <probe> <what>`` instead of ``sent`` for a bad line.
- it exits 0 when stdin closes.

With ``--key-file`` it signs every message it forges with a key that is not the file's (what a
forger without the shared key can do; ``link_auth.LinkSigner``); without it, messages carry a
counter and no tag, like an unkeyed node's. ``replay-status`` re-publishes a genuine status as
recorded (a replay: its genuine tag and counter).

The forging is pure functions (``build_probe``: probe name and a ``Wire``, what was read off the
wire, to a ``Probe``: messages and their pacing) that tests can call without DDS; ``main`` is the
ROS process around them.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import hashlib
import math
import os
import select
import sys
import time
import zlib
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from ams_ros.model.manifest import FLAT_DTYPE, ParameterManifest, vector_digest
from ams_ros.model.onnx_params import MANIFEST_KEY, InitializerWriter
from ams_ros.ros import conversions as conv
from ams_ros.ros.link_auth import LinkSigner
from ams_ros.wire.frame_codec import CodecSettings, encode_frames
from ams_ros.wire.model_version import GroundMirror, PatchPayload
from ams_ros.wire.patch_codec import PatchError, apply_patch
from ams_ros.wire.snapshot import SnapshotPayload, open_snapshot
from ams_ros.wire.uplink_batch import UplinkBatch

TINY_VERSION = 2**62
TINY_CLASS = 3            # the class id the tiny model paints every pixel with
HUGE = 3e38               # finite in float32, but no trained weight is anywhere near it
ZEROED = 4096             # the forged next snapshot zeroes this many leading values
ALTERED = 8               # values set to NaN/inf or HUGE, spread over the vector
FUTURE_STAMP = 1e9        # s: 2001 on a wall clock, ~31 years on a sim clock
FUTURE_SEQ = 1_000_000    # no drone's next batch number is knowable; this one is plausible
MAX_SEQ = 2**64 - 1
MALFORMED_PATCHES = 20
MALFORMED_BYTES = 300     # per patch, index + value data + digest + names
GHOSTS = 40
SNAPSHOT_REQUESTS = 30
REQUESTS_WITHIN = 0.8     # s: the requests' span, inside the one second asked for
REPEAT_PERIOD, REPEAT_FOR = 0.2, 3.0   # foreign-namespace probes: every 0.2 s for 3 s
BURST_INTERVAL = 0.005    # s between the messages of a burst: a burst, but none overwritten
# s spun after a probe so its messages go out (on loopback they arrive within milliseconds;
# waiting for acknowledgements instead takes Fast DDS's heartbeat period, ~2.5 s, per message)
SETTLE = 0.25
GARBAGE_FRAME_BYTES = 4000
EVIL_FRAMES_NS, EVIL_STATUS_NS = '/evil1', '/evil2'
LATCHED_TOPICS = ('ams/snapshot', 'ams/sampling')   # transient-local, like the ground's
# (index codec, value codec) of the malformed patches: every stage of the decoder gets garbage.
MALFORMED_CODECS = (('gaps+zstd', 'fp16-delta+zstd'), ('bitmask+none', 'fp16+none'),
                    ('gaps+none', 'q8-delta+zstd'), ('bitmask+gzip', 'fp32+shuffle+zstd'))
REQUEST_REASONS = ('digest-mismatch', 'gap', 'model-id', 'corrupt-data', 'startup')
# (low, high, default) of the sampling rate (frames/s) and update period (s) forgeries carry.
PLAUSIBLE_RATES = ((0.05, 30.0, 1.0), (1.0, 60.0, 10.0))


# -- what the forger knows ------------------------------------------------------------------------

@dataclass(frozen=True)
class Wire:
    """What the forger has read off the wire when it builds a probe."""

    snapshot: SnapshotPayload       # the ground's latest genuine snapshot for the drone, no tag
    manifest: ParameterManifest     # its parameter manifest
    active_version: int             # the version the drone reports running
    active_vector: np.ndarray       # the vector it runs, as far as the forger can tell
    status: object                  # the drone's latest genuine EdgeStatus
    recorded_status: object         # a genuine EdgeStatus recorded earlier (for the replay)
    drone_time: float               # the drone's clock now (s), from its status stamps
    frame_time: float               # its cameras' clock now (s), from its batches' stamps
    batch: object | None            # its latest genuine FrameBatch, if one was seen
    sampling_rate: float            # the uplink's rates in force, as the drone reports them
    update_period: float

    @property
    def client_id(self) -> str:
        return self.snapshot.client_id

    @property
    def model_id(self) -> str:
        return self.snapshot.model_id

    @classmethod
    def observe(cls, snapshot_msg, status_msg, *, recorded_status=None, batch_msg=None,
                status_age: float = 0.0, batch_age: float = 0.0, tracked=None) -> Wire:
        """Return what the messages read so far tell.

        ``*_age``: seconds since each message arrived (the clocks ran on meanwhile);
        ``tracked``: (version, vector) of the model followed through genuine snapshots and
        patches, used when its version is the one the drone reports.
        """
        snapshot = conv.snapshot_from_msg(snapshot_msg)
        opened = open_snapshot(snapshot)
        active = int(status_msg.active_version)
        vector = opened.vector
        if tracked is not None and tracked[0] == active and tracked[1] is not None:
            vector = tracked[1]
        drone_time = conv.stamp_to_seconds(status_msg.header.stamp) + status_age
        frame_time = drone_time
        rates = (status_msg.sampling_rate, status_msg.update_period)
        if batch_msg is not None:
            frame_time = conv.stamp_to_seconds(batch_msg.stamps[-1]) + batch_age
            rates = (batch_msg.sampling_rate, batch_msg.update_period)
        # Rates a hostile sampling control may have put in force are not copied.
        rate, period = (float(v) if math.isfinite(v) and low <= v <= high else default
                        for v, (low, high, default) in zip(rates, PLAUSIBLE_RATES, strict=True))
        return cls(snapshot=snapshot, manifest=opened.manifest, active_version=active,
                   active_vector=vector, status=status_msg,
                   recorded_status=recorded_status if recorded_status is not None
                   else status_msg, drone_time=drone_time, frame_time=frame_time,
                   batch=batch_msg, sampling_rate=rate, update_period=period)


@dataclass(frozen=True)
class Probe:
    """Messages to publish, in order: (topic, message); topic 'ams/...' is under the namespace."""

    messages: list[tuple[str, object]]
    interval: float = 0.0   # seconds between two messages


def forger_key(shared_key: bytes | None) -> bytes | None:
    """Return a key of the right length that is not the shared one (None without one)."""
    if shared_key is None:
        return None
    forged = hashlib.sha256(b'ams hostile forger\0' + shared_key).digest()
    assert forged != shared_key
    return forged


def _rng(name: str) -> np.random.Generator:
    """Return a generator seeded by the probe's name: the same probe forges the same bytes."""
    return np.random.default_rng(zlib.crc32(name.encode()))


def _spread(size: int, count: int) -> np.ndarray:
    """Return count indices spread over a vector of size values."""
    return np.unique(np.linspace(0, size - 1, count).astype(np.int64))


# -- snapshots ------------------------------------------------------------------------------------

def _zero_head(vector: np.ndarray) -> None:
    vector[:ZEROED] = 0.0


def _non_finite(vector: np.ndarray) -> None:
    _zero_head(vector)
    vector[_spread(vector.size, ALTERED)] = np.resize([np.nan, np.inf, -np.inf], ALTERED)


def _huge(vector: np.ndarray) -> None:
    _zero_head(vector)
    vector[_spread(vector.size, ALTERED)] = HUGE


def altered_snapshot(wire: Wire, signer: LinkSigner | None, *,
                     alter: Callable[[np.ndarray], None]) -> Probe:
    """Forge the genuine model with its vector altered in place by alter, at the next version.

    Same interface, manifest and model id, a digest that matches: without the key it is
    indistinguishable from the ground's next snapshot (the ground must resync the drone).
    forged-snapshot-next zeroes values; nonfinite-snapshot adds NaN/inf (the drone must not
    run it); huge-snapshot adds 3e38 (finite, but no trained weight is).
    """
    vector = np.array(wire.active_vector, FLAT_DTYPE)
    alter(vector)
    writer = InitializerWriter(bytes(wire.snapshot.model_data), wire.manifest)
    payload = dataclasses.replace(wire.snapshot, version=wire.active_version + 1,
                                  model_data=writer.write(vector),
                                  digest=vector_digest(vector))
    return Probe([('ams/snapshot', conv.snapshot_to_msg(payload, wire.drone_time,
                                                        signer=signer))])


def tiny_model(genuine_model: bytes, parameter: str, height: int, width: int,
               class_id: int = TINY_CLASS) -> bytes:
    """Return a minimal ONNX model with the genuine model's interface: every pixel is class_id.

    One float32 initializer (named parameter, shape (1,), value class_id) is broadcast to the
    input's [1, H, W] and cast to the genuine 'labels' type. The graph input keeps the genuine
    name, type and size; the metadata is the genuine's, its manifest replaced by this one's.
    """
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    genuine = onnx.load_from_string(genuine_model)
    initializers = {init.name for init in genuine.graph.initializer}
    image = next(i.name for i in genuine.graph.input if i.name not in initializers)
    labels_type = next((o.type.tensor_type.elem_type for o in genuine.graph.output
                        if o.name == 'labels'), TensorProto.UINT8)

    def ints(name, values):
        return helper.make_node('Constant', [], [name], value=numpy_helper.from_array(
            np.array(values, np.int64), name))

    graph = helper.make_graph(
        [helper.make_node('Shape', [image], ['shape']), ints('starts', [0]), ints('ends', [3]),
         helper.make_node('Slice', ['shape', 'starts', 'ends'], ['mask_shape']),
         helper.make_node('Expand', [parameter, 'mask_shape'], ['classes']),
         helper.make_node('Cast', ['classes'], ['labels'], to=labels_type)],
        'ams_tiny',
        [helper.make_tensor_value_info(image, TensorProto.UINT8, [1, height, width, 3])],
        [helper.make_tensor_value_info('labels', labels_type, [1, height, width])],
        [numpy_helper.from_array(np.array([class_id], FLAT_DTYPE), parameter)])
    model = helper.make_model(graph, opset_imports=list(genuine.opset_import),
                              ir_version=genuine.ir_version)
    manifest = ParameterManifest.from_shapes([(parameter, (1,))])
    metadata = {p.key: p.value for p in genuine.metadata_props} | {
        MANIFEST_KEY: manifest.to_json()}
    helper.set_model_props(model, metadata)
    return model.SerializeToString()


def forged_snapshot_tiny(wire: Wire, signer: LinkSigner | None) -> Probe:
    """Forge a consistent snapshot of a different, one-parameter model at version 2**62.

    Right client and model id, class names and input size; its manifest, initializer and
    digest agree. Without the key the drone cannot tell it from the ground's (it paints every
    pixel class 3); with the key it must be refused.
    """
    s = wire.snapshot
    parameter = wire.manifest.entries[0].name
    vector = np.array([TINY_CLASS], FLAT_DTYPE)
    payload = dataclasses.replace(
        s, version=TINY_VERSION, digest=vector_digest(vector), parameters=((parameter, (1,), 0),),
        model_data=tiny_model(bytes(s.model_data), parameter, s.input_height, s.input_width))
    return Probe([('ams/snapshot', conv.snapshot_to_msg(payload, wire.drone_time,
                                                        signer=signer))])


# -- patches --------------------------------------------------------------------------------------

def huge_patch(wire: Wire, signer: LinkSigner | None) -> Probe:
    """Forge a patch onto the active version setting a few values to 3e38 (digest consistent).

    It decodes, its values are finite and its digest matches the result: only a check of the
    values' range (or the key) stops it.
    """
    mirror = GroundMirror(wire.client_id, wire.model_id, wire.active_version,
                          np.array(wire.active_vector, FLAT_DTYPE))
    indices = _spread(wire.active_vector.size, ALTERED)
    payload = mirror.make_patch(indices, np.full(indices.size, HUGE, FLAT_DTYPE),
                                value_mode='fp32')
    return Probe([('ams/patch', conv.patch_to_msg(payload, wire.drone_time, signer=signer))])


def malformed_patches(wire: Wire, signer: LinkSigner | None) -> Probe:
    """Forge 20 patches of ~300 bytes of garbage for the active version (right client, model).

    Each one would make the drone ask for a snapshot: a flood of them must not become a flood
    of snapshot requests (or of snapshots).
    """
    rng = _rng('malformed-patches')
    messages = []
    for n in range(MALFORMED_PATCHES):
        index_codec, value_codec = MALFORMED_CODECS[n % len(MALFORMED_CODECS)]
        index_bytes = int(rng.integers(60, 140))
        value_bytes = MALFORMED_BYTES - 32 - index_bytes - len(index_codec + value_codec)
        payload = PatchPayload(
            client_id=wire.client_id, model_id=wire.model_id,
            base_version=wire.active_version, version=wire.active_version + 1,
            num_params=int(wire.active_vector.size), index_codec=index_codec,
            index_data=rng.bytes(index_bytes), value_codec=value_codec,
            value_data=rng.bytes(value_bytes), digest=rng.bytes(32))
        messages.append(('ams/patch', conv.patch_to_msg(payload, wire.drone_time,
                                                        signer=signer)))
    return Probe(messages, BURST_INTERVAL)


# -- frame batches --------------------------------------------------------------------------------

def plausible_frames(count: int, height: int, width: int, seed: int = 0) -> np.ndarray:
    """Return count RGB uint8 frames of blocky, smooth content (cheap, compresses like video)."""
    rng = np.random.default_rng(seed)
    blocks = rng.integers(0, 256, (count, -(-height // 8), -(-width // 8), 3), np.uint8)
    return blocks.repeat(8, axis=1).repeat(8, axis=2)[:, :height, :width]


def _batch_msg(wire: Wire, signer: LinkSigner | None, *, stamps, seq: int, data: bytes,
               client_id: str | None = None, like=None):
    """Return a FrameBatch with the drone's (or like's) codec, size, encoding and rates."""
    s = wire.snapshot
    fields = dict(codec='h264', width=s.input_width, height=s.input_height)
    frame_id, encoding = '', 'rgb8'
    if like is not None:
        fields = dict(codec=like.codec, width=int(like.width), height=int(like.height))
        frame_id, encoding = like.header.frame_id, like.source_encoding
    batch = UplinkBatch(client_id=client_id or wire.client_id, seq=seq, stamps=tuple(stamps),
                        data=data, sampling_rate=wire.sampling_rate,
                        update_period=wire.update_period, **fields)
    return conv.batch_to_msg(batch, frame_id, encoding, signer=signer)


def _two_stamps(wire: Wire, end: float) -> tuple[float, float]:
    """Return the stamps of two frames sampled at the drone's rate, the last at end (>= 0)."""
    gap = 1.0 / wire.sampling_rate
    end = max(end, gap)
    return end - gap, end


def _h264_pair(wire: Wire) -> bytes:
    """Return two plausible frames at the model's input size, H.264 encoded like the drone's."""
    frames = plausible_frames(2, wire.snapshot.input_height, wire.snapshot.input_width)
    return encode_frames(frames, CodecSettings(codec='h264'))


def future_frames(wire: Wire, signer: LinkSigner | None) -> Probe:
    """Forge a valid batch of two H.264 frames stamped 1e9 s: the ground's clock must hold.

    Numbered just past the drone's latest batch when one was seen, so that it passes the
    sequence check and reaches the stamp guard.
    """
    stamps = _two_stamps(wire, FUTURE_STAMP)
    seq = int(wire.batch.seq) + 2 if wire.batch is not None else FUTURE_SEQ
    return Probe([('ams/frames', _batch_msg(wire, signer, stamps=stamps, seq=seq,
                                            data=_h264_pair(wire)))])


def max_seq_frames(wire: Wire, signer: LinkSigner | None) -> Probe:
    """Forge a batch like the drone's (its latest one's data, stamps now) numbered 2**64 - 1.

    Sequence arithmetic on it (the next number, the gap to it) must not overflow or make
    later genuine batches look like a gap or a replay.
    """
    if wire.batch is not None:
        shift = wire.frame_time - conv.stamp_to_seconds(wire.batch.stamps[-1])
        stamps = [conv.stamp_to_seconds(s) + shift for s in wire.batch.stamps]
        msg = _batch_msg(wire, signer, stamps=stamps, seq=MAX_SEQ,
                         data=bytes(wire.batch.data), like=wire.batch)
    else:
        stamps = _two_stamps(wire, wire.frame_time)
        msg = _batch_msg(wire, signer, stamps=stamps, seq=MAX_SEQ, data=_h264_pair(wire))
    return Probe([('ams/frames', msg)])


def garbage_frames_new_ns(wire: Wire, signer: LinkSigner | None) -> Probe:
    """Forge batches of random bytes from a new drone 'evil1', every 0.2 s for 3 s.

    The ground discovers /evil1 and must refuse the data without failing or stalling.
    """
    rng = _rng('garbage-frames-new-ns')
    client = EVIL_FRAMES_NS.strip('/')
    count = round(REPEAT_FOR / REPEAT_PERIOD)
    messages = []
    for n in range(count):
        end = wire.frame_time + n * REPEAT_PERIOD
        messages.append((f'{EVIL_FRAMES_NS}/ams/frames', _batch_msg(
            wire, signer, stamps=_two_stamps(wire, end), seq=n + 1,
            data=rng.bytes(GARBAGE_FRAME_BYTES), client_id=client)))
    return Probe(messages, REPEAT_PERIOD)


# -- sampling control -----------------------------------------------------------------------------

def sampling(wire: Wire, signer: LinkSigner | None, *, rate: float, period: float) -> Probe:
    """Forge a latched SamplingControl for the drone with an absurd rate or period.

    sampling-huge-rate (1e9 frames/s), sampling-tiny-rate (1e-30: a sampler dividing by it
    waits forever), sampling-huge-period (3.4e38 s): the drone must clamp or refuse them.
    """
    return Probe([('ams/sampling', conv.sampling_control(wire.client_id, rate, period,
                                                         wire.drone_time, signer=signer))])


# -- status and requests --------------------------------------------------------------------------

_UNSIGNED_FIELDS = ('header', 'auth_counter', 'auth_tag')


def _status_msg(wire: Wire, signer: LinkSigner | None, stamp: float, **changes):
    """Return the drone's latest status with changes, restamped and signed anew."""
    fields = {name: getattr(wire.status, name)
              for name in type(wire.status).get_fields_and_field_types()
              if name not in _UNSIGNED_FIELDS}
    fields['active_digest'] = bytes(fields['active_digest'])
    return conv.edge_status(stamp, signer=signer, **(fields | changes))


def ghost_status(wire: Wire, signer: LinkSigner | None) -> Probe:
    """Forge 40 statuses from drones ghost000..ghost039 that do not exist, on the drone's topic.

    Each names a new client running the ground's model: the ground must not build (and keep)
    per-client state, or send a snapshot, for every name it reads.
    """
    return Probe([('ams/status', _status_msg(wire, signer, wire.drone_time,
                                             client_id=f'ghost{n:03d}', model_id=wire.model_id))
                  for n in range(GHOSTS)], BURST_INTERVAL)


def redirect_status(wire: Wire, signer: LinkSigner | None) -> Probe:
    """Forge the real drone's status on /evil2, every 0.2 s for 3 s.

    The ground must not start serving the drone's client id in a namespace that is not its
    own (its patches and snapshots would go to /evil2).
    """
    count = round(REPEAT_FOR / REPEAT_PERIOD)
    return Probe([(f'{EVIL_STATUS_NS}/ams/status',
                   _status_msg(wire, signer, wire.drone_time + n * REPEAT_PERIOD))
                  for n in range(count)], REPEAT_PERIOD)


def replay_status(wire: Wire, signer: LinkSigner | None) -> Probe:
    """Replay a genuine status recorded earlier, as it was: with a key, 'replayed'."""
    return Probe([('ams/status', wire.recorded_status)])


def snapshot_requests(wire: Wire, signer: LinkSigner | None) -> Probe:
    """Forge 30 snapshot requests for the drone within a second: few snapshots may follow."""
    return Probe([('ams/snapshot_request', conv.snapshot_request(
        wire.client_id, wire.model_id, wire.active_version,
        REQUEST_REASONS[n % len(REQUEST_REASONS)], wire.drone_time, signer=signer))
        for n in range(SNAPSHOT_REQUESTS)], REQUESTS_WITHIN / (SNAPSHOT_REQUESTS - 1))


PROBES: dict[str, Callable[[Wire, LinkSigner | None], Probe]] = {
    'forged-snapshot-tiny': forged_snapshot_tiny,
    'forged-snapshot-next': functools.partial(altered_snapshot, alter=_zero_head),
    'nonfinite-snapshot': functools.partial(altered_snapshot, alter=_non_finite),
    'huge-snapshot': functools.partial(altered_snapshot, alter=_huge),
    'huge-patch': huge_patch,
    'malformed-patches': malformed_patches,
    'future-frames': future_frames,
    'max-seq-frames': max_seq_frames,
    'sampling-huge-rate': functools.partial(sampling, rate=1e9, period=10.0),
    'sampling-tiny-rate': functools.partial(sampling, rate=1e-30, period=10.0),
    'sampling-huge-period': functools.partial(sampling, rate=1.0, period=3.4e38),
    # Within the drone's limits, but one frame every 50 s in batches of 500 s: the uplink
    # would nearly stop, until the ground sees the drone's status and sends its own again.
    'sampling-stall': functools.partial(sampling, rate=0.02, period=500.0),
    'ghost-status': ghost_status,
    'redirect-status': redirect_status,
    'garbage-frames-new-ns': garbage_frames_new_ns,
    'snapshot-requests': snapshot_requests,
    'replay-status': replay_status,
}


def build_probe(name: str, wire: Wire, signer: LinkSigner | None = None) -> Probe:
    """Return the probe's messages, forged against wire and signed by signer (KeyError: none)."""
    return PROBES[name](wire, signer)


def full_topic(namespace: str, topic: str) -> str:
    """Return a probe's topic as an absolute name ('ams/...' is under the namespace)."""
    return topic if topic.startswith('/') else f"{namespace.rstrip('/')}/{topic}"


# -- the ROS process ------------------------------------------------------------------------------

class IssuingSigner(LinkSigner):
    """A LinkSigner that remembers the counters it issued: the process's own messages."""

    def __init__(self, key: bytes | None):
        super().__init__(key)
        self.issued: set[int] = set()

    def sign(self, msg):
        msg = super().sign(msg)
        self.issued.add(int(msg.auth_counter))
        return msg


class Listener:
    """Follows the ground's snapshots and patches and the drone's status and batches.

    Messages this process published itself (their counters were issued by its signer) are
    ignored, and so is any status older than the newest one.
    """

    def __init__(self, node, namespace: str, signer: IssuingSigner):
        from ams_msgs.msg import EdgeStatus, FrameBatch, ModelPatch, ModelSnapshot
        from ams_ros.ros.qos import LATCHED, RELIABLE

        self._signer = signer
        self.model = (None, None)   # (version, vector) the ground's snapshots and patches make
        self.snapshot = self.status = self.ready_status = self.batch = None
        self._status_at = self._batch_at = 0.0
        self.subscriptions = [
            node.create_subscription(kind, full_topic(namespace, topic), callback, qos)
            for kind, topic, callback, qos in (
                (ModelSnapshot, 'ams/snapshot', self._on_snapshot, LATCHED),
                (ModelPatch, 'ams/patch', self._on_patch, RELIABLE),
                (EdgeStatus, 'ams/status', self._on_status, RELIABLE),
                (FrameBatch, 'ams/frames', self._on_batch, RELIABLE))]

    def _genuine(self, msg) -> bool:
        return int(msg.auth_counter) not in self._signer.issued

    def _on_snapshot(self, msg) -> None:
        if not self._genuine(msg):
            return
        try:
            payload = conv.snapshot_from_msg(msg)
            opened = open_snapshot(payload)
        except (conv.MessageError, ValueError) as e:
            print(f'hostile: unreadable snapshot ignored: {e}', file=sys.stderr, flush=True)
            return
        self.snapshot, self.model = msg, (payload.version, opened.vector)

    def _on_patch(self, msg) -> None:
        """Follow the ground's patches onto the model (in order, as reliable DDS delivers)."""
        version, vector = self.model
        if not self._genuine(msg) or version is None or msg.base_version != version:
            return
        try:
            patch = conv.patch_from_msg(msg)
            result = apply_patch(vector, patch)
        except (conv.MessageError, PatchError):
            return
        if vector_digest(result) == patch.digest:
            self.model = (patch.version, result)

    def _on_status(self, msg) -> None:
        newer = (self.status is None or conv.stamp_to_seconds(msg.header.stamp)
                 >= conv.stamp_to_seconds(self.status.header.stamp))
        if self._genuine(msg) and newer:
            self.status, self._status_at = msg, time.monotonic()

    def _on_batch(self, msg) -> None:
        if self._genuine(msg) and msg.stamps:
            self.batch, self._batch_at = msg, time.monotonic()

    def drone_runs_the_snapshot(self) -> bool:
        """Whether the drone reports running the ground's latest snapshot (then record it)."""
        snapshot, status = self.snapshot, self.status
        runs = (snapshot is not None and status is not None
                and (status.model_id, status.active_version) == (snapshot.model_id,
                                                                 snapshot.version))
        if runs and self.ready_status is None:
            self.ready_status = status
        return runs

    def wire(self) -> Wire:
        now = time.monotonic()
        return Wire.observe(self.snapshot, self.status, recorded_status=self.ready_status,
                            batch_msg=self.batch, status_age=now - self._status_at,
                            batch_age=now - self._batch_at,
                            tracked=self.model)


class Publishers:
    """One publisher per topic, created on first use and kept until exit."""

    def __init__(self, node, namespace: str, own_subscriptions):
        self._node, self._namespace = node, namespace
        self._own = [s.topic_name for s in own_subscriptions]
        self._by_topic = {}

    def get(self, topic: str, msg_type):
        from rclpy.qos import QoSProfile, ReliabilityPolicy

        from ams_ros.ros.qos import LATCHED

        topic = full_topic(self._namespace, topic)
        if topic not in self._by_topic:
            latched = any(topic.endswith('/' + t) for t in LATCHED_TOPICS)
            # Deep enough that a burst is never overwritten before it is acknowledged.
            qos = LATCHED if latched else QoSProfile(depth=100,
                                                     reliability=ReliabilityPolicy.RELIABLE)
            self._by_topic[topic] = self._node.create_publisher(msg_type, topic, qos)
        return self._by_topic[topic]

    def matched(self, topic: str) -> bool:
        """Whether another node's subscription matched (this process's own ones excepted)."""
        topic = full_topic(self._namespace, topic)
        return self._by_topic[topic].get_subscription_count() > self._own.count(topic)


class StdinLines:
    """Complete lines from stdin without blocking, so the node keeps spinning in between."""

    def __init__(self):
        self._fd, self._buffer, self.closed = sys.stdin.fileno(), b'', False

    def poll(self) -> list[str]:
        while not self.closed and select.select([self._fd], [], [], 0)[0]:
            chunk = os.read(self._fd, 4096)
            self.closed = not chunk
            self._buffer += chunk
        if self.closed and self._buffer and not self._buffer.endswith(b'\n'):
            self._buffer += b'\n'
        *lines, self._buffer = self._buffer.split(b'\n')
        return [line.decode().strip() for line in lines if line.strip()]


def spin_until(node, condition, timeout: float) -> bool:
    """Spin the node until condition() holds or timeout seconds pass; return condition()."""
    import rclpy

    deadline = time.monotonic() + timeout
    while not condition() and (left := deadline - time.monotonic()) > 0:
        rclpy.spin_once(node, timeout_sec=min(left, 0.02))
    return condition()


def spin_for(node, seconds: float) -> None:
    """Spin the node for seconds: a probe's pace, not a wait for something to happen."""
    deadline = time.monotonic() + seconds
    spin_until(node, lambda: time.monotonic() >= deadline, seconds)


def run_probe(name: str, node, listener: Listener, publishers: Publishers,
              signer: IssuingSigner, match_timeout: float) -> str:
    """Publish one probe; return the line that reports it."""
    if name not in PROBES:
        return f'unknown {name}'
    try:
        probe = build_probe(name, listener.wire(), signer)
    except Exception as e:  # noqa: BLE001 - report it; the test decides what it means
        return f'error {name} {type(e).__name__}: {e}'
    topics = [topic for topic, _ in probe.messages]
    for topic, msg in probe.messages:
        publishers.get(topic, type(msg))
    foreign = sorted({t for t in topics if t.startswith('/')})
    matched = all(spin_until(node, functools.partial(publishers.matched, t), match_timeout)
                  for t in foreign)
    for n, (topic, msg) in enumerate(probe.messages):
        spin_for(node, probe.interval if n else 0.0)
        publishers.get(topic, type(msg)).publish(msg)
    spin_for(node, SETTLE)
    suffix = (' matched' if matched else ' unmatched') if foreign else ''
    return f'sent {name} {len(probe.messages)}{suffix}'


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--namespace', required=True, help="the drone's namespace, e.g. /drone1")
    parser.add_argument('--key-file', help='the shared key: sign with a different one')
    parser.add_argument('--timeout', type=float, default=90.0,
                        help='seconds to wait for the drone to run the snapshot, and for matches')
    parser.add_argument('--match-timeout', type=float, default=15.0,
                        help='seconds to wait for a match on a topic in another namespace')
    args = parser.parse_args(argv)
    namespace = '/' + args.namespace.strip('/')

    import rclpy

    from ams_ros.wire.auth import load_key

    signer = IssuingSigner(forger_key(load_key(args.key_file) if args.key_file else None))
    rclpy.init()
    node = rclpy.create_node('ams_hostile')
    try:
        return serve(node, namespace, signer, args)
    finally:
        node.destroy_node()
        rclpy.try_shutdown()


def serve(node, namespace: str, signer: IssuingSigner, args) -> int:
    """Listen until the drone runs the ground's snapshot, then publish probes read on stdin."""
    import ams_msgs.msg as msgs

    listener = Listener(node, namespace, signer)
    if not spin_until(node, listener.drone_runs_the_snapshot, args.timeout):
        print("hostile: timed out waiting for the ground's snapshot and the drone running it",
              file=sys.stderr, flush=True)
        return 1
    publishers = Publishers(node, namespace, listener.subscriptions)
    own = {'ams/patch': msgs.ModelPatch, 'ams/snapshot': msgs.ModelSnapshot,
           'ams/sampling': msgs.SamplingControl, 'ams/frames': msgs.FrameBatch,
           'ams/status': msgs.EdgeStatus, 'ams/snapshot_request': msgs.SnapshotRequest}
    for topic, msg_type in own.items():
        publishers.get(topic, msg_type)
    if not spin_until(node, lambda: all(map(publishers.matched, own)), args.timeout):
        unmatched = [t for t in own if not publishers.matched(t)]
        print(f'hostile: no subscription matched {unmatched}', file=sys.stderr, flush=True)
        return 1
    print(f'ready v{listener.snapshot.version}', flush=True)
    lines = StdinLines()
    while not lines.closed:
        spin_for(node, 0.02)
        for name in lines.poll():
            print(run_probe(name, node, listener, publishers, signer, args.match_timeout),
                  flush=True)
    return 0


if __name__ == '__main__':
    sys.exit(main())
