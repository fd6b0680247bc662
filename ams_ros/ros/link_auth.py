"""Authentication of every ams_msgs message on the wire: an HMAC-SHA256 tag and a counter.

Every ams_msgs message ends with ``uint64 auth_counter`` and ``uint8[] auth_tag``. With the key
shared by ground and drones, the sender (``LinkSigner``) sets the counter and a tag over every
other field; the receiver (``LinkVerifier``) checks the tag, then that the counter is greater
than the last one it accepted from that sender for that message type.

The tag covers the message's full type name (a SamplingControl's tag never passes for another
type) and every field but the tag, nested messages included, in ams_ros.wire.auth's unambiguous
encoding. It is computed over the field values, not the middleware's CDR bytes, so drone and
ground may run different RMWs. ``float32`` fields are rounded to float32 first: rclpy keeps the
double that was assigned until it publishes, and the receiver sees the rounded value.

Replays, and the limits of the counter:

- a sender's counter starts at its wall clock (ns) and only grows, so a recording is older than
  the sender's current counter, and a restarted sender starts above all it sent before. A
  sender's clock set back (a board without a real-time clock, before NTP) makes a receiver that
  remembers it refuse its messages as 'replayed' until the clock passes the old counter again.
- a sender seen for the first time is accepted at any counter. After a receiver restarts (or
  forgets a sender: it remembers the ``max_senders`` most recently accepted), recorded messages
  can be replayed, each once and in order, until the sender's next genuine message.

Without a key messages carry the counter but no tag, and the verifier accepts everything.
"""

from __future__ import annotations

import collections
import hashlib
import hmac
import threading
import time

import numpy as np

from ams_ros.ros.node_parameters import ParameterError
from ams_ros.wire.auth import BAD_SIGNATURE, REPLAYED, TAG_FIELD, UNSIGNED, encode_record, load_key

MAX_SENDERS = 1024
_DOMAIN = b'ams_ros-link-v1'


def type_name(msg_type) -> str:
    """Return a ROS message class's full type name, e.g. 'ams_msgs/msg/ModelPatch'."""
    package, kind = msg_type.__module__.split('.')[:2]
    return f'{package}/{kind}/{msg_type.__name__}'


def canonical_message_bytes(msg) -> bytes:
    """Serialise the type name and every field but the tag, unambiguously (what is signed)."""
    record = _message_record(msg)
    if record is None:
        raise TypeError(f'not a ROS message: {type(msg).__name__}')
    name, fields = record
    return _DOMAIN + encode_record(name, [(n, v) for n, v in fields if n != TAG_FIELD],
                                   _message_record)


def _message_record(value):
    """Return (full type name, [(field name, value)...]) of a ROS message, else None."""
    field_types = getattr(type(value), 'get_fields_and_field_types', None)
    if field_types is None:
        return None
    return type_name(type(value)), [(name, _as_received(kind, getattr(value, name)))
                                    for name, kind in field_types().items()]


def _as_received(kind: str, value):
    return np.float32(value) if kind == 'float' else value


def _tag(key: bytes, msg) -> bytes:
    return hmac.new(key, canonical_message_bytes(msg), hashlib.sha256).digest()


class LinkSigner:
    """Stamps outgoing messages with the next counter and, with a key, their tag."""

    def __init__(self, key: bytes | None):
        self._key = key
        self._counter = time.time_ns()
        self._lock = threading.Lock()   # nodes publish from several threads

    def sign(self, msg):
        """Set msg's auth_counter and (with a key) auth_tag in place; return msg."""
        with self._lock:
            # The wall clock when it is ahead: a restarted sender starts above its old counters.
            self._counter = max(self._counter + 1, time.time_ns())
            msg.auth_counter = self._counter
        if self._key is not None:
            msg.auth_tag = _tag(self._key, msg)
        return msg


class LinkVerifier:
    """Checks incoming messages' tags and counters; without a key it accepts everything."""

    def __init__(self, key: bytes | None, max_senders: int = MAX_SENDERS):
        self._key = key
        self._max_senders = max_senders
        # sender -> {type name: last accepted counter}, least recently accepted sender first.
        self._last: collections.OrderedDict[str, dict[str, int]] = collections.OrderedDict()
        self._lock = threading.Lock()

    def verify(self, msg, sender: str) -> str:
        """Return '' to accept msg from sender, else 'unsigned', 'bad-signature' or 'replayed'."""
        if self._key is None:
            return ''
        if not msg.auth_tag:
            return UNSIGNED
        if not hmac.compare_digest(bytes(msg.auth_tag), _tag(self._key, msg)):
            return BAD_SIGNATURE
        # Only authentic messages get here, so forgeries can neither fill nor evict the memory.
        name, counter = type_name(type(msg)), int(msg.auth_counter)
        with self._lock:
            counters = self._last.setdefault(sender, {})
            if counter <= counters.get(name, -1):
                return REPLAYED
            counters[name] = counter
            self._last.move_to_end(sender)
            if len(self._last) > self._max_senders:
                self._last.popitem(last=False)
        return ''

    def senders(self) -> int:
        """Return how many senders' counters are remembered."""
        with self._lock:
            return len(self._last)


def link_ends(auth_key_file: str) -> tuple[LinkSigner, LinkVerifier]:
    """Return the signer and verifier of a node's link (unsigned without a key file).

    ParameterError when the file cannot be read or holds no usable key.
    """
    try:
        key = load_key(auth_key_file or None)
    except (ValueError, OSError) as e:
        raise ParameterError(f'auth_key_file: {e}') from e
    return LinkSigner(key), LinkVerifier(key)
