"""The ground node (`ams_ground`): label, train and stream model updates to any number of drones.

A thin adapter around ``GroundServer``. Each drone lives in its own namespace and talks on
``<ns>/ams/...`` (see drone_node). The ground serves a drone namespace when

- it is listed in ``drone_namespaces`` (served from start-up and bound to the client id the
  drone uses by default: the namespace without slashes), or
- ``discover`` is on and a topic ``<ns>/ams/frames``, ``<ns>/ams/snapshot_request`` or
  ``<ns>/ams/status`` appears in the graph (checked every ``discovery_period`` seconds; at most
  2 x ``max_clients`` namespaces).

Per served namespace it subscribes to ``ams/frames`` (FrameBatch), ``ams/snapshot_request`` and
``ams/status`` (EdgeStatus) and publishes ``ams/patch``, ``ams/snapshot`` and ``ams/sampling``
(the latter two reliable + transient-local, depth 1, so a drone that starts later still gets
them).

What it acts on. Every message is converted and, with ``auth_key_file`` set, verified (tag and
sender counter, see link_auth) before anything else; then ``ClientRegistry`` admits it: a client
id belongs to one namespace and a namespace to one client id, new clients only up to
``max_clients`` and only ids this ground owns (``client_ids``, and the shard:
``sha256(client_id) % shard_count == shard_index``), idle ones expire after
``client_timeout``. Replies go to the namespace the client is bound to. Frame batches pass the
sequence tracker and the stamp guard before the teacher sees them. Every refusal is counted
under its reason in /diagnostics.

A drone's model. Its status says what it runs: a drone with no model (or another one) is sent
the mirror as a snapshot; one whose frame count went back restarted and is sent it too; one
that reports a version or digest the mirror does not have (a forged snapshot, or a ground that
restarted) is resynced: the mirror's version moves one above the drone's and the mirror goes as
a snapshot, which the drone takes unasked. Snapshots go when the drone's ``SnapshotBudget``
allows (bytes over time, back-off while unconfirmed); requests meanwhile are answered once.
A status that shows other sampling settings than the ground's gets them sent again.

Threads. DDS callbacks only convert, verify, admit and queue; one worker decodes frame batches,
runs the teacher, trains (one phase at a time, drones scheduled by ``scheduler.policy``) and
sends snapshots, so a snapshot always matches the mirror its patches continue from. A snapshot
request waits for at most the phase in progress.
"""

from __future__ import annotations

import hashlib
import math
import sys
import threading
import time
from collections import Counter, deque
from dataclasses import dataclass, field
from pathlib import Path

from diagnostic_msgs.msg import DiagnosticArray
from rcl_interfaces.msg import SetParametersResult
from rclpy.clock import Clock, ClockType
from rclpy.node import Node

from ams_msgs.msg import (
    EdgeStatus,
    FrameBatch,
    ModelPatch,
    ModelSnapshot,
    SamplingControl,
    SnapshotRequest,
)
from ams_ros.auth import load_key
from ams_ros.client_registry import ClientRegistry
from ams_ros.frame_codec import FrameCodecError, decode_frames
from ams_ros.ground_client import GroundConfig
from ams_ros.patch_codec import DEFAULT_FORMAT, VALUE_MODES
from ams_ros.rate_control import AsrConfig, AtrConfig
from ams_ros.ros import conversions as conv
from ams_ros.ros.drone_node import LATCHED, RELIABLE, default_client_id, guarded, run
from ams_ros.ros.link_auth import LinkSigner, LinkVerifier
from ams_ros.ros.node_parameters import (
    Param,
    ParameterError,
    check,
    declare_all,
    list_type,
    read,
)
from ams_ros.selection import STRATEGIES
from ams_ros.sequence_tracker import SequenceTracker
from ams_ros.snapshot_budget import SnapshotBudget
from ams_ros.stamp_guard import REANCHOR, StampRefused
from ams_ros.world import CLASS_NAMES

NODE_NAME = 'ams_ground'
TEACHER_KINDS = ('synthetic', 'onnx', 'torchscript', 'torchvision')
POLICIES = ('round_robin', 'phi_weighted')
DRONE_TOPICS = ('/ams/frames', '/ams/snapshot_request', '/ams/status')
# A drone whose status shows other sampling settings than the ground's is sent them again, at
# most this often (the latched control may have been lost, or overwritten by another writer).
SAMPLING_RESEND_S = 2.0
# After a snapshot went, the drone's status may still show its old model for a while.
RESYNC_GRACE_S = 3.0
MAX_VERSION = 2**63  # versions are uint64 on the wire; a resync never goes beyond this

PARAMETERS = (
    # Which drones.
    Param('drone_namespaces', list_type('string'), 'drone namespaces served from start-up '
          "(e.g. ['/drone1', '/drone2']), each bound to its default client id (the namespace "
          'without slashes)'),
    Param('discover', True, 'also serve any namespace where <ns>/ams/frames, '
          '<ns>/ams/snapshot_request or <ns>/ams/status appears'),
    Param('discovery_period', 2.0, 'seconds between graph scans for new drone namespaces',
          above=0.0),
    Param('client_ids', list_type('string'), 'client ids to serve; empty: every client id '
          'seen'),
    Param('shard_index', 0, "this ground's shard: it serves client ids with "
          'sha256(id) % shard_count == shard_index', low=0, high=1 << 20),
    Param('shard_count', 1, 'number of ground nodes splitting the fleet', low=1, high=1 << 20),
    # The student every drone starts from.
    Param('student', 'deeplabv3_mbv2', 'student checkpoint file (ams_ros.pretrain format), '
          "'pretrained' / 'pretrained_small' for the packaged checkpoints, or an architecture "
          '(deeplabv3_mbv2, deeplabv3_mbv2_small) for a freshly initialised student'),
    Param('class_names', list(CLASS_NAMES), 'class names of a fresh student (a checkpoint '
          'carries its own)'),
    Param('input_height', 256, 'input height of a fresh student (a checkpoint carries its own)',
          low=16, high=8192),
    Param('input_width', 512, 'input width of a fresh student', low=16, high=8192),
    Param('seed', 0, 'seed of a fresh student and of the trainers', low=0, high=2**31 - 1),
    Param('device', 'auto', 'training (and torch teacher) device: auto picks cuda if available',
          choices=('auto', 'cpu', 'cuda')),
    Param('torch_threads', 0, 'torch CPU threads (0: torch decides); 1 is much faster on a '
          'busy machine with few cores', low=0, high=1024),
    # Teacher.
    Param('teacher.kind', 'synthetic', "synthetic: the synthetic world's perfect teacher; "
          'onnx, torchscript or torchvision: a model from a local file', choices=TEACHER_KINDS),
    Param('teacher.seed', 1003, 'synthetic: flight seed (as the camera node flies)', low=0,
          high=2**31 - 1),
    Param('teacher.duration_s', 600.0, 'synthetic: flight length (s)', above=0.0),
    Param('teacher.start_s', 0.0, 'synthetic: stamp of the flight start (s)', low=0.0),
    Param('teacher.path', '', 'onnx / torchscript: model file'),
    Param('teacher.name', '', 'torchvision: model name, e.g. deeplabv3_resnet101'),
    Param('teacher.weights', '', 'torchvision: state-dict file'),
    Param('teacher.num_classes', 21, 'torchvision: classes of the model', low=1, high=65535),
    Param('teacher.input_height', 0, 'model teachers: run at this size (0: the frame size)',
          low=0, high=65535),
    Param('teacher.input_width', 0, 'model teachers: run at this size (0: the frame size)',
          low=0, high=65535),
    Param('teacher.normalization', 'imagenet', 'model teachers with float input: imagenet, or '
          'in-graph (the model takes 0..255)', choices=('imagenet', 'in-graph')),
    Param('teacher.output', 'logits', 'onnx: logits (N,C,h,w) or labels (class ids)',
          choices=('logits', 'labels')),
    Param('teacher.output_name', '', 'onnx: graph output to use (empty: automatic)'),
    Param('teacher.providers', list_type('string'), 'onnx: ONNX Runtime providers (empty: CUDA '
          'if available, then CPU)'),
    Param('teacher.class_map', list_type('integer'), 'teacher class i -> student class '
          'class_map[i] (-1: ignore); empty: the same ids'),
    Param('teacher.batch_size', 4, 'model teachers: frames per run', low=1, high=4096),
    # Training (Algorithm 1).
    Param('trainer.iterations', 20, 'K: iterations per phase', low=1, high=100000),
    Param('trainer.batch_size', 8, 'frames per iteration', low=1, high=4096),
    Param('trainer.learning_rate', 1e-3, 'alpha (Adam)', above=0.0),
    Param('trainer.fraction', 0.05, 'gamma: fraction of parameters updated per phase',
          above=0.0, high=1.0),
    Param('trainer.strategy', 'gradient_guided', 'which parameters a phase updates',
          choices=STRATEGIES),
    Param('trainer.optimizer', 'adam', 'adam (the paper) or sgd', choices=('adam', 'sgd')),
    Param('trainer.momentum', 0.0, 'sgd only', low=0.0, high=1.0),
    Param('trainer.horizon_s', 240.0, 'T_horizon: training samples frames of this many seconds',
          above=0.0),
    Param('trainer.channels_last', True, 'NHWC activations (about 2x faster on CPU)'),
    # Downlink.
    Param('patch.value_mode', DEFAULT_FORMAT.value_mode, 'precision of patch values: fp16 (the '
          "paper's), fp16-delta, q8-delta or fp32", choices=VALUE_MODES),
    Param('patch.zstd_level', DEFAULT_FORMAT.zstd_level, 'zstd level of patch streams', low=1,
          high=22),
    # ASR (paper Eq. 1) and ATR.
    Param('asr.phi_target', 0.4, 'phi the sampling rate steers to', low=0.0, high=1.0),
    Param('asr.step_size', 2.0, 'eta_r: rate change per unit of phi error', low=0.0),
    Param('asr.rate_min', 0.1, 'lowest sampling rate (frames/s)', above=0.0),
    Param('asr.rate_max', 1.0, 'highest sampling rate (frames/s)', above=0.0),
    Param('asr.initial_rate', 1.0, 'sampling rate a new drone starts with', above=0.0),
    Param('asr.interval', 10.0, 'delta t: seconds (of stamp time) between rate updates',
          above=0.0),
    Param('atr.enabled', False, 'adapt T_update to the scene (off: the paper, fixed T_update)'),
    Param('atr.period_min', 10.0, 'T_update (s) when the scene changes; also the fixed value',
          above=0.0),
    Param('atr.period_max', 40.0, 'longest T_update (s)', above=0.0),
    Param('atr.growth', 1.5, 'T_update factor per calm step', low=1.0),
    Param('atr.phi_low', 0.2, 'phi below this counts as calm', low=0.0, high=1.0),
    Param('atr.phi_high', 0.4, 'phi above this snaps T_update back', low=0.0, high=1.0),
    Param('atr.patience', 3, 'calm windows before each lengthening', low=1, high=1000),
    # Scheduling several drones on one device (paper Appendix E).
    Param('scheduler.policy', 'round_robin', 'which waiting drone trains next',
          choices=POLICIES),
    Param('scheduler.phi_floor', 0.05, 'phi_weighted: least credit per decision', above=0.0),
    # Operation.
    Param('max_clients', 16, 'drones served at once (configured namespaces count from start-up); '
          'a new client id beyond this is refused', low=1, high=100000),
    Param('client_timeout', 300.0, 'seconds without any message after which a drone is dropped '
          '(its buffer, optimiser and mirror freed; it gets a new snapshot if it returns)',
          above=0.0),
    Param('max_queued_batches', 32, 'frame batches waiting for the worker; the oldest are '
          'dropped beyond this', low=1, high=100000),
    Param('snapshot_budget.kbps', 100.0, 'average downlink a drone may spend on whole-model '
          'snapshots (kbit/s); requests beyond it wait', above=0.0),
    Param('snapshot_budget.burst', 2.0, 'snapshots a drone may get at once before the average '
          'applies', above=0.0),
    Param('snapshot_budget.backoff_min_s', 10.0, 'seconds before another snapshot to a drone '
          'that has not confirmed the last one; doubles while it does not', above=0.0),
    Param('snapshot_budget.backoff_max_s', 300.0, 'longest such wait (s)', above=0.0),
    Param('stamps.max_jump_s', 300.0, 'frame stamps further than this from the drone\'s recent '
          'clock are refused, unless the next batches confirm a real clock jump', above=0.0),
    Param('max_seq_gap', 1000, 'a FrameBatch seq further ahead than this is refused unless the '
          'next batch continues from it', low=1, high=2**62),
    Param('status_period', 2.0, 'seconds between /diagnostics messages', above=0.0,
          read_only=False),
    Param('auth_key_file', '', 'file with the key shared with the drones (HMAC-SHA256); empty: '
          'messages are not signed'),
)


def _same_sampling(a: tuple[float, float], b: tuple[float, float]) -> bool:
    """Whether two (rate, period) pairs agree up to the wire's float32 rounding."""
    return all(math.isclose(x, y, rel_tol=1e-5) for x, y in zip(a, b, strict=True))


def stable_shard(client_id: str, count: int) -> int:
    """Return the shard of a client id: the same on every machine and Python run."""
    digest = hashlib.sha256(client_id.encode()).digest()
    return int.from_bytes(digest[:8], 'big') % count


def drone_namespace(topic: str) -> str | None:
    """Return the namespace of a drone topic such as /drone1/ams/frames ('/' at the root)."""
    for suffix in DRONE_TOPICS:
        if topic.endswith(suffix):
            return topic[:-len(suffix)] or '/'
    return None


def load_template(student: str, class_names, input_size: tuple[int, int], seed: int,
                  device: str, log):
    """Return the StudentTemplate: from a checkpoint, a packaged one, or a fresh arch.

    A packaged student that is not shipped is pretrained on `device` first (once, then cached).
    """
    import torch

    from ams_ros.ground_client import StudentTemplate
    from ams_ros.student import STUDENT_ARCHS, InputSpec, build_student

    if student in STUDENT_ARCHS:
        if not class_names:
            raise ParameterError('class_names must not be empty for a fresh student')
        torch.manual_seed(seed)
        model = build_student(student, len(class_names))
        return StudentTemplate.from_model(model, student, tuple(class_names),
                                          InputSpec(*input_size))
    from ams_ros import pretrain

    path = pretrain.packaged_student(student, log, device) if student in pretrain.PACKAGED \
        else Path(student).expanduser()
    if not path.is_file():
        raise ParameterError(f"student '{student}': no checkpoint at {path}, and not an "
                             f'architecture ({sorted(STUDENT_ARCHS)})')
    try:
        return pretrain.load_template(path)
    except Exception as e:  # noqa: BLE001 - report any unusable checkpoint as a refusal
        raise ParameterError(f"student '{path}': {type(e).__name__}: {e}") from e


def teacher_spec(p: dict, device: str) -> dict:
    """Return the make_teacher config the teacher.* parameters describe."""
    kind = p['teacher.kind']
    size = (p['teacher.input_height'], p['teacher.input_width'])
    spec = {'kind': kind}
    if kind == 'synthetic':
        spec.update(seed=p['teacher.seed'], duration_s=p['teacher.duration_s'],
                    start_s=p['teacher.start_s'])
        return spec
    common = {'normalization': p['teacher.normalization'], 'batch_size': p['teacher.batch_size']}
    if all(size):
        common['input_size'] = size
    if p['teacher.class_map']:
        common['class_map'] = list(p['teacher.class_map'])
    if kind == 'onnx':
        spec.update(path=p['teacher.path'], output=p['teacher.output'], **common)
        if p['teacher.output_name']:
            spec['output_name'] = p['teacher.output_name']
        if p['teacher.providers']:
            spec['providers'] = list(p['teacher.providers'])
    elif kind == 'torchscript':
        spec.update(path=p['teacher.path'], device=device, **common)
    else:
        spec.update(name=p['teacher.name'], weights=p['teacher.weights'],
                    num_classes=p['teacher.num_classes'], device=device, **common)
    return spec


def ground_config(p: dict, device: str) -> GroundConfig:
    """Return the engine's GroundConfig from the parameters (ValueError when inconsistent)."""
    import dataclasses

    from ams_ros.trainer import TrainerConfig

    trainer = TrainerConfig(
        iterations=p['trainer.iterations'], batch_size=p['trainer.batch_size'],
        learning_rate=p['trainer.learning_rate'], fraction=p['trainer.fraction'],
        strategy=p['trainer.strategy'], horizon_s=p['trainer.horizon_s'],
        optimizer=p['trainer.optimizer'], momentum=p['trainer.momentum'], device=device,
        channels_last=p['trainer.channels_last'])
    patch_format = dataclasses.replace(DEFAULT_FORMAT, value_mode=p['patch.value_mode'],
                                       zstd_level=p['patch.zstd_level'])
    asr = AsrConfig(phi_target=p['asr.phi_target'], step_size=p['asr.step_size'],
                    rate_min=p['asr.rate_min'], rate_max=p['asr.rate_max'],
                    initial_rate=p['asr.initial_rate'], interval=p['asr.interval'])
    atr = AtrConfig(enabled=p['atr.enabled'], period_min=p['atr.period_min'],
                    period_max=p['atr.period_max'], growth=p['atr.growth'],
                    phi_low=p['atr.phi_low'], phi_high=p['atr.phi_high'],
                    patience=p['atr.patience'])
    return GroundConfig(trainer=trainer, patch_format=patch_format, asr=asr, atr=atr)


@dataclass
class _Endpoints:
    """The publishers of one drone namespace (its subscriptions are kept alive here too)."""

    patch: object
    snapshot: object
    sampling: object
    subscriptions: list = field(default_factory=list)


@dataclass
class _ClientStats:
    namespace: str
    seq: SequenceTracker
    budget: SnapshotBudget
    batches: int = 0
    frames: int = 0
    batches_lost: int = 0  # seq gaps
    phases: int = 0
    last_loss: float = float('nan')
    last_phase_s: float = float('nan')
    patch_bytes: int = 0
    snapshots: int = 0
    snapshot_bytes: int = 0
    snapshot_wanted: str = ''  # why a snapshot is owed to the drone ('' when none)
    last_snapshot: tuple[str, int, float] | None = None  # (model id, version, monotonic time)
    resyncs: int = 0
    sampling_rate: float = float('nan')  # as last sent
    update_period: float = float('nan')
    sampling_sent_at: float = -math.inf
    drone_version: int | None = None  # from its EdgeStatus
    drone_digest: bytes = b''
    drone_fps: float = float('nan')
    drone_frames: int = 0  # frames_received in its EdgeStatus: less means a new process
    errors: Counter = field(default_factory=Counter)


class GroundNode(Node):
    """ROS adapter of the GroundServer: any number of drones, one training worker."""

    def __init__(self, **node_kwargs):
        super().__init__(NODE_NAME, **node_kwargs)
        self._params = declare_all(self, PARAMETERS)
        p = {name: read(self, name) for name in self._params}
        if p['shard_index'] >= p['shard_count']:
            raise ParameterError(f"shard_index {p['shard_index']} must be below shard_count "
                                 f"{p['shard_count']}")
        if p['snapshot_budget.backoff_max_s'] < p['snapshot_budget.backoff_min_s']:
            raise ParameterError('snapshot_budget.backoff_max_s must not be below '
                                 'snapshot_budget.backoff_min_s')
        try:
            from ams_ros.teachers import make_teacher, select_torch_device

            if p['torch_threads']:
                import torch

                torch.set_num_threads(p['torch_threads'])
            device = select_torch_device(p['device'])
            if device == 'cuda':
                import torch

                if not torch.cuda.is_available():
                    raise ValueError("device 'cuda': torch sees no CUDA device")
            config = ground_config(p, device)
            key = load_key(p['auth_key_file'] or None)
            spec = teacher_spec(p, device)
            # One teacher serves every drone (teachers are stateless); built now, so a bad
            # teacher stops the node at start-up rather than at the first drone.
            teacher = make_teacher(spec)
        except (ValueError, OSError, RuntimeError) as e:
            raise ParameterError(str(e)) from e
        template = load_template(p['student'], p['class_names'],
                                 (p['input_height'], p['input_width']), p['seed'], device,
                                 self.get_logger().warning)
        from ams_ros.ground_server import GroundServer

        self.server = GroundServer(template, lambda _client_id: teacher, config,
                                   policy=p['scheduler.policy'],
                                   phi_floor=p['scheduler.phi_floor'], seed=p['seed'])
        # The link is authenticated message by message; the engine sees verified payloads.
        self._signer, self._verifier = LinkSigner(key), LinkVerifier(key)
        self._client_filter = set(p['client_ids'])
        self._shard = (p['shard_index'], p['shard_count'])
        self.registry = ClientRegistry(p['max_clients'], p['client_timeout'], self.owns)
        self._snapshot_size = len(template.onnx_bytes)
        self._budget = {'rate_kbps': p['snapshot_budget.kbps'],
                        'burst_bytes': p['snapshot_budget.burst'] * self._snapshot_size,
                        'backoff_min_s': p['snapshot_budget.backoff_min_s'],
                        'backoff_max_s': p['snapshot_budget.backoff_max_s']}
        self._max_seq_gap = p['max_seq_gap']
        self._max_queued = p['max_queued_batches']
        self._max_namespaces = 2 * p['max_clients']  # discovery serves no more than this

        self.stats: dict[str, _ClientStats] = {}
        self.counts: Counter[str] = Counter()
        self._lock = threading.Lock()  # stats and counts: written by callbacks and the worker
        self.last_error = ''
        self._endpoints: dict[str, _Endpoints] = {}
        self._inbox: deque = deque()
        self._work = threading.Condition()
        self._closed = False
        self._busy = ''  # what the worker is doing, for diagnostics

        self.diagnostics_pub = self.create_publisher(DiagnosticArray, '/diagnostics', 10)
        steady = Clock(clock_type=ClockType.STEADY_TIME)
        self.status_timer = self.create_timer(p['status_period'], self._report, clock=steady)
        self._discover = p['discover']
        if self._discover:
            self.create_timer(p['discovery_period'], self._scan_graph, clock=steady)
        self.add_on_set_parameters_callback(
            lambda ps: SetParametersResult(successful=not check(self._params, ps),
                                           reason=check(self._params, ps)))
        self.add_post_set_parameters_callback(self._apply_parameters)

        self._worker = threading.Thread(target=self._loop, name='ams-ground', daemon=True)
        self._worker.start()
        for namespace in p['drone_namespaces']:
            namespace = '/' + namespace.strip('/')
            self._serve(namespace)
            client_id = default_client_id(namespace)
            if self.owns(client_id):
                try:
                    self.registry.bind(namespace, client_id)
                except ValueError as e:
                    raise ParameterError(f'drone_namespaces: {e}') from e
                self._submit(('contact', namespace, client_id, None))  # sampling control
        self.get_logger().info(
            f'student {template.model_id} ({template.manifest.total_size} parameters, input '
            f'{template.input_spec.height}x{template.input_spec.width}), teacher '
            f"{spec['kind']}, device {device}, shard {self._shard[0]}/{self._shard[1]}, "
            f"discovery {'on' if self._discover else 'off'}")

    # -- which drones ----------------------------------------------------------------------

    def owns(self, client_id: str) -> bool:
        """Return whether this ground serves the client id (filter and shard)."""
        if self._client_filter and client_id not in self._client_filter:
            return False
        index, count = self._shard
        return stable_shard(client_id, count) == index

    @guarded
    def _scan_graph(self) -> None:
        for topic, _types in self.get_topic_names_and_types():
            namespace = drone_namespace(topic)
            if namespace is None or namespace in self._endpoints:
                continue
            if len(self._endpoints) >= self._max_namespaces:
                self._error('', f'namespace {namespace} not served: already serving '
                            f'{len(self._endpoints)} (2 x max_clients)', 'namespaces_refused')
                continue
            self._serve(namespace)

    def _serve(self, namespace: str) -> None:
        """Create the endpoints of one drone namespace."""
        if namespace in self._endpoints:
            return
        prefix = '' if namespace == '/' else namespace
        ends = _Endpoints(
            patch=self.create_publisher(ModelPatch, f'{prefix}/ams/patch', RELIABLE),
            snapshot=self.create_publisher(ModelSnapshot, f'{prefix}/ams/snapshot', LATCHED),
            sampling=self.create_publisher(SamplingControl, f'{prefix}/ams/sampling', LATCHED))
        ends.subscriptions = [
            self.create_subscription(FrameBatch, f'{prefix}/ams/frames',
                                     lambda m: self._on_frames(namespace, m), RELIABLE),
            self.create_subscription(SnapshotRequest, f'{prefix}/ams/snapshot_request',
                                     lambda m: self._on_request(namespace, m), RELIABLE),
            self.create_subscription(EdgeStatus, f'{prefix}/ams/status',
                                     lambda m: self._on_status(namespace, m), RELIABLE),
        ]
        self._endpoints[namespace] = ends
        self.get_logger().info(f'serving drone namespace {namespace}')

    def _read(self, convert, msg, what: str):
        """Convert and verify a drone's message; None (refusal counted) if it does not pass."""
        try:
            return convert(msg, verifier=self._verifier)
        except conv.MessageError as e:
            self._error('', f'{what} from {msg.client_id!r} refused: {e}',
                        f'refused.{e.reason}')
            return None

    def _admit(self, namespace: str, client_id: str) -> bool:
        """Admit a verified message: its client id must belong to the namespace it came on."""
        admission = self.registry.admit(namespace, client_id, time.monotonic())
        if not admission.ok:
            self._error('', f"'{client_id}' on {namespace} refused: {admission.reason}",
                        f'refused.{admission.reason}')
        return admission.ok

    # -- callbacks: convert, verify, admit and queue -----------------------------------------

    @guarded
    def _on_frames(self, namespace: str, msg) -> None:
        batch = self._read(conv.batch_from_msg, msg, 'frame batch')
        if batch is None or not self._admit(namespace, batch.client_id):
            return
        self._count('bytes_up', len(batch.data))
        self._submit(('batch', namespace, batch.client_id, batch))

    @guarded
    def _on_request(self, namespace: str, msg) -> None:
        request = self._read(conv.request_from_msg, msg, 'snapshot request')
        if request is not None and self._admit(namespace, request.client_id):
            self.get_logger().info(f"'{request.client_id}' asks for a snapshot "
                                   f'({request.reason}, runs v{request.active_version})',
                                   throttle_duration_sec=5.0)
            self._submit(('snapshot', namespace, request.client_id, request.reason))

    @guarded
    def _on_status(self, namespace: str, msg) -> None:
        status = self._read(conv.status_from_msg, msg, 'status')
        if status is not None and self._admit(namespace, status.client_id):
            self._submit(('status', namespace, status.client_id, status))

    def _submit(self, event) -> None:
        with self._work:
            kind, _, client_id, _ = event
            if kind in ('batch', 'status'):
                # Bounded: the oldest batches go, and only the newest status of a drone counts.
                queued = [e for e in self._inbox if e[0] == kind
                          and (kind == 'batch' or e[2] == client_id)]
                if len(queued) >= (self._max_queued if kind == 'batch' else 1):
                    self._inbox.remove(queued[0])
                    if kind == 'batch':
                        self._count('batches_dropped')
            self._inbox.append(event)
            self._work.notify()

    # -- the worker ------------------------------------------------------------------------

    def _loop(self) -> None:
        """Alternate: take in everything queued (contacts and requests first), train a phase.

        Training one phase per round, whatever arrived meanwhile, keeps a steady stream of
        batches from starving training; a request waits for at most one phase. Snapshots owed
        to drones go whenever their budget allows (checked at least once a second).
        """
        while True:
            with self._work:
                self._work.wait_for(lambda: self._inbox or self._closed
                                    or self._has_training(), timeout=1.0)
                if self._closed:
                    return
                events = sorted(self._inbox, key=lambda e: e[0] == 'batch')  # stable
                self._inbox.clear()
            self._drop_silent_clients()
            for event in [*events, 'snapshots', 'train']:
                if self._closed:
                    return
                try:
                    if event == 'snapshots':
                        self._send_owed_snapshots()
                    elif event == 'train':
                        self._train_one()
                    else:
                        self._handle(event)
                except Exception as e:  # noqa: BLE001 - one failure never stops serving
                    if self._closed or not self.context.ok():
                        return  # shutting down: publishers are gone
                    client_id = event[2] if isinstance(event, tuple) else ''
                    self._error(client_id, f'{type(e).__name__}: {e}', 'worker_errors')
                finally:
                    self._busy = ''

    def _drop_silent_clients(self) -> None:
        for client_id in self.registry.expire(time.monotonic()):
            self.server.remove_client(client_id)
            with self._lock:
                self.stats.pop(client_id, None)
            self.get_logger().info(f"drone '{client_id}' silent for "
                                   f'{self.registry.idle_timeout_s:g} s: dropped')

    def _has_training(self) -> bool:
        return any(self.server.client(c).pending_frames > 0 for c in self.server.client_ids)

    def _handle(self, event) -> None:
        kind, namespace, client_id, data = event
        if self.registry.namespace_of(client_id) is None:
            return  # expired while the event waited
        if kind == 'status':
            self._on_drone_status(client_id, data)
            return
        if kind == 'contact':
            self._ensure_client(client_id)
        elif kind == 'snapshot':
            self._ensure_client(client_id)
            self._owe_snapshot(client_id, data)
        elif kind == 'batch':
            self._busy = f'labelling {client_id}'
            self._ingest(client_id, data)

    def _ensure_client(self, client_id: str) -> _ClientStats:
        """Add a drone on first contact and send it its sampling control.

        Whether it needs its model is for its status (or its request) to say: a drone that
        runs the ground's first version already, or a newer one, needs none now.
        """
        stats = self.stats.get(client_id)
        if stats is not None:
            return stats
        client = self.server.add_client(client_id)
        stats = _ClientStats(namespace=self.registry.namespace_of(client_id),
                             seq=SequenceTracker(self._max_seq_gap),
                             budget=SnapshotBudget(**self._budget))
        with self._lock:
            self.stats[client_id] = stats
        self.get_logger().info(f"new drone '{client_id}' in {stats.namespace}")
        self._send_sampling(client_id, client.asr.rate, client.atr.update_period)
        return stats

    def _on_drone_status(self, client_id: str, status) -> None:
        """Follow what the drone runs: restarts, divergence from the mirror, sampling drift."""
        known = client_id in self.stats
        stats = self._ensure_client(client_id)
        client = self.server.client(client_id)
        if not known and not self._diverged(client, status) and not self._runs_mirror(
                client, status):
            self._owe_snapshot(client_id, 'first contact')  # no model, or another one
        elif known and status.frames_received < stats.drone_frames:
            self.get_logger().info(f"'{client_id}' restarted: sending its model")
            self._owe_snapshot(client_id, 'restarted')
        stats.drone_frames = int(status.frames_received)
        stats.drone_version, stats.drone_digest = status.active_version, status.active_digest
        stats.drone_fps = status.inference_fps
        if (stats.last_snapshot is not None
                and stats.last_snapshot[:2] == (status.model_id, status.active_version)):
            stats.budget.confirmed()
        if stats.snapshot_wanted and self._runs_mirror(client, status):
            stats.snapshot_wanted = ''  # patches brought it back in step: no snapshot needed
        if self._diverged(client, status):
            self._resync(client_id, stats, client, status)
        if (not _same_sampling((status.sampling_rate, status.update_period),
                               (stats.sampling_rate, stats.update_period))
                and time.monotonic() - stats.sampling_sent_at > SAMPLING_RESEND_S):
            self._count('sampling_resent')
            self._send_sampling(client_id, stats.sampling_rate, stats.update_period)

    @staticmethod
    def _runs_mirror(client, status) -> bool:
        mirror = client.mirror
        return ((status.model_id, status.active_version) == (client.template.model_id,
                                                              mirror.version)
                and status.active_digest in (b'', mirror.digest))

    @staticmethod
    def _diverged(client, status) -> bool:
        """Whether the drone runs a model this ground never made (a version, or a digest)."""
        mirror = client.mirror
        if status.model_id != client.template.model_id or status.active_version == 0:
            return False  # another model, or none: its own requests take care of it
        return (status.active_version > mirror.version
                or (status.active_version == mirror.version and bool(status.active_digest)
                    and status.active_digest != mirror.digest))

    def _resync(self, client_id: str, stats: _ClientStats, client, status) -> None:
        """Move the mirror's version past the drone's and send the mirror as a snapshot.

        The drone takes a snapshot it did not ask for only as its next version, so the mirror
        (whose weights are the truth) gets a version one above whatever the drone claims.
        """
        landing = (stats.last_snapshot is not None
                   and stats.last_snapshot[1] > status.active_version
                   and time.monotonic() - stats.last_snapshot[2] < RESYNC_GRACE_S)
        if stats.snapshot_wanted or landing:
            return  # a snapshot that would fix it is owed or on its way: let it land first
        version = max(client.mirror.version, status.active_version) + 1
        if version >= MAX_VERSION:
            version = client.mirror.version  # cannot outbid: its next patch makes it ask
        client.mirror.reset(version, client.mirror.vector)
        stats.resyncs += 1
        self._error(client_id, f'drone runs v{status.active_version} '
                    f'({bytes(status.active_digest).hex()[:12]}), not the mirror: resync as '
                    f'v{version}', 'resyncs')
        self._owe_snapshot(client_id, 'resync')

    def _ingest(self, client_id: str, batch) -> None:
        try:
            frames, damage = decode_frames(batch.data, batch.codec, batch.width, batch.height,
                                           len(batch.stamps)), None
        except FrameCodecError as e:
            frames, damage = None, e
        if damage is not None and client_id not in self.stats:
            # Nothing known of this drone but undecodable bytes: no state is made for it.
            self._error(client_id, f'batch {batch.seq} not decodable: {damage}',
                        f'decode.{damage.reason.value}')
            return
        stats = self._ensure_client(client_id)
        verdict = stats.seq.observe(batch.seq)  # a damaged batch still fills its number
        stats.batches_lost += verdict.lost
        if not verdict.accepted:
            self._error(client_id, f'batch {batch.seq} refused: {verdict.reason}',
                        f'seq.{verdict.reason}')
            return
        if damage is not None:
            self._error(client_id, f'batch {batch.seq} not decodable: {damage}',
                        f'decode.{damage.reason.value}')
            return
        client = self.server.client(client_id)
        try:
            client.add_frames(frames, batch.stamps, now=time.monotonic())
        except StampRefused as e:
            self._error(client_id, f'batch {batch.seq} refused: {e}', f'stamps.{e.reason}')
            return
        if client.stamp_verdict.reason == REANCHOR:
            self._count('stamp_reanchors')
            self.get_logger().warning(f"'{client_id}': its clock jumped by "
                                      f'{client.stamp_verdict.offset:.3f} s; buffer re-anchored')
        stats.batches += 1
        stats.frames += len(frames)
        decision = client.update_rates(max(batch.stamps))
        if decision is not None:
            self._send_sampling(client_id, decision.sampling_rate, decision.update_period)

    def _train_one(self) -> None:
        self._busy = 'training'
        started = time.monotonic()
        phase = self.server.train_next()
        if phase is None:
            return
        client_id, output = phase  # publish to exactly the drone this phase trained
        stats = self.stats[client_id]
        stats.phases += 1
        stats.last_loss = output.result.mean_loss
        stats.last_phase_s = time.monotonic() - started
        msg = conv.patch_to_msg(output.patch, self.get_clock().now().to_msg(),
                                signer=self._signer)
        stats.patch_bytes += output.patch.nbytes
        # Logged before it is sent: the log is the record of every model this ground produced.
        self.get_logger().info(
            f"'{client_id}' v{output.patch.version} ({output.patch.digest.hex()}): loss "
            f'{output.result.mean_loss:.3f}, {len(output.result.indices)} parameters, '
            f'{output.patch.nbytes} bytes, phase {stats.last_phase_s:.2f} s')
        self._endpoints[stats.namespace].patch.publish(msg)

    def _owe_snapshot(self, client_id: str, reason: str) -> None:
        """Note that the drone needs its model; it goes when the drone's budget allows."""
        stats = self.stats[client_id]
        stats.snapshot_wanted = stats.snapshot_wanted or reason
        self._send_owed_snapshots()

    def _send_owed_snapshots(self) -> None:
        now = time.monotonic()
        for client_id, stats in list(self.stats.items()):
            if not stats.snapshot_wanted:
                continue
            wait = stats.budget.request(now, self._snapshot_size)
            if wait > 0:
                self.get_logger().info(f"'{client_id}': snapshot ({stats.snapshot_wanted}) "
                                       f'deferred {wait:.1f} s by its budget',
                                       throttle_duration_sec=10.0)
                continue
            self._send_snapshot(client_id, stats, now)

    def _send_snapshot(self, client_id: str, stats: _ClientStats, now: float) -> None:
        self._busy = f'snapshot for {client_id}'
        payload = self.server.client(client_id).snapshot()
        size = len(payload.model_data)
        self.get_logger().info(f"'{client_id}' v{payload.version} ({payload.digest.hex()}): "
                               f'snapshot ({stats.snapshot_wanted}), {size} bytes')
        self._endpoints[stats.namespace].snapshot.publish(
            conv.snapshot_to_msg(payload, self.get_clock().now().to_msg(), signer=self._signer))
        stats.budget.sent(now, size)
        stats.snapshot_wanted = ''
        stats.snapshots += 1
        stats.snapshot_bytes += size
        stats.last_snapshot = (payload.model_id, payload.version, now)
        self._count('bytes_down', size)

    def _send_sampling(self, client_id: str, rate: float, period: float) -> None:
        stats = self.stats[client_id]
        stats.sampling_rate, stats.update_period = rate, period
        stats.sampling_sent_at = time.monotonic()
        self._endpoints[stats.namespace].sampling.publish(conv.sampling_control(
            client_id, rate, period, self.get_clock().now().to_msg(), signer=self._signer))

    # -- status ----------------------------------------------------------------------------

    def on_callback_error(self, where: str, error: Exception) -> None:
        self._error('', f'{where} failed: {type(error).__name__}: {error}', 'callback_errors')

    def _count(self, key: str, n: int = 1) -> None:
        with self._lock:
            self.counts[key] += n

    def _error(self, client_id: str, text: str, key: str) -> None:
        with self._lock:
            self.counts['errors'] += 1
            self.counts[key] += 1
            stats = self.stats.get(client_id)
            if stats is not None:
                stats.errors[key] += 1
        self.last_error = f'{client_id}: {text}' if client_id else text
        self.get_logger().warning(self.last_error, throttle_duration_sec=2.0)

    def _apply_parameters(self, parameters) -> None:
        for parameter in parameters:
            if parameter.name == 'status_period':
                self.status_timer.timer_period_ns = int(parameter.value * 1e9)
                self.status_timer.reset()

    @guarded
    def _report(self) -> None:
        stamp = self.get_clock().now().to_msg()
        with self._work:
            queued = len(self._inbox)
        with self._lock:
            counts = dict(self.counts)
            clients = [(cid, stats, dict(stats.errors)) for cid, stats in
                       sorted(self.stats.items())]
        level = 'warn' if counts.get('errors') else 'ok'
        overall = conv.diagnostic_status(
            NODE_NAME, level,
            f'{len(clients)} drones, {len(self._endpoints)} namespaces'
            + (f'; last error: {self.last_error}' if self.last_error else ''), NODE_NAME,
            {'drones': len(clients), 'namespaces': ','.join(sorted(self._endpoints)),
             'queued_events': queued, 'worker': self._busy or 'idle',
             'shard': f'{self._shard[0]}/{self._shard[1]}',
             **dict(sorted(counts.items())), 'last_error': self.last_error})
        statuses = [overall]
        for client_id, stats, errors in clients:
            if client_id not in self.server.client_ids:
                continue  # dropped meanwhile
            client = self.server.client(client_id)
            behind = (stats.drone_version is not None
                      and stats.drone_version < client.mirror.version - 1)
            statuses.append(conv.diagnostic_status(
                f'{NODE_NAME}: {client_id}', 'warn' if behind or errors else 'ok',
                f'mirror v{client.mirror.version}, drone v{stats.drone_version}',
                client_id, {
                    'namespace': stats.namespace, 'mirror_version': client.mirror.version,
                    'drone_version': stats.drone_version, 'drone_fps': stats.drone_fps,
                    'batches': stats.batches, 'frames': stats.frames,
                    'batches_lost': stats.batches_lost, 'buffered_frames': len(client.buffer),
                    'pending_frames': client.pending_frames, 'phases': stats.phases,
                    'last_loss': stats.last_loss, 'last_phase_s': stats.last_phase_s,
                    'mirror_digest': client.mirror.digest.hex(),
                    'patch_bytes': stats.patch_bytes, 'snapshots': stats.snapshots,
                    'snapshot_bytes': stats.snapshot_bytes,
                    'snapshot_owed': stats.snapshot_wanted, 'resyncs': stats.resyncs,
                    'phi': client.phi if client.phi is not None else float('nan'),
                    'sampling_rate': stats.sampling_rate, 'update_period': stats.update_period,
                    **{f'errors.{k}': v for k, v in sorted(errors.items())}}))
        self.diagnostics_pub.publish(conv.diagnostic_array(statuses, stamp))

    def close(self) -> None:
        """Stop the worker (after the phase in progress, at most a few seconds)."""
        with self._work:
            self._closed = True
            self._work.notify_all()
        self._worker.join(timeout=10.0)


def main(args=None) -> int:
    """Run the ground node (`ams_ground`)."""
    return run(GroundNode, NODE_NAME, args)


if __name__ == '__main__':
    sys.exit(main())
