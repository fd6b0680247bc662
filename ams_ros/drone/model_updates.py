"""What the drone does with each patch and snapshot that reaches it, and when it asks for one.

The drone node and the offline harness hand every delivered update to ``ModelUpdates``, so
these rules exist once:

- an applied patch or snapshot answers any pending snapshot request. A snapshot the drone did
  not ask for leaves its version *unconfirmed* until a patch from the ground builds on it;
- a patch that cannot be applied (another model, a bad digest, a diverged version) or that
  arrives ahead of its base asks for a snapshot at once: patches come in order over one reliable
  link, so a gap means lost patches or a stale model (e.g. an old latched snapshot after a
  restart), and waiting for ``max_pending_patches`` update periods only costs accuracy;
- a snapshot refused as a forgery (unsigned, bad tag, replayed) asks for nothing, since it is no
  sign that the model is lost; a bad snapshot the drone did not ask for leaves the model it runs
  as good as it was, so only one it asked for (or a drone with no model) asks again;
- a stale snapshot (an old latched one, not newer than the model run) is counted and ignored.

Every decision comes back as a ``Delivery``: what to count and what to log; the caller keeps the
counters and the log.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from ams_ros.drone.agent import DroneAgent
from ams_ros.drone.snapshot_requester import SnapshotRequester
from ams_ros.wire.auth import AUTH_REFUSALS
from ams_ros.wire.model_version import (
    APPLIED,
    NEEDS_SNAPSHOT,
    OUT_OF_ORDER,
    REJECTED,
    Outcome,
    PatchPayload,
)
from ams_ros.wire.snapshot import SnapshotPayload


@dataclass(frozen=True)
class Delivery:
    """What one patch or snapshot did to the drone."""

    outcome: Outcome | None  # None: the message was refused before the model state saw it
    changed: bool = False  # a new version was verified and is being activated
    counts: dict[str, int] = field(default_factory=dict)  # counter -> increment
    info: str = ''  # worth an info line
    warning: str = ''  # worth a warning; counted under `error_key` (and 'errors') if set
    error_key: str = ''


class ModelUpdates:
    """The drone's handling of patches and snapshots, and its snapshot requests."""

    def __init__(self, agent: DroneAgent, requester: SnapshotRequester | None = None):
        self.agent = agent
        self.requester = requester or SnapshotRequester()
        # A version from a snapshot the drone did not ask for, until the ground confirms it.
        self.unconfirmed_version: int | None = None

    def patch(self, payload: PatchPayload) -> Delivery:
        """Offer a verified patch message to the drone."""
        outcome = self.agent.offer_patch(payload)
        counts = {f'patch.{_key(outcome)}': 1}
        warning = ''
        if outcome.kind == APPLIED:
            counts['patches_applied'] = len(outcome.applied_versions)
            self.unconfirmed_version = None
            self.requester.answered()
        elif outcome.kind == REJECTED or (outcome.kind == NEEDS_SNAPSHOT
                                          and outcome.reason != 'startup'):
            counts['patches_rejected'] = 1
            warning = (f'patch {payload.base_version}->{payload.version}: {outcome.kind} '
                       f'({outcome.reason})')
        if outcome.needs_snapshot:
            self.requester.want(outcome.reason, at_once=True)
        elif outcome.kind == OUT_OF_ORDER:
            self.requester.want('gap', at_once=True)
        return Delivery(outcome, bool(outcome.applied_versions), counts, warning=warning)

    def snapshot(self, payload: SnapshotPayload) -> Delivery:
        """Offer a verified snapshot message to the drone."""
        requested = bool(self.requester.reason)
        outcome = self.agent.load_snapshot(payload, requested=requested)
        counts = {f'snapshot.{_key(outcome)}': 1}
        if outcome.kind == APPLIED:
            counts['snapshots_applied'] = 1
            self.unconfirmed_version = None if requested else self.agent.version
            self.requester.answered()
            return Delivery(outcome, True, counts, info=(
                f'snapshot v{payload.version} of {payload.model_id} verified '
                f'({len(payload.model_data)} bytes' + ('' if requested else ', not asked for')
                + ')'))
        if outcome.reason == 'stale':
            counts['snapshots_stale'] = 1
            return Delivery(outcome, False, counts)
        if outcome.needs_snapshot and (requested or self.agent.runtime is None):
            self.requester.want(outcome.reason)
        return Delivery(outcome, False, counts, warning=(
            f'snapshot v{payload.version} not used: {outcome.kind} ({outcome.reason})'),
            error_key='snapshots_refused')

    def refused(self, kind: str, reason: str, text: str) -> Delivery:
        """Count a patch or snapshot message that did not convert or verify (`reason`)."""
        if kind == 'snapshot' and reason not in AUTH_REFUSALS:
            self.requester.want(f'snapshot-{reason}')
        return Delivery(None, False, {f'{kind}.{REJECTED}:{reason}': 1}, warning=text,
                        error_key=f'bad_{kind}.{reason}')

    def request_due(self, now: float) -> str | None:
        """Return the reason of a snapshot request to send now, or None."""
        return self.requester.due(now)

    def ask_for_model(self) -> None:
        """Ask the ground for a model if the drone has none (at start-up)."""
        if self.agent.runtime is None:
            self.requester.want('startup')


def _key(outcome: Outcome) -> str:
    return f'{outcome.kind}:{outcome.reason}' if outcome.reason else outcome.kind
