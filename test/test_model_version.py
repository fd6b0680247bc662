import dataclasses

import numpy as np
import pytest

from ams_ros.model.manifest import vector_digest
from ams_ros.wire.model_version import (
    APPLIED,
    DIGEST_HISTORY,
    DUPLICATE,
    MAX_UNREQUESTED_JUMP,
    NEEDS_SNAPSHOT,
    OUT_OF_ORDER,
    REJECTED,
    VALUE_BOUND_FACTOR,
    EdgeModelState,
    GroundMirror,
    PatchPayload,
)
from ams_ros.wire.patch_codec import DEFAULT_FORMAT, VALUE_MODES, PatchFormat

N = 12_000
MODEL = 'student-test'


def initial(seed=0):
    return (np.random.default_rng(seed).standard_normal(N) * 0.05).astype(np.float32)


def pair(version=7, max_pending=4, fmt=DEFAULT_FORMAT):
    """Make a ground mirror and an edge that loaded the same snapshot."""
    start = initial()
    ground = GroundMirror('drone1', MODEL, version, start, fmt=fmt)
    edge = EdgeModelState(MODEL, max_pending=max_pending)
    assert edge.load_snapshot(version, start, vector_digest(start)).kind == APPLIED
    return ground, edge


def with_value(vector, index, value):
    changed = vector.copy()
    changed[index] = value
    return changed


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


def test_payload_maps_one_to_one_onto_the_model_patch_message():
    # All but the header and the link's auth_counter and auth_tag (ams_ros.ros.link_auth).
    fields = [f.name for f in dataclasses.fields(PatchPayload)]
    assert fields == ['client_id', 'model_id', 'base_version', 'version', 'num_params',
                      'index_codec', 'index_data', 'value_codec', 'value_data', 'digest']
    ground, _ = pair()
    patch = next_patch(ground, 0)
    assert patch.nbytes > len(patch.index_data) + len(patch.value_data) + 32


# -- divergence: a redelivery carries the digest the edge recorded for its version -------------

def test_an_old_version_is_a_duplicate_only_with_the_digest_the_edge_ran():
    ground, edge = pair()
    first = next_patch(ground, 0)
    edge.offer(first)
    edge.offer(next_patch(ground, 1))
    active = edge.vector
    assert edge.offer(first).kind == DUPLICATE   # an exact redelivery of an older version
    outcome = edge.offer(dataclasses.replace(first, digest=bytes(32)))
    assert (outcome.kind, outcome.reason) == (NEEDS_SNAPSHOT, 'diverged')
    assert edge.version == 9 and edge.vector is active
    assert edge.counts[(DUPLICATE, '')] == 1 and edge.counts[(NEEDS_SNAPSHOT, 'diverged')] == 1


def test_versions_the_edge_no_longer_remembers_are_stale_unless_far_behind():
    ground, edge = pair()
    patches = [next_patch(ground, seed) for seed in range(DIGEST_HISTORY + 2)]
    assert all(edge.offer(p).kind == APPLIED for p in patches)
    # The last DIGEST_HISTORY versions run are remembered and checked by digest.
    assert edge.offer(patches[-DIGEST_HISTORY]).kind == DUPLICATE
    forged = dataclasses.replace(patches[-DIGEST_HISTORY], digest=bytes(32))
    assert edge.offer(forged).reason == 'diverged'
    # An older one cannot be vouched for, but a few versions behind it is only late.
    assert edge.offer(patches[-DIGEST_HISTORY - 1]).kind == DUPLICATE
    # Far behind a version it runs, a patch it cannot know is another history.
    assert edge.load_snapshot(5000, ground.vector, ground.digest, MODEL,
                              requested=True).kind == APPLIED
    far = dataclasses.replace(patches[0], base_version=5000 - MAX_UNREQUESTED_JUMP - 2,
                              version=5000 - MAX_UNREQUESTED_JUMP - 1)
    assert edge.offer(far).reason == 'diverged'


def test_a_patch_delayed_past_the_snapshot_that_skipped_it_is_stale():
    ground, edge = pair()
    delayed, following = next_patch(ground, 0), next_patch(ground, 1)
    assert edge.offer(following).kind == OUT_OF_ORDER   # the gap: the edge asks for a snapshot
    assert edge.load_snapshot(ground.version, ground.vector, ground.digest, MODEL,
                              requested=True).kind == APPLIED
    assert edge.offer(delayed).kind == DUPLICATE   # never run, and not needed any more


def test_an_edge_pushed_to_a_forged_high_version_notices_the_grounds_patches():
    ground, edge = pair()
    forged = initial(seed=3)
    # Without a key a forger may answer a request first: the edge runs its model a moment.
    outcome = edge.load_snapshot(2**62, forged, vector_digest(forged), MODEL, requested=True)
    assert outcome.kind == APPLIED and edge.version == 2**62
    for seed in range(3):   # the ground's real patches: versions the edge never ran
        outcome = edge.offer(next_patch(ground, seed))
        assert (outcome.kind, outcome.reason) == (NEEDS_SNAPSHOT, 'diverged')
        assert edge.vector.tobytes() == forged.tobytes()
    # It asks, and the ground's model (at the ground's version) replaces the forgery.
    outcome = edge.load_snapshot(ground.version, ground.vector, ground.digest, MODEL,
                                 requested=True)
    assert outcome.applied_versions == (10,)
    assert edge.offer(next_patch(ground, 3)).applied_versions == (11,)
    assert edge.vector.tobytes() == ground.vector.tobytes()


# -- snapshots: unrequested ones only resync the running model ---------------------------------

def test_an_unrequested_snapshot_must_be_the_running_model_a_little_newer():
    ground, edge = pair()
    active = edge.vector

    def offer(version, vector=active, **changes):
        return edge.load_snapshot(version, vector, vector_digest(vector),
                                  changes.pop('model_id', MODEL), requested=False, **changes)

    refused = {
        'stale': [offer(7), offer(6), offer(0)],
        'version-jump': [offer(7 + MAX_UNREQUESTED_JUMP + 1), offer(2**62)],
        'unrequested-model': [offer(8, model_id='other'), offer(8, initial()[:-1]),
                              offer(8, same_interface=False)],
    }
    for reason, outcomes in refused.items():
        assert {(o.kind, o.reason) for o in outcomes} == {(REJECTED, reason)}
        assert edge.counts[(REJECTED, reason)] == len(outcomes)
    assert edge.version == 7 and edge.vector is active
    # A resync of the same model one or MAX_UNREQUESTED_JUMP versions ahead is taken.
    assert offer(8).applied_versions == (8,)
    assert offer(8 + MAX_UNREQUESTED_JUMP).applied_versions == (8 + MAX_UNREQUESTED_JUMP,)
    assert edge.model_id == MODEL


def test_a_requested_or_first_snapshot_may_be_any_version_of_any_model():
    edge = EdgeModelState(MODEL)
    first = initial()
    assert edge.load_snapshot(2**62, first, vector_digest(first), requested=False).kind \
        == APPLIED
    other = initial(seed=4)[:500]
    outcome = edge.load_snapshot(3, other, vector_digest(other), 'new-model', requested=True,
                                 same_interface=False)
    assert outcome.applied_versions == (3,)
    assert (edge.model_id, edge.vector.size) == ('new-model', 500)


# -- values: nothing non-finite or absurdly large is activated ---------------------------------

@pytest.mark.parametrize('value, reason', [(np.nan, 'non-finite'), (np.inf, 'non-finite'),
                                           (-np.inf, 'non-finite'), (3e38, 'out-of-range'),
                                           (-3e38, 'out-of-range')])
def test_a_snapshot_with_absurd_values_is_refused(value, reason):
    ground, edge = pair()
    active = edge.vector
    bad = with_value(ground.vector, 5, value)
    for requested in (True, False):
        outcome = edge.load_snapshot(8, bad, vector_digest(bad), MODEL, requested=requested)
        assert (outcome.kind, outcome.reason) == (NEEDS_SNAPSHOT, reason)
    assert edge.version == 7 and edge.vector is active


def test_a_first_snapshot_with_non_finite_values_is_refused():
    edge = EdgeModelState(MODEL)
    bad = with_value(initial(), 0, np.nan)
    outcome = edge.load_snapshot(1, bad, vector_digest(bad))
    assert (outcome.kind, outcome.reason) == (NEEDS_SNAPSHOT, 'non-finite')
    assert edge.vector is None and edge.value_bound is None


def test_the_value_bound_comes_from_the_first_model():
    ground, edge = pair()   # its largest |value| is under 1
    assert edge.value_bound == VALUE_BOUND_FACTOR
    for value, kind in ((0.99 * VALUE_BOUND_FACTOR, APPLIED), (1.01 * VALUE_BOUND_FACTOR,
                                                                 NEEDS_SNAPSHOT)):
        vector = with_value(ground.vector, 3, value)
        assert edge.load_snapshot(8, vector, vector_digest(vector)).kind == kind
    assert edge.value_bound == VALUE_BOUND_FACTOR   # later models do not move it
    large = initial() * 100
    edge = EdgeModelState(MODEL)
    edge.load_snapshot(1, large, vector_digest(large))
    assert edge.value_bound == VALUE_BOUND_FACTOR * float(np.abs(large).max())


def test_a_patch_with_absurd_values_is_rejected_and_asks_for_nothing():
    raw = PatchFormat(value_mode='fp32', compressors=('none',), shuffle=(False,))
    ground, edge = pair(fmt=raw)
    active = edge.vector
    too_large = ground.make_patch(np.array([0, 1]), np.array([3e38, 1.0], np.float32))
    outcome = edge.offer(too_large)   # finite, and its digest is consistent
    assert (outcome.kind, outcome.reason) == (REJECTED, 'out-of-range')
    nan_values = np.array([np.nan, 1.0], '<f4').tobytes()
    outcome = edge.offer(dataclasses.replace(too_large, value_data=nan_values))
    assert (outcome.kind, outcome.reason) == (REJECTED, 'non-finite')
    assert edge.version == 7 and edge.vector is active
