"""A simulated network link between the drone and the ground, on simulated time.

Each direction is a FIFO channel with its own bandwidth, latency and loss. A message sent at
``t`` starts serialising when the channel is free (``max(t, busy_until)``), takes
``nbytes * 8 / bandwidth`` seconds to serialise, and is delivered ``latency`` seconds after its
last bit left: ``delivered = max(t, busy_until) + nbytes * 8 / bandwidth + latency``. Messages
are delivered in the order they were sent. A lost message (probability ``loss``, drawn from the
channel's own seeded generator) still occupies the channel and counts as sent bytes: the radio
transmitted it, the receiver never got it. An unlimited bandwidth (None or inf) serialises
instantly.

Every transmission is recorded as (start, end, nbytes); ``trace`` spreads each one uniformly
over its serialisation interval into fixed-width bins (bytes per bin), which is what the
bandwidth-over-time plots show. Totals count every byte sent, lost or not.
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass, field
from typing import Any

import numpy as np


@dataclass(frozen=True)
class ChannelConfig:
    """One direction of the link: kbps (1000 bits/s; None = unlimited), seconds, probability."""

    bandwidth_kbps: float | None = None
    latency_s: float = 0.0
    loss: float = 0.0

    def __post_init__(self):
        if self.bandwidth_kbps is not None and not self.bandwidth_kbps > 0:
            raise ValueError(f'bandwidth_kbps must be positive or None, got {self.bandwidth_kbps}')
        if not (math.isfinite(self.latency_s) and self.latency_s >= 0):
            raise ValueError(f'latency_s must be >= 0, got {self.latency_s}')
        if not 0.0 <= self.loss < 1.0:
            raise ValueError(f'loss must be in [0, 1), got {self.loss}')


@dataclass(frozen=True)
class LinkConfig:
    """Both directions: uplink (drone to ground) and downlink (ground to drone)."""

    uplink: ChannelConfig = field(default_factory=ChannelConfig)
    downlink: ChannelConfig = field(default_factory=ChannelConfig)

    @classmethod
    def symmetric(cls, bandwidth_kbps: float | None = None, latency_s: float = 0.0,
                  loss: float = 0.0) -> LinkConfig:
        channel = ChannelConfig(bandwidth_kbps, latency_s, loss)
        return cls(channel, channel)

    def to_dict(self) -> dict:
        return {name: vars(getattr(self, name)).copy() for name in ('uplink', 'downlink')}


@dataclass(frozen=True)
class Transmission:
    """One message on the wire."""

    sent_at: float  # handed to the channel
    start: float  # first bit on the wire
    end: float  # last bit on the wire
    delivered_at: float  # end + latency
    nbytes: int
    lost: bool
    kind: str


class Channel:
    """One direction: send messages at simulated times, collect those delivered by a time."""

    def __init__(self, config: ChannelConfig | None = None, seed: int = 0):
        self.config = config or ChannelConfig()
        self._rng = np.random.default_rng(seed)
        self._busy_until = -math.inf
        self._queue: deque[tuple[float, Any]] = deque()  # (delivered_at, message), FIFO
        self.transmissions: list[Transmission] = []
        self.bytes_sent = 0
        self.messages_sent = 0
        self.messages_lost = 0

    def send(self, t: float, message: Any, nbytes: int, kind: str = '') -> float | None:
        """Queue `message` (`nbytes` on the wire) at time t; return its delivery time, or None.

        None means the message is lost. Sends must come in non-decreasing t for FIFO to hold.
        """
        nbytes = int(nbytes)
        if nbytes < 0:
            raise ValueError(f'nbytes must be >= 0, got {nbytes}')
        config = self.config
        start = max(float(t), self._busy_until)
        duration = (0.0 if config.bandwidth_kbps is None or math.isinf(config.bandwidth_kbps)
                    else nbytes * 8.0 / (config.bandwidth_kbps * 1000.0))
        end = start + duration
        self._busy_until = end
        delivered = end + config.latency_s
        lost = bool(config.loss > 0 and self._rng.random() < config.loss)
        self.transmissions.append(Transmission(float(t), start, end, delivered, nbytes, lost,
                                               kind))
        self.bytes_sent += nbytes
        self.messages_sent += 1
        if lost:
            self.messages_lost += 1
            return None
        self._queue.append((delivered, message))
        return delivered

    def receive(self, until: float) -> list[tuple[float, Any]]:
        """Pop every message delivered at or before `until`, in order, as (time, message)."""
        out = []
        while self._queue and self._queue[0][0] <= until:
            out.append(self._queue.popleft())
        return out

    def bytes_by_kind(self) -> dict[str, int]:
        totals: dict[str, int] = {}
        for tx in self.transmissions:
            totals[tx.kind] = totals.get(tx.kind, 0) + tx.nbytes
        return totals

    def trace(self, start: float, stop: float, bin_s: float = 1.0) -> list[float]:
        """Bytes on the wire per `bin_s` bin over [start, stop); a message spreads over its bins.

        Serialisation past `stop` falls outside the trace (but not outside `bytes_sent`).
        """
        if not bin_s > 0:
            raise ValueError(f'bin_s must be positive, got {bin_s}')
        count = max(0, math.ceil((stop - start) / bin_s - 1e-9))
        bins = np.zeros(count)
        for tx in self.transmissions:
            if tx.end <= tx.start:  # instantaneous: all in the bin of its start
                k = int((tx.start - start) // bin_s)
                if 0 <= k < count:
                    bins[k] += tx.nbytes
                continue
            rate = tx.nbytes / (tx.end - tx.start)
            first = max(0, int((tx.start - start) // bin_s))
            last = min(count - 1, int((tx.end - start) // bin_s))
            for k in range(first, last + 1):
                lo = max(tx.start, start + k * bin_s)
                hi = min(tx.end, start + (k + 1) * bin_s)
                if hi > lo:
                    bins[k] += rate * (hi - lo)
        return bins.tolist()


class Link:
    """The drone-ground link: `uplink` and `downlink` channels with their own loss seeds."""

    def __init__(self, config: LinkConfig | None = None, seed: int = 0):
        self.config = config or LinkConfig()
        self.uplink = Channel(self.config.uplink, seed=2 * seed + 1)
        self.downlink = Channel(self.config.downlink, seed=2 * seed + 2)

    def bandwidth(self, start: float, stop: float, bin_s: float = 1.0) -> dict:
        """Bytes per bin in each direction over [start, stop): SchemeResult.bandwidth's form."""
        return {'bin_s': bin_s, 'start': start,
                'uplink': self.uplink.trace(start, stop, bin_s),
                'downlink': self.downlink.trace(start, stop, bin_s)}
