"""Per-drone snapshot budget: token bucket, back-off until the drone confirms, coalescing."""

import pytest

from ams_ros.ground.snapshot_budget import SnapshotBudget

SNAPSHOT = 2_420_000  # the small student's snapshot, bytes


def run_requests(budget, seconds, every_s=1.0, confirm=False):
    """Let a drone ask every `every_s` seconds, sending whenever allowed; return the send times."""
    sends = []
    for step in range(int(seconds / every_s)):
        now = step * every_s
        if budget.request(now, SNAPSHOT) == 0:
            budget.sent(now, SNAPSHOT)
            sends.append(now)
            if confirm:
                budget.confirmed()
    return sends


def test_normal_recovery_is_immediate():
    budget = SnapshotBudget()
    assert budget.request(0.0, SNAPSHOT) == 0  # the first snapshot of a new drone
    budget.sent(0.0, SNAPSHOT)
    budget.confirmed()
    assert budget.request(3.0, SNAPSHOT) == 0  # a lost patch a moment later: the burst
    budget.sent(3.0, SNAPSHOT)
    budget.confirmed()
    # The bucket is spent: the next one waits for the rate to earn it (12.5 kB/s).
    tokens = 5_000_000 - 2 * SNAPSHOT + 4.0 * 12_500
    assert budget.request(4.0, SNAPSHOT) == pytest.approx((SNAPSHOT - tokens) / 12_500)  # 177 s


def test_back_off_doubles_while_the_drone_does_not_confirm():
    budget = SnapshotBudget(rate_kbps=1e6, burst_bytes=10**9)  # bytes no object here
    sends = run_requests(budget, 1000)
    gaps = [b - a for a, b in zip(sends, sends[1:], strict=False)]
    assert gaps == [10, 20, 40, 80, 160, 300, 300]
    budget.confirmed()
    assert budget.request(1000.0, SNAPSHOT) == 0  # confirmed: no more back-off
    budget.sent(1000.0, SNAPSHOT)
    assert budget.request(1001.0, SNAPSHOT) == pytest.approx(9.0)  # and it starts over


@pytest.mark.parametrize('confirm', [False, True])
def test_a_drone_asking_every_second_gets_a_small_share_of_the_downlink(confirm):
    """Before: a snapshot per second, 19 Mbit/s. Now at most 100 kbit/s over an hour."""
    budget = SnapshotBudget()
    hour = 3600.0
    sends = run_requests(budget, hour, confirm=confirm)
    kbps = len(sends) * SNAPSHOT * 8 / hour / 1000
    assert kbps <= 100 + 5_000_000 * 8 / hour / 1000  # the rate, plus the burst once
    assert len(sends) >= 2 and sends[:2] == ([0.0, 1.0] if confirm else [0.0, 10.0])


def test_requests_within_the_wait_are_coalesced():
    budget = SnapshotBudget()
    budget.sent(0.0, SNAPSHOT)
    assert not budget.pending
    waits = [budget.request(t, SNAPSHOT) for t in (1.0, 2.0, 3.0)]
    assert waits == pytest.approx([9.0, 8.0, 7.0]) and budget.pending
    # The caller polls while a request is pending and answers it once.
    answers = []
    for t in range(4, 30):
        if budget.pending and budget.request(float(t), SNAPSHOT) == 0:
            budget.sent(float(t), SNAPSHOT)
            answers.append(t)
    assert answers == [10] and not budget.pending


def test_confirmation_drops_requests_for_the_snapshot_on_its_way():
    budget = SnapshotBudget()
    budget.confirmed()  # nothing sent yet: nothing to confirm
    assert budget.request(0.0, SNAPSHOT) == 0 and budget.pending
    budget.confirmed()
    assert budget.pending  # still: no snapshot went
    budget.sent(0.0, SNAPSHOT)
    budget.request(2.0, SNAPSHOT)  # the drone repeats its request while the snapshot travels
    budget.confirmed()
    assert not budget.pending
    budget.request(5.0, SNAPSHOT)
    budget.confirmed()  # a repeated status: the snapshot was confirmed already
    assert budget.pending


def test_a_snapshot_larger_than_the_bucket_goes_when_it_is_full():
    budget = SnapshotBudget(rate_kbps=80.0, burst_bytes=1_000_000)  # 10 kB/s
    assert budget.request(0.0, 3_000_000) == 0
    budget.sent(0.0, 3_000_000)  # 2 MB in debt
    budget.confirmed()
    assert budget.request(0.0, 3_000_000) == pytest.approx(300.0)  # back to a full bucket
    assert budget.request(300.0, 3_000_000) == 0


@pytest.mark.parametrize('bad', [dict(rate_kbps=0), dict(burst_bytes=-1),
                                 dict(backoff_min_s=0), dict(backoff_max_s=float('inf')),
                                 dict(backoff_min_s=20, backoff_max_s=10)])
def test_settings_are_checked(bad):
    with pytest.raises(ValueError):
        SnapshotBudget(**bad)
