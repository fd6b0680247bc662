"""The key shared by ground and drones, and the unambiguous encoding that signing hashes.

Messages are signed on the wire, one ams_msgs message at a time, by ams_ros.ros.link_auth
(HMAC-SHA256 and a counter); the engine itself signs and checks nothing. This module loads the
key (``load_key``) and serialises field values canonically (``encode_record``,
``encode_value``): each value carries a type byte and a length prefix, and each field its name,
so no two different messages serialise to the same bytes (no ambiguity from concatenation,
reordering or renaming).
"""

from __future__ import annotations

import array
import os
import struct

import numpy as np

TAG_FIELD = 'auth_tag'
MIN_KEY_BYTES = 16
# Why a receiver refuses a message on the link: it carries no tag, a wrong one, or an old counter.
UNSIGNED, BAD_SIGNATURE, REPLAYED = 'unsigned', 'bad-signature', 'replayed'
AUTH_REFUSALS = (UNSIGNED, BAD_SIGNATURE, REPLAYED)


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


def _length_prefixed(data: bytes) -> bytes:
    return struct.pack('>Q', len(data)) + data


def encode_record(name: str, fields, as_record) -> bytes:
    """Encode a named record: its name, its field count, then each field's name and value.

    `as_record` says which other values are records too (returns (name, fields) or None):
    nested ROS messages, for ams_ros.ros.link_auth.
    """
    parts = [b'd', _length_prefixed(name.encode()), struct.pack('>Q', len(fields))]
    for field_name, value in fields:
        parts += [_length_prefixed(field_name.encode()), encode_value(value, as_record)]
    return b''.join(parts)


def encode_value(value, as_record) -> bytes:
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

