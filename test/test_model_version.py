import dataclasses

import numpy as np
import pytest

from ams_ros.manifest import vector_digest
from ams_ros.model_version import (
    APPLIED,
    DUPLICATE,
    NEEDS_SNAPSHOT,
    OUT_OF_ORDER,
    REJECTED,
    EdgeModelState,
    GroundMirror,
    PatchPayload,
)
from ams_ros.patch_codec import DEFAULT_FORMAT, VALUE_MODES, PatchFormat

N = 12_000
MODEL = 'student-test'
KEY = b'k' * 32


def initial(seed=0):
    return (np.random.default_rng(seed).standard_normal(N) * 0.05).astype(np.float32)


def pair(version=7, key=None, max_pending=4, fmt=DEFAULT_FORMAT):
    """Make a ground mirror and an edge that loaded the same snapshot."""
    start = initial()
    ground = GroundMirror('drone1', MODEL, version, start, fmt=fmt, key=key)
    edge = EdgeModelState(MODEL, key=key, max_pending=max_pending)
    assert edge.load_snapshot(version, start, vector_digest(start)).kind == APPLIED
    return ground, edge


def next_patch(ground, seed, value_mode=None):
    rng = np.random.default_rng(seed)
    idx = rng.choice(N, N // 20, replace=False)
    target = ground.vector[idx] + rng.standard_normal(idx.size).astype(np.float32) * 1e-3
    return ground.make_patch(idx, target, value_mode)


@pytest.mark.parametrize('mode', VALUE_MODES)
def test_edge_stays_bit_identical_to_the_ground_mirror(mode):
    ground, edge = pair(fmt=PatchFormat(value_mode=mode))
    for seed in range(20):
        patch = next_patch(ground, seed)
        assert (patch.base_version, patch.version) == (7 + seed, 8 + seed)
        outcome = edge.offer(patch)
        assert outcome.kind == APPLIED and outcome.applied_versions == (patch.version,)
        assert edge.version == ground.version
        assert edge.vector.tobytes() == ground.vector.tobytes()
        assert vector_digest(edge.vector) == ground.digest == patch.digest == edge.digest
    assert edge.counts == {('snapshot', ''): 1, (APPLIED, ''): 20}


def test_value_mode_can_change_per_patch():
    ground, edge = pair()
    for seed, mode in enumerate(VALUE_MODES):
        patch = next_patch(ground, seed, value_mode=mode)
        assert patch.value_codec.startswith(mode)
        assert edge.offer(patch).kind == APPLIED
    assert edge.vector.tobytes() == ground.vector.tobytes()


def test_duplicates_are_ignored():
    ground, edge = pair()
    patch = next_patch(ground, 0)
    edge.offer(patch)
    active = edge.vector
    outcome = edge.offer(patch)
    assert outcome.kind == DUPLICATE and outcome.active_version == 8
    assert edge.vector is active
    assert edge.counts[(DUPLICATE, '')] == 1


def test_reordered_patches_are_held_until_the_gap_fills():
    ground, edge = pair()
    first, second, third = (next_patch(ground, s) for s in range(3))
    assert edge.offer(third).kind == OUT_OF_ORDER
    assert edge.offer(second).kind == OUT_OF_ORDER
    assert edge.version == 7 and edge.pending_versions == (9, 10)
    outcome = edge.offer(first)
    assert outcome.kind == APPLIED and outcome.applied_versions == (8, 9, 10)
    assert edge.version == 10 and edge.pending_versions == ()
    assert edge.vector.tobytes() == ground.vector.tobytes()


def test_a_gap_that_does_not_fill_needs_a_snapshot():
    ground, edge = pair(max_pending=2)
    states = {}
    patches = []
    for seed in range(4):
        patches.append(next_patch(ground, seed))
        states[ground.version] = ground.vector
    # patches[0] (7 -> 8) is lost.
    assert [edge.offer(p).kind for p in patches[1:3]] == [OUT_OF_ORDER, OUT_OF_ORDER]
    outcome = edge.offer(patches[3])
    assert (outcome.kind, outcome.reason) == (NEEDS_SNAPSHOT, 'gap')
    assert outcome.needs_snapshot and edge.version == 7

    # A snapshot of version 9 drops the held 8 -> 9 and applies the held 9 -> 10 after it.
    outcome = edge.load_snapshot(9, states[9], vector_digest(states[9]))
    assert outcome.kind == APPLIED and outcome.applied_versions == (9, 10)
    assert edge.offer(patches[3]).applied_versions == (11,)
    assert edge.vector.tobytes() == ground.vector.tobytes()


def test_digest_mismatch_needs_a_snapshot_and_keeps_the_active_vector():
    ground, edge = pair()
    patch = next_patch(ground, 0)
    active = edge.vector
    outcome = edge.offer(dataclasses.replace(patch, digest=bytes(32)))
    assert (outcome.kind, outcome.reason) == (NEEDS_SNAPSHOT, 'digest-mismatch')
    assert edge.version == 7 and edge.vector is active
    assert edge.digest == vector_digest(active)
    assert edge.counts[(NEEDS_SNAPSHOT, 'digest-mismatch')] == 1


def test_a_diverged_base_is_caught_by_the_digest():
    ground, edge = pair()
    other = initial(seed=9)
    edge.load_snapshot(7, other, vector_digest(other))   # same version number, other weights
    outcome = edge.offer(next_patch(ground, 0))
    assert (outcome.kind, outcome.reason) == (NEEDS_SNAPSHOT, 'digest-mismatch')
    assert edge.vector.tobytes() == other.tobytes()


def test_wrong_model_or_size_needs_a_snapshot():
    ground, edge = pair()
    patch = next_patch(ground, 0)
    assert edge.offer(dataclasses.replace(patch, model_id='other')).reason == 'model-id'
    assert edge.offer(dataclasses.replace(patch, num_params=N + 8)).reason == 'num-params'
    assert edge.version == 7


def test_corrupted_payloads_are_never_activated():
    ground, edge = pair()
    patch = next_patch(ground, 0)
    rng = np.random.default_rng(5)
    for trial in range(200):
        field = ('index_data', 'value_data')[trial % 2]
        data = bytearray(getattr(patch, field))
        if trial % 4 < 2:
            pos = int(rng.integers(8 * len(data)))
            data[pos // 8] ^= 1 << pos % 8
        else:
            data = data[:int(rng.integers(len(data)))]
        outcome = edge.offer(dataclasses.replace(patch, **{field: bytes(data)}))
        if outcome.kind == APPLIED:   # a flip in bytes that do not matter: same verified result
            assert edge.vector.tobytes() == ground.vector.tobytes()
            edge.load_snapshot(7, initial(), vector_digest(initial()))
        else:
            assert outcome.kind == NEEDS_SNAPSHOT and outcome.reason
            assert edge.version == 7 and edge.vector.tobytes() == initial().tobytes()
    assert sum(n for (kind, _), n in edge.counts.items() if kind == NEEDS_SNAPSHOT) > 150


def test_bad_version_numbers_are_rejected():
    ground, edge = pair()
    patch = next_patch(ground, 0)
    for base, version in [(7, 9), (7, 7), (-1, 0), (7.0, 8.0)]:
        outcome = edge.offer(dataclasses.replace(patch, base_version=base, version=version))
        assert (outcome.kind, outcome.reason) == (REJECTED, 'bad-version')
    assert edge.version == 7


def test_patches_before_the_first_snapshot_wait_for_it():
    ground, _ = pair()
    start, start_version = ground.vector, ground.version
    patch = next_patch(ground, 0)
    edge = EdgeModelState(MODEL)
    outcome = edge.offer(patch)
    assert (outcome.kind, outcome.reason) == (NEEDS_SNAPSHOT, 'startup')
    assert edge.vector is None
    outcome = edge.load_snapshot(start_version, start.copy(), vector_digest(start))
    assert outcome.kind == APPLIED and outcome.applied_versions == (7, 8)
    assert edge.vector.tobytes() == ground.vector.tobytes()


def test_a_snapshot_is_verified_and_replaces_the_model():
    ground, edge = pair()
    edge.offer(next_patch(ground, 0))
    held = next_patch(ground, 1)
    stale = next_patch(ground, 2)
    edge.offer(stale)                                   # held: base 9 is not reached
    assert edge.pending_versions == (10,)
    bad = edge.load_snapshot(9, ground.vector.copy(), bytes(32))
    assert (bad.kind, bad.reason) == (NEEDS_SNAPSHOT, 'digest-mismatch') and edge.version == 8
    assert edge.load_snapshot(9, ground.vector.astype(np.float64), b'').reason == \
        'snapshot-format'
    outcome = edge.load_snapshot(10, ground.vector.copy(), ground.digest, model_id='new-model')
    assert outcome.applied_versions == (10,) and edge.pending_versions == ()
    assert edge.digest == ground.digest
    assert edge.model_id == 'new-model'
    assert edge.offer(held).reason == 'model-id'


def test_vectors_handed_out_are_read_only():
    ground, edge = pair()
    edge.offer(next_patch(ground, 0))
    for vec in (edge.vector, ground.vector):
        with pytest.raises(ValueError):
            vec[0] = 1.0


def test_signed_patches_with_a_key():
    ground, edge = pair(key=KEY)
    patch = next_patch(ground, 0)
    assert patch.auth_tag
    unsigned = dataclasses.replace(patch, auth_tag=b'')
    assert (edge.offer(unsigned).kind, edge.offer(unsigned).reason) == (REJECTED, 'unsigned')
    forged = dataclasses.replace(patch, value_data=patch.value_data[:-1] + b'\0')
    assert edge.offer(forged).reason == 'bad-signature'
    assert edge.version == 7
    assert edge.offer(patch).kind == APPLIED


def test_without_a_key_tags_are_ignored():
    ground, edge = pair()
    patch = dataclasses.replace(next_patch(ground, 0), auth_tag=b'garbage')
    assert edge.offer(patch).kind == APPLIED


def test_payload_maps_one_to_one_onto_the_model_patch_message():
    fields = [f.name for f in dataclasses.fields(PatchPayload)]
    assert fields == ['client_id', 'model_id', 'base_version', 'version', 'num_params',
                      'index_codec', 'index_data', 'value_codec', 'value_data', 'digest',
                      'auth_tag']
    ground, _ = pair()
    patch = next_patch(ground, 0)
    assert patch.nbytes > len(patch.index_data) + len(patch.value_data) + 32
