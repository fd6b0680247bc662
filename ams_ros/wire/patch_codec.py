"""Sparse model patches: the changed coordinates of the flat parameter vector, as bytes.

A patch body is two byte streams. The *index* stream says which coordinates change; the *value*
stream says what they change to. Each stream is named by a codec string so the edge needs no other
context than its own base vector:

- index codecs: ``bitmask+C`` (``np.packbits`` of the N-bit mask, the paper's), ``gaps+C``
  (sorted indices as LEB128 varints of ``index - previous_index - 1``) and ``full`` (every index,
  no bytes); C is a compressor: ``none``, ``zstd`` or ``gzip`` (the paper's).
- value codecs: ``MODE[+shuffle]+C`` where MODE is the precision (a configuration choice):
  ``fp16`` new values as float16 (the paper's), ``fp16-delta`` float16 deltas to the base,
  ``q8-delta`` int8 deltas with one float32 scale per block of ``block`` values, ``fp32`` exact.
  ``shuffle`` stores the bytes of each value as separate planes (all low bytes, then all high
  bytes), which compressors like better; it is never used for ``q8-delta``.

The encoder tries every allowed combination and keeps the smallest, so the choice is exact and
lossless for the configured MODE. It derives the ground's new mirror by *decoding the bytes it
produced* with ``apply_patch``, the very function the edge runs, so the mirror and the edge's
vector are bit-identical by construction (float32 numpy arithmetic, one op at a time, no fused
multiply-add).

Error feedback in the delta modes (``fp16-delta``, ``q8-delta``): the delta is always taken
against the mirror, ``delta = target - mirror[i]``, and the edge reconstructs
``mirror[i] + dequantised(delta)``. The rounding residual ``target - new_mirror[i]`` (at most
half a quantisation step: ``scale / 2`` for q8, about half an fp16 ulp of the delta for
fp16-delta) is not sent now and not lost: the trainer's weights keep the target, and the next
time index i is selected its delta against the mirror contains the residual, so it is corrected
then (up to that patch's own rounding). Indices never selected again keep their bounded
residual. A caller that wants no residual at all writes the returned mirror values back into its
weights instead.

Decoding trusts nothing: every malformed input raises ``PatchError`` with a short reason code
(see ``PatchError``), and every decompressed size is capped by what ``num_params`` allows.
"""

from __future__ import annotations

import array
import zlib
from dataclasses import dataclass

import numpy as np
import zstandard

from ams_ros.model.manifest import FLAT_DTYPE

INDEX_SCHEMES = ('bitmask', 'gaps', 'full')
VALUE_MODES = ('fp16', 'fp16-delta', 'q8-delta', 'fp32')
COMPRESSORS = ('none', 'zstd', 'gzip')
# Indices travel as int64 in numpy and varints of at most 5 bytes: keep N below 2**31.
MAX_NUM_PARAMS = 2**31 - 1
MAX_Q8_BLOCK = 2**24

_VALUE_DTYPES = {'fp16': np.dtype('<f2'), 'fp16-delta': np.dtype('<f2'), 'fp32': np.dtype('<f4')}
_Q8_HEADER = np.dtype('<u4')   # the block size, in front of the scales
_Q8_SCALE = np.dtype('<f4')
_FP16_MAX = float(np.finfo(np.float16).max)


class PatchError(ValueError):
    """A patch that cannot be decoded or applied.

    ``reason`` is one of: ``malformed`` (a field has the wrong type), ``num-params`` (invalid or
    not the base's length), ``unknown-codec``, ``corrupt-data`` (bad, truncated or trailing
    compressed bytes), ``too-large`` (decompresses past the size num_params allows),
    ``index-format``, ``index-range``, ``count-mismatch`` (values do not match the indices),
    ``value-format`` and ``non-finite`` (a resulting value is NaN or infinite).
    """

    def __init__(self, reason: str, message: str):
        super().__init__(f'{reason}: {message}')
        self.reason = reason
        self.message = message


def _check_choices(name, chosen, allowed):
    if not chosen or any(c not in allowed for c in chosen):
        raise ValueError(f'{name} must be a non-empty subset of {allowed}, got {chosen!r}')


@dataclass(frozen=True)
class PatchFormat:
    """What the encoder may use: the value precision and the candidates it picks from."""

    value_mode: str = 'fp16-delta'
    index_schemes: tuple[str, ...] = INDEX_SCHEMES
    compressors: tuple[str, ...] = ('none', 'zstd')
    shuffle: tuple[bool, ...] = (False, True)
    zstd_level: int = 19
    gzip_level: int = 9
    q8_block: int = 256

    def __post_init__(self):
        if self.value_mode not in VALUE_MODES:
            raise ValueError(f'value_mode must be one of {VALUE_MODES}, got {self.value_mode!r}')
        _check_choices('index_schemes', self.index_schemes, INDEX_SCHEMES)
        _check_choices('compressors', self.compressors, COMPRESSORS)
        _check_choices('shuffle', self.shuffle, (False, True))
        if not 1 <= self.zstd_level <= 22 or not 0 <= self.gzip_level <= 9:
            raise ValueError('zstd_level must be in 1..22 and gzip_level in 0..9')
        if not 1 <= self.q8_block <= MAX_Q8_BLOCK:
            raise ValueError(f'q8_block must be in 1..{MAX_Q8_BLOCK}')


DEFAULT_FORMAT = PatchFormat()
# The paper's format (and its code's): gzip -9 of the packed bit-mask and of float16 new values.
PAPER_FORMAT = PatchFormat(
    value_mode='fp16', index_schemes=('bitmask',), compressors=('gzip',), shuffle=(False,))
# How the streams are packed, by name (the ground node's patch.streams); the precision is apart.
PATCH_STREAMS = {'smallest': DEFAULT_FORMAT, 'paper': PAPER_FORMAT}


@dataclass(frozen=True)
class PatchBody:
    """The encoded sparse update, independent of versions (see model_version.PatchPayload)."""

    num_params: int
    index_codec: str
    index_data: bytes
    value_codec: str
    value_data: bytes

    @property
    def nbytes(self) -> int:
        return len(self.index_data) + len(self.value_data)


def encode_patch(mirror: np.ndarray, indices, target_values,
                 fmt: PatchFormat = DEFAULT_FORMAT) -> tuple[PatchBody, np.ndarray]:
    """Encode new values for some indices of the mirror; return the body and the new mirror.

    Indices may come in any order (values follow them); they must be unique and in range. The
    new mirror is ``apply_patch(mirror, body)``: what the edge will hold after this patch.
    Raises ValueError for bad arguments or values the value mode cannot represent.
    """
    mirror = _check_vector(mirror)
    idx, target = _canonical_selection(indices, target_values, mirror.size)
    index_codec, index_data = _smallest(_index_candidates(fmt, idx, mirror.size))
    value_codec, value_data = _smallest(_value_candidates(fmt, mirror[idx], target))
    body = PatchBody(int(mirror.size), index_codec, index_data, value_codec, value_data)
    try:
        return body, apply_patch(mirror, body)
    except PatchError as e:
        raise ValueError(f'{fmt.value_mode} cannot represent these values ({e})') from e


def apply_patch(base: np.ndarray, body) -> np.ndarray:
    """Return a new vector: base with the patch applied (base is never modified).

    ``body`` is anything with PatchBody's fields (a PatchBody or a model_version.PatchPayload).
    Raises PatchError for every malformed body; ValueError if base is not a flat vector.
    """
    base = _check_vector(base)
    idx, values = decode_patch(base, body)
    new = base.copy()
    new[idx] = values
    return new


def decode_patch(base: np.ndarray, body) -> tuple[np.ndarray, np.ndarray]:
    """Decode a body against its base: the sorted indices and their new float32 values."""
    base = _check_vector(base)
    num_params = _field(body, 'num_params', (int, np.integer))
    if isinstance(num_params, bool) or num_params != base.size:
        raise PatchError('num-params', f'patch is for {num_params!r} parameters, base has '
                                       f'{base.size}')
    scheme, index_compressor = _parse_index_codec(_field(body, 'index_codec', str))
    mode, shuffled, value_compressor = _parse_value_codec(_field(body, 'value_codec', str))
    index_data = _field_bytes(body, 'index_data')
    value_data = _field_bytes(body, 'value_data')

    n = base.size
    if scheme == 'full':
        if index_data:
            raise PatchError('index-format', "'full' carries no index bytes")
        idx = np.arange(n, dtype=np.int64)
    else:
        cap = _bitmask_size(n) if scheme == 'bitmask' else n * _varint_size(n - 1)
        raw = _decompress(index_compressor, index_data, cap)
        idx = _decode_bitmask(raw, n) if scheme == 'bitmask' else _decode_gaps(raw, n)

    raw = _decompress(value_compressor, value_data, _value_size_cap(mode, idx.size))
    values = _decode_values(mode, shuffled, raw, base[idx])
    if not np.isfinite(values).all():
        raise PatchError('non-finite', 'a patched value is NaN or infinite')
    return idx, values


# --- encoder helpers ------------------------------------------------------------------------

def _check_vector(flat: np.ndarray) -> np.ndarray:
    if not isinstance(flat, np.ndarray) or flat.dtype != FLAT_DTYPE or flat.ndim != 1:
        raise ValueError(f'expected a 1-D {FLAT_DTYPE} vector')
    if not 1 <= flat.size <= MAX_NUM_PARAMS:
        raise ValueError(f'vector length must be in 1..{MAX_NUM_PARAMS}')
    return flat


def _canonical_selection(indices, target_values, n: int) -> tuple[np.ndarray, np.ndarray]:
    """Sorted unique int64 indices in range and their finite float32 targets."""
    idx = np.asarray(indices)
    if idx.size == 0:
        idx = idx.astype(np.int64)
    if idx.ndim != 1 or not np.issubdtype(idx.dtype, np.integer):
        raise ValueError('indices must be a 1-D integer array')
    target = np.asarray(target_values, dtype=FLAT_DTYPE)
    if target.shape != idx.shape:
        raise ValueError(f'{idx.size} indices but target_values has shape {target.shape}')
    if idx.size and (idx.min() < 0 or idx.max() >= n):
        raise ValueError(f'indices must be in 0..{n - 1}')
    if not np.isfinite(target).all():
        raise ValueError('target values must be finite')
    order = np.argsort(idx, kind='stable')
    idx, target = idx[order].astype(np.int64), target[order]
    if np.any(np.diff(idx) == 0):
        raise ValueError('indices must be unique')
    return idx, target


def _smallest(candidates) -> tuple[str, bytes]:
    """Pick the (codec, data) pair with the fewest bytes; the first one wins ties."""
    candidates = list(candidates)
    if not candidates:
        raise ValueError("no allowed codec can encode this patch (only 'full' for a subset?)")
    return min(candidates, key=lambda c: len(c[1]))


def _index_candidates(fmt: PatchFormat, idx: np.ndarray, n: int):
    for scheme in fmt.index_schemes:
        if scheme == 'full':
            if idx.size == n:
                yield 'full', b''
            continue
        raw = _encode_bitmask(idx, n) if scheme == 'bitmask' else _encode_gaps(idx)
        for compressor in fmt.compressors:
            yield f'{scheme}+{compressor}', _compress(compressor, raw, fmt)


def _value_candidates(fmt: PatchFormat, base: np.ndarray, target: np.ndarray):
    mode = fmt.value_mode
    if mode == 'q8-delta':
        layouts = [(mode, _encode_q8(_delta(base, target), fmt.q8_block))]
    else:
        raw = _encode_floats(mode, base, target)
        itemsize = _VALUE_DTYPES[mode].itemsize
        layouts = [(f'{mode}+shuffle', _shuffle(raw, itemsize)) if shuffled else (mode, raw)
                   for shuffled in fmt.shuffle]
    for name, raw in layouts:
        for compressor in fmt.compressors:
            yield f'{name}+{compressor}', _compress(compressor, raw, fmt)


def _delta(base: np.ndarray, target: np.ndarray) -> np.ndarray:
    with np.errstate(over='ignore', invalid='ignore'):
        delta = target - base
    if not np.isfinite(delta).all():
        raise ValueError('a delta to the mirror overflows float32')
    return delta


def _encode_floats(mode: str, base: np.ndarray, target: np.ndarray) -> bytes:
    if mode == 'fp32':
        return target.astype('<f4').tobytes()
    values = target if mode == 'fp16' else _delta(base, target)
    with np.errstate(over='ignore'):
        half = values.astype('<f2')
    if not np.isfinite(half).all():
        raise ValueError(f'{mode}: a value exceeds the float16 range ({_FP16_MAX}); use fp32')
    return half.tobytes()


def _encode_q8(delta: np.ndarray, block: int) -> bytes:
    """Block size, then one float32 scale per block, then int8 q with delta ~= q * scale."""
    header = np.array([block], _Q8_HEADER).tobytes()
    if delta.size == 0:
        return header
    maxabs = np.maximum.reduceat(np.abs(delta), np.arange(0, delta.size, block))
    scales = (maxabs / np.float32(127)).astype(_Q8_SCALE)
    with np.errstate(divide='ignore', invalid='ignore', over='ignore'):
        q = np.rint(delta / _per_value(scales, block, delta.size))
    # An all-zero block has scale 0 (q = 0); clipping absorbs rounding just past 127.
    q = np.clip(np.nan_to_num(q, nan=0.0, posinf=0.0, neginf=0.0), -127, 127)
    return header + scales.tobytes() + q.astype(np.int8).tobytes()


def _per_value(scales: np.ndarray, block: int, count: int) -> np.ndarray:
    """Each value's block scale (indexing, not np.repeat, so a huge block costs nothing)."""
    return scales[np.arange(count) // block].astype(FLAT_DTYPE)


def _encode_bitmask(idx: np.ndarray, n: int) -> bytes:
    mask = np.zeros(n, bool)
    mask[idx] = True
    return np.packbits(mask).tobytes()


def _encode_gaps(idx: np.ndarray) -> bytes:
    """LEB128 varints of the gaps (index - previous - 1, the first index as is)."""
    gaps = (np.diff(idx, prepend=-1) - 1).astype(np.uint64)
    lengths = np.ones(gaps.size, np.int64)
    for k in range(1, 5):
        lengths += gaps >= (1 << (7 * k))
    starts = np.cumsum(lengths) - lengths
    out = np.zeros(int(lengths.sum()), np.uint8)
    for k in range(int(lengths.max(initial=0))):
        sel = lengths > k
        low7 = (gaps[sel] >> np.uint64(7 * k)) & np.uint64(0x7F)
        more = (lengths[sel] > k + 1).astype(np.uint64) << np.uint64(7)
        out[starts[sel] + k] = (low7 | more).astype(np.uint8)
    return out.tobytes()


def _shuffle(raw: bytes, itemsize: int) -> bytes:
    return np.frombuffer(raw, np.uint8).reshape(-1, itemsize).T.tobytes()


def _compress(compressor: str, raw: bytes, fmt: PatchFormat) -> bytes:
    if compressor == 'zstd':
        return zstandard.ZstdCompressor(level=fmt.zstd_level, write_checksum=True).compress(raw)
    if compressor == 'gzip':
        gz = zlib.compressobj(fmt.gzip_level, zlib.DEFLATED, 31)
        return gz.compress(raw) + gz.flush()
    return bytes(raw)


# --- decoder helpers: every failure is a PatchError -----------------------------------------

def _field(body, name: str, types):
    try:
        value = getattr(body, name)
    except AttributeError:
        raise PatchError('malformed', f'patch has no {name}') from None
    if not isinstance(value, types):
        raise PatchError('malformed', f'{name} has type {type(value).__name__}')
    return value


def _field_bytes(body, name: str) -> bytes:
    # array.array is what rclpy gives for uint8[] fields.
    value = _field(body, name, (bytes, bytearray, memoryview, array.array))
    try:
        return bytes(value)
    except (TypeError, ValueError) as e:
        raise PatchError('malformed', f'{name}: {e}') from None


def _parse_index_codec(codec: str) -> tuple[str, str | None]:
    if codec == 'full':
        return 'full', None
    scheme, _, compressor = codec.partition('+')
    if scheme in ('bitmask', 'gaps') and compressor in COMPRESSORS:
        return scheme, compressor
    raise PatchError('unknown-codec', f'index codec {codec[:40]!r}')


def _parse_value_codec(codec: str) -> tuple[str, bool, str]:
    parts = codec.split('+')
    if len(parts) == 2 and parts[0] in VALUE_MODES and parts[1] in COMPRESSORS:
        return parts[0], False, parts[1]
    if (len(parts) == 3 and parts[0] in _VALUE_DTYPES and parts[1] == 'shuffle'
            and parts[2] in COMPRESSORS):
        return parts[0], True, parts[2]
    raise PatchError('unknown-codec', f'value codec {codec[:40]!r}')


def _bitmask_size(n: int) -> int:
    return (n + 7) // 8


def _varint_size(value: int) -> int:
    return max(1, -(-int(value).bit_length() // 7))


def _value_size_cap(mode: str, count: int) -> int:
    if mode == 'q8-delta':   # header, at most one scale per value (block 1), one byte per value
        return _Q8_HEADER.itemsize + (_Q8_SCALE.itemsize + 1) * count
    return _VALUE_DTYPES[mode].itemsize * count


def _decompress(compressor: str, data: bytes, cap: int) -> bytes:
    """Decompress one complete stream of at most cap bytes, with nothing after it."""
    if compressor == 'zstd':
        return _zstd_decompress(data, cap)
    if compressor == 'gzip':
        return _gzip_decompress(data, cap)
    if len(data) > cap:
        raise PatchError('too-large', f'{len(data)} bytes where at most {cap} fit')
    return data


def _zstd_decompress(data: bytes, cap: int) -> bytes:
    try:
        size = zstandard.get_frame_parameters(data).content_size
    except zstandard.ZstdError as e:
        raise PatchError('corrupt-data', f'zstd header: {e}') from None
    if size < 0:   # unknown: our encoder always writes it, and it bounds the output
        raise PatchError('corrupt-data', 'zstd frame without a content size')
    if size > cap:
        raise PatchError('too-large', f'zstd frame declares {size} bytes, at most {cap} fit')
    stream = zstandard.ZstdDecompressor().decompressobj()
    try:
        # libzstd stops with an error as soon as the output passes the declared size.
        raw = stream.decompress(data)
    except zstandard.ZstdError as e:
        raise PatchError('corrupt-data', f'zstd: {e}') from None
    if not stream.eof or stream.unused_data:
        raise PatchError('corrupt-data', 'zstd stream truncated or followed by extra bytes')
    return raw


def _gzip_decompress(data: bytes, cap: int) -> bytes:
    stream = zlib.decompressobj(31)
    try:
        raw = stream.decompress(data, cap + 1)
    except zlib.error as e:
        raise PatchError('corrupt-data', f'gzip: {e}') from None
    if len(raw) > cap:
        raise PatchError('too-large', f'gzip stream inflates past {cap} bytes')
    if not stream.eof or stream.unused_data:
        raise PatchError('corrupt-data', 'gzip stream truncated or followed by extra bytes')
    return raw


def _decode_bitmask(raw: bytes, n: int) -> np.ndarray:
    if len(raw) != _bitmask_size(n):
        raise PatchError('index-format', f'bitmask has {len(raw)} bytes, expected '
                                         f'{_bitmask_size(n)}')
    bits = np.unpackbits(np.frombuffer(raw, np.uint8))
    if bits[n:].any():
        raise PatchError('index-range', 'bitmask sets bits past num_params')
    return np.flatnonzero(bits[:n]).astype(np.int64)


def _decode_gaps(raw: bytes, n: int) -> np.ndarray:
    """Inverse of _encode_gaps; rejects truncated, overlong and out-of-range varints."""
    data = np.frombuffer(raw, np.uint8)
    if data.size == 0:
        return np.zeros(0, np.int64)
    if data[-1] & 0x80:
        raise PatchError('index-format', 'truncated varint')
    ends = np.flatnonzero(data < 0x80)
    starts = np.concatenate(([0], ends[:-1] + 1))
    lengths = ends - starts + 1
    if lengths.max() > _varint_size(n - 1):
        raise PatchError('index-format', 'a varint is longer than any index gap can be')
    if np.any((lengths > 1) & (data[ends] == 0)):
        raise PatchError('index-format', 'overlong varint')
    if ends.size > n:
        raise PatchError('index-range', f'{ends.size} indices for {n} parameters')
    gaps = np.zeros(ends.size, np.int64)
    for k in range(int(lengths.max())):
        sel = lengths > k
        gaps[sel] |= (data[starts[sel] + k] & 0x7F).astype(np.int64) << (7 * k)
    # Each gap < n and at most n of them, so the sums stay far below int64's range.
    if gaps.max() >= n:
        raise PatchError('index-range', 'index gap past num_params')
    idx = np.cumsum(gaps) + np.arange(gaps.size)
    if idx[-1] >= n:
        raise PatchError('index-range', 'index past num_params')
    return idx


def _decode_values(mode: str, shuffled: bool, raw: bytes, base: np.ndarray) -> np.ndarray:
    """Turn codes into new float32 values: the one place both sides do this."""
    count = base.size
    if mode == 'q8-delta':
        return _decode_q8(raw, base)
    dtype = _VALUE_DTYPES[mode]
    if len(raw) != count * dtype.itemsize:
        raise PatchError('count-mismatch', f'{len(raw)} value bytes for {count} indices')
    if shuffled:
        raw = np.frombuffer(raw, np.uint8).reshape(dtype.itemsize, count).T.tobytes()
    values = np.frombuffer(raw, dtype).astype(FLAT_DTYPE)
    if mode == 'fp16-delta':
        with np.errstate(over='ignore', invalid='ignore'):
            values = base + values
    return values


def _decode_q8(raw: bytes, base: np.ndarray) -> np.ndarray:
    count = base.size
    head = _Q8_HEADER.itemsize
    if len(raw) < head:
        raise PatchError('value-format', 'q8-delta values lack the block size')
    block = int(np.frombuffer(raw, _Q8_HEADER, 1)[0])
    if not 1 <= block <= MAX_Q8_BLOCK:
        raise PatchError('value-format', f'q8-delta block size {block}')
    nblocks = -(-count // block)
    if len(raw) != head + _Q8_SCALE.itemsize * nblocks + count:
        raise PatchError('count-mismatch', f'{len(raw)} q8-delta bytes for {count} indices')
    scales = np.frombuffer(raw, _Q8_SCALE, nblocks, head).astype(FLAT_DTYPE)
    q = np.frombuffer(raw, np.int8, count, head + _Q8_SCALE.itemsize * nblocks)
    with np.errstate(over='ignore', invalid='ignore'):
        return base + q.astype(FLAT_DTYPE) * _per_value(scales, block, count)
