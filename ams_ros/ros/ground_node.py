"""The ground node (`ams_ground`): label, train and stream model updates to any number of drones.

A thin adapter around ``GroundServer``. Each drone lives in its own namespace and talks on
``<ns>/ams/...`` (see drone_node). The ground serves a drone namespace when

- it is listed in ``drone_namespaces`` (served from start-up, and sent its first snapshot
  at once, for the client id the drone uses by default: the namespace without slashes), or
- ``discover`` is on and a topic ``<ns>/ams/frames``, ``<ns>/ams/snapshot_request`` or
  ``<ns>/ams/status`` appears in the graph (checked every ``discovery_period`` seconds).

Per served namespace it subscribes to ``ams/frames`` (FrameBatch), ``ams/snapshot_request`` and
``ams/status`` (EdgeStatus) and publishes ``ams/patch``, ``ams/snapshot`` and ``ams/sampling``
(the latter two reliable + transient-local, depth 1, so a drone that starts later still gets
them). Replies for a client go to the namespace its messages came from.

Which drones it trains: every client id seen (``client_ids`` empty) or only those listed, and of
those only the ones in its shard: ``sha256(client_id) % shard_count == shard_index``. Several
ground nodes on several machines, each with its own shard_index, split a fleet on one DDS graph
without talking to each other.

A drone is added on first contact. The ground then publishes its sampling control and the
drone's current model as a snapshot (version 1, the template), unless the drone's own status
already shows that model id at that version (it started from the same file). A drone whose
status shows it restarted (its frame count went back) is sent the mirror's snapshot at once:
it runs its file again and would only notice at the next patch.

Threads. DDS callbacks only convert and queue; one worker decodes frame batches, runs the
teacher, trains (one phase at a time, drones scheduled by ``scheduler.policy``) and answers
snapshot requests, so a snapshot always matches the mirror its patches continue from. A
snapshot request waits for at most the phase in progress.
"""

from __future__ import annotations

import hashlib
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
from ams_ros.frame_codec import FrameCodecError, decode_frames
from ams_ros.ground_client import INITIAL_VERSION, GroundConfig
from ams_ros.patch_codec import DEFAULT_FORMAT, VALUE_MODES
from ams_ros.rate_control import AsrConfig, AtrConfig
from ams_ros.ros import conversions as conv
from ams_ros.ros.drone_node import LATCHED, RELIABLE, default_client_id, guarded, run
from ams_ros.ros.node_parameters import (
    Param,
    ParameterError,
    check,
    declare_all,
    list_type,
    read,
)
from ams_ros.selection import STRATEGIES
from ams_ros.world import CLASS_NAMES

NODE_NAME = 'ams_ground'
TEACHER_KINDS = ('synthetic', 'onnx', 'torchscript', 'torchvision')
POLICIES = ('round_robin', 'phi_weighted')
DRONE_TOPICS = ('/ams/frames', '/ams/snapshot_request', '/ams/status')

PARAMETERS = (
    # Which drones.
    Param('drone_namespaces', list_type('string'), 'drone namespaces served from start-up '
          "(e.g. ['/drone1', '/drone2']); each gets its first snapshot at once"),
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
    Param('client_timeout', 0.0, 'seconds without any message after which a drone is dropped '
          '(its buffer, optimiser and mirror freed; it gets a new snapshot if it returns); '
          '0: never', low=0.0),
    Param('max_queued_batches', 32, 'frame batches waiting for the worker; the oldest are '
          'dropped beyond this', low=1, high=100000),
    Param('snapshot_min_interval', 1.0, 'seconds: repeated requests for the same version within '
          'this are answered once', low=0.0, read_only=False),
    Param('status_period', 2.0, 'seconds between /diagnostics messages', above=0.0,
          read_only=False),
    Param('auth_key_file', '', 'file with the key shared with the drones (HMAC-SHA256); empty: '
          'messages are not signed'),
)


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
    namespace: str = ''
    batches: int = 0
    frames: int = 0
    batches_lost: int = 0  # seq gaps
    last_seq: int | None = None
    phases: int = 0
    last_loss: float = float('nan')
    last_phase_s: float = float('nan')
    patch_bytes: int = 0
    snapshots: int = 0
    last_snapshot: tuple[int, float] | None = None  # (version, monotonic time)
    sampling_rate: float = float('nan')
    update_period: float = float('nan')
    drone_version: int | None = None  # from its EdgeStatus
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
                                   phi_floor=p['scheduler.phi_floor'], key=key, seed=p['seed'])
        self._client_filter = set(p['client_ids'])
        self._shard = (p['shard_index'], p['shard_count'])
        self._snapshot_interval = p['snapshot_min_interval']
        self._max_queued = p['max_queued_batches']
        self._client_timeout = p['client_timeout']
        self._last_seen: dict[str, float] = {}

        self.stats: dict[str, _ClientStats] = {}
        self.counts: Counter[str] = Counter()
        self._lock = threading.Lock()  # stats and counts: written by callbacks and the worker
        self.last_error = ''
        self._endpoints: dict[str, _Endpoints] = {}
        self._client_ns: dict[str, str] = {}
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
                self._submit(('contact', namespace, client_id, None))
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
            if namespace is not None and namespace not in self._endpoints:
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

    def _accept(self, namespace: str, client_id: str) -> bool:
        if not client_id or not self.owns(client_id):
            self._count('ignored_messages')
            return False
        self._client_ns[client_id] = namespace
        self._last_seen[client_id] = time.monotonic()
        return True

    # -- callbacks: convert and queue ------------------------------------------------------

    @guarded
    def _on_frames(self, namespace: str, msg) -> None:
        if not self._accept(namespace, msg.client_id):
            return
        try:
            batch = conv.batch_from_msg(msg)
        except conv.MessageError as e:
            self._error(msg.client_id, f'frame batch refused: {e}', f'bad_batch.{e.reason}')
            return
        self._count('bytes_up', len(batch.data))
        self._submit(('batch', namespace, batch.client_id, batch))

    @guarded
    def _on_request(self, namespace: str, msg) -> None:
        if self._accept(namespace, msg.client_id):
            self.get_logger().info(f"'{msg.client_id}' asks for a snapshot ({msg.reason}, "
                                   f'runs v{msg.active_version})')
            self._submit(('snapshot', namespace, msg.client_id, msg.reason))

    @guarded
    def _on_status(self, namespace: str, msg) -> None:
        if not self._accept(namespace, msg.client_id):
            return
        stats = self.stats.get(msg.client_id)
        if stats is None:
            self._submit(('contact', namespace, msg.client_id, (msg.model_id,
                                                                int(msg.active_version))))
            return
        if msg.frames_received < stats.drone_frames:
            self.get_logger().info(f"'{msg.client_id}' restarted: sending its model")
            self._submit(('snapshot', namespace, msg.client_id, 'restarted'))
        stats.drone_frames = int(msg.frames_received)
        stats.drone_version = int(msg.active_version)
        stats.drone_fps = float(msg.inference_fps)

    def _submit(self, event) -> None:
        with self._work:
            if event[0] == 'batch':
                queued = [e for e in self._inbox if e[0] == 'batch']
                if len(queued) >= self._max_queued:
                    self._inbox.remove(queued[0])
                    self._count('batches_dropped')
            self._inbox.append(event)
            self._work.notify()

    # -- the worker ------------------------------------------------------------------------

    def _loop(self) -> None:
        """Alternate: take in everything queued (contacts and requests first), train a phase.

        Training one phase per round, whatever arrived meanwhile, keeps a steady stream of
        batches from starving training; a request waits for at most one phase.
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
            for event in [*events, None]:
                if self._closed:
                    return
                try:
                    if event is not None:
                        self._handle(event)
                    else:
                        self._train_one()
                except Exception as e:  # noqa: BLE001 - one failure never stops serving
                    if self._closed or not self.context.ok():
                        return  # shutting down: publishers are gone
                    client_id = event[2] if event else ''
                    self._error(client_id, f'{type(e).__name__}: {e}', 'worker_errors')
                finally:
                    self._busy = ''

    def _drop_silent_clients(self) -> None:
        if not self._client_timeout:
            return
        now = time.monotonic()
        for client_id in list(self.stats):
            if now - self._last_seen.get(client_id, now) > self._client_timeout:
                self.server.remove_client(client_id)
                with self._lock:
                    del self.stats[client_id]
                self.get_logger().info(f"drone '{client_id}' silent for "
                                       f'{self._client_timeout:g} s: dropped')

    def _has_training(self) -> bool:
        return any(self.server.client(c).pending_frames > 0 for c in self.server.client_ids)

    def _handle(self, event) -> None:
        kind, namespace, client_id, data = event
        self._client_ns.setdefault(client_id, namespace)
        stats = self._ensure_client(client_id, data if kind == 'contact' else None,
                                    send_snapshot=kind != 'snapshot')
        if kind == 'snapshot':
            self._send_snapshot(client_id)
        elif kind == 'batch':
            self._busy = f'labelling {client_id}'
            self._ingest(client_id, stats, data)

    def _ensure_client(self, client_id: str, drone_model, send_snapshot: bool) -> _ClientStats:
        """Add a drone on first contact: sampling control, and its model unless it has it."""
        stats = self.stats.get(client_id)
        if stats is not None:
            return stats
        client = self.server.add_client(client_id)
        stats = _ClientStats(namespace=self._client_ns[client_id])
        with self._lock:
            self.stats[client_id] = stats
        self.get_logger().info(f"new drone '{client_id}' in {stats.namespace}")
        self._send_sampling(client_id, client.asr.rate, client.atr.update_period)
        up_to_date = drone_model == (self.server.template.model_id, INITIAL_VERSION)
        if send_snapshot and not up_to_date:
            self._send_snapshot(client_id)
        return stats

    def _ingest(self, client_id: str, stats: _ClientStats, batch) -> None:
        if stats.last_seq is not None and batch.seq > stats.last_seq + 1:
            stats.batches_lost += batch.seq - stats.last_seq - 1
        stats.last_seq = batch.seq
        try:
            frames = decode_frames(batch.data, batch.codec, batch.width, batch.height,
                                   len(batch.stamps))
        except FrameCodecError as e:
            self._error(client_id, f'batch {batch.seq} not decodable: {e}',
                        f'decode.{e.reason.value}')
            return
        self.server.add_frames(client_id, frames, batch.stamps)
        stats.batches += 1
        stats.frames += len(frames)
        decision = self.server.client(client_id).update_rates(max(batch.stamps))
        if decision is not None:
            self._send_sampling(client_id, decision.sampling_rate, decision.update_period)

    def _train_one(self) -> None:
        client_id = self.server.next_client()
        if client_id is None:
            return
        self._busy = f'training {client_id}'
        started = time.monotonic()
        _, output = self.server.train_next()
        stats = self.stats[client_id]
        stats.phases += 1
        stats.last_loss = output.result.mean_loss
        stats.last_phase_s = time.monotonic() - started
        msg = conv.patch_to_msg(output.patch, self.get_clock().now().to_msg())
        stats.patch_bytes += output.patch.nbytes
        self._endpoints[self._client_ns[client_id]].patch.publish(msg)
        self.get_logger().info(
            f"'{client_id}' v{output.patch.version}: loss {output.result.mean_loss:.3f}, "
            f'{len(output.result.indices)} parameters, {output.patch.nbytes} bytes, phase '
            f'{stats.last_phase_s:.2f} s')

    def _send_snapshot(self, client_id: str) -> None:
        stats = self.stats[client_id]
        client = self.server.client(client_id)
        now = time.monotonic()
        if (stats.last_snapshot is not None and stats.last_snapshot[0] == client.mirror.version
                and now - stats.last_snapshot[1] < self._snapshot_interval):
            return  # a burst of requests for the same model: it is on its way
        self._busy = f'snapshot for {client_id}'
        payload = client.snapshot()
        self._endpoints[self._client_ns[client_id]].snapshot.publish(
            conv.snapshot_to_msg(payload, self.get_clock().now().to_msg()))
        stats.snapshots += 1
        stats.last_snapshot = (payload.version, now)
        self._count('bytes_down', len(payload.model_data))

    def _send_sampling(self, client_id: str, rate: float, period: float) -> None:
        stats = self.stats.get(client_id)
        if stats is not None:
            stats.sampling_rate, stats.update_period = rate, period
        self._endpoints[self._client_ns[client_id]].sampling.publish(
            conv.sampling_control(client_id, rate, period, self.get_clock().now().to_msg()))

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
            if parameter.name == 'snapshot_min_interval':
                self._snapshot_interval = parameter.value
            elif parameter.name == 'status_period':
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
                    'patch_bytes': stats.patch_bytes, 'snapshots': stats.snapshots,
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
