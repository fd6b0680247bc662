"""No Customization, One-Time and AMS, each driving the real engine on simulated time.

Common to all: the drone is a `DroneAgent` that starts from the pretrained student (the
template's ONNX export, loaded on board, so it costs no downlink), runs it in ONNX Runtime on
every evaluated camera frame, and the masks are scored by `core.FrameScorer`. The simulated
camera delivers ``ctx.fps`` frames/s; time is the frames' stamps.

**No Customization**: the pretrained student, never updated; it sends and receives nothing.

**One-Time** (paper §4.1: "fine-tune the entire model on the first 60 seconds of the video at
the server and send it to the edge", once per video). Precisely, here:

1. the drone samples at ASR's r_max for the first ``ctx.one_time_s`` seconds (T_update is that
   window, so the frames travel as one H.264 batch when the window closes), then stops sampling;
2. the ground labels them and runs one training phase on all of them with every parameter
   selected (strategy ``full``, fraction 1) for ``one_time_iterations`` iterations (default:
   the K x one_time_s / T_update iterations AMS spends on the same window), with the trainer's
   optimiser, learning rate and batch size;
3. the whole-model update travels as one patch (the configured patch format, every index) and
   is applied when delivered; the model is then frozen for the rest of the flight.
Its phase takes its measured wall time, or ``phase_time_s`` x (iterations / K) when fixed.

**AMS** (Algorithm 1): the drone samples at the rate the ground last sent and sends a batch of
H.264-encoded frames every T_update over the uplink. The ground is a single server that handles
messages in arrival order: for each batch it decodes, labels with the teacher, buffers
(T_horizon), runs one training phase and encodes the patch (`GroundClient`), then sends the
patch, and the ASR/ATR decision when it changed, over the downlink. A phase starts when its batch
has arrived and the previous phase has finished, and takes its measured wall time (decode +
label + train + encode; ``ctx.phase_time_s`` = None) or a fixed ``phase_time_s``; its outputs
leave the ground when it ends. The drone applies a patch when it is delivered: the swap is
treated as instantaneous at that stamp (the real one takes tens of milliseconds off the inference
path), so the new model serves the first camera frame at or after the delivery. A patch that
cannot be applied makes the drone ask for a snapshot over the uplink, as the drone node does,
and so does a patch that arrives ahead of its base (the simulated link is FIFO, so that means its
predecessor was lost; the ROS transport is reliable and never needs this); the ground answers
with its mirror as a whole-model snapshot, after the phase in progress.
"""

from __future__ import annotations

import dataclasses
import math
import time
from dataclasses import dataclass

import numpy as np

from ams_ros.drone_agent import DroneAgent, UplinkBatch
from ams_ros.evaluation.core import EvalContext, FrameScorer, SchemeResult
from ams_ros.evaluation.link import Link
from ams_ros.frame_codec import FrameCodecError, decode_frames
from ams_ros.ground_client import INITIAL_VERSION, GroundClient, GroundConfig, RateDecision
from ams_ros.model_version import APPLIED, OUT_OF_ORDER, PatchPayload
from ams_ros.selection import FULL
from ams_ros.snapshot import SnapshotPayload

SWAP_TIMEOUT_S = 120.0
# Bytes of the fixed fields of the small messages (ids, versions, rates, framing).
CONTROL_NBYTES = 32
SNAPSHOT_REQUEST_NBYTES = 32
# The drone node's snapshot-request retry: first after 2 s, doubling up to 60 s.
REQUEST_RETRY_S = 2.0
MAX_REQUEST_RETRY_S = 60.0


def uplink_nbytes(batch: UplinkBatch) -> int:
    """Bytes of one FrameBatch message: the encoded frames, the stamps and the fixed fields."""
    return len(batch.data) + 8 * len(batch.stamps) + len(batch.client_id) + len(batch.codec) + 32


@dataclass(frozen=True)
class SnapshotRequest:
    client_id: str
    reason: str


class SnapshotRequester:
    """The drone node's snapshot requests on simulated time.

    Ask at once; until a snapshot is applied, ask again after REQUEST_RETRY_S, doubling up to
    MAX_REQUEST_RETRY_S (the request or the snapshot may have been lost).
    """

    def __init__(self, link: Link, client_id: str):
        self.link = link
        self.client_id = client_id
        self.pending: tuple[float, float, str] | None = None  # (due, next backoff, reason)
        self.sent = 0

    def want(self, now: float, reason: str) -> None:
        """Ask for a snapshot unless a request is already pending."""
        if self.pending is None:
            self._send(now, reason, REQUEST_RETRY_S)

    def poll(self, now: float) -> None:
        """Repeat an unanswered request that is due."""
        if self.pending is not None and now >= self.pending[0]:
            _, backoff, reason = self.pending
            self._send(now, reason, backoff)

    def answered(self) -> None:
        self.pending = None

    def _send(self, now: float, reason: str, backoff: float) -> None:
        self.pending = (now + backoff, min(2 * backoff, MAX_REQUEST_RETRY_S), reason)
        self.sent += 1
        self.link.uplink.send(now, SnapshotRequest(self.client_id, reason),
                              SNAPSHOT_REQUEST_NBYTES, 'snapshot_request')


def new_drone(ctx: EvalContext, **overrides) -> DroneAgent:
    """Return a DroneAgent running the template's student (version 1), ready to infer."""
    config = dataclasses.replace(ctx.drone, **overrides) if overrides else ctx.drone
    drone = DroneAgent(config)
    outcome = drone.load_model_file(ctx.template.onnx_bytes, INITIAL_VERSION)
    if outcome.kind != APPLIED:
        raise RuntimeError(f'the drone refused the initial model: {outcome}')
    return drone


def wait_active(drone: DroneAgent) -> None:
    """Block until the drone's runtime serves its verified version (simulated swap: instant)."""
    if not drone.runtime.wait_for_version(drone.version, SWAP_TIMEOUT_S):
        raise RuntimeError(f'version {drone.version} did not become active: '
                           f'{drone.runtime.last_error}')


def evaluate_frame(scorer: FrameScorer, drone: DroneAgent, stamp: float, frame: np.ndarray,
                   label: np.ndarray | None) -> float | None:
    """Score the drone's mask of one frame; None when there is no ground truth for it."""
    if label is None and scorer.ctx.teacher is None:
        return None
    truth = scorer.truth(stamp, frame, label)
    return scorer.add(stamp, drone.infer(frame), truth)


def phase_seconds(ctx: EvalContext, measured: float, scale: float = 1.0) -> float:
    """Return the simulated duration of a ground phase: measured wall time, or the fixed one."""
    return measured if ctx.phase_time_s is None else ctx.phase_time_s * scale


class NoCustomization:
    """The pretrained student alone (paper §4.1)."""

    name = 'no_customization'

    def run(self, ctx: EvalContext) -> SchemeResult:
        drone = new_drone(ctx)
        scorer = FrameScorer(ctx)
        try:
            for _, stamp, frame, label, evaluated in ctx.frames():
                if evaluated:
                    evaluate_frame(scorer, drone, stamp, frame, label)
                ctx.report(stamp)
        finally:
            drone.close()
        start = ctx.source.start_s
        return SchemeResult(
            self.name, ctx.source.name, ctx.source.duration_s, ctx.class_names,
            scorer.frame_miou, scorer.confusion,
            bandwidth=Link(ctx.link).bandwidth(start, start + ctx.source.duration_s),
            extra={'final_version': drone.version})


class OneTime:
    """Fine-tune the whole model once on the first `ctx.one_time_s` seconds (module doc)."""

    name = 'one_time'

    def __init__(self, iterations: int | None = None):
        self.iterations = iterations

    def run(self, ctx: EvalContext) -> SchemeResult:
        asr = ctx.ground.asr
        window = ctx.one_time_s
        k = ctx.trainer.iterations
        iterations = self.iterations or ctx.options.get('one_time_iterations') or max(
            1, round(k * window / ctx.ground.atr.period_min))
        trainer = dataclasses.replace(ctx.trainer, strategy=FULL, fraction=1.0,
                                      iterations=int(iterations),
                                      horizon_s=max(ctx.trainer.horizon_s, window + 1.0))
        ground = GroundClient(ctx.source.name, ctx.template, ctx.teacher,
                              GroundConfig(trainer=trainer, patch_format=ctx.ground.patch_format,
                                           asr=ctx.ground.asr, atr=ctx.ground.atr),
                              seed=ctx.seed)
        drone = new_drone(ctx, sampling_rate=asr.rate_max, update_period=window)
        link = Link(ctx.link, seed=ctx.seed)
        scorer = FrameScorer(ctx)
        sampling, updates, extra = True, [], {'iterations': int(iterations), 'window_s': window}
        trace = [(ctx.source.start_s, asr.rate_max)]
        try:
            for _, stamp, frame, label, evaluated in ctx.frames():
                for arrived, batch in link.uplink.receive(stamp):
                    started = time.perf_counter()
                    frames = decode_frames(batch.data, batch.codec, batch.width, batch.height,
                                           len(batch.stamps))
                    ground.add_frames(frames, batch.stamps)
                    output = ground.train_phase(max(batch.stamps))
                    wall = time.perf_counter() - started
                    done = arrived + phase_seconds(ctx, wall, iterations / k)
                    link.downlink.send(done, output.patch, output.patch.nbytes, 'patch')
                    extra.update(frames=len(batch.stamps), phase_wall_s=wall,
                                 loss=output.result.mean_loss, patch_bytes=output.patch.nbytes)
                for delivered, patch in link.downlink.receive(stamp):
                    if drone.offer_patch(patch).kind == APPLIED:
                        wait_active(drone)
                        updates.append(delivered)
                if evaluated:
                    evaluate_frame(scorer, drone, stamp, frame, label)
                if sampling:
                    batch = drone.sample(stamp, frame)
                    if batch is not None:
                        link.uplink.send(stamp, batch, uplink_nbytes(batch), 'frames')
                        sampling = False  # one window only
                        trace.append((stamp, 0.0))
                ctx.report(stamp)
        finally:
            drone.close()
        start = ctx.source.start_s
        extra['final_version'] = drone.version
        return SchemeResult(
            self.name, ctx.source.name, ctx.source.duration_s, ctx.class_names,
            scorer.frame_miou, scorer.confusion, link.uplink.bytes_sent,
            link.downlink.bytes_sent, updates, trace,
            link.bandwidth(start, start + ctx.source.duration_s), extra)


class Ams:
    """Adaptive Model Streaming: the drone and ground engines over the simulated link."""

    name = 'ams'

    def __init__(self, name: str | None = None):
        if name:
            self.name = name

    def run(self, ctx: EvalContext) -> SchemeResult:
        return _AmsRun(ctx, self.name).run()


class _AmsRun:
    def __init__(self, ctx: EvalContext, name: str):
        self.ctx = ctx
        self.name = name
        self.ground = GroundClient(ctx.source.name, ctx.template, ctx.teacher, ctx.ground,
                                   seed=ctx.seed)
        # The ground's controllers are authoritative: the drone starts where they start.
        self.rate = ctx.ground.asr.initial_rate
        self.period = self.ground.atr.update_period
        self.drone = new_drone(ctx, client_id=ctx.source.name, sampling_rate=self.rate,
                               update_period=self.period)
        self.link = Link(ctx.link, seed=ctx.seed)
        self.scorer = FrameScorer(ctx)
        self.ground_free = -math.inf
        self.updates: list[float] = []
        self.sampling = [(ctx.source.start_s, self.rate)]
        self.periods = [(ctx.source.start_s, self.period)]
        self.phases: list[dict] = []
        self.requester = SnapshotRequester(self.link, ctx.source.name)
        self.counts = {'batches_sent': 0, 'frames_sent': 0, 'batches_refused': 0,
                       'snapshots_sent': 0, 'patches_refused': 0,
                       'patches_held': 0}
        self.sent_decision = (self.rate, self.period)

    def run(self) -> SchemeResult:
        ctx = self.ctx
        try:
            for _, stamp, frame, label, evaluated in ctx.frames():
                self._ground_until(stamp)
                self._drone_receive(stamp)
                self.requester.poll(stamp)
                if evaluated:
                    evaluate_frame(self.scorer, self.drone, stamp, frame, label)
                batch = self.drone.sample(stamp, frame)
                if batch is not None:
                    self.link.uplink.send(stamp, batch, uplink_nbytes(batch), 'frames')
                    self.counts['batches_sent'] += 1
                    self.counts['frames_sent'] += len(batch.stamps)
                ctx.report(stamp)
        finally:
            self.drone.close()
        return self._result()

    # -- ground ------------------------------------------------------------------------------

    def _ground_until(self, now: float) -> None:
        for arrived, message in self.link.uplink.receive(now):
            start = max(arrived, self.ground_free)
            if isinstance(message, SnapshotRequest):
                snapshot = self.ground.snapshot()
                self.ground_free = start
                self.link.downlink.send(start, snapshot, snapshot.nbytes, 'snapshot')
                self.counts['snapshots_sent'] += 1
                continue
            self._phase(start, message)

    def _phase(self, start: float, batch: UplinkBatch) -> None:
        ground = self.ground
        started = time.perf_counter()
        try:
            frames = decode_frames(batch.data, batch.codec, batch.width, batch.height,
                                   len(batch.stamps))
        except FrameCodecError:
            self.counts['batches_refused'] += 1
            return
        ground.add_frames(frames, batch.stamps)
        newest = max(batch.stamps)
        output = ground.train_phase(newest)
        decision = ground.update_rates(newest)
        wall = time.perf_counter() - started
        done = start + phase_seconds(self.ctx, wall)
        self.ground_free = done
        downlink = self.link.downlink
        if decision is not None and (decision.sampling_rate, decision.update_period) \
                != self.sent_decision:
            self.sent_decision = (decision.sampling_rate, decision.update_period)
            downlink.send(done, decision, CONTROL_NBYTES, 'control')
        downlink.send(done, output.patch, output.patch.nbytes, 'patch')
        self.phases.append({
            'start': start, 'end': done, 'wall_s': wall, 'frames': len(batch.stamps),
            'loss': output.result.mean_loss, 'version': output.patch.version,
            'patch_bytes': output.patch.nbytes, 'phi': ground.phi})

    # -- drone -------------------------------------------------------------------------------

    def _drone_receive(self, now: float) -> None:
        drone = self.drone
        for delivered, message in self.link.downlink.receive(now):
            if isinstance(message, RateDecision):
                drone.set_sampling(message.sampling_rate, message.update_period)
                if message.sampling_rate != self.sampling[-1][1]:
                    self.sampling.append((delivered, message.sampling_rate))
                if message.update_period != self.periods[-1][1]:
                    self.periods.append((delivered, message.update_period))
                continue
            if deliver_update(drone, self.requester, self.counts, delivered, message):
                self.updates.append(delivered)

    def _result(self) -> SchemeResult:
        extra = dict(self.counts, snapshot_requests=self.requester.sent)
        extra.update(phases=self.phases, update_periods=[list(p) for p in self.periods])
        return linked_result(self, extra)


def deliver_update(drone: DroneAgent, requester: SnapshotRequester, counts: dict,
                   delivered: float, message) -> bool:
    """Offer a delivered patch or snapshot to the drone, as the drone node does.

    Return True when the drone's model changed (the new one is active on return). A patch it
    cannot apply, or one ahead of its base (the link is FIFO, so a predecessor was lost), makes
    it ask for a snapshot at once rather than wait for held patches to fill up; counted in
    counts['patches_refused'] / counts['patches_held'].
    """
    before = drone.version
    if isinstance(message, SnapshotPayload):
        outcome = drone.load_snapshot(message)
        if outcome.kind == APPLIED:
            requester.answered()
    elif isinstance(message, PatchPayload):
        outcome = drone.offer_patch(message)
    else:
        raise TypeError(f'unexpected downlink message {type(message).__name__}')
    if outcome.kind == APPLIED and drone.version != before:
        wait_active(drone)
        return True
    if outcome.needs_snapshot or outcome.kind == OUT_OF_ORDER:
        counts['patches_refused' if outcome.needs_snapshot else 'patches_held'] += 1
        requester.want(delivered, outcome.reason or outcome.kind)
    return False


def linked_result(run, extra: dict) -> SchemeResult:
    """Finish the result of a run with a drone and a ground over the link (AMS, JIT).

    `run` has the run's ctx, link, drone, ground, scorer, phases (each with 'wall_s'),
    updates and sampling; the link's and versions' figures are added to `extra`.
    """
    ctx, link = run.ctx, run.link
    start = ctx.source.start_s
    walls = [p['wall_s'] for p in run.phases]
    extra.update(
        final_version=run.drone.version, ground_version=run.ground.mirror.version,
        mean_phase_wall_s=float(np.mean(walls)) if walls else None,
        uplink_lost=link.uplink.messages_lost, downlink_lost=link.downlink.messages_lost,
        uplink_by_kind=link.uplink.bytes_by_kind(),
        downlink_by_kind=link.downlink.bytes_by_kind())
    return SchemeResult(
        run.name, ctx.source.name, ctx.source.duration_s, ctx.class_names,
        run.scorer.frame_miou, run.scorer.confusion, link.uplink.bytes_sent,
        link.downlink.bytes_sent, run.updates, run.sampling,
        link.bandwidth(start, start + ctx.source.duration_s), extra)


SCHEMES = {scheme.name: scheme for scheme in (NoCustomization, OneTime, Ams)}
