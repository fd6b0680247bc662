"""Model versions across the downlink: the ground's per-client mirror and the edge's model state.

The ground keeps, per drone, an exact mirror of the vector that drone runs. Each patch moves the
mirror from ``base_version`` to ``version = base_version + 1`` and carries the SHA-256 of the
resulting vector. The edge applies a patch only onto that base, into a candidate copy, and makes
the candidate active only when its digest matches: an unverified vector is never activated.

What the edge does with a patch (``Outcome.kind``):

- ``applied``: it was for the active version and verified (held successors are applied too);
- ``duplicate``: its version is not newer than the active one (a redelivery or replay): ignored;
- ``out_of_order``: it builds on a version not reached yet: held (a few at most) until the gap
  fills;
- ``needs_snapshot``: the edge cannot continue from patches; the reason says why: ``startup``
  (no model yet), ``model-id``, ``gap`` (too many held patches), ``digest-mismatch`` (the ground's
  base differs from ours), or a ``PatchError`` reason (the body does not decode);
- ``rejected``: not acted on at all: ``unsigned`` / ``bad-signature`` (see auth) or
  ``bad-version`` (version is not base_version + 1).

Not thread-safe: one caller (the node's patch callback) drives an EdgeModelState. The active
vector is replaced, never modified, so a reader holding the previous one is unaffected.
"""

from __future__ import annotations

import array
import dataclasses
from collections import Counter
from dataclasses import dataclass

import numpy as np

from ams_ros.auth import check_tag, sign
from ams_ros.manifest import FLAT_DTYPE, vector_digest
from ams_ros.patch_codec import DEFAULT_FORMAT, PatchError, PatchFormat, apply_patch, encode_patch

APPLIED = 'applied'
DUPLICATE = 'duplicate'
OUT_OF_ORDER = 'out_of_order'
NEEDS_SNAPSHOT = 'needs_snapshot'
REJECTED = 'rejected'


@dataclass(frozen=True)
class PatchPayload:
    """One ams_msgs/ModelPatch message's content (all but the header), field for field."""

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
    auth_tag: bytes = b''

    @property
    def nbytes(self) -> int:
        """Payload bytes on the wire, without the transport's framing."""
        text = self.client_id + self.model_id + self.index_codec + self.value_codec
        data = [self.index_data, self.value_data, self.digest, self.auth_tag]
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
                 fmt: PatchFormat = DEFAULT_FORMAT, key: bytes | None = None):
        self.client_id = client_id
        self.model_id = model_id
        self.fmt = fmt
        self._key = key
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
        return sign(patch, self._key)

    def _commit(self, version: int, vector: np.ndarray, digest: bytes | None = None) -> None:
        self._version, self._vector = version, vector
        self._digest = vector_digest(vector) if digest is None else digest


class EdgeModelState:
    """The edge's active (verified) version and flat vector, advanced by patches and snapshots."""

    def __init__(self, model_id: str = '', *, key: bytes | None = None, max_pending: int = 4):
        self.model_id = model_id
        self.max_pending = max_pending
        self._key = key
        self._version: int | None = None
        self._vector: np.ndarray | None = None
        self._digest: bytes | None = None   # of the active vector, as verified
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
    def counts(self) -> dict[tuple[str, str], int]:
        """How often each (kind, reason) happened; each applied patch counts once."""
        return dict(self._counts)

    @property
    def pending_versions(self) -> tuple[int, ...]:
        return tuple(sorted(p.version for p in self._pending.values()))

    def offer(self, patch: PatchPayload) -> Outcome:
        """Apply, hold or refuse one patch; see the module docstring for the outcomes."""
        reason = check_tag(patch, self._key)
        if reason:
            return self._event(REJECTED, reason)
        if not _chains(patch):
            return self._event(REJECTED, 'bad-version')
        if self._vector is None:
            self._hold(patch)   # it may follow the snapshot we are about to ask for
            return self._event(NEEDS_SNAPSHOT, 'startup')
        if patch.model_id != self.model_id:
            return self._event(NEEDS_SNAPSHOT, 'model-id')
        if patch.version <= self._version:
            return self._event(DUPLICATE)
        if patch.base_version > self._version:
            if self._hold(patch):
                return self._event(OUT_OF_ORDER)
            return self._event(NEEDS_SNAPSHOT, 'gap')
        return self._apply_chain(patch)

    def load_snapshot(self, version: int, flat: np.ndarray, digest: bytes,
                      model_id: str | None = None) -> Outcome:
        """Make a whole vector active if its digest matches; then apply held successors.

        A verified snapshot is authoritative: it replaces the active model whatever its version.
        ``model_id``, when given, becomes the model id patches must carry from now on.
        """
        if (not isinstance(flat, np.ndarray) or flat.dtype != FLAT_DTYPE or flat.ndim != 1
                or flat.size == 0 or not _is_version(version)):
            return self._event(NEEDS_SNAPSHOT, 'snapshot-format')
        candidate = _owned_vector(flat)
        if _as_bytes(digest) != vector_digest(candidate):
            return self._event(NEEDS_SNAPSHOT, 'digest-mismatch')
        self._version, self._vector, self._digest = int(version), candidate, _as_bytes(digest)
        if model_id is not None:
            self.model_id = model_id
        self._pending = {b: p for b, p in self._pending.items() if p.version > version}
        self._counts[('snapshot', '')] += 1
        successor = self._pending.pop(self._version, None)
        if successor is None:
            return Outcome(APPLIED, 'snapshot', self._version, (self._version,))
        outcome = self._apply_chain(successor)
        return dataclasses.replace(outcome, applied_versions=(int(version),)
                                   + outcome.applied_versions)

    def _apply_chain(self, patch: PatchPayload) -> Outcome:
        """Apply a patch for the active version, then every held patch that now follows."""
        applied = []
        while patch is not None:
            reason = self._verify_and_commit(patch)
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
        candidate.flags.writeable = False
        self._version, self._vector = patch.version, candidate
        self._digest = _as_bytes(patch.digest)
        return ''

    def _hold(self, patch: PatchPayload) -> bool:
        if patch.base_version not in self._pending and len(self._pending) >= self.max_pending:
            return False
        self._pending[patch.base_version] = patch   # a resent patch replaces the held one
        return True

    def _event(self, kind: str, reason: str = '', applied=()) -> Outcome:
        self._counts[(kind, reason)] += 1
        return Outcome(kind, reason, self._version, tuple(applied))


def _is_version(value) -> bool:
    return isinstance(value, (int, np.integer)) and not isinstance(value, bool) and value >= 0


def _check_version(value) -> int:
    if not _is_version(value):
        raise ValueError(f'a version is a non-negative integer, got {value!r}')
    return int(value)


def _chains(patch) -> bool:
    return (_is_version(patch.base_version) and _is_version(patch.version)
            and patch.version == patch.base_version + 1)


def _owned_vector(flat: np.ndarray) -> np.ndarray:
    """Copy into a private read-only vector (no caller can change an active or mirrored one)."""
    if not isinstance(flat, np.ndarray) or flat.dtype != FLAT_DTYPE or flat.ndim != 1:
        raise ValueError(f'expected a 1-D {FLAT_DTYPE} vector')
    owned = flat.copy()
    owned.flags.writeable = False
    return owned


def _as_bytes(value) -> bytes | None:
    if isinstance(value, (bytes, bytearray, memoryview, array.array)):
        return bytes(value)
    return None
