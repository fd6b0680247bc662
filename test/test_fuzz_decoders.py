"""Fuzz the decoders of untrusted input with at least 10,000 inputs each (project issue 6).

Patches, whole-model snapshots, uplink frame batches and camera images get random and mutated
versions of valid seeds: bit flips, truncation, extension, splices of other seeds, random bytes,
wrong codec strings, extreme sizes and versions, and fields of the wrong type. Every input must
be refused with the module's own error and a known, non-empty reason (for the edge's model state
and the drone: a non-applied Outcome), or decode to something well formed; nothing may crash, an
unverified model is never made active, and the valid seeds still decode afterwards.

The loops are seeded, so a failure reproduces; each test counts what it ran, asserts the count
and prints the reasons it saw (``pytest -s`` shows them). Parsing the test student's ONNX model
takes about 35 ms, so most snapshot inputs mutate the small fields (refused before the model is
parsed) and a few hundred mutate model_data or reach the parser.
"""

from __future__ import annotations

import array
import dataclasses
import random
import struct
import time
import types
import zlib
from collections import Counter

import numpy as np
import pytest
import zstandard
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ams_ros.model.manifest import FLAT_DTYPE, vector_digest
from ams_ros.ros.image_conversion import (
    PIXEL_FORMATS,
    ImageConversionError,
    array_to_image,
    image_to_array,
    image_to_rgb,
)
from ams_ros.wire.frame_codec import (
    CODECS,
    CodecSettings,
    FrameCodecError,
    Reason,
    decode_frames,
    encode_frames,
)
from ams_ros.wire.model_version import (
    APPLIED,
    DUPLICATE,
    NEEDS_SNAPSHOT,
    OUT_OF_ORDER,
    REJECTED,
    EdgeModelState,
    GroundMirror,
)
from ams_ros.wire.patch_codec import (
    COMPRESSORS,
    INDEX_SCHEMES,
    VALUE_MODES,
    PatchError,
    PatchFormat,
    apply_patch,
)

MIN_INPUTS = 10_000

PATCH_REASONS = {'malformed', 'num-params', 'unknown-codec', 'corrupt-data', 'too-large',
                 'index-format', 'index-range', 'count-mismatch', 'value-format', 'non-finite'}
OUTCOME_REASONS = {
    NEEDS_SNAPSHOT: {'startup', 'model-id', 'gap', 'digest-mismatch', 'diverged'}
    | PATCH_REASONS - {'non-finite'},
    REJECTED: {'bad-version', 'non-finite', 'out-of-range'},
}
SNAPSHOT_REASONS = {'unknown-format', 'bad-manifest', 'bad-model', 'digest-mismatch'}
# What DroneAgent.load_snapshot answers for a snapshot it does not activate.
AGENT_REASONS = {f'snapshot-{r}' for r in SNAPSHOT_REASONS} | {'snapshot-format'}
FRAME_REASONS = set(Reason)
IMAGE_REASONS = {'unsupported-encoding', 'empty', 'bad-step', 'bad-length', 'malformed'}

# Values of the wrong type (or absurd value) for any field; no int large enough that bytes(n)
# would allocate it.
WRONG_TYPES = (None, True, False, -1, 0, 2**64, -(2**70), 3.5, float('nan'), float('inf'),
               'text', '', 'onnx', b'', b'\x00\xff', bytearray(b'\x01'), [1, 2], (), ('a',),
               {'k': 1}, object(), np.int64(-5), np.uint64(2**63), np.float32(1.5),
               array.array('d', [1.5]))
EXTREME_INTS = (0, 1, -1, 2, 255, 256, 65535, 65536, -(2**31), 2**31 - 1, 2**31, 2**32 - 1,
                2**32, 2**53 + 1, 2**63 - 1, 2**63, 2**64 - 1, 2**64, 10**30, -(10**30))
BYTES_LIKE = (bytes, bytearray, memoryview, array.array)
INTERESTING_BYTES = (0x00, 0x01, 0x7F, 0x80, 0xFE, 0xFF)


# --- generic mutations ----------------------------------------------------------------------

def random_bytes(rng: random.Random, n: int) -> bytes:
    return rng.getrandbits(8 * n).to_bytes(n, 'little') if n else b''


def mutate_bytes(rng: random.Random, data: bytes, donors=(), region=None) -> bytes:
    """Return data with one random mutation; region (start, stop) confines the local ones."""
    data = bytearray(data)
    n = len(data)
    lo, hi = region if region is not None else (0, n)
    op = rng.randrange(12)

    def pos():
        return rng.randrange(lo, hi) if hi > lo else 0

    if op <= 2 and n:  # flip 1-8 bits
        for _ in range(rng.randint(1, 8)):
            data[pos()] ^= 1 << rng.randrange(8)
    elif op == 3 and n:  # set bytes to boundary values
        for _ in range(rng.randint(1, 4)):
            data[pos()] = rng.choice(INTERESTING_BYTES)
    elif op == 4 and n >= 4:  # overwrite 2 or 4 bytes with an extreme integer (a length, a size)
        width = rng.choice((2, 4))
        at = min(pos(), n - width)
        value = rng.choice((0, 1, 2**(8 * width) - 1, 2**(8 * width - 1), rng.randrange(1 << 16)))
        data[at:at + width] = value.to_bytes(width, rng.choice(('little', 'big')))
    elif op == 5:  # truncate
        del data[rng.randint(0, n):]
    elif op == 6:  # extend with random, zero or repeated bytes
        tail = rng.choice((random_bytes(rng, rng.randint(1, 64)), bytes(rng.randint(1, 64)),
                           bytes(data[-rng.randint(1, 64):])))
        data += tail
    elif op == 7 and n:  # delete a span
        at = pos()
        del data[at:at + rng.randint(1, 64)]
    elif op == 8 and n:  # insert random bytes
        data[pos():pos()] = random_bytes(rng, rng.randint(1, 32))
    elif op == 9 and n:  # duplicate a span
        at = pos()
        data[at:at] = data[at:at + rng.randint(1, 64)]
    elif op == 10 and donors:  # splice a piece of another seed in
        donor = rng.choice(donors)
        if donor:
            start = rng.randrange(len(donor))
            piece = donor[start:start + rng.randint(1, 256)]
            at = pos()
            data[at:at + rng.randint(0, len(piece))] = piece
    elif op == 11:  # random bytes of a random length, or nothing at all
        return random_bytes(rng, rng.choice((0, 1, 4, rng.randint(0, max(2 * n, 8)))))
    else:  # the draw did not fit the input (it is empty, or no donors): zero a span
        at, span = pos(), rng.randint(1, 16)
        data[at:at + span] = bytes(len(data[at:at + span]))
    return bytes(data)


def mutate_text(rng: random.Random, text: str, known=()) -> object:
    """Return a near-miss of a codec or format string, another known one, or a wrong type."""
    op = rng.randrange(7)
    if op == 0 and known:
        return rng.choice(known)
    if op == 1 and text:  # change one character
        at = rng.randrange(len(text))
        return text[:at] + chr(rng.randrange(32, 0x250)) + text[at + 1:]
    if op == 2:  # cut or extend
        return text[:rng.randint(0, len(text))] + rng.choice(('', '+', '+none', '\x00', ' '))
    if op == 3:
        return text.upper() if rng.random() < 0.5 else text.replace('+', rng.choice('-_ ,'))
    if op == 4:
        return ''.join(chr(rng.randrange(1, 0x7F)) for _ in range(rng.randint(0, 24)))
    if op == 5:
        return text * rng.randint(2, 200)
    return rng.choice(WRONG_TYPES)


def reasons_table(counter: Counter) -> str:
    return ', '.join(f'{k}={v}' for k, v in sorted(counter.items(), key=lambda kv: -kv[1]))


# --- patches ---------------------------------------------------------------------------------

N_PARAMS = 257  # not a multiple of 8: the bitmask has padding bits
MODEL_ID = 'fuzz-model'
V0 = 7
PATCH_CODECS = (['full', *(f'{s}+{c}' for s in ('bitmask', 'gaps') for c in COMPRESSORS)]
                + [f'{m}+{c}' for m in VALUE_MODES for c in COMPRESSORS]
                + [f'{m}+shuffle+{c}' for m in ('fp16', 'fp16-delta', 'fp32')
                   for c in COMPRESSORS]
                + ['bitmask', 'gaps+', '+zstd', 'full+none', 'bitmask+zstd+', 'fp16+shuffle',
                   'q8-delta+shuffle+none', 'fp32+shuffle+zstd+none', 'fp16-delta+lz4',
                   'fp8+none', 'fp16+none+shuffle', 'BITMASK+ZSTD', ''])


@dataclasses.dataclass(frozen=True)
class PatchSeed:
    payload: object  # PatchPayload
    expected: np.ndarray


def patch_seeds():
    """Patches of every value mode, compressor and index scheme, all from one base at V0."""
    rng = np.random.default_rng(6)
    base = rng.standard_normal(N_PARAMS).astype(FLAT_DTYPE)
    base.flags.writeable = False
    selections = [np.array([0, 5, 100, 256]), np.sort(rng.choice(N_PARAMS, 90, replace=False)),
                  rng.permutation(N_PARAMS)]
    index_choices = [('gaps',), ('bitmask',), INDEX_SCHEMES]
    seeds = []
    for m, mode in enumerate(VALUE_MODES):
        for c, compressor in enumerate(COMPRESSORS):
            for s, idx in enumerate(selections):
                fmt = PatchFormat(value_mode=mode, compressors=(compressor,), q8_block=16,
                                  index_schemes=index_choices[(s + c) % 3] if s < 2
                                  else INDEX_SCHEMES,
                                  shuffle=((m + c + s) % 2 == 0,))
                target = base[idx] + rng.normal(0, 0.1, idx.size).astype(FLAT_DTYPE)
                mirror = GroundMirror('d1', MODEL_ID, V0, base, fmt=fmt)
                seeds.append(PatchSeed(mirror.make_patch(idx, target), mirror.vector))
    return base, seeds


def _decompress(compressor: str, data: bytes) -> bytes:
    if compressor == 'zstd':
        return zstandard.ZstdDecompressor().decompress(data)
    if compressor == 'gzip':
        return zlib.decompress(data, 31)
    return data


def _compress(compressor: str, raw: bytes) -> bytes:
    if compressor == 'zstd':
        return zstandard.ZstdCompressor(level=3, write_checksum=True).compress(raw)
    if compressor == 'gzip':
        gz = zlib.compressobj(6, zlib.DEFLATED, 31)
        return gz.compress(raw) + gz.flush()
    return raw


def mutate_patch(rng: random.Random, payload, donors):
    """One to three field mutations of a patch payload."""
    changes = {}
    for _ in range(rng.choice((1, 1, 1, 2, 3))):
        op = rng.randrange(19)
        data_field = rng.choice(('index_data', 'value_data'))
        codec_field = 'index_codec' if data_field == 'index_data' else 'value_codec'
        current = changes.get(data_field, getattr(payload, data_field))
        current = bytes(current) if isinstance(current, BYTES_LIKE) else b''
        if op < 6:  # the bytes as sent
            donor_bytes = [getattr(d, data_field) for d in donors]
            changes[data_field] = mutate_bytes(rng, current, donor_bytes)
        elif op < 10:  # the bytes inside a valid compressed stream: reaches the inner decoders
            codec = getattr(payload, codec_field)
            compressor = codec.rsplit('+', 1)[-1] if '+' in codec else 'none'
            try:
                raw = _decompress(compressor, current)
            except (zstandard.ZstdError, zlib.error):
                raw = current
            changes[data_field] = _compress(compressor, mutate_bytes(rng, raw))
        elif op < 12:  # codec strings
            changes[codec_field] = mutate_text(rng, getattr(payload, codec_field),
                                               PATCH_CODECS)
        elif op == 12:  # splice fields of another seed
            donor = rng.choice(donors)
            for name in rng.sample(('index_codec', 'index_data', 'value_codec', 'value_data',
                                    'digest'), rng.randint(1, 4)):
                changes[name] = getattr(donor, name)
        elif op == 13:
            changes['num_params'] = rng.choice(
                (*EXTREME_INTS, N_PARAMS - 1, N_PARAMS + 1, N_PARAMS * 8, *WRONG_TYPES))
        elif op == 14:  # versions: replays, gaps, non-chaining, absurd values
            base = rng.choice((V0, V0 - 1, V0 + 1, V0 + 5, *EXTREME_INTS, *WRONG_TYPES))
            version = rng.choice((base, base + 1, base + 2, V0 + 1)) if isinstance(
                base, int) and rng.random() < 0.7 else rng.choice((*EXTREME_INTS, *WRONG_TYPES))
            changes.update(base_version=base, version=version)
        elif op == 15:
            changes['digest'] = (mutate_bytes(rng, bytes(payload.digest))
                                 if rng.random() < 0.7 else rng.choice(WRONG_TYPES))
        elif op == 16:
            changes['model_id'] = mutate_text(rng, payload.model_id, (MODEL_ID, ''))
        elif op == 17:  # wrong types for any field
            name = rng.choice([f.name for f in dataclasses.fields(payload)])
            changes[name] = rng.choice(WRONG_TYPES)
        else:  # bytes-likes rclpy or a caller may hand over: must decode alike
            changes[data_field] = rng.choice((bytearray(current), memoryview(current),
                                              array.array('B', current)))
    return dataclasses.replace(payload, **changes)


def fresh_state(base) -> EdgeModelState:
    state = EdgeModelState(MODEL_ID)
    assert state.load_snapshot(V0, base, vector_digest(base)).kind == APPLIED
    return state


def check_offer(state: EdgeModelState, patch, claimed_digests: set) -> object:
    """Offer one patch; assert it is applied only verified and otherwise changes nothing."""
    version, vector = state.version, state.vector
    outcome = state.offer(patch)
    assert outcome.kind != APPLIED or outcome.applied_versions, outcome
    if outcome.applied_versions:
        # Only a vector some message vouched for can become active. A patch may apply and a
        # held successor then fail: needs_snapshot, with the verified versions reached listed.
        assert outcome.kind in (APPLIED, NEEDS_SNAPSHOT), outcome
        assert vector_digest(state.vector) in claimed_digests
        assert np.isfinite(state.vector).all() and state.vector.shape == (N_PARAMS,)
        assert outcome.active_version == state.version == outcome.applied_versions[-1]
    else:
        assert state.version == version and state.vector is vector
        assert vector_digest(state.vector) == vector_digest(vector)
    if outcome.kind in (NEEDS_SNAPSHOT, REJECTED):
        assert outcome.reason in OUTCOME_REASONS[outcome.kind], outcome
    elif outcome.kind != APPLIED:
        assert outcome.kind in (DUPLICATE, OUT_OF_ORDER) and outcome.reason == '', outcome
    return outcome


def test_patch_decoder_and_model_state_survive_fuzzing():
    started = time.perf_counter()
    rng = random.Random(61)
    base, seeds = patch_seeds()
    payloads = [s.payload for s in seeds]
    codecs_used = {p.index_codec for p in payloads} | {p.value_codec for p in payloads}
    assert {'full', 'gaps+gzip', 'bitmask+zstd', 'q8-delta+none', 'fp16+shuffle+zstd'} \
        <= codecs_used, codecs_used
    state = fresh_state(base)
    claimed = {vector_digest(base)}
    decode_reasons, outcomes = Counter(), Counter()
    count = 0
    while count < MIN_INPUTS:
        patch = mutate_patch(rng, rng.choice(payloads), payloads)
        count += 1
        try:
            new = apply_patch(base, patch)
        except PatchError as e:
            assert e.reason in PATCH_REASONS and e.message, e
            decode_reasons[e.reason] += 1
        else:
            decode_reasons['decoded'] += 1
            assert new.dtype == FLAT_DTYPE and new.shape == base.shape
            assert np.isfinite(new).all()
        digest = getattr(patch, 'digest', None)
        if isinstance(digest, BYTES_LIKE):
            claimed.add(bytes(digest))
        outcome = check_offer(state, patch, claimed)
        outcomes[(outcome.kind, outcome.reason)] += 1
        if outcome.applied_versions:
            state = fresh_state(base)
    # The seeds still decode and still apply.
    for seed in seeds:
        np.testing.assert_array_equal(apply_patch(base, seed.payload), seed.expected)
        state = fresh_state(base)
        assert state.offer(seed.payload).kind == APPLIED
        np.testing.assert_array_equal(state.vector, seed.expected)
    assert count >= MIN_INPUTS
    assert outcomes[(APPLIED, "")] < count // 5  # mostly refused (some change nothing checked)
    print(f'\npatch: {count} inputs in {time.perf_counter() - started:.1f} s'
          f'\n  apply_patch: {reasons_table(decode_reasons)}'
          f'\n  EdgeModelState.offer: {reasons_table(outcomes)}')


_SEED_BODIES = None


def _hypothesis_bodies():
    global _SEED_BODIES
    if _SEED_BODIES is None:
        _SEED_BODIES = patch_seeds()
    return _SEED_BODIES


@settings(max_examples=300, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.too_slow])
@given(seed=st.integers(0, 35),
       index_codec=st.one_of(st.none(), st.sampled_from(PATCH_CODECS), st.text(max_size=12)),
       index_data=st.one_of(st.none(), st.binary(max_size=80)),
       value_codec=st.one_of(st.none(), st.sampled_from(PATCH_CODECS), st.text(max_size=12)),
       value_data=st.one_of(st.none(), st.binary(max_size=600)),
       num_params=st.one_of(st.none(), st.integers(-(2**70), 2**70)))
def test_arbitrary_patch_fields_are_refused_or_verified(seed, index_codec, index_data,
                                                        value_codec, value_data, num_params):
    base, seeds = _hypothesis_bodies()
    payload = seeds[seed].payload
    changes = {name: value for name, value in (
        ('index_codec', index_codec), ('index_data', index_data), ('value_codec', value_codec),
        ('value_data', value_data), ('num_params', num_params)) if value is not None}
    patch = dataclasses.replace(payload, **changes)
    try:
        apply_patch(base, patch)
    except PatchError as e:
        assert e.reason in PATCH_REASONS
    check_offer(fresh_state(base), patch, {vector_digest(base), bytes(patch.digest)})


# --- snapshots -------------------------------------------------------------------------------

SNAPSHOT_MODEL_DATA = 200   # each parses 2.4 MB of ONNX (~35 ms)
SNAPSHOT_DEEP = 60          # small fields, but they reach the parser
SNAPSHOT_MANIFEST = 1200    # the manifest is rebuilt (~3 ms)


@pytest.fixture(scope='module')
def student_snapshots():
    torch = pytest.importorskip('torch')
    from ams_ros.model.onnx_params import InitializerWriter
    from ams_ros.model.student import InputSpec, build_student
    from ams_ros.model.template import StudentTemplate
    from ams_ros.wire.snapshot import build_snapshot

    torch.manual_seed(0)
    model = build_student('deeplabv3_mbv2_small', 3)
    template = StudentTemplate.from_model(model, 'deeplabv3_mbv2_small', ('a', 'b', 'c'),
                                          InputSpec(height=32, width=64))
    writer = InitializerWriter(template.onnx_bytes, template.manifest)
    rng = np.random.default_rng(2)
    vector = template.initial_vector + rng.normal(0, 1e-3, template.manifest.total_size)
    vector = vector.astype(FLAT_DTYPE)

    snapshot = build_snapshot(client_id='d1', model_id=template.model_id, version=2,
                              writer=writer, manifest=template.manifest, vector=vector,
                              class_names=template.class_names,
                              input_spec=template.input_spec)
    return template, vector, snapshot


def graph_regions(model_data: bytes, manifest) -> list[tuple[int, int]]:
    """Return the byte ranges of model_data outside the manifest's initializer values."""
    import onnx

    model = onnx.load_from_string(model_data)
    wanted = set(manifest.names)
    spans, position = [], 0
    for init in model.graph.initializer:
        if init.name in wanted and len(init.raw_data) >= 64:
            start = model_data.find(init.raw_data, position)
            if start >= 0:
                spans.append((start, start + len(init.raw_data)))
                position = start + len(init.raw_data)
    regions, previous = [], 0
    for start, stop in spans:
        if start > previous:
            regions.append((previous, start))
        previous = stop
    regions.append((previous, len(model_data)))
    return [r for r in regions if r[1] > r[0]]


def mutate_parameters(rng: random.Random, parameters):
    """Drop, swap, resize or rename manifest entries, or give them the wrong type."""
    params = list(parameters)
    op = rng.randrange(10)
    i = rng.randrange(len(params))
    name, shape, offset = params[i]
    if op == 0:
        del params[i]
    elif op == 1:
        j = rng.randrange(len(params))
        params[i], params[j] = params[j], params[i]
    elif op == 2:  # another shape (offsets left as they were)
        dims = list(shape) or [1]
        dims[rng.randrange(len(dims))] = rng.choice((0, 1, 2, -1, 2**31, 10**30,
                                                     dims[0] + 1))
        params[i] = (name, tuple(dims), offset)
    elif op == 3:
        params[i] = (name, shape, rng.choice((*EXTREME_INTS, offset + 1, 3.5, float('nan'),
                                              float('inf'), '12', None)))
    elif op == 4:
        params[i] = (rng.choice((params[0][0], '', name + 'x', name.upper())), shape, offset)
    elif op == 5:  # an entry of the wrong arity or type
        params[i] = rng.choice(((name, shape), (name, shape, offset, 0), (), name, None, 5,
                                (None, shape, offset), (name, None, offset),
                                (name, 'abc', offset), (name, (None,), offset)))
    elif op == 6:
        params.insert(i, (name + '.extra', (1,), offset))
    elif op == 7:
        params = params[:rng.randint(0, len(params))]
    elif op == 8:
        params.append(params[i])
    else:
        return rng.choice((None, 5, 'parameters', b'\x00', [None], [[]], ((),)))
    return tuple(params)


def mutate_small_fields(rng: random.Random, payload, first: str | None = None):
    """Mutations of the fields besides model_data; `first` is always among them."""
    names = ['client_id', 'model_id', 'version', 'format', 'parameters', 'class_names',
             'input_height', 'input_width', 'mean', 'std', 'digest']
    chosen = rng.sample(names, rng.choice((0, 1, 1, 2, 3)))   # a list: a set's order varies
    if first and first not in chosen:
        chosen.append(first)
    changes = {}
    for name in chosen:
        value = getattr(payload, name)
        draw = rng.random()
        if name == 'format':
            changes[name] = mutate_text(rng, value, ('ONNX', 'onnx ', 'tflite', ''))
        elif name == 'parameters':
            changes[name] = mutate_parameters(rng, value)
        elif name == 'digest':
            changes[name] = (mutate_bytes(rng, bytes(value)) if draw < 0.7
                             else rng.choice(WRONG_TYPES))
        elif name in ('version', 'input_height', 'input_width'):
            changes[name] = rng.choice((*EXTREME_INTS, *WRONG_TYPES))
        elif name in ('mean', 'std'):
            changes[name] = rng.choice(((float('nan'),) * 3, (0.0, 0.0, 0.0), (1.0,),
                                        (-1e39, 1e39, 0.0), *WRONG_TYPES))
        elif name == 'class_names':
            changes[name] = rng.choice(((), ('a',) * 1000, ('', '\x00'), (1, 2, 3),
                                        *WRONG_TYPES))
        else:
            changes[name] = mutate_text(rng, value, ('d2', ''))
    return dataclasses.replace(payload, **changes)


def check_snapshot(agent, payload, vector: np.ndarray, counter: Counter) -> object:
    """Offer one snapshot; assert only the verified vector activates, and refusals change nothing.

    The agent trusts the fields the digest does not cover (class names, input size, version:
    the link tag covers them, before the agent), so a snapshot that differs only there may be
    activated: its parameters still verify.
    """
    before = (agent.state.version, agent.state.vector, agent.runtime, agent.model_id)
    outcome = agent.load_snapshot(payload)   # must not raise
    counter[outcome.reason] += 1
    if outcome.kind == APPLIED:
        assert outcome.reason == 'snapshot'
        assert agent.state.version == payload.version
        assert vector_digest(agent.state.vector) == bytes(payload.digest)
        np.testing.assert_array_equal(agent.state.vector, vector)
        assert agent.runtime is not None
    else:
        assert outcome.kind == NEEDS_SNAPSHOT and outcome.reason in AGENT_REASONS, outcome
        after = (agent.state.version, agent.state.vector, agent.runtime, agent.model_id)
        assert all(a is b or a == b for a, b in zip(after, before, strict=True)), (outcome,
                                                                                  after)
    return outcome


def test_snapshot_decoder_and_drone_agent_survive_fuzzing(student_snapshots):
    from ams_ros.drone.agent import DroneAgent, DroneConfig
    from ams_ros.drone.edge_runtime import RuntimeConfig
    from ams_ros.wire.snapshot import open_snapshot

    started = time.perf_counter()
    template, vector, plain = student_snapshots
    rng = random.Random(62)
    config = DroneConfig(runtime=RuntimeConfig(intra_op_threads=1))
    running = DroneAgent(config)
    assert running.load_model_file(template.onnx_bytes, 1).kind == APPLIED
    fresh = DroneAgent(config)
    regions = graph_regions(plain.model_data, template.manifest)
    weights = [stop - start for start, stop in regions]   # the nodes, more than the headers
    donors = [template.onnx_bytes[:4096], plain.model_data[-4096:]]
    reasons, categories, seconds = Counter(), Counter(), {}
    count = 0
    lap = time.perf_counter()

    def done(category: str, n: int) -> None:
        nonlocal lap
        # Accepted snapshots rebuild the running model in the background: let that finish.
        assert running.runtime.wait_until_idle(timeout=60)
        categories[category] = n
        seconds[category] = time.perf_counter() - lap
        lap = time.perf_counter()

    try:
        for i in range(SNAPSHOT_MODEL_DATA):   # a third of them inside the graph's structure
            region = rng.choices(regions, weights)[0] if i % 3 == 0 else None
            data = mutate_bytes(rng, plain.model_data, donors, region)
            payload = dataclasses.replace(plain, model_data=rng.choice(
                (data, bytearray(data), array.array('B', data))) if i % 7 else data)
            if i % 10 == 9:
                payload = dataclasses.replace(plain, model_data=rng.choice(WRONG_TYPES))
            if i % 6 == 0:   # a drone without a model builds a runtime from model_data
                if check_snapshot(fresh, payload, vector, reasons).kind == APPLIED:
                    fresh.close()
                    fresh = DroneAgent(config)
            else:
                check_snapshot(running, payload, vector, reasons)
            count += 1
        done('model_data', count)
        for i in range(SNAPSHOT_DEEP):   # fields only checked after the model is parsed
            # Mostly refused after the parse; the rest (unverified fields) are activated, and
            # each activation rebuilds the model in ONNX Runtime, the slowest step of all.
            first = rng.choice(('digest',) * 5 + ('version',) * 3 + (
                'class_names', 'model_id', 'mean', 'input_height'))
            payload = mutate_small_fields(rng, plain, first)
            payload = dataclasses.replace(payload, format=plain.format,
                                          parameters=plain.parameters)
            agent = fresh if i % 10 == 0 else running
            if check_snapshot(agent, payload, vector, reasons).kind == APPLIED \
                    and agent is fresh:
                fresh.close()
                fresh = DroneAgent(config)
            count += 1
        done('deep', SNAPSHOT_DEEP)
        for _ in range(SNAPSHOT_MANIFEST):
            payload = mutate_small_fields(rng, plain, 'parameters')
            check_snapshot(running, payload, vector, reasons)
            count += 1
        done('manifest', SNAPSHOT_MANIFEST)
        fast = MIN_INPUTS - count
        for i in range(fast):   # refused before the model is parsed or hashed
            if i % 2 == 0:   # another format
                payload = mutate_small_fields(rng, plain, 'format')
                if payload.format == plain.format:
                    payload = dataclasses.replace(payload, format=rng.choice(('', 'ONNX')))
            else:   # a manifest that is not one at all, or breaks at its first entry
                bad = rng.choice((None, 5, 'x', b'\x00', [None], [[]], ((),), [('w',)],
                                  [(None, (1,), 0)], [('w', None, 0)], [('w', 'ab', 0)],
                                  [('w', (float('nan'),), 0)], [('w', (10**30,), 0)],
                                  [('w', (1,), float('inf'))], [('w', (1,), None)]))
                payload = mutate_small_fields(rng, plain)
                if isinstance(bad, list):
                    bad = tuple(bad) + tuple(plain.parameters[rng.randint(1, 3):])
                payload = dataclasses.replace(payload, parameters=bad, format=plain.format)
            outcome = check_snapshot(running, payload, vector, reasons)
            assert outcome.kind != APPLIED
            count += 1
        done('fast', fast)
        # The valid snapshot still opens and activates, on a running drone and a new one.
        np.testing.assert_array_equal(open_snapshot(plain).vector, vector)
        for agent in (running, fresh):
            outcome = agent.load_snapshot(dataclasses.replace(plain, version=99))
            assert (outcome.kind, outcome.reason, agent.version) == (APPLIED, 'snapshot', 99)
            np.testing.assert_array_equal(agent.state.vector, vector)
            assert agent.runtime.wait_for_version(99, timeout=60)
    finally:
        for agent in (running, fresh):
            agent.close()
    assert count == sum(categories.values()) >= MIN_INPUTS
    per_category = ', '.join(f'{k}={categories[k]} in {seconds[k]:.1f} s' for k in categories)
    print(f'\nsnapshot: {count} inputs in {time.perf_counter() - started:.1f} s ({per_category})'
          f'\n  DroneAgent.load_snapshot: {reasons_table(reasons)}')


# --- frame batches ---------------------------------------------------------------------------

HEADER = struct.Struct('<4sBBHHHI')  # frame_codec's container header
CHUNK = struct.Struct('<I')


@dataclasses.dataclass(frozen=True)
class FrameSeed:
    codec: str
    frames: np.ndarray
    blob: bytes

    @property
    def args(self) -> dict:
        count, height, width, _ = self.frames.shape
        return dict(data=self.blob, codec=self.codec, width=width, height=height,
                    expected_count=count)


def frame_seeds() -> list[FrameSeed]:
    rng = np.random.default_rng(5)
    seeds = []
    for codec, (height, width) in [('raw', (16, 24)), ('png', (16, 24)), ('jpeg', (16, 24)),
                                   ('h264', (16, 24)), ('h264', (15, 23)), ('png', (1, 1))]:
        cells = rng.integers(0, 256, (3, height // 4 + 1, width // 4 + 1, 3), dtype=np.uint8)
        frames = cells.repeat(4, axis=1).repeat(4, axis=2)[:, :height, :width].copy()
        settings_ = CodecSettings(codec=codec, bitrate_kbps=2000, preset='ultrafast')
        seeds.append(FrameSeed(codec, frames, encode_frames(frames, settings_, frame_rate=1.0)))
    return seeds


def split_chunks(body: bytes) -> list[bytes]:
    chunks, offset = [], 0
    while offset < len(body):
        (length,) = CHUNK.unpack_from(body, offset)
        chunks.append(body[offset + 4:offset + 4 + length])
        offset += 4 + length
    return chunks


def with_crc(header: bytes, body: bytes) -> bytes:
    return header[:12] + struct.pack('<I', zlib.crc32(body)) + body


def mutate_frame_args(rng: random.Random, seed: FrameSeed, seeds) -> dict:
    args = seed.args
    blob = seed.blob
    header, body = blob[:HEADER.size], blob[HEADER.size:]
    draw = rng.random()
    if draw < 0.2:   # damage in transit: the CRC no longer matches (or the header breaks)
        args['data'] = mutate_bytes(rng, blob, [s.blob for s in seeds])
    elif draw < 0.65:   # damage behind a valid CRC: only the framing and the codec see it
        chunks = split_chunks(body)
        op = rng.randrange(8)
        i = rng.randrange(len(chunks))
        if op <= 2:
            chunks[i] = mutate_bytes(rng, chunks[i], [c for s in seeds
                                                      for c in split_chunks(s.blob[16:])])
        elif op == 3:   # a chunk of another seed, maybe of another codec
            donor = rng.choice(seeds)
            chunks[i] = rng.choice(split_chunks(donor.blob[HEADER.size:]))
        elif op == 4:
            del chunks[i]
        elif op == 5:
            chunks.insert(i, chunks[i])
        if op <= 5:
            body = b''.join(CHUNK.pack(len(c)) + c for c in chunks)
        elif op == 6:   # a length prefix that lies
            offsets = [0]
            for c in chunks[:-1]:
                offsets.append(offsets[-1] + 4 + len(c))
            at = offsets[i]
            lie = rng.choice((0, 1, len(chunks[i]) - 1, len(chunks[i]) + 1, 2**31, 2**32 - 1))
            body = body[:at] + CHUNK.pack(max(0, lie)) + body[at + 4:]
        else:
            body = mutate_bytes(rng, body)
        args['data'] = with_crc(header, body)
    elif draw < 0.78:   # header fields, with a valid CRC
        fields = list(HEADER.unpack_from(blob))
        slot = rng.randrange(6)
        if slot == 0:
            fields[0] = rng.choice((b'AMSG', b'\x00' * 4, b'amsf'))
        else:
            limit = 0xFF if slot < 3 else 0xFFFF
            fields[slot] = rng.choice((0, 1, 2, 3, 4, limit, fields[slot] + 1,
                                       max(fields[slot] - 1, 0), rng.randint(0, limit)))
        args['data'] = with_crc(HEADER.pack(*fields), body)
    elif draw < 0.92:   # the caller's side: codec, size, count and type of the data
        name = rng.choice(('codec', 'width', 'height', 'expected_count', 'data'))
        if name == 'codec':
            args[name] = mutate_text(rng, seed.codec, CODECS)
        elif name == 'data':
            args[name] = rng.choice((bytearray(blob), memoryview(blob), array.array('B', blob),
                                     blob.decode('latin-1'), list(blob[:32]),
                                     *WRONG_TYPES))
        else:
            args[name] = rng.choice((*EXTREME_INTS, args[name] + 1, args[name] - 1,
                                     float(args[name]), *WRONG_TYPES))
    else:   # a forged container: right header, random chunks
        count = rng.randint(0, 4)
        chunks = [random_bytes(rng, rng.randint(0, 64)) for _ in range(count)]
        body = b''.join(CHUNK.pack(len(c)) + c for c in chunks)
        codec_id = CODECS.index(seed.codec) if rng.random() < 0.8 else rng.randrange(256)
        fields = HEADER.unpack_from(blob)
        args['data'] = with_crc(HEADER.pack(b'AMSF', 1, codec_id, *fields[3:6], 0), body)
    return args


def check_frames(args: dict, counter: Counter) -> float:
    """Decode one blob; return the seconds it took."""
    started = time.perf_counter()
    try:
        frames = decode_frames(**args)
    except FrameCodecError as e:
        assert e.reason in FRAME_REASONS and str(e), e
        counter[e.reason.value] += 1
    else:   # damage behind a valid CRC can decode to other pixels, never to another shape
        counter['decoded'] += 1
        assert frames.dtype == np.uint8
        assert frames.shape == (args['expected_count'], args['height'], args['width'], 3)
    return time.perf_counter() - started


def test_frame_decoder_survives_fuzzing():
    started = time.perf_counter()
    rng = random.Random(63)
    seeds = frame_seeds()
    decoded = [decode_frames(**seed.args) for seed in seeds]
    for seed, frames in zip(seeds, decoded, strict=True):
        if seed.codec in ('raw', 'png'):
            np.testing.assert_array_equal(frames, seed.frames)
    reasons, per_codec = Counter(), Counter()
    count, slowest = 0, 0.0
    while count < MIN_INPUTS:
        seed = rng.choice(seeds)
        slowest = max(slowest, check_frames(mutate_frame_args(rng, seed, seeds), reasons))
        per_codec[seed.codec] += 1
        count += 1
    for seed, frames in zip(seeds, decoded, strict=True):   # the seeds still decode alike
        np.testing.assert_array_equal(decode_frames(**seed.args), frames)
    assert count >= MIN_INPUTS and min(per_codec.values()) >= 1000
    # A few hundred bytes must never cost seconds (a lying PNG chunk length once took 14 s).
    assert slowest < 2.0
    print(f'\nframes: {count} inputs ({reasons_table(per_codec)}) in '
          f'{time.perf_counter() - started:.1f} s, slowest {1000 * slowest:.0f} ms'
          f'\n  decode_frames: {reasons_table(reasons)}')


def test_a_png_chunk_length_that_lies_is_refused_before_opencv_allocates_it():
    frames = np.zeros((1, 16, 24, 3), np.uint8)
    blob = encode_frames(frames, CodecSettings(codec='png'))
    (png,) = split_chunks(blob[HEADER.size:])
    idat = png.index(b'IDAT') - 4
    for length in (0xFF000091, 0x80000000, len(png)):
        lying = png[:idat] + struct.pack('>I', length) + png[idat + 4:]
        started = time.perf_counter()
        with pytest.raises(FrameCodecError) as error:
            decode_frames(with_crc(blob, CHUNK.pack(len(lying)) + lying), 'png', 24, 16, 1)
        assert error.value.reason == Reason.UNDECODABLE
        assert time.perf_counter() - started < 0.5


@settings(max_examples=300, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.too_slow])
@given(codec_id=st.integers(0, 5), size=st.tuples(st.integers(1, 40), st.integers(1, 40)),
       count=st.integers(1, 4), chunks=st.lists(st.binary(max_size=200), max_size=5))
def test_arbitrary_frame_containers_are_refused_or_decode(codec_id, size, count, chunks):
    height, width = size
    body = b''.join(CHUNK.pack(len(c)) + c for c in chunks)
    data = HEADER.pack(b'AMSF', 1, codec_id, count, width, height, zlib.crc32(body)) + body
    codec = CODECS[codec_id % len(CODECS)]
    check_frames(dict(data=data, codec=codec, width=width, height=height,
                      expected_count=count), Counter())


# --- camera images ---------------------------------------------------------------------------

IMAGE_FIELDS = ('height', 'width', 'step', 'encoding', 'is_bigendian', 'data')


def image_seeds():
    rng = np.random.default_rng(4)
    seeds = []
    for encoding, fmt in sorted(PIXEL_FORMATS.items()):
        shape = (3, 5) if fmt.channels == 1 else (3, 5, fmt.channels)
        array_ = rng.integers(0, np.iinfo(fmt.dtype).max, shape, dtype=fmt.dtype,
                              endpoint=True)
        msg = array_to_image(array_, encoding)
        seeds.append((msg, array_))
        padded = array_to_image(array_, encoding)   # rows padded by 3 bytes
        row = padded.step
        data = bytes(msg.data)
        padded.step = row + 3
        padded.data = b''.join(data[r * row:(r + 1) * row] + b'\xee' * 3 for r in range(3))
        seeds.append((padded, array_))
    return seeds


def image_fields(msg) -> dict:
    return {name: getattr(msg, name) for name in IMAGE_FIELDS}


def mutate_image(rng: random.Random, msg, donors):
    """Return a mutated sensor_msgs/Image (its fields are not type-checked), or a duck type."""
    from sensor_msgs.msg import Image

    fields = image_fields(msg)
    typed = rng.random() < 0.6
    for _ in range(rng.choice((1, 1, 2, 3))):
        name = rng.choice(IMAGE_FIELDS)
        value = getattr(msg, name)   # the seed's, of the right type
        if name == 'data':
            fields[name] = mutate_bytes(rng, bytes(value), donors)
        elif name == 'encoding':
            fields[name] = mutate_text(rng, value, tuple(PIXEL_FORMATS) + ('RGB8', 'rgb16',
                                                                          'yuv422', '32FC1'))
        elif name == 'is_bigendian':
            fields[name] = rng.choice((0, 1, True, False, *WRONG_TYPES))
        else:
            fields[name] = rng.choice((0, 1, value + 1, value - 1, value * 2, value // 2,
                                       2**31, 2**32 - 1, rng.randrange(2**32), *EXTREME_INTS,
                                       *WRONG_TYPES))
    if typed:
        image = Image()
        try:
            for name, value in fields.items():
                setattr(image, name, value)
            return image
        except (AssertionError, TypeError, ValueError, OverflowError):
            pass   # the message itself refuses a value of the wrong type: use a duck type
    return types.SimpleNamespace(**fields)


def test_image_conversion_survives_fuzzing():
    pytest.importorskip('sensor_msgs')
    started = time.perf_counter()
    rng = random.Random(64)
    seeds = image_seeds()
    donors = [bytes(m.data) for m, _ in seeds]
    reasons, kinds = Counter(), Counter()
    count = 0
    while count < MIN_INPUTS:
        msg = mutate_image(rng, rng.choice(seeds)[0], donors)
        kinds['duck-typed' if isinstance(msg, types.SimpleNamespace) else 'Image'] += 1
        count += 1
        for convert in (image_to_array, image_to_rgb):
            try:
                pixels = convert(msg)
            except ImageConversionError as e:
                assert e.reason in IMAGE_REASONS and str(e), e
                reasons[f'{convert.__name__}:{e.reason}'] += 1
                continue
            reasons[f'{convert.__name__}:decoded'] += 1
            fmt = PIXEL_FORMATS[msg.encoding]
            channels = 3 if convert is image_to_rgb else fmt.channels
            shape = (int(msg.height), int(msg.width)) + ((channels,) if channels > 1 else ())
            assert pixels.shape == shape and pixels.flags.c_contiguous
            assert pixels.dtype == (np.uint8 if convert is image_to_rgb else fmt.dtype)
    for msg, expected in seeds:   # the seeds still convert
        np.testing.assert_array_equal(image_to_array(msg), expected)
    assert count >= MIN_INPUTS
    print(f'\nimages: {count} inputs ({reasons_table(kinds)}) in '
          f'{time.perf_counter() - started:.1f} s\n  {reasons_table(reasons)}')


# --- what the fuzzing found, pinned --------------------------------------------------------

def test_fields_of_the_wrong_type_are_refused_not_raised(student_snapshots):
    from ams_ros.wire.snapshot import SnapshotError, open_snapshot

    _, _, plain = student_snapshots
    first = plain.parameters[0]
    for changes, reason in [
            (dict(digest='abc'), 'digest-mismatch'), (dict(digest=2**64), 'digest-mismatch'),
            (dict(digest=-1), 'digest-mismatch'), (dict(model_data=2**64), 'bad-model'),
            (dict(parameters=((first[0], first[1], float('inf')),)), 'bad-manifest'),
            (dict(parameters=((first[0], (10**30,), 0),)), 'bad-manifest')]:
        with pytest.raises(SnapshotError) as error:
            open_snapshot(dataclasses.replace(plain, **changes))
        assert error.value.reason == reason, changes
    blob = encode_frames(np.zeros((1, 4, 6, 3), np.uint8), CodecSettings(codec='raw'))
    for width, height, count in [(6.0, 4, 1), ('6', 4, 1), (6, None, 1), (6, 4, 1.0)]:
        with pytest.raises(FrameCodecError) as error:
            decode_frames(blob, 'raw', width, height, count)
        assert error.value.reason == Reason.MISMATCH
    for fields in [dict(height=-2, width=-3, step=-6), dict(height='3'), dict(data='text'),
                   dict(encoding=['rgb8'])]:
        msg = types.SimpleNamespace(**{**dict(height=3, width=2, step=6, encoding='rgb8',
                                              is_bigendian=0, data=bytes(18)), **fields})
        with pytest.raises(ImageConversionError) as error:
            image_to_array(msg)
        assert error.value.reason in ('malformed', 'unsupported-encoding'), fields


def test_a_snapshot_onnx_runtime_cannot_load_leaves_a_new_drone_without_a_model(
        student_snapshots):
    from ams_ros.drone.agent import DroneAgent

    _, vector, plain = student_snapshots
    at = plain.model_data.index(b'Relu')   # an op type ONNX Runtime does not know
    broken_graph = plain.model_data[:at] + b'Rdlu' + plain.model_data[at + 4:]
    drone = DroneAgent()
    try:
        for changes in (dict(model_data=broken_graph), dict(class_names=5)):
            # Both verify (the digest covers the parameters only; the link tag, the rest).
            outcome = drone.load_snapshot(dataclasses.replace(plain, **changes))
            assert (outcome.kind, outcome.reason) == (NEEDS_SNAPSHOT, 'snapshot-bad-model')
            assert drone.state.version is None and drone.runtime is None
        assert drone.load_snapshot(plain).kind == APPLIED
        assert drone.version == plain.version and drone.runtime.active_version == plain.version
        np.testing.assert_array_equal(drone.state.vector, vector)
    finally:
        drone.close()
