"""Many drones, one training device (paper Appendix E): which drone trains next.

Each drone is a DroneSession with its own buffer, optimiser state and mirror. The device trains
one phase at a time; the scheduler picks which drone goes next among those with new frames:

- ``round_robin``: the drone that has waited longest since its last phase;
- ``phi_weighted``: stride scheduling by φ: every decision, each waiting drone earns credit equal
  to its scene-change score (floored so calm scenes are never starved), and the drone with the
  most credit trains and spends it. Fast-changing scenes get proportionally more phases.

Drones come and go: one is added on first contact and removed when it leaves; removing one
never disturbs the others.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from ams_ros.ground.drone_session import DroneSession, GroundConfig, PhaseOutput
from ams_ros.model.template import StudentTemplate

POLICIES = ('round_robin', 'phi_weighted')


@dataclass
class _Slot:
    session: DroneSession
    credit: float = 0.0
    last_trained: int = -1  # decision counter of its last phase


class PhaseScheduler:
    """Serve any number of drones; train them in turn on one device."""

    def __init__(self, template: StudentTemplate, make_teacher: Callable[[str], object],
                 config: GroundConfig | None = None, *, policy: str = 'round_robin',
                 phi_floor: float = 0.05, seed: int = 0):
        if policy not in POLICIES:
            raise ValueError(f'policy must be one of {POLICIES}, got {policy!r}')
        if phi_floor <= 0:
            raise ValueError('phi_floor must be positive, or calm drones could starve')
        self.template = template
        self.make_teacher = make_teacher
        self.config = config or GroundConfig()
        self.policy = policy
        self.phi_floor = phi_floor
        self._seed = seed
        self._slots: dict[str, _Slot] = {}
        self._decisions = 0

    @property
    def client_ids(self) -> list[str]:
        return list(self._slots)

    def session(self, client_id: str) -> DroneSession:
        return self._slots[client_id].session

    def add(self, client_id: str) -> DroneSession:
        """Return the drone's session, creating it (from the template) on first contact."""
        slot = self._slots.get(client_id)
        if slot is None:
            session = DroneSession(client_id, self.template, self.make_teacher(client_id),
                                   self.config, seed=self._seed + len(self._slots))
            slot = self._slots[client_id] = _Slot(session)
        return slot.session

    def remove(self, client_id: str) -> None:
        self._slots.pop(client_id, None)

    def train_next(self) -> tuple[str, PhaseOutput] | None:
        """Schedule one drone and run its phase; None when no drone has new frames.

        The one place a scheduling decision is made: the phase's output belongs to the drone
        returned with it, so a caller publishes it to that drone and no other.
        """
        client_id = self._schedule()
        if client_id is None:
            return None
        return client_id, self._slots[client_id].session.train_phase()

    def _schedule(self) -> str | None:
        """Pick the drone that trains next and charge it for the phase (credit, turn)."""
        ready = {cid: s for cid, s in self._slots.items() if s.session.pending_frames > 0}
        if not ready:
            return None
        if self.policy == 'round_robin':
            client_id = min(ready, key=lambda cid: ready[cid].last_trained)
        else:
            for slot in ready.values():
                slot.credit += max(slot.session.phi or 0.0, self.phi_floor)
            client_id = max(ready, key=lambda cid: ready[cid].credit)
        self._decisions += 1
        ready[client_id].last_trained = self._decisions
        ready[client_id].credit = 0.0
        return client_id
