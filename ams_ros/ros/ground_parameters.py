"""The ground node's parameters (with defaults and ranges) and the engine configs they make."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass

from ams_ros.ground.client_registry import ownership
from ams_ros.ground.drone_session import GroundConfig
from ams_ros.ground.phase_scheduler import POLICIES, PhaseScheduler
from ams_ros.ground.rate_control import AsrConfig, AtrConfig
from ams_ros.ground.selection import STRATEGIES
from ams_ros.ground.station import StationConfig
from ams_ros.profiles import AMS
from ams_ros.ros.node_parameters import Param, ParameterError, list_type
from ams_ros.wire.patch_codec import DEFAULT_FORMAT, PATCH_STREAMS, VALUE_MODES
from ams_ros.world import CLASS_NAMES

TEACHER_KINDS = ('synthetic', 'onnx', 'torchscript', 'torchvision')

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
    # The task: its classes, teacher and student replace the parameters below.
    Param('task', '', 'task file, or the name of a shipped one (config/tasks/, e.g. person): '
          'its classes and teacher replace class_names and teacher.*, its student replaces '
          "student and input_*; empty: those parameters"),
    # The student every drone starts from.
    Param('student', 'deeplabv3_mbv2', 'student checkpoint file (ams_ros.model.pretrain format), '
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
    Param('trainer.learning_rate', AMS.learning_rate, 'alpha (Adam; the paper: 0.001)',
          above=0.0),
    Param('trainer.class_balance', AMS.class_balance, 'weigh each class in the loss by its '
          'pixel share in the batch ** -class_balance (0: plain cross entropy, the paper)',
          low=0.0, high=4.0),
    Param('trainer.fraction', AMS.fraction, 'gamma: fraction of parameters updated per phase',
          above=0.0, high=1.0),
    Param('trainer.strategy', AMS.strategy, 'which parameters a phase updates (the paper: '
          'gradient_guided)', choices=STRATEGIES),
    Param('trainer.optimizer', 'adam', 'adam (the paper) or sgd', choices=('adam', 'sgd')),
    Param('trainer.momentum', 0.0, 'sgd only', low=0.0, high=1.0),
    Param('trainer.horizon_s', AMS.horizon_s, 'T_horizon: training samples frames of this many '
          'seconds', above=0.0),
    Param('trainer.channels_last', True, 'NHWC activations (about 2x faster on CPU)'),
    # Downlink.
    Param('patch.value_mode', AMS.patch_format.value_mode, 'precision of patch values: fp16 (the '
          "paper's), fp16-delta, q8-delta or fp32", choices=VALUE_MODES),
    Param('patch.streams', 'smallest', "how indices and values are packed: the smallest of "
          "every index scheme and compressor, or the paper's gzip'd bit-mask",
          choices=tuple(PATCH_STREAMS)),
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
    Param('atr.period_min', AMS.t_update, 'T_update (s) when the scene changes; also the fixed '
          'value', above=0.0),
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


def with_task(p: dict) -> dict:
    """Return the parameters with the task file's classes, teacher and student in force.

    A synthetic teacher keeps the teacher.* parameters (its flight seed is the camera's).
    """
    from ams_ros.task import load_task

    task = load_task(p['task'])
    p = dict(p, class_names=list(task.class_names))
    if task.teacher['kind'] != 'synthetic':
        p['task.teacher'] = task.teacher
    if 'input' in task.student:  # the user's own ONNX or TorchScript file
        p['task.student'] = dict(task.student, class_colours=task.class_colours)
        p['student'] = task.student.get('onnx') or task.student['torchscript']
    elif 'path' in task.student:
        p['student'] = task.student['path']
    else:
        p['student'] = task.student['arch']
        p['input_height'], p['input_width'] = task.student['input_size']
    return p


def ground_config(p: dict, device: str) -> GroundConfig:
    """Return the engine's GroundConfig from the parameters (ValueError when inconsistent)."""
    from ams_ros.ground.trainer import TrainerConfig

    trainer = TrainerConfig(
        iterations=p['trainer.iterations'], batch_size=p['trainer.batch_size'],
        learning_rate=p['trainer.learning_rate'], class_balance=p['trainer.class_balance'],
        fraction=p['trainer.fraction'],
        strategy=p['trainer.strategy'], horizon_s=p['trainer.horizon_s'],
        optimizer=p['trainer.optimizer'], momentum=p['trainer.momentum'], device=device,
        channels_last=p['trainer.channels_last'])
    patch_format = dataclasses.replace(PATCH_STREAMS[p['patch.streams']],
                                       value_mode=p['patch.value_mode'],
                                       zstd_level=p['patch.zstd_level'])
    asr = AsrConfig(phi_target=p['asr.phi_target'], step_size=p['asr.step_size'],
                    rate_min=p['asr.rate_min'], rate_max=p['asr.rate_max'],
                    initial_rate=p['asr.initial_rate'], interval=p['asr.interval'])
    atr = AtrConfig(enabled=p['atr.enabled'], period_min=p['atr.period_min'],
                    period_max=p['atr.period_max'], growth=p['atr.growth'],
                    phi_low=p['atr.phi_low'], phi_high=p['atr.phi_high'],
                    patience=p['atr.patience'])
    return GroundConfig(trainer=trainer, patch_format=patch_format, asr=asr, atr=atr)


def station_config(p: dict) -> StationConfig:
    """Return the GroundStation's config; ParameterError when the parameters disagree."""
    if p['snapshot_budget.backoff_max_s'] < p['snapshot_budget.backoff_min_s']:
        raise ParameterError('snapshot_budget.backoff_max_s must not be below '
                             'snapshot_budget.backoff_min_s')
    return StationConfig(max_seq_gap=p['max_seq_gap'], snapshot_kbps=p['snapshot_budget.kbps'],
                         snapshot_burst=p['snapshot_budget.burst'],
                         snapshot_backoff_min_s=p['snapshot_budget.backoff_min_s'],
                         snapshot_backoff_max_s=p['snapshot_budget.backoff_max_s'])


@dataclass(frozen=True)
class GroundEngine:
    """What the ground node serves with, made from its parameters."""

    scheduler: PhaseScheduler  # its template is None while the student must be pretrained
    load_template: Callable[[], object]  # loads (or pretrains) the student
    owns: Callable[[str], bool]  # the client filter and shard
    device: str


def ground_engine(p: dict, warn: Callable[[str], None]) -> GroundEngine:
    """Build the scheduler, teacher and student the parameters name; ParameterError if not.

    The teacher is built now (one serves every drone: teachers are stateless), so a bad one
    stops the node at start-up rather than at the first drone; so is the student, unless it is
    a packaged one that must be pretrained first (``load_template`` then does it later).
    """
    from ams_ros.ground.teachers import make_teacher, select_torch_device
    from ams_ros.model.template import TemplateError, load_template, needs_pretraining

    try:
        owns = ownership(p['client_ids'], p['shard_index'], p['shard_count'])
        if p['torch_threads']:
            import torch

            torch.set_num_threads(p['torch_threads'])
        device = select_torch_device(p['device'])
        config = ground_config(p, device)
        p = with_task(p) if p['task'] else p
        teacher = make_teacher(p.get('task.teacher') or teacher_spec(p, device))

        def load():
            if 'task.student' in p:  # the user's ONNX or TorchScript file
                from ams_ros.model.onnx_student import task_student_template

                s = p['task.student']
                return task_student_template(s, p['class_names'], s['class_colours'])
            template = load_template(p['student'], p['class_names'],
                                     (p['input_height'], p['input_width']), p['seed'], device,
                                     warn)
            if p['task'] and template.class_names != tuple(p['class_names']):
                raise TemplateError(f"the student {p['student']} has classes "
                                    f'{list(template.class_names)}, the task '
                                    f"{list(p['class_names'])}")
            return template

        template = None if needs_pretraining(p['student']) else load()
    except (ValueError, OSError, RuntimeError, TemplateError) as e:
        raise ParameterError(str(e)) from e
    scheduler = PhaseScheduler(template, lambda _client_id: teacher, config,
                               policy=p['scheduler.policy'], phi_floor=p['scheduler.phi_floor'],
                               seed=p['seed'])
    return GroundEngine(scheduler, load, owns, device)
