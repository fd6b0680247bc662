"""Per-drone FrameBatch sequence numbers: losses, restarts, duplicates and forged jumps."""

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ams_ros.ground.sequence_tracker import SequenceTracker, SeqVerdict

MAX_SEQ = 2**64 - 1


def observe_all(tracker, seqs):
    return [tracker.observe(seq) for seq in seqs]


def test_consecutive_numbers_and_gaps():
    tracker = SequenceTracker()
    assert observe_all(tracker, [1, 2, 3]) == [
        SeqVerdict(True, 0, 'first'), SeqVerdict(True, 0, ''), SeqVerdict(True, 0, '')]
    assert tracker.observe(7) == SeqVerdict(True, 3, 'gap')  # 4, 5 and 6 were lost
    assert tracker.observe(8) == SeqVerdict(True, 0, '')
    assert tracker.last == 8


def test_duplicates_are_refused():
    tracker = SequenceTracker()
    observe_all(tracker, [1, 2])
    assert tracker.observe(2) == SeqVerdict(False, 0, 'duplicate')
    assert tracker.observe(3) == SeqVerdict(True, 0, '')


def test_a_drone_restart_counts_from_one_again():
    tracker = SequenceTracker()
    observe_all(tracker, range(1, 500))
    assert tracker.observe(1) == SeqVerdict(True, 0, 'restart')
    assert tracker.observe(2) == SeqVerdict(True, 0, '')


def test_the_maximum_seq_is_refused_and_counts_nothing():
    tracker = SequenceTracker()
    observe_all(tracker, [1, 2, 3])
    assert tracker.observe(MAX_SEQ) == SeqVerdict(False, 0, 'seq-jump')
    assert tracker.last == 3
    assert tracker.observe(4) == SeqVerdict(True, 0, '')
    # Again and again between genuine batches: never accepted.
    for seq in range(5, 20):
        assert not tracker.observe(MAX_SEQ - seq).accepted
        assert tracker.observe(seq).reason == ''


def test_a_jump_confirmed_by_the_next_batch_resyncs():
    tracker = SequenceTracker(max_gap=1000)
    observe_all(tracker, [1, 2])
    assert tracker.observe(5000).reason == 'seq-jump'
    assert tracker.observe(5002) == SeqVerdict(True, 1, 'resync')  # 5001 lost since 5000
    assert tracker.observe(5003) == SeqVerdict(True, 0, '')


def test_only_the_very_next_batch_confirms_a_jump():
    tracker = SequenceTracker(max_gap=10)
    observe_all(tracker, [1, 2])
    assert tracker.observe(100).reason == 'seq-jump'
    assert tracker.observe(100).reason == 'seq-jump'  # the candidate itself again
    assert tracker.observe(3).reason == ''  # genuine: the candidate is dropped
    assert tracker.observe(101).reason == 'seq-jump'
    assert tracker.observe(300).reason == 'seq-jump'  # not continuing from 101: new candidate
    assert tracker.observe(305) == SeqVerdict(True, 4, 'resync')


def test_a_gap_up_to_max_gap_is_counted():
    tracker = SequenceTracker(max_gap=10)
    tracker.observe(1)
    assert tracker.observe(11) == SeqVerdict(True, 9, 'gap')
    assert tracker.observe(22).reason == 'seq-jump'


@pytest.mark.parametrize('bad', [-1, 2**64, 1.0, '3', True, None])
def test_values_outside_uint64_are_refused(bad):
    tracker = SequenceTracker()
    tracker.observe(1)
    assert tracker.observe(bad) == SeqVerdict(False, 0, 'bad-seq')
    assert tracker.observe(2).reason == ''


def test_max_gap_is_checked():
    for bad in (0, -5, 2.5):
        with pytest.raises(ValueError):
            SequenceTracker(max_gap=bad)


@settings(max_examples=200, deadline=None)
@given(seqs=st.lists(st.integers(0, MAX_SEQ), max_size=50), max_gap=st.integers(1, 2000))
def test_lost_stays_below_max_gap_whatever_arrives(seqs, max_gap):
    tracker = SequenceTracker(max_gap=max_gap)
    total = 0
    for seq in seqs:
        verdict = tracker.observe(seq)
        assert 0 <= verdict.lost < max_gap
        assert verdict.accepted or verdict.lost == 0
        total += verdict.lost
    assert total < max_gap * max(1, len(seqs))
