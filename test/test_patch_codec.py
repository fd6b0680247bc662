import dataclasses
import gzip

import numpy as np
import pytest
import zstandard
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ams_ros.wire.patch_codec import (
    COMPRESSORS,
    PAPER_FORMAT,
    VALUE_MODES,
    PatchError,
    PatchFormat,
    apply_patch,
    decode_patch,
    encode_patch,
)

N = 20_000


def vector(seed=0, n=N):
    return (np.random.default_rng(seed).standard_normal(n) * 0.05).astype(np.float32)


def selection(seed=1, n=N, fraction=0.05):
    rng = np.random.default_rng(seed)
    idx = rng.choice(n, int(n * fraction), replace=False)   # unsorted on purpose
    return idx, rng.standard_normal(idx.size).astype(np.float32) * 0.01


def bits(a):
    return a.view(np.uint32)


# Largest |decoded - target| each mode may leave for the data above (targets within ~0.3).
TOLERANCE = {'fp32': 0.0, 'fp16': 2e-4, 'fp16-delta': 2e-5, 'q8-delta': 3e-4}


@pytest.mark.parametrize('mode', VALUE_MODES)
@pytest.mark.parametrize('scheme', ['bitmask', 'gaps', 'full'])
@pytest.mark.parametrize('compressor', COMPRESSORS)
def test_round_trip_every_index_codec_and_value_mode(mode, scheme, compressor):
    base = vector()
    idx, delta = selection(n=N) if scheme != 'full' else (np.arange(N), vector(5) * 0.2)
    target = base[idx] + delta
    fmt = PatchFormat(value_mode=mode, index_schemes=(scheme,), compressors=(compressor,),
                      shuffle=(True,))
    body, mirror = encode_patch(base, idx, target, fmt)

    assert body.index_codec == ('full' if scheme == 'full' else f'{scheme}+{compressor}')
    assert body.value_codec.startswith(mode) and body.value_codec.endswith(compressor)
    before = base.copy()
    edge = apply_patch(base, body)
    assert np.array_equal(bits(base), bits(before)), 'apply_patch must not touch its base'
    assert np.array_equal(bits(edge), bits(mirror))
    decoded_idx, _ = decode_patch(base, body)
    assert np.array_equal(decoded_idx, np.sort(idx))
    untouched = np.setdiff1d(np.arange(N), idx)
    assert np.array_equal(bits(edge[untouched]), bits(base[untouched]))
    assert np.abs(edge[idx] - target).max() <= TOLERANCE[mode]


@pytest.mark.parametrize('mode', VALUE_MODES)
def test_mirror_stays_bit_identical_to_the_edge_over_many_patches(mode):
    rng = np.random.default_rng(3)
    mirror = vector()
    edge = mirror.copy()          # a separate copy, advanced only by decoding the bytes
    trained = mirror.copy()       # the trainer's weights: the targets
    for _ in range(25):
        idx = rng.choice(N, N // 20, replace=False)
        trained[idx] += rng.standard_normal(idx.size).astype(np.float32) * 1e-3
        body, mirror = encode_patch(mirror, idx, trained[idx], PatchFormat(value_mode=mode))
        edge = apply_patch(edge, body)
        assert np.array_equal(bits(edge), bits(mirror))


def test_q8_delta_feeds_the_rounding_residual_back():
    base = vector()
    idx, delta = selection()
    target = base[idx] + delta
    fmt = PatchFormat(value_mode='q8-delta', q8_block=64)
    mirror, errors = base, []
    for _ in range(3):   # the same indices and targets again: only the residual is left to send
        _, mirror = encode_patch(mirror, idx, target, fmt)
        errors.append(np.abs(mirror[idx] - target).max())
    assert errors[0] > 1e-5
    assert errors[1] < errors[0] / 50 and errors[2] < errors[1]


def test_encoder_picks_the_smallest_exact_encoding():
    base = vector()
    contiguous = np.arange(1000, 3000)
    dense = np.random.default_rng(2).choice(N, N // 2, replace=False)
    for idx in (contiguous, dense):
        target = base[idx] + 0.01
        body, _ = encode_patch(base, idx, target)
        sizes = {}
        for scheme in ('bitmask', 'gaps'):
            for compressor in ('none', 'zstd'):
                only = PatchFormat(index_schemes=(scheme,), compressors=(compressor,))
                sizes[f'{scheme}+{compressor}'] = len(encode_patch(base, idx, target, only)[0]
                                                      .index_data)
        assert len(body.index_data) == min(sizes.values())
        assert body.index_codec == min(sizes, key=sizes.get)
    assert encode_patch(base, contiguous, base[contiguous])[0].index_codec.startswith('gaps')
    assert encode_patch(base, dense, base[dense])[0].index_codec.startswith('bitmask')
    everything = encode_patch(base, np.arange(N), base)[0]
    assert everything.index_codec == 'full' and everything.index_data == b''


def test_encoder_picks_the_smaller_value_layout():
    base = vector()
    idx, delta = selection(fraction=0.2)
    target = base[idx] + delta
    chosen, _ = encode_patch(base, idx, target)
    sizes = [len(encode_patch(base, idx, target, PatchFormat(shuffle=(s,)))[0].value_data)
             for s in (False, True)]
    assert len(chosen.value_data) == min(sizes) and sizes[0] != sizes[1]
    assert ('+shuffle+' in chosen.value_codec) == (sizes[1] < sizes[0])


def test_a_few_values_travel_uncompressed_and_many_compressed():
    base = vector()
    few, _ = encode_patch(base, [5, 9, 11], [0.25, -1.5, 3.0], PatchFormat(value_mode='fp32'))
    assert few.value_codec == 'fp32+none' and len(few.value_data) == 12
    idx = np.arange(0, N, 2)
    many, _ = encode_patch(base, idx, base[idx] + 0.5, PatchFormat(value_mode='fp32'))
    assert many.value_codec.endswith('+zstd') and len(many.value_data) < 4 * idx.size


def test_paper_format_is_gzipped_bitmask_and_float16_values():
    base = vector()
    idx, delta = selection()
    body, mirror = encode_patch(base, idx, base[idx] + delta, PAPER_FORMAT)
    assert (body.index_codec, body.value_codec) == ('bitmask+gzip', 'fp16+gzip')
    mask = np.unpackbits(np.frombuffer(gzip.decompress(body.index_data), np.uint8))[:N]
    assert np.array_equal(np.flatnonzero(mask), np.sort(idx))
    values = np.frombuffer(gzip.decompress(body.value_data), '<f2')
    assert np.array_equal(values, (base[idx] + delta)[np.argsort(idx)].astype('<f2'))
    assert np.array_equal(bits(apply_patch(base, body)), bits(mirror))


def test_encoder_refuses_what_it_cannot_represent():
    base = vector()
    with pytest.raises(ValueError, match='float16'):
        encode_patch(base, [0], [1e6], PatchFormat(value_mode='fp16'))
    with pytest.raises(ValueError, match='unique'):
        encode_patch(base, [3, 3], [0.0, 0.0])
    with pytest.raises(ValueError, match='in 0'):
        encode_patch(base, [N], [0.0])
    with pytest.raises(ValueError, match='finite'):
        encode_patch(base, [1], [np.nan])


# --- malformed input: every one is a PatchError with its reason ------------------------------

def valid_body(mode='fp16-delta', schemes=('bitmask',), compressors=('zstd',)):
    base = vector()
    idx, delta = selection()
    fmt = PatchFormat(value_mode=mode, index_schemes=schemes, compressors=compressors,
                      shuffle=(False,))
    return base, encode_patch(base, idx, base[idx] + delta, fmt)[0]


def zstd(data: bytes) -> bytes:
    return zstandard.ZstdCompressor().compress(data)


def varints(*values: int) -> bytes:
    out = bytearray()
    for v in values:
        while v >= 0x80:
            out.append(v & 0x7F | 0x80)
            v >>= 7
        out.append(v)
    return bytes(out)


MALFORMED = [
    ('unknown-codec', dict(index_codec='bitmask+lzma')),
    ('unknown-codec', dict(value_codec='fp8+zstd')),
    ('unknown-codec', dict(value_codec='q8-delta+shuffle+zstd')),
    ('num-params', dict(num_params=N + 1)),
    ('num-params', dict(num_params=True)),
    ('malformed', dict(index_data='not bytes')),
    ('malformed', dict(num_params='20000')),
    ('corrupt-data', dict(index_data=b'')),
    ('corrupt-data', dict(index_data=b'\x28\xb5\x2f\xfd garbage')),
    ('too-large', dict(index_data=zstd(bytes(N)))),                       # zstd bomb
    ('too-large', dict(index_codec='bitmask+gzip', index_data=gzip.compress(bytes(10 * N)))),
    ('corrupt-data', dict(index_codec='bitmask+gzip', index_data=gzip.compress(b'x')[:-3])),
    ('index-format', dict(index_data=zstd(b'\xff' * 10))),                # bitmask too short
    ('index-format', dict(index_codec='gaps+none', index_data=b'\x81')),  # truncated varint
    ('index-format', dict(index_codec='gaps+none', index_data=b'\x80\x00')),  # overlong
    ('index-range', dict(index_codec='gaps+none', index_data=varints(5, N))),
    ('index-range', dict(index_codec='gaps+none', index_data=varints(N - 1, 0))),
    ('index-format', dict(index_codec='full', index_data=b'\x00')),
    ('count-mismatch', dict(value_data=zstd(bytes(10)))),
    ('value-format', dict(value_codec='q8-delta+none', value_data=bytes(4))),
]


@pytest.mark.parametrize('reason, changes', MALFORMED)
def test_malformed_bodies_raise_patch_error_with_a_reason(reason, changes):
    base, body = valid_body()
    before = base.copy()
    with pytest.raises(PatchError) as caught:
        apply_patch(base, dataclasses.replace(body, **changes))
    assert caught.value.reason == reason
    assert np.array_equal(bits(base), bits(before))


def test_non_finite_values_are_refused():
    base, body = valid_body(mode='fp32', compressors=('none',))
    values = np.frombuffer(body.value_data, '<f4').copy()
    values[3] = np.inf
    with pytest.raises(PatchError, match='non-finite'):
        apply_patch(base, dataclasses.replace(body, value_data=values.tobytes()))
    # q8-delta with an absurd scale: the values are finite codes, their sum with base is not.
    q8 = (np.array([values.size], '<u4').tobytes() + np.array([3e38], '<f4').tobytes()
          + np.full(values.size, 127, np.int8).tobytes())
    with pytest.raises(PatchError, match='non-finite'):
        apply_patch(base, dataclasses.replace(body, value_codec='q8-delta+none', value_data=q8))


def test_bitmask_padding_bits_past_num_params_are_refused():
    base, n = vector(n=N - 4), N - 4
    idx = np.arange(0, n, 3)
    body, _ = encode_patch(base, idx, base[idx] + 1,
                           PatchFormat(index_schemes=('bitmask',), compressors=('none',)))
    padded = body.index_data[:-1] + bytes([body.index_data[-1] | 0x01])
    with pytest.raises(PatchError, match='index-range'):
        apply_patch(base, dataclasses.replace(body, index_data=padded))


def test_truncation_at_every_length_is_refused():
    for mode in VALUE_MODES:
        base, body = valid_body(mode=mode, schemes=('gaps',), compressors=('zstd', 'gzip'))
        for field in ('index_data', 'value_data'):
            data = getattr(body, field)
            for cut in range(0, len(data), max(1, len(data) // 60)):
                with pytest.raises(PatchError):
                    apply_patch(base, dataclasses.replace(body, **{field: data[:cut]}))


BODIES = {mode: valid_body(mode, schemes=(scheme,), compressors=(comp,))
          for mode, scheme, comp in [('fp16', 'bitmask', 'none'), ('fp16-delta', 'gaps', 'zstd'),
                                     ('q8-delta', 'gaps', 'none'), ('fp32', 'bitmask', 'gzip')]}
CODEC_WORDS = ['bitmask', 'gaps', 'full', 'none', 'zstd', 'gzip', 'shuffle', *VALUE_MODES, '']


@st.composite
def mutated_bodies(draw):
    mode = draw(st.sampled_from(sorted(BODIES)))
    base, body = BODIES[mode]
    changes = {}
    for field in ('index_data', 'value_data'):
        data = bytearray(getattr(body, field))
        action = draw(st.sampled_from(['keep', 'flip', 'cut', 'append', 'replace']))
        if action == 'flip' and data:
            for pos in draw(st.lists(st.integers(0, 8 * len(data) - 1), min_size=1, max_size=4)):
                data[pos // 8] ^= 1 << pos % 8
        elif action == 'cut':
            data = data[:draw(st.integers(0, len(data)))]
        elif action == 'append':
            data += draw(st.binary(min_size=1, max_size=16))
        elif action == 'replace':
            data = bytearray(draw(st.binary(max_size=400)))
        changes[field] = bytes(data)
    for field in ('index_codec', 'value_codec'):
        if draw(st.booleans()):
            words = draw(st.lists(st.sampled_from(CODEC_WORDS), min_size=1, max_size=3))
            changes[field] = '+'.join(words)
    if draw(st.integers(0, 9)) == 0:
        changes['num_params'] = draw(st.integers(-2, 2 * N))
    return base, dataclasses.replace(body, **changes)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(mutated_bodies())
def test_fuzzed_bodies_apply_cleanly_or_raise_patch_error(case):
    base, body = case
    before = base.copy()
    try:
        new = apply_patch(base, body)
    except PatchError as e:
        assert e.reason
    else:
        assert new.dtype == np.float32 and new.shape == base.shape
        assert np.isfinite(new[np.isfinite(base)]).all()
    assert np.array_equal(bits(base), bits(before))
