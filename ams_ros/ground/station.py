"""The ground station's decisions for every drone it serves, on the caller's clock.

The ground node and the offline harness drive ``GroundStation``; it sends through a
``Downlink`` (the node publishes to the drone's namespace, the harness puts it on its simulated
link). What it does with each drone event:

- **contact** (a configured drone, or the first message of a new one): a ``DroneSession`` (its
  buffer, trainer and mirror) and the drone's sampling control.
- **frame batch**: decoded (a damaged one is refused), its ``seq`` checked by the drone's
  ``SequenceTracker`` and its stamps by the session's stamp guard, then labelled into the
  horizon buffer; a new ASR/ATR decision that differs from the last one sent goes down.
- **status** (what the drone runs): a drone with no model (or another one) is owed the mirror as
  a snapshot; one whose frame count went back restarted and is owed it too; one that reports a
  version or digest the mirror does not have (a forged snapshot, or a ground that restarted) is
  resynced: the mirror's version moves one above the drone's and the mirror goes as a snapshot,
  which the drone takes unasked. A status that shows other sampling settings than the ground's
  gets them sent again (at most every ``SAMPLING_RESEND_S``).
- **snapshot request**: owed; snapshots go when the drone's ``SnapshotBudget`` allows (bytes over
  time, back-off while unconfirmed), and requests meanwhile are answered once.
- **a round** (``run_round``): expire silent drones, handle the events, send owed snapshots, and
  train one phase of the drone the ``PhaseScheduler`` picks; its patch goes to that drone only.

Every model the ground produces is logged as ``'<client>' v<version> (<digest>)`` before it is
sent: the log is the record of what the ground made. Refusals are counted under their reason.
One caller drives the rounds (the node's worker, or the harness); ``admit``, ``count`` and
``error`` may also be called from other threads (message callbacks).
"""

from __future__ import annotations

import math
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

from ams_ros.ground.client_registry import ClientRegistry
from ams_ros.ground.drone_session import DroneSession, PhaseOutput
from ams_ros.ground.event_queue import BATCH, CONTACT, SNAPSHOT, STATUS, DroneEvent
from ams_ros.ground.phase_scheduler import PhaseScheduler
from ams_ros.ground.sequence_tracker import SequenceTracker
from ams_ros.ground.snapshot_budget import SnapshotBudget
from ams_ros.ground.stamp_guard import REANCHOR, StampRefused
from ams_ros.wire.frame_codec import FrameCodecError
from ams_ros.wire.model_version import PatchPayload
from ams_ros.wire.snapshot import SnapshotPayload
from ams_ros.wire.uplink_batch import UplinkBatch, decode_batch

# A drone whose status shows other sampling settings than the ground's is sent them again, at
# most this often (the latched control may have been lost, or overwritten by another writer).
SAMPLING_RESEND_S = 2.0
# After a snapshot went, the drone's status may still show its old model for a while.
RESYNC_GRACE_S = 3.0
MAX_VERSION = 2**63  # versions are uint64 on the wire; a resync never goes beyond this


class Downlink(Protocol):
    """Where the station's messages to one drone go."""

    def patch(self, client_id: str, payload: PatchPayload) -> None: ...

    def snapshot(self, client_id: str, payload: SnapshotPayload) -> None: ...

    def sampling(self, client_id: str, rate: float, period: float) -> None: ...


@dataclass(frozen=True)
class DroneReport:
    """What the station reads from a drone's status (ams_msgs/EdgeStatus carries these too)."""

    client_id: str
    model_id: str
    active_version: int
    active_digest: bytes
    frames_received: int
    inference_fps: float
    sampling_rate: float
    update_period: float


@dataclass(frozen=True)
class StationConfig:
    max_seq_gap: int = 1000
    snapshot_kbps: float = 100.0
    snapshot_burst: float = 2.0  # snapshots a drone may get at once
    snapshot_backoff_min_s: float = 10.0
    snapshot_backoff_max_s: float = 300.0


@dataclass
class DroneLink:
    """What the station knows of one drone's link: sequence, budget, sends and its reports."""

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
    last_snapshot: tuple[str, int, float] | None = None  # (model id, version, time sent)
    resyncs: int = 0
    sampling: tuple[float, float] | None = None  # (rate, period) as last sent
    sampling_sent_at: float = -math.inf
    drone_version: int | None = None  # from its status
    drone_fps: float = float('nan')
    drone_frames: int = 0  # frames_received in its status: less means a new process
    errors: Counter = field(default_factory=Counter)


def _no_log(level: str, text: str, throttle_s: float = 0.0) -> None:
    pass


class GroundStation:
    """Serve drones: follow their links and models, train them in turn (module docstring)."""

    def __init__(self, scheduler: PhaseScheduler, registry: ClientRegistry, downlink: Downlink,
                 config: StationConfig | None = None,
                 log: Callable[[str, str, float], None] = _no_log):
        self.scheduler = scheduler
        self.registry = registry
        self.downlink = downlink
        self.config = config or StationConfig()
        self.log = log  # (level 'info' or 'warning', text, throttle seconds)
        self.links: dict[str, DroneLink] = {}
        self.counts: Counter[str] = Counter()
        self.last_error = ''
        self.busy = ''  # what the station is doing, for diagnostics
        self._lock = threading.Lock()  # counts and errors

    # -- admission and events --------------------------------------------------------------

    def admit(self, namespace: str, client_id: str, now: float) -> bool:
        """Admit a verified message: its client id must belong to the namespace it came on."""
        admission = self.registry.admit(namespace, client_id, now)
        if not admission.ok:
            self.error('', f"'{client_id}' on {namespace} refused: {admission.reason}",
                       f'refused.{admission.reason}')
        return admission.ok

    def run_round(self, events: list[DroneEvent], now: Callable[[], float]) -> None:
        """Expire silent drones, handle `events`, send owed snapshots and train one phase.

        One phase per round, whatever arrived meanwhile, keeps a steady stream of batches from
        starving training, and a request waits for at most one phase. A failure in one step is
        counted and the round goes on.
        """
        self.expire(now())
        for step in [*events, 'snapshots', 'train']:
            try:
                if step == 'snapshots':
                    self.send_owed_snapshots(now())
                elif step == 'train':
                    self.train_next(now())
                else:
                    self.handle(step, now())
            except Exception as e:  # noqa: BLE001 - one failure never stops serving
                client_id = step.client_id if isinstance(step, DroneEvent) else ''
                self.error(client_id, f'{type(e).__name__}: {e}', 'worker_errors')
            finally:
                self.busy = ''

    def handle(self, event: DroneEvent, now: float) -> None:
        """Act on one admitted drone event."""
        if self.registry.namespace_of(event.client_id) is None:
            return  # expired while the event waited
        if event.kind == STATUS:
            self._follow_status(event.client_id, event.data, now)
        elif event.kind == CONTACT:
            self._link(event.client_id, now)
        elif event.kind == SNAPSHOT:
            self._link(event.client_id, now)
            self.owe_snapshot(event.client_id, event.data, now)
        elif event.kind == BATCH:
            self.busy = f'labelling {event.client_id}'
            self._ingest(event.client_id, event.data, now)
        else:
            raise ValueError(f'unknown drone event {event.kind!r}')

    def has_training(self) -> bool:
        return any(self.scheduler.session(c).pending_frames > 0
                   for c in self.scheduler.client_ids)

    def expire(self, now: float) -> None:
        for client_id in self.registry.expire(now):
            self.scheduler.remove(client_id)
            self.links.pop(client_id, None)
            self.log('info', f"drone '{client_id}' silent for "
                     f'{self.registry.idle_timeout_s:g} s: dropped', 0.0)

    # -- one drone -------------------------------------------------------------------------

    def _link(self, client_id: str, now: float) -> DroneLink:
        """Add a drone on first contact and send it its sampling control.

        Whether it needs its model is for its status (or its request) to say: a drone that
        runs the ground's first version already, or a newer one, needs none now.
        """
        link = self.links.get(client_id)
        if link is not None:
            return link
        session = self.scheduler.add(client_id)
        config = self.config
        link = self.links[client_id] = DroneLink(
            seq=SequenceTracker(config.max_seq_gap),
            budget=SnapshotBudget(config.snapshot_kbps,
                                  config.snapshot_burst * self._snapshot_size(),
                                  config.snapshot_backoff_min_s, config.snapshot_backoff_max_s))
        self.log('info', f"new drone '{client_id}' in "
                 f'{self.registry.namespace_of(client_id)}', 0.0)
        self._send_sampling(client_id, session.asr.rate, session.atr.update_period, now)
        return link

    def _follow_status(self, client_id: str, status: DroneReport, now: float) -> None:
        """Follow what the drone runs: restarts, divergence from the mirror, sampling drift."""
        known = client_id in self.links
        link = self._link(client_id, now)
        session = self.scheduler.session(client_id)
        if not known and not _diverged(session, status) and not _runs_mirror(session, status):
            self.owe_snapshot(client_id, 'first contact', now)  # no model, or another one
        elif known and status.frames_received < link.drone_frames:
            self.log('info', f"'{client_id}' restarted: sending its model", 0.0)
            self.owe_snapshot(client_id, 'restarted', now)
        link.drone_frames = int(status.frames_received)
        link.drone_version, link.drone_fps = status.active_version, status.inference_fps
        if (link.last_snapshot is not None
                and link.last_snapshot[:2] == (status.model_id, status.active_version)):
            link.budget.confirmed()
        if link.snapshot_wanted and _runs_mirror(session, status):
            link.snapshot_wanted = ''  # patches brought it back in step: no snapshot needed
        if _diverged(session, status):
            self._resync(client_id, link, session, status, now)
        if (link.sampling is not None
                and not _same_sampling((status.sampling_rate, status.update_period),
                                       link.sampling)
                and now - link.sampling_sent_at > SAMPLING_RESEND_S):
            self.count('sampling_resent')
            self._send_sampling(client_id, *link.sampling, now)

    def _resync(self, client_id: str, link: DroneLink, session: DroneSession,
                status: DroneReport, now: float) -> None:
        """Move the mirror's version past the drone's and send the mirror as a snapshot.

        The drone takes a snapshot it did not ask for only as its next version, so the mirror
        (whose weights are the truth) gets a version one above whatever the drone claims.
        """
        landing = (link.last_snapshot is not None
                   and link.last_snapshot[1] > status.active_version
                   and now - link.last_snapshot[2] < RESYNC_GRACE_S)
        if link.snapshot_wanted or landing:
            return  # a snapshot that would fix it is owed or on its way: let it land first
        mirror = session.mirror
        version = max(mirror.version, status.active_version) + 1
        if version >= MAX_VERSION:
            version = mirror.version  # cannot outbid: its next patch makes it ask
        mirror.reset(version, mirror.vector)
        link.resyncs += 1
        self.error(client_id, f'drone runs v{status.active_version} '
                   f'({bytes(status.active_digest).hex()[:12]}), not the mirror: resync as '
                   f'v{version}', 'resyncs')
        self.owe_snapshot(client_id, 'resync', now)

    def _ingest(self, client_id: str, batch: UplinkBatch, now: float) -> None:
        try:
            frames, damage = decode_batch(batch), None
        except FrameCodecError as e:
            frames, damage = None, e
        if damage is not None and client_id not in self.links:
            # Nothing known of this drone but undecodable bytes: no state is made for it.
            self.error(client_id, f'batch {batch.seq} not decodable: {damage}',
                       f'decode.{damage.reason.value}')
            return
        link = self._link(client_id, now)
        verdict = link.seq.observe(batch.seq)  # a damaged batch still fills its number
        link.batches_lost += verdict.lost
        if not verdict.accepted:
            self.error(client_id, f'batch {batch.seq} refused: {verdict.reason}',
                       f'seq.{verdict.reason}')
            return
        if damage is not None:
            self.error(client_id, f'batch {batch.seq} not decodable: {damage}',
                       f'decode.{damage.reason.value}')
            return
        session = self.scheduler.session(client_id)
        try:
            session.add_frames(frames, batch.stamps, now=now)
        except StampRefused as e:
            self.error(client_id, f'batch {batch.seq} refused: {e}', f'stamps.{e.reason}')
            return
        if session.stamp_verdict.reason == REANCHOR:
            self.count('stamp_reanchors')
            self.log('warning', f"'{client_id}': its clock jumped by "
                     f'{session.stamp_verdict.offset:.3f} s; buffer re-anchored', 0.0)
        link.batches += 1
        link.frames += len(frames)
        decision = session.update_rates(max(batch.stamps))
        if decision is not None and link.sampling != (decision.sampling_rate,
                                                       decision.update_period):
            self._send_sampling(client_id, decision.sampling_rate, decision.update_period, now)

    def train_next(self, now: float) -> tuple[str, PhaseOutput] | None:
        """Train the phase the scheduler picks and send its patch to that drone only."""
        self.busy = 'training'
        started = time.monotonic()
        phase = self.scheduler.train_next()
        if phase is None:
            return None
        client_id, output = phase
        link = self.links[client_id]
        link.phases += 1
        link.last_loss = output.result.mean_loss
        link.last_phase_s = time.monotonic() - started
        link.patch_bytes += output.patch.nbytes
        self.log('info', f"'{client_id}' v{output.patch.version} "
                 f'({output.patch.digest.hex()}): loss {output.result.mean_loss:.3f}, '
                 f'{len(output.result.indices)} parameters, {output.patch.nbytes} bytes, phase '
                 f'{link.last_phase_s:.2f} s', 0.0)
        self.downlink.patch(client_id, output.patch)
        return client_id, output

    def owe_snapshot(self, client_id: str, reason: str, now: float) -> None:
        """Note that the drone needs its model; it goes when the drone's budget allows."""
        link = self.links[client_id]
        link.snapshot_wanted = link.snapshot_wanted or reason
        self.send_owed_snapshots(now)

    def send_owed_snapshots(self, now: float) -> None:
        for client_id, link in list(self.links.items()):
            if not link.snapshot_wanted:
                continue
            wait = link.budget.request(now, self._snapshot_size())
            if wait > 0:
                self.log('info', f"'{client_id}': snapshot ({link.snapshot_wanted}) deferred "
                         f'{wait:.1f} s by its budget', 10.0)
                continue
            self._send_snapshot(client_id, link, now)

    def _send_snapshot(self, client_id: str, link: DroneLink, now: float) -> None:
        self.busy = f'snapshot for {client_id}'
        payload = self.scheduler.session(client_id).snapshot()
        size = len(payload.model_data)
        self.log('info', f"'{client_id}' v{payload.version} ({payload.digest.hex()}): snapshot "
                 f'({link.snapshot_wanted}), {size} bytes', 0.0)
        self.downlink.snapshot(client_id, payload)
        link.budget.sent(now, size)
        link.snapshot_wanted = ''
        link.snapshots += 1
        link.snapshot_bytes += size
        link.last_snapshot = (payload.model_id, payload.version, now)
        self.count('bytes_down', size)

    def _send_sampling(self, client_id: str, rate: float, period: float, now: float) -> None:
        link = self.links[client_id]
        link.sampling, link.sampling_sent_at = (rate, period), now
        self.downlink.sampling(client_id, rate, period)

    # -- errors and diagnostics --------------------------------------------------------------

    def _snapshot_size(self) -> int:
        return len(self.scheduler.template.onnx_bytes)

    def count(self, key: str, n: int = 1) -> None:
        with self._lock:
            self.counts[key] += n

    def error(self, client_id: str, text: str, key: str) -> None:
        """Count a refusal or failure under `key` (and the drone's own count) and log it."""
        with self._lock:
            self.counts['errors'] += 1
            self.counts[key] += 1
            link = self.links.get(client_id)
            if link is not None:
                link.errors[key] += 1
        self.last_error = f'{client_id}: {text}' if client_id else text
        self.log('warning', self.last_error, 2.0)

    def diagnostics(self, name: str, preparing: str, node_values: dict,
                    extra_counts: dict) -> list[tuple[str, str, str, str, dict]]:
        """Return the /diagnostics entries as (name, level, message, hardware id, values).

        First the station's own (warn while `preparing` says what keeps it from serving, or
        after errors), then one per drone; `node_values` and `extra_counts` are the node's.
        """
        counts = dict(self.counts, **extra_counts)
        clients = sorted(self.links)
        level = 'warn' if counts.get('errors') or preparing else 'ok'
        message = preparing or f'{len(clients)} drones'
        if self.last_error:
            message += f'; last error: {self.last_error}'
        entries = [(name, level, message, name, {
            'drones': len(clients), **node_values, 'worker': self.busy or 'idle',
            'student': preparing or 'ready', **dict(sorted(counts.items())),
            'last_error': self.last_error})]
        for client_id in clients:
            try:
                level, message, values = self.drone_values(client_id)
            except KeyError:
                continue  # dropped meanwhile
            entries.append((f'{name}: {client_id}', level, message, client_id, values))
        return entries

    def drone_values(self, client_id: str) -> tuple[str, str, dict]:
        """Return (level, message, values) of one drone's diagnostics entry."""
        link, session = self.links[client_id], self.scheduler.session(client_id)
        mirror = session.mirror
        behind = link.drone_version is not None and link.drone_version < mirror.version - 1
        errors = dict(link.errors)
        rate, period = link.sampling or (float('nan'), float('nan'))
        return ('warn' if behind or errors else 'ok',
                f'mirror v{mirror.version}, drone v{link.drone_version}', {
                    'namespace': self.registry.namespace_of(client_id),
                    'mirror_version': mirror.version, 'drone_version': link.drone_version,
                    'drone_fps': link.drone_fps, 'batches': link.batches, 'frames': link.frames,
                    'batches_lost': link.batches_lost, 'buffered_frames': len(session.buffer),
                    'pending_frames': session.pending_frames, 'phases': link.phases,
                    'last_loss': link.last_loss, 'last_phase_s': link.last_phase_s,
                    'mirror_digest': mirror.digest.hex(), 'patch_bytes': link.patch_bytes,
                    'snapshots': link.snapshots, 'snapshot_bytes': link.snapshot_bytes,
                    'snapshot_owed': link.snapshot_wanted, 'resyncs': link.resyncs,
                    'phi': session.phi if session.phi is not None else float('nan'),
                    'sampling_rate': rate, 'update_period': period,
                    **{f'errors.{k}': v for k, v in sorted(errors.items())}})


def _same_sampling(a: tuple[float, float], b: tuple[float, float]) -> bool:
    """Whether two (rate, period) pairs agree up to the wire's float32 rounding."""
    return all(math.isclose(x, y, rel_tol=1e-5) for x, y in zip(a, b, strict=True))


def _runs_mirror(session: DroneSession, status: DroneReport) -> bool:
    mirror = session.mirror
    return ((status.model_id, status.active_version) == (session.template.model_id,
                                                          mirror.version)
            and status.active_digest in (b'', mirror.digest))


def _diverged(session: DroneSession, status: DroneReport) -> bool:
    """Whether the drone runs a model this ground never made (a version, or a digest)."""
    mirror = session.mirror
    if status.model_id != session.template.model_id or status.active_version == 0:
        return False  # another model, or none: its own requests take care of it
    return (status.active_version > mirror.version
            or (status.active_version == mirror.version and bool(status.active_digest)
                and status.active_digest != mirror.digest))
