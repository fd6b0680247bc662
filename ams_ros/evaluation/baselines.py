"""Remote+Tracking and Just-In-Time (paper §4.1) on the harness's simulated time and link.

Both follow the conventions of `schemes`: time is the frames' stamps; the drone's mask of every
``ctx.eval_stride``-th camera frame is scored by `core.FrameScorer`; the ground is one server
that handles what arrives in order and whose work takes simulated time; every byte handed to the
link counts (lost ones too); ``SchemeResult.updates`` lists the instants the drone's output
changed source (a patch applied, a label map received).

**Remote+Tracking**: the drone sends one frame every ``1 / rate`` s (1 fps, the paper's), each on
its own as soon as it is taken (no buffering: the labels would go stale), as a high-quality JPEG
(quality 95; ``codec='png'`` for lossless) at the camera's frame size. The ground labels it with
the teacher and sends the label map down as a PNG (lossless; class ids compress well). The drone
tracks with OpenCV's Farneback optical flow, as the paper does (5 iterations, window 64 at
1024 pixels wide, scaled to the frame width here, 3 pyramid levels, poly_n 5): on every camera
frame it computes the flow back to the previous frame and warps the current label map along it
(nearest neighbour), so a received label travels frame by frame; a label that arrives late (it
is for a frame taken one uplink + labelling + downlink ago) is carried forward through the flows
of the frames since its own, which the drone keeps. Its mask is that warped label map. Before the
first label arrives the drone shows its pretrained student's mask (the paper does not say; it
lasts one round trip). Flow is computed at the camera's frame size, like the paper's 1024x512,
which is larger than its student's input.

**Just-In-Time** (Mullapudi et al., ICCV 2019, run at the server as the paper does): the drone
sends a frame whenever ``stride`` seconds have passed since its last one (each on its own, JPEG
at the uplink size AMS uses). The ground takes the most recent frame that has arrived whenever it
is free (older waiting frames are skipped, and counted), labels it, and checks the student's
accuracy on it; while that is below ``threshold`` and fewer than ``max_updates`` steps were
taken, it takes one momentum-SGD step (0.9) on that frame alone, on the parameters the strategy
selected for this update (gradient-guided 5% by default, chosen once per update as in AMS), and
measures again. If it took any step, the change goes down as one patch of the ground's mirror
(the real patch codec, so the downlink bytes are real). Then the stride doubles if the
threshold was met and halves if not, within [min_stride_s, max_stride_s] (JITNet's delta_min 8
and delta_max 64 frames at 30 fps: 266 ms and 2.13 s); a changed stride goes down as a small
control message and applies on the drone when delivered. Patches leave the ground at least
``min_stride_s`` apart, so the drone gets at most one update every 266 ms. Accuracy is the
frame's mIoU against the teacher at the student's input size (``accuracy='pixel'``: pixel
accuracy), as JITNet measures it; it is computed with the ground's float weights (the patch then
rounds them to the patch format, as AMS's patches do). The learning rate defaults to 1e-3:
JITNet's 0.01 with momentum 0.9 drove our fresh student (BatchNorm frozen) to non-finite weights
within a few updates; a step that does so drops its update (``updates_diverged``). A patch the
drone cannot apply makes it ask for a snapshot, as in AMS (``SnapshotRequester``). A camera
slower than 1 / min_stride_s (the quick profile's 1 fps) cannot sample that fast: use
``--fps 4`` or more (30 for exactly 266 ms). ``SchemeResult.sampling`` records the
rate the drone really samples at: a whole number of camera frames per stride.

Simulated ground time (``ctx.phase_time_s`` fixed): one *frame-iteration* takes
``phase_time_s / (K * batch_size)`` seconds, the cost per frame and iteration that AMS's fixed
phase implies; Remote+Tracking labels a frame in one unit, and a Just-In-Time update takes one
unit for labelling and the first check plus one per step (``RemoteTracking(label_time_s=...)``
and ``JustInTime(iteration_time_s=...)`` override them). With ``phase_time_s`` None, phases take
their measured wall time, as in AMS. Each scheme's settings are its constructor's arguments
(``JitConfig`` lists Just-In-Time's).
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections import Counter, deque
from dataclasses import dataclass

import cv2
import numpy as np

from ams_ros import IGNORE_LABEL
from ams_ros.drone.model_updates import ModelUpdates
from ams_ros.evaluation.core import EvalContext, FrameScorer, SchemeResult
from ams_ros.evaluation.link import Link
from ams_ros.evaluation.schemes import (
    CONTROL_NBYTES,
    SnapshotRequest,
    deliver_update,
    evaluate_frame,
    linked_result,
    new_drone,
    send_snapshot_request,
    uplink_nbytes,
)
from ams_ros.ground.drone_session import DroneSession, GroundConfig
from ams_ros.ground.selection import GRADIENT_GUIDED
from ams_ros.ground.trainer import (
    TrainerConfig,
)
from ams_ros.metrics import frame_miou
from ams_ros.pixels import resize_frame, resize_labels
from ams_ros.wire.frame_codec import CodecSettings, FrameCodecError, encode_frames
from ams_ros.wire.uplink_batch import UplinkBatch, decode_batch

REMOTE_TRACKING = 'remote_tracking'
JUST_IN_TIME = 'just_in_time'
ACCURACY_METRICS = ('miou', 'pixel')


# -- optical-flow tracking --------------------------------------------------------------------

@dataclass(frozen=True)
class FarnebackParams:
    """cv2.calcOpticalFlowFarneback settings; the window is given at `reference_width` pixels.

    The paper's: 5 iterations, window ("Gaussian filter") 64, 3 pyramid levels, poly_n 5, at
    1024x512. OpenCV suggests poly_sigma 1.1 for poly_n 5.
    """

    pyr_scale: float = 0.5
    levels: int = 3
    winsize: int = 64
    iterations: int = 5
    poly_n: int = 5
    poly_sigma: float = 1.1
    reference_width: int = 1024

    def window(self, width: int) -> int:
        """Return the window for a frame `width` pixels wide (at least 5)."""
        return max(5, int(round(self.winsize * width / self.reference_width)))


def to_gray(frame_rgb: np.ndarray) -> np.ndarray:
    return cv2.cvtColor(np.ascontiguousarray(frame_rgb), cv2.COLOR_RGB2GRAY)


def backward_flow(current_gray: np.ndarray, previous_gray: np.ndarray,
                  params: FarnebackParams | None = None) -> np.ndarray:
    """Return the flow from each pixel of the current frame to where it was in the previous one.

    HxWx2 float32 (dx, dy): current(y, x) ~ previous(y + dy, x + dx).
    """
    params = params or FarnebackParams()
    return cv2.calcOpticalFlowFarneback(
        current_gray, previous_gray, None, params.pyr_scale, params.levels,
        params.window(current_gray.shape[1]), params.iterations, params.poly_n,
        params.poly_sigma, 0)


def warp_labels(labels: np.ndarray, flow: np.ndarray) -> np.ndarray:
    """Carry a class-id map of the previous frame onto the current one along `backward_flow`."""
    height, width = flow.shape[:2]
    if labels.shape != (height, width):
        labels = resize_labels(labels, height, width)
    grid_x, grid_y = np.meshgrid(np.arange(width, dtype=np.float32),
                                 np.arange(height, dtype=np.float32))
    return cv2.remap(np.ascontiguousarray(labels), grid_x + flow[..., 0], grid_y + flow[..., 1],
                     interpolation=cv2.INTER_NEAREST, borderMode=cv2.BORDER_REPLICATE)


class LabelTracker:
    """The drone's tracker: warps the last received label map onto every new camera frame.

    `add_frame` for every camera frame in order; `set_label` when a label map arrives for an
    earlier (or the current) frame: it is carried through the flows of the frames since. Flows
    are kept back to `forget_before`'s stamp (the oldest frame whose label may still come).
    """

    def __init__(self, params: FarnebackParams | None = None):
        self.params = params or FarnebackParams()
        self.mask: np.ndarray | None = None
        self.mask_stamp: float | None = None  # stamp of the frame the label was made for
        self._previous: np.ndarray | None = None
        self._flows: deque[tuple[float, np.ndarray]] = deque()  # (stamp, flow into that frame)
        self.flow_seconds = 0.0
        self.flows_computed = 0
        self.late_labels = 0  # labels older than the flows kept
        self._kept_from = -math.inf

    @property
    def size(self) -> tuple[int, int] | None:
        return None if self._previous is None else self._previous.shape[:2]

    def add_frame(self, stamp: float, frame_rgb: np.ndarray) -> None:
        gray = to_gray(frame_rgb)
        if self._previous is not None:
            started = time.perf_counter()
            flow = backward_flow(gray, self._previous, self.params)
            self.flow_seconds += time.perf_counter() - started
            self.flows_computed += 1
            self._flows.append((float(stamp), flow))
            if self.mask is not None:
                self.mask = warp_labels(self.mask, flow)
        self._previous = gray

    def set_label(self, stamp: float, label: np.ndarray) -> None:
        """Take the label map of the frame stamped `stamp` and carry it to the newest frame."""
        stamp = float(stamp)
        if self.mask_stamp is not None and stamp < self.mask_stamp:
            return  # older than the label already shown
        mask = np.asarray(label, np.uint8)
        if self.size is not None and mask.shape != self.size:
            mask = resize_labels(mask, *self.size)
        if stamp < self._kept_from - 1e-9:
            self.late_labels += 1  # some of its flows are gone: carried from the oldest kept
        for flow_stamp, flow in self._flows:
            if flow_stamp > stamp + 1e-9:
                mask = warp_labels(mask, flow)
        self.mask, self.mask_stamp = mask, stamp

    def forget_before(self, stamp: float) -> None:
        """Drop the flows only a label older than `stamp` would need."""
        self._kept_from = max(self._kept_from, float(stamp))
        while self._flows and self._flows[0][0] <= self._kept_from + 1e-9:
            self._flows.popleft()


# -- messages ---------------------------------------------------------------------------------

@dataclass(frozen=True)
class LabelMessage:
    """The teacher's label map of one frame, PNG-encoded, on its way to the drone."""

    stamp: float
    data: bytes

    @property
    def nbytes(self) -> int:
        return len(self.data) + CONTROL_NBYTES


@dataclass(frozen=True)
class StrideDecision:
    stride_s: float


def encode_label_png(label: np.ndarray) -> bytes:
    ok, encoded = cv2.imencode('.png', np.ascontiguousarray(label, np.uint8),
                               [cv2.IMWRITE_PNG_COMPRESSION, 9])
    if not ok:
        raise ValueError(f'OpenCV could not encode a {label.shape} label map')
    return encoded.tobytes()


def decode_label_png(data: bytes) -> np.ndarray:
    label = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)
    if label is None:
        raise ValueError('undecodable label map')
    return label


def single_frame_batch(client_id: str, seq: int, stamp: float, frame: np.ndarray,
                       settings: CodecSettings, rate: float) -> UplinkBatch:
    """Return one frame as its own FrameBatch message (T_update = 0: no buffering)."""
    height, width = frame.shape[:2]
    data = encode_frames([frame], settings)
    return UplinkBatch(client_id, seq, settings.codec, width, height, (float(stamp),), data,
                       float(rate), 0.0)


def frame_iteration_s(ctx: EvalContext) -> float | None:
    """Return the simulated seconds of one frame-iteration, or None when phases are measured."""
    if ctx.phase_time_s is None:
        return None
    return ctx.phase_time_s / (ctx.trainer.iterations * ctx.trainer.batch_size)


# -- Remote+Tracking --------------------------------------------------------------------------

class RemoteTracking:
    """Teacher labels at 1 fps from the ground, tracked on the drone with optical flow."""

    name = REMOTE_TRACKING

    def __init__(self, name: str | None = None, rate: float = 1.0, codec: str = 'jpeg',
                 jpeg_quality: int = 95, flow: FarnebackParams | None = None,
                 max_label_age_s: float = 10.0, label_time_s: float | None = None):
        if name:
            self.name = name
        if not rate > 0:
            raise ValueError(f'rate must be positive, got {rate}')
        self.rate = float(rate)
        self.settings = CodecSettings(codec=codec, jpeg_quality=int(jpeg_quality))
        self.flow = flow or FarnebackParams()
        self.max_label_age_s = float(max_label_age_s)
        self.label_time_s = label_time_s  # None: one frame-iteration (frame_iteration_s)

    def run(self, ctx: EvalContext) -> SchemeResult:
        rate, settings = self.rate, self.settings
        label_time = (frame_iteration_s(ctx) if self.label_time_s is None
                      else self.label_time_s)
        drone = new_drone(ctx)
        link = Link(ctx.link, seed=ctx.seed)
        scorer = FrameScorer(ctx)
        tracker = LabelTracker(self.flow)
        uplink_size = ctx.drone.uplink_size
        start = ctx.source.start_s
        ground_free = -math.inf
        next_due: float | None = None
        outstanding: dict[float, float] = {}  # sample stamp -> sent at
        updates, ages, label_bytes, phase_walls = [], [], [], []
        counts = {'frames_sent': 0, 'labels_received': 0, 'frames_refused': 0,
                  'frames_before_first_label': 0}
        seq = 0
        try:
            for _, stamp, frame, label, evaluated in ctx.frames():
                # Ground: label each arrived frame in turn and send its label map down.
                for arrived, batch in link.uplink.receive(stamp):
                    begin = max(arrived, ground_free)
                    started = time.perf_counter()
                    try:
                        frames = decode_batch(batch)
                    except FrameCodecError:
                        counts['frames_refused'] += 1
                        continue
                    labels = np.asarray(ctx.teacher.label(frames, batch.stamps))
                    message = LabelMessage(batch.stamps[0], encode_label_png(labels[0]))
                    wall = time.perf_counter() - started
                    phase_walls.append(wall)
                    ground_free = begin + (wall if label_time is None else label_time)
                    link.downlink.send(ground_free, message, message.nbytes, 'labels')
                    label_bytes.append(message.nbytes)
                # Drone: track onto this frame, then take any label map that has arrived.
                tracker.add_frame(stamp, frame)
                for delivered, message in link.downlink.receive(stamp):
                    tracker.set_label(message.stamp, decode_label_png(message.data))
                    outstanding.pop(message.stamp, None)
                    updates.append(delivered)
                    ages.append(delivered - message.stamp)
                    counts['labels_received'] += 1
                for sent in [s for s in outstanding if s < stamp - self.max_label_age_s]:
                    del outstanding[sent]  # lost on the way: stop keeping flows for it
                tracker.forget_before(min(outstanding, default=stamp))
                if evaluated:
                    if label is not None or ctx.teacher is not None:
                        truth = scorer.truth(stamp, frame, label)
                        if tracker.mask is None:
                            counts['frames_before_first_label'] += 1
                            mask = drone.infer(frame)
                        else:
                            mask = tracker.mask
                        scorer.add(stamp, mask, truth)
                # Sampling: one frame every 1/rate s, sent at once.
                if next_due is None or stamp >= next_due - 1e-6:
                    next_due = stamp + 1.0 / rate if next_due is None else max(
                        next_due + 1.0 / rate, stamp + 0.5 / rate)
                    sample = frame if uplink_size is None else resize_frame(frame, *uplink_size)
                    seq += 1
                    batch = single_frame_batch(drone.config.client_id, seq, stamp, sample,
                                               settings, rate)
                    link.uplink.send(stamp, batch, uplink_nbytes(batch), 'frames')
                    outstanding[stamp] = stamp
                    counts['frames_sent'] += 1
                ctx.report(stamp)
        finally:
            drone.close()
        extra = dict(counts)
        extra.update(
            config={'rate': rate, 'codec': settings.codec,
                    'jpeg_quality': settings.jpeg_quality,
                    'flow': dataclasses.asdict(self.flow),
                    'flow_window': tracker.params.window(tracker.size[1])
                    if tracker.size else None, 'label_time_s': label_time},
            mean_label_age_s=float(np.mean(ages)) if ages else None,
            mean_label_bytes=float(np.mean(label_bytes)) if label_bytes else None,
            mean_label_wall_s=float(np.mean(phase_walls)) if phase_walls else None,
            flows_computed=tracker.flows_computed,
            mean_flow_ms=1000 * tracker.flow_seconds / max(1, tracker.flows_computed),
            late_labels=tracker.late_labels,
            uplink_lost=link.uplink.messages_lost, downlink_lost=link.downlink.messages_lost,
            uplink_by_kind=link.uplink.bytes_by_kind(),
            downlink_by_kind=link.downlink.bytes_by_kind())
        return SchemeResult(
            self.name, ctx.source.name, ctx.source.duration_s, ctx.class_names,
            scorer.frame_miou, scorer.confusion, link.uplink.bytes_sent,
            link.downlink.bytes_sent, updates, [(start, rate)],
            link.bandwidth(start, start + ctx.source.duration_s), extra)


# -- Just-In-Time -----------------------------------------------------------------------------

@dataclass(frozen=True)
class JitConfig:
    """Just-In-Time's parameters (JITNet's defaults where the AMS paper does not say)."""

    threshold: float = 0.75
    max_updates: int = 8  # u_max: SGD steps per update
    min_stride_s: float = 8 / 30  # delta_min 8 frames at 30 fps: one update every 266 ms
    max_stride_s: float = 64 / 30  # delta_max 64 frames
    learning_rate: float = 1e-3  # JITNet's 0.01 diverges on our student (BatchNorm frozen)
    momentum: float = 0.9
    fraction: float = 0.05
    strategy: str = GRADIENT_GUIDED
    accuracy: str = 'miou'
    jpeg_quality: int = 95
    iteration_time_s: float | None = None  # simulated; None: one frame-iteration

    def __post_init__(self):
        if not 0.0 <= self.threshold <= 1.0:
            raise ValueError(f'threshold must be in [0, 1], got {self.threshold}')
        if self.max_updates < 1:
            raise ValueError('max_updates must be at least 1')
        if not 0 < self.min_stride_s <= self.max_stride_s:
            raise ValueError('need 0 < min_stride_s <= max_stride_s')
        if self.accuracy not in ACCURACY_METRICS:
            raise ValueError(f'accuracy must be one of {ACCURACY_METRICS}')


class JustInTime:
    """Mullapudi et al.'s online distillation at the ground, streamed to the drone as patches."""

    name = JUST_IN_TIME

    def __init__(self, name: str | None = None, **settings):
        if name:
            self.name = name
        self.config = JitConfig(**settings)  # TypeError on an unknown setting

    def run(self, ctx: EvalContext) -> SchemeResult:
        return _JitRun(ctx, self.name, self.config).run()


class _JitRun:
    def __init__(self, ctx: EvalContext, name: str, config: JitConfig):
        self.ctx, self.name, self.config = ctx, name, config
        trainer = TrainerConfig(
            iterations=config.max_updates, batch_size=1, learning_rate=config.learning_rate,
            fraction=config.fraction, strategy=config.strategy, optimizer='sgd',
            momentum=config.momentum, horizon_s=ctx.trainer.horizon_s, device=ctx.trainer.device,
            channels_last=ctx.trainer.channels_last)
        self.ground = DroneSession(ctx.source.name, ctx.template, ctx.teacher,
                                   GroundConfig(trainer=trainer,
                                                patch_format=ctx.ground.patch_format),
                                   seed=ctx.seed)
        self.drone = new_drone(ctx, client_id=ctx.source.name)
        self.link = Link(ctx.link, seed=ctx.seed)
        self.scorer = FrameScorer(ctx)
        self.settings = CodecSettings(codec='jpeg', jpeg_quality=config.jpeg_quality)
        self.iteration_time = (frame_iteration_s(ctx) if config.iteration_time_s is None
                               else config.iteration_time_s)
        # Ground state.
        self.stride = config.min_stride_s  # the ground's; the drone's follows on delivery
        self.drone_stride_sent = config.min_stride_s
        self.waiting: list[tuple[float, UplinkBatch]] = []
        self.ground_free = -math.inf
        self.downlink_clock = -math.inf
        self.last_patch_sent = -math.inf
        self.phases: list[dict] = []
        # Drone state.
        self.drone_stride = config.min_stride_s
        self.last_sample: float | None = None
        self.seq = 0
        self.updates: list[float] = []
        self.sampling = [(ctx.source.start_s, self._effective_rate(self.drone_stride))]
        self.model_updates = ModelUpdates(self.drone)
        self.counts = Counter(frames_sent=0, frames_skipped=0, frames_refused=0,
                              patches_sent=0, snapshots_sent=0, updates_diverged=0)

    def run(self) -> SchemeResult:
        ctx = self.ctx
        try:
            for _, stamp, frame, label, evaluated in ctx.frames():
                self._ground_until(stamp)
                self._drone_receive(stamp)
                send_snapshot_request(self.model_updates, self.link, stamp)
                if evaluated:
                    evaluate_frame(self.scorer, self.drone, stamp, frame, label)
                self._drone_sample(stamp, frame)
                ctx.report(stamp)
        finally:
            self.drone.close()
        return self._result()

    # -- ground ------------------------------------------------------------------------------

    def _send_down(self, t: float, message, nbytes: int, kind: str) -> float:
        t = max(t, self.downlink_clock)
        self.downlink_clock = t
        self.link.downlink.send(t, message, nbytes, kind)
        return t

    def _ground_until(self, now: float) -> None:
        for arrived, message in self.link.uplink.receive(now):
            if isinstance(message, SnapshotRequest):
                snapshot = self.ground.snapshot()
                self._send_down(max(arrived, self.ground_free), snapshot, snapshot.nbytes,
                                'snapshot')
                self.counts['snapshots_sent'] += 1
            else:
                self.waiting.append((arrived, message))
        # Start every update whose start is known by now: the server, when free, takes the
        # newest frame that has arrived and skips the older ones.
        while self.waiting:
            begin = max(self.ground_free, self.waiting[0][0])
            if begin > now:
                break
            ready = [item for item in self.waiting if item[0] <= begin]
            self.waiting = self.waiting[len(ready):]
            self.counts['frames_skipped'] += len(ready) - 1
            self._update(begin, ready[-1][1])

    def _update(self, begin: float, batch: UplinkBatch) -> None:
        config, ground = self.config, self.ground
        started = time.perf_counter()
        try:
            frames = decode_batch(batch)
        except FrameCodecError:
            self.counts['frames_refused'] += 1
            return
        stamp = batch.stamps[0]
        label = np.asarray(ground.teacher.label(frames, [stamp]))[0]
        steps, before, after, indices = self._train(frames[0], label)
        patch = None
        if steps:
            trainer = ground.trainer
            values = trainer.values(indices)
            if np.isfinite(values).all():
                patch = ground.mirror.make_patch(indices.cpu().numpy(), values)
            else:  # diverged: drop this update and its momentum, keep the drone's model
                self.counts['updates_diverged'] += 1
                trainer.reset_optimizer()
                after = None
            trainer.set_weights(ground.mirror.vector)
        met = after is not None and after >= config.threshold
        if after is not None:  # a frame without labelled pixels says nothing
            self.stride = (min(2 * self.stride, config.max_stride_s) if met
                           else max(self.stride / 2, config.min_stride_s))
        wall = time.perf_counter() - started
        duration = wall if self.iteration_time is None else self.iteration_time * (1 + steps)
        done = begin + duration
        self.ground_free = done
        if self.stride != self.drone_stride_sent:
            self._send_down(done, StrideDecision(self.stride), CONTROL_NBYTES, 'control')
            self.drone_stride_sent = self.stride
        sent = None
        if patch is not None:
            sent = self._send_down(max(done, self.last_patch_sent + config.min_stride_s), patch,
                                   patch.nbytes, 'patch')
            self.last_patch_sent = sent
            self.counts['patches_sent'] += 1
        self.phases.append({
            'stamp': stamp, 'start': begin, 'end': done, 'wall_s': wall, 'steps': steps,
            'accuracy_before': before, 'accuracy_after': after, 'met': met,
            'stride_s': self.stride, 'patch_sent': sent,
            'patch_bytes': None if patch is None else patch.nbytes})

    def _accuracy(self, prediction: np.ndarray, label: np.ndarray) -> float | None:
        if self.config.accuracy == 'pixel':
            keep = label != IGNORE_LABEL
            return float((prediction[keep] == label[keep]).mean()) if keep.any() else None
        value = frame_miou(label, prediction, self.ctx.num_classes)
        return None if math.isnan(value) else value

    def _train(self, frame: np.ndarray, label: np.ndarray):
        """JITNet's inner loop on one frame: step until accurate enough or u_max steps.

        Returns (steps, accuracy before, accuracy after, selected indices or None); the
        parameters are selected once per update, at its first step.
        """
        config, trainer = self.config, self.ground.trainer
        trainer.begin()
        x, y = trainer.inputs([frame], [label])
        target = y[0].cpu().numpy()
        indices = None
        steps, before, accuracy = 0, None, None
        while True:
            logits = trainer.forward(x)
            prediction = logits.detach().argmax(1)[0].cpu().numpy().astype(np.uint8)
            accuracy = self._accuracy(prediction, target)
            if steps == 0:
                before = accuracy
            if accuracy is None or accuracy >= config.threshold or steps == config.max_updates:
                break
            trainer.backward(logits, y)
            if indices is None:
                indices = trainer.select()
            trainer.step(indices)
            steps += 1
        return steps, before, accuracy, indices

    # -- drone -------------------------------------------------------------------------------

    def _drone_receive(self, now: float) -> None:
        for delivered, message in self.link.downlink.receive(now):
            if isinstance(message, StrideDecision):
                if message.stride_s != self.drone_stride:
                    self.drone_stride = message.stride_s
                    self.sampling.append((delivered, self._effective_rate(message.stride_s)))
                continue
            if deliver_update(self.model_updates, self.link, self.counts, delivered, message):
                self.updates.append(delivered)

    def _effective_rate(self, stride: float) -> float:
        """Return the frames/s a stride gives at the camera's rate (whole camera frames)."""
        fps = self.ctx.fps
        return fps / max(1, math.ceil(stride * fps - 1e-6))

    def _drone_sample(self, stamp: float, frame: np.ndarray) -> None:
        if self.last_sample is not None and stamp < self.last_sample + self.drone_stride - 1e-6:
            return
        self.last_sample = stamp
        size = self.ctx.drone.uplink_size or self.ctx.input_size
        sample = resize_frame(frame, *size)
        self.seq += 1
        batch = single_frame_batch(self.drone.config.client_id, self.seq, stamp, sample,
                                   self.settings, 1.0 / self.drone_stride)
        self.link.uplink.send(stamp, batch, uplink_nbytes(batch), 'frames')
        self.counts['frames_sent'] += 1

    def _result(self) -> SchemeResult:
        steps = [p['steps'] for p in self.phases]
        extra = dict(self.counts, snapshot_requests=self.model_updates.requester.sent)
        extra.update(
            config=dataclasses.asdict(self.config), accuracy_metric=self.config.accuracy,
            iteration_time_s=self.iteration_time, phases=self.phases,
            updates_made=sum(1 for s in steps if s),
            mean_steps=float(np.mean(steps)) if steps else None,
            threshold_met=sum(1 for p in self.phases if p['met']))
        return linked_result(self, extra)


SCHEMES = {scheme.name: scheme for scheme in (RemoteTracking, JustInTime)}
