"""Model versions across the downlink: the ground's per-client mirror and the edge's model state.

The ground keeps, per drone, an exact mirror of the vector that drone runs. Each patch moves the
mirror from ``base_version`` to ``version = base_version + 1`` and carries the SHA-256 of the
resulting vector. The edge applies a patch only onto that base, into a candidate copy, and makes
the candidate active only when its digest matches: an unverified vector is never activated.

What the edge does with a patch (``Outcome.kind``):

- ``applied``: it was for the active version and verified (held successors are applied too);
- ``duplicate``: its version is not newer than the active one and its digest is the one the
  edge recorded for that version (a redelivery or replay), or it is a version the edge skipped
  or no longer remembers, at most ``MAX_UNREQUESTED_JUMP`` behind (a patch delayed past the
  snapshot that filled its gap): ignored;
- ``out_of_order``: it builds on a version not reached yet: held (a few at most) until the gap
  fills;
- ``needs_snapshot``: the edge cannot continue from patches; the reason says why: ``startup``
  (no model yet), ``model-id``, ``gap`` (too many held patches), ``digest-mismatch`` (the ground's
  base differs from ours), ``diverged`` (a version not newer than the active one whose digest
  is not the one the edge ran, or one it cannot know that lies more than
  ``MAX_UNREQUESTED_JUMP`` behind: the ground's history is not ours, e.g. after a forged
  snapshot pushed the edge to a high version), or a ``PatchError`` reason (the body does not
  decode);
- ``rejected``: not acted on at all: ``bad-version`` (version is not base_version + 1), or
  ``non-finite`` / ``out-of-range`` (the result would hold a NaN or infinity, or a value beyond
  ``value_bound``: the model the edge runs is intact, so it asks for nothing).

What the edge does with a snapshot: with no model yet, or when it asked for one
(``requested``), it activates any snapshot whose digest and values verify, at any version and
of any model. An unrequested snapshot while a model runs is a resync of that model or nothing:
``rejected`` with ``unrequested-model`` (another model id, parameter count or, as the caller
judges, interface), ``stale`` (not newer than the active version) or ``version-jump`` (more than
``MAX_UNREQUESTED_JUMP`` ahead). Rejected rather than asked for again: a refusal that made the
edge ask would let anyone turn their next forged snapshot into a requested one. A snapshot
that fails its digest or values is ``needs_snapshot`` (``digest-mismatch``, ``non-finite``,
``out-of-range``, ``snapshot-format``).

Authenticity is not checked here: the nodes verify each message's link tag (see
ams_ros.ros.link_auth) before its payload gets here. Without a key anyone can send a consistent
forgery, so a forged model may run for a moment; these rules make sure it does not stay: the
ground's next genuine patch either fails to apply or finds the edge ``diverged``, and the edge
asks for the real model; and the ground, which sees the edge report a version or digest its
mirror does not have, resends the mirror one version above the edge's (see ground_node), a
snapshot the edge takes unasked.

Not thread-safe: one caller (the node's patch callback) drives an EdgeModelState. The active
vector is replaced, never modified, so a reader holding the previous one is unaffected.
"""

from __future__ import annotations

import array
import dataclasses
import math
from collections import Counter
from dataclasses import dataclass

import numpy as np

from ams_ros.model.manifest import FLAT_DTYPE, vector_digest
from ams_ros.wire.patch_codec import (
    DEFAULT_FORMAT,
    PatchError,
    PatchFormat,
    apply_patch,
    encode_patch,
)

APPLIED = 'applied'
DUPLICATE = 'duplicate'
OUT_OF_ORDER = 'out_of_order'
NEEDS_SNAPSHOT = 'needs_snapshot'
REJECTED = 'rejected'
VALUE_REFUSALS = ('non-finite', 'out-of-range')  # a result no genuine ground produces

# An unrequested snapshot may move the edge at most this many versions ahead: a resync of the
# model it runs after lost patches (1000 phases of 10 s are 2.8 hours without a patch).
MAX_UNREQUESTED_JUMP = 1000
# Digests of the last versions the edge ran, to tell a redelivered patch (same digest) from
# one of another history. A patch delayed further than this many versions costs a snapshot.
DIGEST_HISTORY = 32
# No parameter may exceed VALUE_BOUND_FACTOR * max(1, max |w0|), w0 the first model loaded.
# An Adam step moves a weight by at most lr (1 - beta1) / sqrt(1 - beta2), 3.2 lr with the
# default betas (Kingma & Ba, section 2.1), so 20 iterations per phase at lr 1e-3 move it by
# at most 0.064 per phase: 1000 phases by 64, under 7% of the bound at its smallest (1000).
# Reaching it takes over 15000 phases all pushing one weight the same way at Adam's ceiling,
# while a float32 overflow (3e38) or an absurd forged weight is far beyond it.
VALUE_BOUND_FACTOR = 1000.0


@dataclass(frozen=True)
class PatchPayload:
    """One ams_msgs/ModelPatch message's content (all but the header and auth fields)."""

    client_id: str
    model_id: str
    base_version: int
    version: int
    num_params: int
    index_codec: str
    index_data: bytes
    value_codec: str
    value_data: bytes
    digest: bytes

    @property
    def nbytes(self) -> int:
        """Payload bytes on the wire, without the transport's framing."""
        text = self.client_id + self.model_id + self.index_codec + self.value_codec
        data = [self.index_data, self.value_data, self.digest]
        return len(text.encode()) + sum(len(d) for d in data) + 3 * 8   # + 3 uint64


@dataclass(frozen=True)
class Outcome:
    kind: str
    reason: str = ''
    active_version: int | None = None
    applied_versions: tuple[int, ...] = ()   # every version made active by this call, in order

    @property
    def needs_snapshot(self) -> bool:
        return self.kind == NEEDS_SNAPSHOT


class GroundMirror:
    """The ground's exact copy of what one client runs; makes the patches that advance it."""

    def __init__(self, client_id: str, model_id: str, version: int, vector: np.ndarray, *,
                 fmt: PatchFormat = DEFAULT_FORMAT):
        self.client_id = client_id
        self.model_id = model_id
        self.fmt = fmt
        self.reset(version, vector)

    @property
    def version(self) -> int:
        return self._version

    @property
    def vector(self) -> np.ndarray:
        return self._vector

    @property
    def digest(self) -> bytes:
        return self._digest

    def reset(self, version: int, vector: np.ndarray) -> None:
        """Start over from a snapshot that was sent to the client."""
        self._commit(_check_version(version), _owned_vector(vector))

    def make_patch(self, indices, target_values, value_mode: str | None = None) -> PatchPayload:
        """Encode the new values at indices as the next version and advance the mirror."""
        fmt = self.fmt if value_mode is None else dataclasses.replace(self.fmt,
                                                                      value_mode=value_mode)
        body, new_vector = encode_patch(self._vector, indices, target_values, fmt)
        new_vector.flags.writeable = False
        patch = PatchPayload(
            client_id=self.client_id, model_id=self.model_id,
            base_version=self._version, version=self._version + 1,
            num_params=body.num_params, index_codec=body.index_codec,
            index_data=body.index_data, value_codec=body.value_codec,
            value_data=body.value_data, digest=vector_digest(new_vector))
        self._commit(patch.version, new_vector, patch.digest)
        return patch

    def _commit(self, version: int, vector: np.ndarray, digest: bytes | None = None) -> None:
        self._version, self._vector = version, vector
        self._digest = vector_digest(vector) if digest is None else digest


class EdgeModelState:
    """The edge's active (verified) version and flat vector, advanced by patches and snapshots."""

    def __init__(self, model_id: str = '', *, max_pending: int = 4):
        self.model_id = model_id
        self.max_pending = max_pending
        self._version: int | None = None
        self._vector: np.ndarray | None = None
        self._digest: bytes | None = None   # of the active vector, as verified
        self._history: dict[int, bytes] = {}   # digest of each recent version run, oldest first
        self._value_bound: float | None = None   # set by the first model
        self._pending: dict[int, PatchPayload] = {}   # by base_version
        self._counts: Counter[tuple[str, str]] = Counter()

    @property
    def version(self) -> int | None:
        return self._version

    @property
    def vector(self) -> np.ndarray | None:
        """The active vector (read-only), or None before the first snapshot."""
        return self._vector

    @property
    def digest(self) -> bytes | None:
        """SHA-256 of the active vector (the one its snapshot or patch carried and matched)."""
        return self._digest

    @property
    def value_bound(self) -> float | None:
        """Largest |parameter| any later model may hold; None before the first model."""
        return self._value_bound

    @property
    def counts(self) -> dict[tuple[str, str], int]:
        """How often each (kind, reason) happened; each applied patch counts once."""
        return dict(self._counts)

    def digest_of(self, version: int) -> bytes | None:
        """Digest of a recent version this edge ran (None if it never ran it or forgot it)."""
        return self._history.get(version)

    @property
    def pending_versions(self) -> tuple[int, ...]:
        return tuple(sorted(p.version for p in self._pending.values()))

    def offer(self, patch: PatchPayload) -> Outcome:
        """Apply, hold or refuse one patch; see the module docstring for the outcomes."""
        if not _chains(patch):
            return self._event(REJECTED, 'bad-version')
        if self._vector is None:
            self._hold(patch)   # it may follow the snapshot we are about to ask for
            return self._event(NEEDS_SNAPSHOT, 'startup')
        if patch.model_id != self.model_id:
            return self._event(NEEDS_SNAPSHOT, 'model-id')
        if patch.version <= self._version:
            recorded = self._history.get(patch.version)
            if recorded == _as_bytes(patch.digest) or (
                    recorded is None and self._version - patch.version <= MAX_UNREQUESTED_JUMP):
                # A redelivery, or a version the edge skipped (e.g. a patch delayed past the
                # snapshot that filled its gap): nothing to do.
                return self._event(DUPLICATE)
            return self._event(NEEDS_SNAPSHOT, 'diverged')
        if patch.base_version > self._version:
            if self._hold(patch):
                return self._event(OUT_OF_ORDER)
            return self._event(NEEDS_SNAPSHOT, 'gap')
        return self._apply_chain(patch)

    def check_snapshot(self, version: int, flat: np.ndarray, digest: bytes,
                       model_id: str | None = None, *, requested: bool = True,
                       same_interface: bool = True) -> Outcome | None:
        """Return the refusal `load_snapshot` would answer (and count it), else None.

        For a caller with work to do between the checks and the activation (DroneAgent
        builds the model's runtime): ``load_snapshot`` with the same arguments then activates.
        """
        refusal = self._snapshot_refusal(version, flat, digest, model_id, requested,
                                         same_interface)
        return None if refusal is None else self._event(*refusal)

    def load_snapshot(self, version: int, flat: np.ndarray, digest: bytes,
                      model_id: str | None = None, *, requested: bool = True,
                      same_interface: bool = True) -> Outcome:
        """Make a whole vector active if it is acceptable; then apply held successors.

        ``requested``: the edge asked for a snapshot and has not had one since (the default,
        what callers before this argument did). See the module docstring for what an
        unrequested snapshot must be; ``same_interface`` is the caller's verdict on whether
        the snapshot's model has the running model's interface (a vector alone does not say).
        ``model_id``, when given, must match for an unrequested snapshot, and becomes the
        model id patches must carry from now on.
        """
        candidate = _owned_vector(flat) if _is_flat(flat) else flat
        refusal = self.check_snapshot(version, candidate, digest, model_id, requested=requested,
                                      same_interface=same_interface)
        if refusal is not None:
            return refusal
        version = int(version)
        if self._value_bound is None:
            self._value_bound = VALUE_BOUND_FACTOR * max(1.0, _peak(candidate))
        # Versions from the history this snapshot replaces are no longer ours.
        self._history = {v: d for v, d in self._history.items() if v < version}
        self._commit(version, candidate, _as_bytes(digest))
        if model_id is not None:
            self.model_id = model_id
        self._pending = {b: p for b, p in self._pending.items() if p.version > version}
        self._counts[('snapshot', '')] += 1
        successor = self._pending.pop(self._version, None)
        if successor is None:
            return Outcome(APPLIED, 'snapshot', self._version, (self._version,))
        outcome = self._apply_chain(successor)
        return dataclasses.replace(outcome, applied_versions=(version,)
                                   + outcome.applied_versions)

    def _snapshot_refusal(self, version, flat, digest, model_id, requested,
                          same_interface) -> tuple[str, str] | None:
        if not (_is_flat(flat) and flat.size > 0 and _is_version(version)):
            return NEEDS_SNAPSHOT, 'snapshot-format'
        if self._vector is not None and not requested:
            reason = self._unrequested_refusal(int(version), flat, model_id, same_interface)
            if reason:
                return REJECTED, reason
        if _as_bytes(digest) != vector_digest(flat):
            return NEEDS_SNAPSHOT, 'digest-mismatch'
        reason = _value_refusal(flat, self._value_bound)
        return (NEEDS_SNAPSHOT, reason) if reason else None

    def _unrequested_refusal(self, version: int, flat: np.ndarray, model_id: str | None,
                             same_interface: bool) -> str:
        """'' if an unrequested snapshot may resync the running model, else why not."""
        if version <= self._version:
            return 'stale'
        if version > self._version + MAX_UNREQUESTED_JUMP:
            return 'version-jump'
        if (model_id not in (None, self.model_id) or flat.size != self._vector.size
                or not same_interface):
            return 'unrequested-model'
        return ''

    def _apply_chain(self, patch: PatchPayload) -> Outcome:
        """Apply a patch for the active version, then every held patch that now follows."""
        applied = []
        while patch is not None:
            reason = self._verify_and_commit(patch)
            if reason in VALUE_REFUSALS:
                # The model the edge runs is intact, and no ground sends such values: asking
                # for a snapshot would only let any forged patch cost one.
                return self._event(REJECTED, reason, applied)
            if reason:
                return self._event(NEEDS_SNAPSHOT, reason, applied)
            self._counts[(APPLIED, '')] += 1
            applied.append(self._version)
            patch = self._pending.pop(self._version, None)
        return Outcome(APPLIED, '', self._version, tuple(applied))

    def _verify_and_commit(self, patch: PatchPayload) -> str:
        """Return '' once the patch is applied, else the reason it was not."""
        if patch.model_id != self.model_id:   # held since startup, before we knew the model
            return 'model-id'
        try:
            candidate = apply_patch(self._vector, patch)
        except PatchError as e:
            return e.reason
        if _as_bytes(patch.digest) != vector_digest(candidate):
            return 'digest-mismatch'
        reason = _value_refusal(candidate, self._value_bound)
        if reason:
            return reason
        candidate.flags.writeable = False
        self._commit(patch.version, candidate, _as_bytes(patch.digest))
        return ''

    def _commit(self, version: int, vector: np.ndarray, digest: bytes) -> None:
        self._version, self._vector, self._digest = version, vector, digest
        self._history[version] = digest
        if len(self._history) > DIGEST_HISTORY:
            del self._history[min(self._history)]

    def _hold(self, patch: PatchPayload) -> bool:
        if patch.base_version not in self._pending and len(self._pending) >= self.max_pending:
            return False
        self._pending[patch.base_version] = patch   # a resent patch replaces the held one
        return True

    def _event(self, kind: str, reason: str = '', applied=()) -> Outcome:
        self._counts[(kind, reason)] += 1
        return Outcome(kind, reason, self._version, tuple(applied))


def _value_refusal(vector: np.ndarray, bound: float | None) -> str:
    """'' if every value is finite and within bound (None: no bound yet), else the reason."""
    peak = _peak(vector)
    if not math.isfinite(peak):
        return 'non-finite'
    return 'out-of-range' if bound is not None and peak > bound else ''


def _peak(vector: np.ndarray) -> float:
    """Largest |value|: NaN or infinity when any value is (np.max propagates NaN)."""
    return float(np.max(np.abs(vector)))


def _is_version(value) -> bool:
    return isinstance(value, (int, np.integer)) and not isinstance(value, bool) and value >= 0


def _check_version(value) -> int:
    if not _is_version(value):
        raise ValueError(f'a version is a non-negative integer, got {value!r}')
    return int(value)


def _chains(patch) -> bool:
    return (_is_version(patch.base_version) and _is_version(patch.version)
            and patch.version == patch.base_version + 1)


def _is_flat(value) -> bool:
    return isinstance(value, np.ndarray) and value.dtype == FLAT_DTYPE and value.ndim == 1


def _owned_vector(flat: np.ndarray) -> np.ndarray:
    """Copy into a private read-only vector (no caller can change an active or mirrored one)."""
    if not _is_flat(flat):
        raise ValueError(f'expected a 1-D {FLAT_DTYPE} vector')
    owned = flat.copy()
    owned.flags.writeable = False
    return owned


def _as_bytes(value) -> bytes | None:
    if isinstance(value, (bytes, bytearray, memoryview, array.array)):
        return bytes(value)
    return None
