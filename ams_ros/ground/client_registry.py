"""Which drone messages the ground acts on, and which drones it keeps state for.

Every client the ground admits costs memory (a horizon buffer, an optimiser, a mirror) and a
snapshot on the downlink, and replies go to the namespace a client is bound to. So:

- A client id is bound to one namespace and a namespace to one client id: ``bind`` at start-up
  (the configured drones), or on first admission. A message whose client id is bound elsewhere,
  or that names a new client id on a namespace bound to another one, is refused
  (``wrong-namespace``): a publisher on /evil cannot have drone1's patches sent to /evil, nor
  claim drone1's namespace for a client of its own.
- New clients are admitted up to ``max_clients``, counting the drones bound at start-up whether
  they have been seen or not, so they always find room (``too-many-clients``).
- Client ids this ground does not serve (``owns``: its client filter and shard) are refused
  (``not-ours``), as is an empty one (``no-client-id``).
- ``expire`` frees clients silent for longer than ``idle_timeout_s``, and the bindings made on
  their first admission; bindings made at start-up stay.

Only a message that parsed and passed verification (field checks, and its HMAC tag when the
ground has a key) may reach ``admit``: admission creates the client. ``admit`` also marks the
client seen, so call it for every such message. Thread-safe: DDS callbacks admit while the
worker expires.
"""

from __future__ import annotations

import hashlib
import threading
from collections.abc import Callable
from dataclasses import dataclass

from ams_ros.checks import positive_finite


@dataclass(frozen=True)
class Admission:
    ok: bool
    reason: str = ''  # why refused: see the module docstring
    new_client: bool = False  # first admission since start-up or since it expired


class ClientRegistry:
    """Admit drone messages by client id and namespace (see the module docstring)."""

    def __init__(self, max_clients: int = 16, idle_timeout_s: float = 300.0,
                 owns: Callable[[str], bool] = lambda _client_id: True):
        # max_clients: one device trains one phase at a time; at T_update 10 s and phases of
        # about 0.5 s on a GPU, some 20 drones keep it busy. idle_timeout_s: far beyond any
        # update period (at most 40 s by default); after T_horizon (240 s) of silence a drone's
        # buffer holds nothing recent to train on anyway.
        if not (isinstance(max_clients, int) and max_clients >= 1):
            raise ValueError(f'max_clients must be an integer >= 1, got {max_clients}')
        self.max_clients = max_clients
        self.idle_timeout_s = positive_finite('idle_timeout_s', idle_timeout_s)
        self._owns = owns
        self._namespace_of: dict[str, str] = {}  # client id -> namespace
        self._client_of: dict[str, str] = {}  # namespace -> client id
        self._configured: set[str] = set()  # client ids bound by `bind`
        self._last_seen: dict[str, float] = {}  # admitted clients
        self._lock = threading.Lock()

    @property
    def clients(self) -> list[str]:
        """The admitted clients, in order of admission."""
        with self._lock:
            return list(self._last_seen)

    def namespace_of(self, client_id: str) -> str | None:
        """Return the namespace a client id is bound to: where its replies go."""
        with self._lock:
            return self._namespace_of.get(client_id)

    def bind(self, namespace: str, client_id: str) -> None:
        """Bind a configured drone for good (ValueError when it conflicts or does not fit)."""
        with self._lock:
            if self._namespace_of.get(client_id, namespace) != namespace:
                raise ValueError(f"'{client_id}' is already bound to "
                                 f'{self._namespace_of[client_id]}')
            if self._client_of.get(namespace, client_id) != client_id:
                raise ValueError(f"{namespace} is already bound to '{self._client_of[namespace]}'")
            if client_id not in self._configured and len(self._configured) >= self.max_clients:
                raise ValueError(f'more configured drones than max_clients ({self.max_clients})')
            self._bind(namespace, client_id)
            self._configured.add(client_id)

    def admit(self, namespace: str, client_id: str, now: float) -> Admission:
        """Judge a verified message from `client_id` on `namespace` at monotonic time `now`."""
        if not client_id:
            return Admission(False, 'no-client-id')
        if not self._owns(client_id):
            return Admission(False, 'not-ours')
        with self._lock:
            bound = self._namespace_of.get(client_id)
            if bound != namespace and (bound is not None or namespace in self._client_of):
                return Admission(False, 'wrong-namespace')
            new = client_id not in self._last_seen
            if new and bound is None and self._occupied() >= self.max_clients:
                return Admission(False, 'too-many-clients')
            self._bind(namespace, client_id)
            self._last_seen[client_id] = now
            return Admission(True, new_client=new)

    def expire(self, now: float) -> list[str]:
        """Free the clients silent for more than idle_timeout_s; return their ids."""
        with self._lock:
            gone = [c for c, seen in self._last_seen.items() if now - seen > self.idle_timeout_s]
            for client_id in gone:
                del self._last_seen[client_id]
                if client_id not in self._configured:
                    del self._client_of[self._namespace_of.pop(client_id)]
            return gone

    def _bind(self, namespace: str, client_id: str) -> None:
        self._namespace_of[client_id] = namespace
        self._client_of[namespace] = client_id

    def _occupied(self) -> int:
        """Places taken: admitted clients and configured drones not seen yet."""
        return len(self._last_seen) + len(self._configured - self._last_seen.keys())


def stable_shard(client_id: str, count: int) -> int:
    """Return the shard of a client id: the same on every machine and Python run."""
    digest = hashlib.sha256(client_id.encode()).digest()
    return int.from_bytes(digest[:8], 'big') % count


def ownership(client_ids, shard_index: int = 0, shard_count: int = 1) -> Callable[[str], bool]:
    """Return `owns(client_id)`: listed in `client_ids` (empty: any) and in this shard.

    A fleet that outgrows one ground runs several, each owning the client ids with
    ``sha256(client_id) % shard_count == shard_index``.
    """
    if not 0 <= shard_index < shard_count:
        raise ValueError(f'shard_index {shard_index} must be below shard_count {shard_count}')
    allowed = frozenset(client_ids)
    return lambda client_id: ((not allowed or client_id in allowed)
                              and stable_shard(client_id, shard_count) == shard_index)
