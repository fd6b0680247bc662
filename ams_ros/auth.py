"""Optional message authentication: HMAC-SHA256 with a key shared by ground and drones.

Works on any dataclass with an ``auth_tag`` field (patches, snapshots). The tag covers every other
field, serialised canonically: each value carries a type byte and a length prefix, and each field
its name, so no two different messages serialise to the same bytes (no ambiguity from
concatenation, reordering or renaming). The class name is included too, so a patch's tag can never
pass as a snapshot's.

Policy: with a key configured, an unsigned or wrongly signed message is rejected ('unsigned',
'bad-signature'); without a key, tags are ignored. Replays of a genuine message are not caught
here; version numbers make them harmless (model_version treats them as duplicates).

The encoding (``encode_record``) is shared with ams_ros.ros.link_auth, which signs whole ROS
messages on the wire, with a counter against replays.
"""

from __future__ import annotations

import array
import dataclasses
import hashlib
import hmac
import os
import struct

import numpy as np

TAG_FIELD = 'auth_tag'
MIN_KEY_BYTES = 16
_DOMAIN = b'ams_ros-auth-v1'


def load_key(source: bytes | str | os.PathLike | None) -> bytes | None:
    """Return the shared key from bytes or a file path (surrounding whitespace dropped).

    None (no key configured) stays None; a key shorter than MIN_KEY_BYTES is refused.
    """
    if source is None:
        return None
    if isinstance(source, (bytes, bytearray)):
        key = bytes(source)
    else:
        with open(source, 'rb') as f:
            key = f.read().strip()
    if len(key) < MIN_KEY_BYTES:
        raise ValueError(f'an authentication key needs at least {MIN_KEY_BYTES} bytes')
    return key


def canonical_bytes(message) -> bytes:
    """Serialise every field but the tag, unambiguously (what the tag is computed over)."""
    record = dataclass_record(message)
    if record is None:
        raise TypeError('only dataclass instances can be signed')
    name, fields = record
    return _DOMAIN + encode_record(name, [(n, v) for n, v in fields if n != TAG_FIELD])


def compute_tag(message, key: bytes) -> bytes:
    return hmac.new(key, canonical_bytes(message), hashlib.sha256).digest()


def sign(message, key: bytes | None):
    """Return a copy of the message carrying its tag (unchanged, untagged, when key is None)."""
    if key is None:
        return message
    return dataclasses.replace(message, **{TAG_FIELD: compute_tag(message, key)})


def check_tag(message, key: bytes | None) -> str:
    """Return '' if the message passes the policy, else 'unsigned' or 'bad-signature'."""
    if key is None:
        return ''
    tag = getattr(message, TAG_FIELD, b'')
    if not tag:
        return 'unsigned'
    if not isinstance(tag, (bytes, bytearray, memoryview, array.array)):
        return 'bad-signature'   # bytes() of an int would allocate that many bytes
    try:
        expected = compute_tag(message, key)
        return '' if hmac.compare_digest(bytes(tag), expected) else 'bad-signature'
    except (TypeError, ValueError):   # a field or tag of a type that cannot be serialised
        return 'bad-signature'


def _length_prefixed(data: bytes) -> bytes:
    return struct.pack('>Q', len(data)) + data


def dataclass_record(value):
    """Return (class name, [(field name, value)...]) of a dataclass instance, else None."""
    if not dataclasses.is_dataclass(value) or isinstance(value, type):
        return None
    return type(value).__name__, [(f.name, getattr(value, f.name))
                                  for f in dataclasses.fields(value)]


def encode_record(name: str, fields, as_record=dataclass_record) -> bytes:
    """Encode a named record: its name, its field count, then each field's name and value.

    `as_record` says which other values are records too (returns (name, fields) or None):
    dataclasses here; ROS messages for ams_ros.ros.link_auth.
    """
    parts = [b'd', _length_prefixed(name.encode()), struct.pack('>Q', len(fields))]
    for field_name, value in fields:
        parts += [_length_prefixed(field_name.encode()), encode_value(value, as_record)]
    return b''.join(parts)


def encode_value(value, as_record=dataclass_record) -> bytes:
    """Type byte + payload; every variable-length payload is length-prefixed."""
    if value is None:
        return b'n'
    if isinstance(value, (bool, np.bool_)):
        return b'?' + (b'\1' if value else b'\0')
    if isinstance(value, (int, np.integer)):
        return b'i' + _length_prefixed(str(int(value)).encode())
    if isinstance(value, (float, np.floating)):
        return b'f' + struct.pack('>d', float(value))
    if isinstance(value, str):
        return b's' + _length_prefixed(value.encode())
    if isinstance(value, (bytes, bytearray, memoryview)) or (
            isinstance(value, array.array) and value.typecode in 'bB'):
        # A uint8[] message field may arrive as bytes or array('B'): both sign alike.
        return b'b' + _length_prefixed(bytes(value))
    if isinstance(value, array.array):
        value = np.asarray(value)
    if isinstance(value, np.ndarray):
        shape = struct.pack(f'>{value.ndim}Q', *value.shape)
        return (b'a' + _length_prefixed(value.dtype.str.encode()) + _length_prefixed(shape)
                + _length_prefixed(np.ascontiguousarray(value).tobytes()))
    if isinstance(value, (list, tuple)):
        return b'l' + struct.pack('>Q', len(value)) + b''.join(
            encode_value(v, as_record) for v in value)
    record = as_record(value)
    if record is not None:
        return encode_record(*record, as_record)
    raise TypeError(f'cannot sign a field of type {type(value).__name__}')

