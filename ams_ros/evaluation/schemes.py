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
   selected (strategy ``full``, fraction 1) for ``OneTime(iterations)`` iterations (default:
   the K x one_time_s / T_update iterations AMS spends on the same window), with the trainer's
   optimiser, loss and batch size and its own learning rate (``OneTime(learning_rate)``, the
   paper's 1e-3: AMS's 3e-3 suits 5% of the parameters, but the whole model at that step size
   lost 12 points to No Customization on flight 1000, which would judge One-Time unfairly);
3. the whole-model update travels as one patch (the configured patch format, every index) and
   is applied when delivered; the model is then frozen for the rest of the flight.
Its phase takes its measured wall time, or ``phase_time_s`` x (iterations / K) when fixed.

**AMS** (Algorithm 1): the drone samples at the rate the ground last sent and sends a batch of
H.264-encoded frames every T_update over the uplink. The ground is the ground node's engine, a
`GroundStation` serving this one drone, that handles messages in arrival order: for each batch it
decodes, labels with the teacher, buffers (T_horizon), runs the phase its scheduler picks and
encodes the patch, then sends the ASR/ATR decision when it changed and the patch over the
downlink. A phase starts when its batch
has arrived and the previous phase has finished, and takes its measured wall time (decode +
label + train + encode; ``ctx.phase_time_s`` = None) or a fixed ``phase_time_s``; its outputs
leave the ground when it ends. The drone applies a patch when it is delivered: the swap is
treated as instantaneous at that stamp (the real one takes tens of milliseconds off the inference
path), so the new model serves the first camera frame at or after the delivery. Patches and
snapshots go through the drone node's `ModelUpdates`, so a patch that cannot be applied, or one
ahead of its base (a lost predecessor), makes the drone ask for a snapshot with the node's
`SnapshotRequester`; the station answers with its mirror when the drone's snapshot budget
allows, after the phase in progress.
"""

from __future__ import annotations

import dataclasses
import heapq
import math
import time
from collections import Counter, deque
from dataclasses import dataclass

import numpy as np

from ams_ros.drone.agent import DroneAgent
from ams_ros.drone.model_updates import ModelUpdates
from ams_ros.evaluation.core import EvalContext, FrameScorer, SchemeResult
from ams_ros.evaluation.link import Link
from ams_ros.ground.client_registry import ClientRegistry
from ams_ros.ground.drone_session import INITIAL_VERSION, DroneSession, GroundConfig, RateDecision
from ams_ros.ground.event_queue import BATCH, CONTACT, SNAPSHOT, STATUS, DroneEvent
from ams_ros.ground.phase_scheduler import PhaseScheduler
from ams_ros.ground.selection import FULL
from ams_ros.ground.station import DroneReport, GroundStation
from ams_ros.wire.model_version import APPLIED, PatchPayload
from ams_ros.wire.snapshot import SnapshotPayload
from ams_ros.wire.uplink_batch import UplinkBatch, decode_batch

SWAP_TIMEOUT_S = 120.0
# Bytes of the fixed fields of the small messages (ids, versions, rates, framing).
CONTROL_NBYTES = 32
SNAPSHOT_REQUEST_NBYTES = 32
STATUS_NBYTES = 96  # and a 32-byte digest of the model it runs


def uplink_nbytes(batch: UplinkBatch) -> int:
    """Bytes of one FrameBatch message: the encoded frames, the stamps and the fixed fields."""
    return len(batch.data) + 8 * len(batch.stamps) + len(batch.client_id) + len(batch.codec) + 32


@dataclass(frozen=True)
class SnapshotRequest:
    client_id: str
    reason: str


def drone_status(drone: DroneAgent, frames_received: int, fps: float) -> DroneReport:
    """Return the drone's status (swaps are instant in the harness: it runs what it verified)."""
    version = drone.version
    return DroneReport(drone.config.client_id, drone.model_id, version,
                       drone.state.digest_of(version) or b'', frames_received, fps,
                       drone.sampler.rate, drone.sampler.update_period)


def send_snapshot_request(updates: ModelUpdates, link: Link, now: float) -> None:
    """Send the drone's snapshot request over the uplink when its requester says one is due."""
    reason = updates.request_due(now)
    if reason is not None:
        link.uplink.send(now, SnapshotRequest(updates.agent.config.client_id, reason),
                         SNAPSHOT_REQUEST_NBYTES, 'snapshot_request')


def deliver_update(updates: ModelUpdates, link: Link, counts: Counter, delivered: float,
                   message) -> bool:
    """Hand a delivered patch or snapshot to the drone's ModelUpdates, as the drone node does.

    Return True when the drone's model changed (the new one is active on return); what the
    delivery counted goes into `counts`, and a snapshot request it made due goes up the link.
    """
    if isinstance(message, SnapshotPayload):
        delivery = updates.snapshot(message)
    elif isinstance(message, PatchPayload):
        delivery = updates.patch(message)
    else:
        raise TypeError(f'unexpected downlink message {type(message).__name__}')
    counts.update(delivery.counts)
    if delivery.error_key:
        counts[delivery.error_key] += 1
    if delivery.changed:
        wait_active(updates.agent)
    send_snapshot_request(updates, link, delivered)
    return delivery.changed


class Outbox:
    """A GroundStation's downlink in the harness: its messages leave when the ground's work ends.

    The ground's work takes simulated time (a phase), so what the station sends during it is
    held, then put on the addressed drone's link at the instant the work is done.
    """

    def __init__(self):
        self.messages: list[tuple[str, object, int, str]] = []

    def patch(self, client_id: str, payload: PatchPayload) -> None:
        self.messages.append((client_id, payload, payload.nbytes, 'patch'))

    def snapshot(self, client_id: str, payload: SnapshotPayload) -> None:
        self.messages.append((client_id, payload, payload.nbytes, 'snapshot'))

    def sampling(self, client_id: str, rate: float, period: float) -> None:
        self.messages.append((client_id, RateDecision(rate, period), CONTROL_NBYTES, 'control'))

    def take(self) -> list[tuple[str, object, int, str]]:
        """Return the held (client id, message, bytes, kind) and forget them."""
        messages, self.messages = self.messages, []
        return messages


def fleet_station(contexts: list[EvalContext], outbox: Outbox, policy: str) -> GroundStation:
    """Return a GroundStation (the ground node's engine) serving one drone per flight.

    The flights share the first context's student and ground settings; each drone is labelled
    by its own flight's teacher and bound to its own namespace, as the node binds them.
    """
    ctx = contexts[0]
    teachers = {c.source.name: c.teacher for c in contexts}
    if len(teachers) != len(contexts):
        raise ValueError('the flights of one ground need distinct names')
    scheduler = PhaseScheduler(ctx.template, teachers.__getitem__, ctx.ground, policy=policy,
                               seed=ctx.seed)
    # The harness never expires a drone: its flights are silent only between batches.
    registry = ClientRegistry(max_clients=len(contexts), idle_timeout_s=1e9)
    for client_id in teachers:
        registry.bind(f'/{client_id}', client_id)
    return GroundStation(scheduler, registry, outbox)


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

    def __init__(self, iterations: int | None = None, learning_rate: float = 1e-3):
        self.iterations = iterations
        self.learning_rate = learning_rate

    def run(self, ctx: EvalContext) -> SchemeResult:
        asr = ctx.ground.asr
        window = ctx.one_time_s
        k = ctx.trainer.iterations
        iterations = self.iterations or max(
            1, round(k * window / ctx.ground.atr.period_min))
        trainer = dataclasses.replace(ctx.trainer, strategy=FULL, fraction=1.0,
                                      iterations=int(iterations),
                                      learning_rate=self.learning_rate,
                                      horizon_s=max(ctx.trainer.horizon_s, window + 1.0))
        ground = DroneSession(ctx.source.name, ctx.template, ctx.teacher,
                              GroundConfig(trainer=trainer, patch_format=ctx.ground.patch_format,
                                           asr=ctx.ground.asr, atr=ctx.ground.atr),
                              seed=ctx.seed)
        drone = new_drone(ctx, sampling_rate=asr.rate_max, update_period=window)
        model_updates, counts = ModelUpdates(drone), Counter()
        link = Link(ctx.link, seed=ctx.seed)
        scorer = FrameScorer(ctx)
        sampling, updates, extra = True, [], {'iterations': int(iterations), 'window_s': window}
        trace = [(ctx.source.start_s, asr.rate_max)]
        try:
            for _, stamp, frame, label, evaluated in ctx.frames():
                for arrived, batch in link.uplink.receive(stamp):
                    started = time.perf_counter()
                    ground.add_frames(decode_batch(batch), batch.stamps)
                    output = ground.train_phase(max(batch.stamps))
                    wall = time.perf_counter() - started
                    done = arrived + phase_seconds(ctx, wall, iterations / k)
                    link.downlink.send(done, output.patch, output.patch.nbytes, 'patch')
                    extra.update(frames=len(batch.stamps), phase_wall_s=wall,
                                 loss=output.result.mean_loss, patch_bytes=output.patch.nbytes)
                for delivered, patch in link.downlink.receive(stamp):
                    if deliver_update(model_updates, link, counts, delivered, patch):
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
    """Adaptive Model Streaming: the drone and ground engines over the simulated link.

    `run` flies one drone; `run_fleet` flies one drone per context, all served by one ground
    whose scheduler (`policy`, paper Appendix E) shares the training device among them.
    """

    name = 'ams'

    def __init__(self, name: str | None = None, policy: str = 'round_robin'):
        if name:
            self.name = name
        self.policy = policy

    def run(self, ctx: EvalContext) -> SchemeResult:
        return _AmsRun([ctx], self.name, self.policy).run()[0]

    def run_fleet(self, contexts: list[EvalContext]) -> list[SchemeResult]:
        """Fly every context's drone at once; each result's extra['fleet'] describes the run."""
        run = _AmsRun(contexts, self.name, self.policy)
        results = run.run()
        fleet = {'policy': self.policy, 'drones': [c.source.name for c in contexts],
                 'ground_busy_s': run.ground_busy_s}
        for result in results:
            result.extra['fleet'] = fleet
        return results


class _Flight:
    """One drone of an AMS run: its camera, link, model updates and score."""

    def __init__(self, ctx: EvalContext, name: str, station: GroundStation, index: int):
        self.ctx = ctx
        self.name = name
        self.client_id = ctx.source.name
        self.ground = station.scheduler.add(self.client_id)
        # The ground's controllers are authoritative: the drone starts where they start.
        rate = ctx.ground.asr.initial_rate
        period = self.ground.atr.update_period
        self.drone = new_drone(ctx, client_id=self.client_id, sampling_rate=rate,
                               update_period=period)
        self.model_updates = ModelUpdates(self.drone)
        self.link = Link(ctx.link, seed=ctx.seed + index)
        self.scorer = FrameScorer(ctx)
        self.updates: list[float] = []
        self.sampling = [(ctx.source.start_s, rate)]
        self.periods = [(ctx.source.start_s, period)]
        self.phases: list[dict] = []
        self.counts = Counter(batches_sent=0, frames_sent=0, snapshots_sent=0)
        self.frames_received = 0
        self.pending_since: float | None = None  # arrival of its oldest untrained batch

    def camera_frame(self, stamp: float, frame: np.ndarray, label: np.ndarray | None,
                     evaluated: bool) -> None:
        """Serve one camera frame (score its mask) and send the batch it may complete."""
        self.receive(stamp)
        send_snapshot_request(self.model_updates, self.link, stamp)
        if evaluated:
            evaluate_frame(self.scorer, self.drone, stamp, frame, label)
        self.frames_received += 1
        batch = self.drone.sample(stamp, frame)
        if batch is not None:
            self.send_status(stamp)  # what it runs as it sends: before the batch
            self.link.uplink.send(stamp, batch, uplink_nbytes(batch), 'frames')
            self.counts['batches_sent'] += 1
            self.counts['frames_sent'] += len(batch.stamps)
        self.ctx.report(stamp)

    def receive(self, now: float) -> None:
        for delivered, message in self.link.downlink.receive(now):
            if isinstance(message, RateDecision):
                self.drone.set_sampling(message.sampling_rate, message.update_period)
                if message.sampling_rate != self.sampling[-1][1]:
                    self.sampling.append((delivered, message.sampling_rate))
                if message.update_period != self.periods[-1][1]:
                    self.periods.append((delivered, message.update_period))
                continue
            if deliver_update(self.model_updates, self.link, self.counts, delivered, message):
                self.updates.append(delivered)
                if isinstance(message, SnapshotPayload):
                    self.send_status(delivered)  # the ground learns the snapshot landed

    def send_status(self, now: float) -> None:
        """Report what the drone runs: with every batch, and when a snapshot has landed."""
        status = drone_status(self.drone, self.frames_received, self.ctx.fps)
        self.link.uplink.send(now, status, STATUS_NBYTES + len(status.active_digest), 'status')

    def result(self, station: GroundStation) -> SchemeResult:
        extra = dict(self.counts, snapshot_requests=self.model_updates.requester.sent,
                     ground_counts=dict(station.counts))
        extra.update(phases=self.phases, update_periods=[list(p) for p in self.periods])
        return linked_result(self, extra)


class _AmsRun:
    """Flights interleaved by camera stamp, served by one ground in rounds.

    As the node's worker serves them: a round starts when the ground is free and a message has
    arrived or a drone waits for training; it handles every message arrived by then, sends the
    snapshots owed and trains one phase, of the drone the scheduler picks. What the round sent
    leaves when it ends.
    """

    def __init__(self, contexts: list[EvalContext], name: str, policy: str):
        self.ctx = contexts[0]
        self.outbox = Outbox()
        self.station = fleet_station(contexts, self.outbox, policy)
        self.flights = {f.client_id: f for f in (
            _Flight(ctx, name, self.station, index) for index, ctx in enumerate(contexts))}
        self.arrived: deque[tuple[float, DroneEvent]] = deque()  # not yet handled
        self.ground_free = -math.inf
        self.ground_busy_s = 0.0

    def run(self) -> list[SchemeResult]:
        flights = list(self.flights.values())
        for flight in flights:
            start = flight.ctx.source.start_s
            self._round(start, [(start, DroneEvent(CONTACT, flight.client_id))])
        cameras = [_camera(order, flight.ctx) for order, flight in enumerate(flights)]
        try:
            for stamp, order, frame, label, evaluated in heapq.merge(
                    *cameras, key=lambda item: item[:2]):
                self._ground_until(stamp)
                flights[order].camera_frame(stamp, frame, label, evaluated)
        finally:
            for flight in flights:
                flight.drone.close()
        return [flight.result(self.station) for flight in flights]

    def _ground_until(self, now: float) -> None:
        """Run the ground's rounds that start by `now`."""
        arrivals = sorted(((arrived, order, message)
                           for order, flight in enumerate(self.flights.values())
                           for arrived, message in flight.link.uplink.receive(now)),
                          key=lambda item: item[:2])
        self.arrived.extend((arrived, _event(message)) for arrived, _, message in arrivals)
        while (start := self._next_round()) is not None and start <= now:
            events = []
            while self.arrived and self.arrived[0][0] <= start:
                events.append(self.arrived.popleft())
            self._round(start, events)
        if now >= self.ground_free:  # the idle worker's rounds: owed snapshots, when allowed
            self.station.send_owed_snapshots(now)
            self._send(now)

    def _next_round(self) -> float | None:
        if self.station.has_training():
            return self.ground_free
        if self.arrived:
            return max(self.ground_free, self.arrived[0][0])
        return None

    def _round(self, start: float, events: list[tuple[float, DroneEvent]]) -> None:
        station = self.station
        started = time.perf_counter()
        for arrived, event in events:
            if not station.admit(f'/{event.client_id}', event.client_id, start):
                continue
            station.handle(event, start)
            flight = self.flights[event.client_id]
            if (event.kind == BATCH and flight.pending_since is None
                    and station.scheduler.session(event.client_id).pending_frames):
                flight.pending_since = arrived
        station.send_owed_snapshots(start)
        pending = {c: station.scheduler.session(c).pending_frames
                   for c in station.scheduler.client_ids}
        phase = station.train_next(start)
        wall = time.perf_counter() - started
        done = start + phase_seconds(self.ctx, wall) if phase is not None else start
        self.ground_free = done
        self._send(done)
        if phase is not None:
            client_id, output = phase
            flight = self.flights[client_id]
            self.ground_busy_s += done - start
            flight.phases.append({
                'start': start, 'end': done, 'wall_s': wall, 'frames': pending[client_id],
                'waited_s': start - flight.pending_since, 'loss': output.result.mean_loss,
                'version': output.patch.version, 'patch_bytes': output.patch.nbytes,
                'phi': flight.ground.phi})
            flight.pending_since = None

    def _send(self, at: float) -> None:
        """Put what the station sent on each addressed drone's downlink at `at`."""
        for client_id, message, nbytes, kind in self.outbox.take():
            flight = self.flights[client_id]
            flight.link.downlink.send(at, message, nbytes, kind)
            if kind == 'snapshot':
                flight.counts['snapshots_sent'] += 1


def _event(message) -> DroneEvent:
    """Return the ground's event for an uplink message."""
    if isinstance(message, SnapshotRequest):
        return DroneEvent(SNAPSHOT, message.client_id, message.reason)
    if isinstance(message, DroneReport):
        return DroneEvent(STATUS, message.client_id, message)
    return DroneEvent(BATCH, message.client_id, message)


def _camera(order: int, ctx: EvalContext):
    """Yield a flight's camera frames as (stamp, order, frame, label, evaluated)."""
    for _, stamp, frame, label, evaluated in ctx.frames():
        yield stamp, order, frame, label, evaluated


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
