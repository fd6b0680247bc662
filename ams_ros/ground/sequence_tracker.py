"""Per-drone bookkeeping of FrameBatch sequence numbers: lost batches, restarts, forgeries.

A drone numbers its batches 1, 2, 3, ... from each start. What a number means against the
last one accepted (``SeqVerdict.reason``):

- ``''``: the next one; ``gap``: up to ``max_gap`` ahead, the ones skipped were lost;
- ``first``: the first number seen; ``restart``: a number that goes back (the drone
  restarted and counts from 1 again), accepted with nothing lost;
- ``duplicate``: the same number again: refused;
- ``seq-jump``: more than ``max_gap`` ahead: refused, and the tracker stays where it was,
  since one forged value (2^64 - 1) would otherwise count ~10^19 batches lost. It is kept as a
  candidate: when the next batch continues from it (at most ``max_gap`` ahead of it), the jump
  was real (a very long outage, a drone that numbers differently) and that batch is accepted
  as ``resync``, counting only the batches lost since the candidate;
- ``bad-seq``: not an integer in the FrameBatch field's range (uint64).

So ``lost`` is below ``max_gap`` on every verdict. Not thread-safe: one caller per drone.
"""

from __future__ import annotations

from dataclasses import dataclass

SEQ_LIMIT = 2**64  # FrameBatch.seq is a uint64


@dataclass(frozen=True)
class SeqVerdict:
    accepted: bool
    lost: int = 0  # batches lost just before this one
    reason: str = ''  # see the module docstring


class SequenceTracker:
    """Judge each batch number of one drone (see the module docstring)."""

    def __init__(self, max_gap: int = 1000):
        # 1000 batches: almost 3 hours at the default T_update of 10 s.
        if not (isinstance(max_gap, int) and max_gap >= 1):
            raise ValueError(f'max_gap must be an integer >= 1, got {max_gap}')
        self.max_gap = max_gap
        self.last: int | None = None  # last number accepted
        self._candidate: int | None = None  # a refused jump, until the next batch

    def observe(self, seq: int) -> SeqVerdict:
        """Judge the number of the batch that just arrived, and follow it if accepted."""
        if isinstance(seq, bool) or not isinstance(seq, int) or not 0 <= seq < SEQ_LIMIT:
            return SeqVerdict(False, reason='bad-seq')
        candidate, self._candidate = self._candidate, None
        last = self.last
        if last is None:
            return self._accept(seq, 0, 'first')
        if seq == last:
            return SeqVerdict(False, reason='duplicate')
        if seq < last:
            return self._accept(seq, 0, 'restart')
        if seq - last <= self.max_gap:
            return self._accept(seq, seq - last - 1, 'gap' if seq - last > 1 else '')
        if candidate is not None and 0 < seq - candidate <= self.max_gap:
            return self._accept(seq, seq - candidate - 1, 'resync')
        self._candidate = seq
        return SeqVerdict(False, reason='seq-jump')

    def _accept(self, seq: int, lost: int, reason: str) -> SeqVerdict:
        self.last = seq
        return SeqVerdict(True, lost, reason)
