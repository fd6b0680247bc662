import array

import numpy as np
import pytest

from ams_ros.wire.auth import encode_value, load_key
from ams_ros.wire.model_version import PatchPayload

KEY = bytes(range(32))


def patch(**changes):
    fields = dict(client_id='drone1', model_id='m-1', base_version=3, version=4,
                  num_params=100, index_codec='gaps+zstd', index_data=b'\x01\x02',
                  value_codec='fp16+none', value_data=b'\x00\x3c' * 2, digest=bytes(32))
    fields.update(changes)
    return PatchPayload(**fields)


def test_keys_load_from_bytes_or_a_file(tmp_path):
    path = tmp_path / 'key'
    path.write_bytes(b'0123456789abcdef0123456789abcdef\n')
    assert load_key(path) == b'0123456789abcdef0123456789abcdef'
    assert load_key(str(path)) == load_key(b'0123456789abcdef0123456789abcdef')
    assert load_key(None) is None
    with pytest.raises(ValueError):
        load_key(b'short')
    with pytest.raises(OSError):
        load_key(tmp_path / 'missing')


# -- link authentication: every ams_msgs message, on the wire ----------------------------------

pytest.importorskip('ams_msgs')
from builtin_interfaces.msg import Time  # noqa: E402
from rclpy.serialization import deserialize_message, serialize_message  # noqa: E402
from std_msgs.msg import Header  # noqa: E402

import ams_msgs.msg as M  # noqa: E402
from ams_ros.ros import conversions as conv  # noqa: E402
from ams_ros.ros import link_auth  # noqa: E402
from ams_ros.ros.link_auth import LinkSigner, LinkVerifier, canonical_message_bytes  # noqa: E402
from ams_ros.wire.snapshot import SnapshotPayload  # noqa: E402
from ams_ros.wire.uplink_batch import UplinkBatch  # noqa: E402

OTHER_KEY = b'another key of 32 bytes.........'


def wire(msg):
    """Serialise and deserialise, as a message arriving from DDS (float32 fields rounded)."""
    return deserialize_message(serialize_message(msg), type(msg))


def header():
    return Header(stamp=Time(sec=1_700_000_000, nanosec=123), frame_id='camera')


# One message of each type with every field set, float32 fields to values float32 cannot hold.
MESSAGES = {
    'FrameBatch': lambda: M.FrameBatch(
        header=header(), client_id='drone1', seq=42, codec='jpeg', width=64, height=32,
        source_encoding='bgr8', stamps=[Time(sec=5, nanosec=1), Time(sec=6, nanosec=2)],
        data=b'\x01\x02\x03', sampling_rate=0.1, update_period=10.3),
    'SamplingControl': lambda: M.SamplingControl(
        header=header(), client_id='drone1', sampling_rate=0.1, update_period=15.7),
    'SnapshotRequest': lambda: M.SnapshotRequest(
        header=header(), client_id='drone1', model_id='m-1', active_version=5, reason='gap'),
    'EdgeStatus': lambda: M.EdgeStatus(
        header=header(), client_id='drone1', model_id='m-1', active_version=9,
        active_digest=bytes(range(32)), inference_fps=29.9, latency_p50_ms=8.1,
        latency_p99_ms=12.3, frames_received=1000, frames_inferred=990, frames_sampled=20,
        batches_sent=2, bytes_up=40_000, bytes_down=300_000, patches_applied=7,
        patches_rejected=1, sampling_rate=0.3, update_period=10.1, last_error='gap'),
    'ModelPatch': lambda: M.ModelPatch(
        header=header(), client_id='drone1', model_id='m-1', base_version=6, version=7,
        num_params=100, index_codec='gaps+zstd', index_data=b'\x05\x06',
        value_codec='fp16+zstd', value_data=b'\x07\x08', digest=bytes(32)),
    'ModelSnapshot': lambda: M.ModelSnapshot(
        header=header(), client_id='drone1', model_id='m-1', version=3, format='onnx',
        model_data=b'onnx', parameters=[M.ParameterSpec(name='w', shape=[3, 2], offset=0),
                                        M.ParameterSpec(name='b', shape=[2], offset=6)],
        class_names=['road', 'water'], input_height=32, input_width=64, mean=[0.1, 0.2, 0.3],
        std=[1.1, 1.2, 1.3], digest=bytes(32)),
}
TYPES = pytest.mark.parametrize('name', list(MESSAGES))


def signed(name, key=KEY):
    return LinkSigner(key).sign(MESSAGES[name]())


def field_paths(msg, prefix=()):
    """Yield the path of every field but the tag, into nested messages and a list's first one."""
    for name in type(msg).get_fields_and_field_types():
        if name == 'auth_tag':
            continue
        value = getattr(msg, name)
        if hasattr(value, 'get_fields_and_field_types'):
            yield from field_paths(value, (*prefix, name))
        elif isinstance(value, list) and hasattr(value[0], 'get_fields_and_field_types'):
            yield from field_paths(value[0], (*prefix, name, 0))
        else:
            yield (*prefix, name)


def changed(value):
    """Return value with one thing changed: the scalar, or the first element of a sequence."""
    if isinstance(value, str):
        return value + 'x'
    if isinstance(value, (int, np.integer)):
        return int(value) ^ 1
    if isinstance(value, (float, np.floating)):
        return float(value) + 1.0
    value = value.copy() if hasattr(value, 'copy') else value[:]
    value[0] = changed(value[0])
    return value


def tampered(msg, path):
    msg = wire(msg)
    *parents, name = path
    owner = msg
    for step in parents:
        owner = owner[step] if isinstance(step, int) else getattr(owner, step)
    setattr(owner, name, changed(getattr(owner, name)))
    return msg


@TYPES
def test_a_signed_message_of_every_type_verifies_after_the_wire(name):
    msg = signed(name)
    assert len(msg.auth_tag) == 32 and msg.auth_counter > 0
    assert LinkVerifier(KEY).verify(wire(msg), 'drone1') == ''
    assert LinkVerifier(KEY).verify(msg, 'drone1') == '', 'float32 fields sign as received'


@TYPES
def test_changing_any_field_breaks_the_tag(name):
    msg = signed(name)
    paths = list(field_paths(msg))
    assert {('header', 'stamp', 'sec'), ('header', 'stamp', 'nanosec'), ('header', 'frame_id'),
            ('auth_counter',)} <= set(paths)
    for path in paths:
        assert LinkVerifier(KEY).verify(tampered(msg, path), 'drone1') == 'bad-signature', path


def test_nested_lists_and_byte_fields_are_covered():
    paths = set(field_paths(signed('ModelSnapshot')))
    assert {('parameters', 0, 'name'), ('parameters', 0, 'shape'), ('parameters', 0, 'offset'),
            ('model_data',), ('class_names',), ('mean',)} <= paths
    assert ('stamps', 0, 'nanosec') in set(field_paths(signed('FrameBatch')))
    # Later list elements and bytes, and the lengths of lists, are covered as much as the first.
    msg = signed('ModelSnapshot')
    for change in (lambda m: setattr(m.parameters[1], 'shape', [3]),
                   lambda m: setattr(m, 'model_data', b'onnY'),
                   lambda m: m.parameters.append(M.ParameterSpec(name='c')),
                   lambda m: m.class_names.pop()):
        copy = wire(msg)
        change(copy)
        assert LinkVerifier(KEY).verify(copy, 'ground') == 'bad-signature'


@TYPES
def test_unsigned_messages_are_refused_only_with_a_key(name):
    msg = MESSAGES[name]()
    assert LinkVerifier(KEY).verify(msg, 'drone1') == 'unsigned'
    assert LinkVerifier(None).verify(msg, 'drone1') == ''
    keyless = LinkSigner(None).sign(MESSAGES[name]())
    assert keyless.auth_counter > 0 and len(keyless.auth_tag) == 0
    assert LinkVerifier(KEY).verify(keyless, 'drone1') == 'unsigned'


@TYPES
def test_another_key_fails(name):
    assert LinkVerifier(OTHER_KEY).verify(signed(name), 'drone1') == 'bad-signature'
    assert LinkVerifier(KEY).verify(signed(name, OTHER_KEY), 'drone1') == 'bad-signature'


@TYPES
def test_a_replay_is_refused_and_a_newer_message_still_passes(name):
    signer, verifier = LinkSigner(KEY), LinkVerifier(KEY)
    first = signer.sign(MESSAGES[name]())
    assert verifier.verify(wire(first), 'drone1') == ''
    assert verifier.verify(wire(first), 'drone1') == 'replayed'
    second = signer.sign(MESSAGES[name]())
    assert second.auth_counter > first.auth_counter
    assert verifier.verify(wire(second), 'drone1') == ''
    assert verifier.verify(wire(first), 'drone1') == 'replayed'
    assert verifier.verify(wire(first), 'drone2') == '', 'counters are per sender'


def test_counters_are_kept_per_message_type():
    signer, verifier = LinkSigner(KEY), LinkVerifier(KEY)
    patch_msg = signer.sign(MESSAGES['ModelPatch']())
    sampling = signer.sign(MESSAGES['SamplingControl']())
    assert verifier.verify(sampling, 'ground') == ''
    assert verifier.verify(patch_msg, 'ground') == '', 'an older counter of another type'


def test_the_counter_starts_at_the_wall_clock_and_always_grows(monkeypatch):
    before = time_ns = link_auth.time.time_ns()
    signer = LinkSigner(KEY)
    monkeypatch.setattr(link_auth.time, 'time_ns', lambda: time_ns)
    counters = [signer.sign(MESSAGES['SamplingControl']()).auth_counter for _ in range(3)]
    time_ns -= 10**9  # the clock stepped back
    counters.append(signer.sign(MESSAGES['SamplingControl']()).auth_counter)
    time_ns += 10**12
    counters.append(signer.sign(MESSAGES['SamplingControl']()).auth_counter)
    assert before < counters[0] < counters[1] < counters[2] < counters[3] < counters[4]
    assert counters[4] == time_ns


def test_a_tag_never_passes_for_another_type_with_equal_fields():
    lookalike_type = type('SamplingControlLookalike', (M.SamplingControl,),
                          {'__slots__': (), '__module__': 'ams_msgs.msg._lookalike'})
    msg = signed('SamplingControl')
    lookalike = lookalike_type()
    for field in M.SamplingControl.get_fields_and_field_types():
        setattr(lookalike, field, getattr(msg, field))
    assert LinkVerifier(KEY).verify(lookalike, 'ground') == 'bad-signature'
    # Only the type name tells them apart: every field encodes alike.
    assert canonical_message_bytes(lookalike).partition(b'/SamplingControlLookalike')[2] == \
        canonical_message_bytes(msg).partition(b'/SamplingControl')[2]


def test_the_verifier_memory_stays_bounded():
    signer, verifier = LinkSigner(KEY), LinkVerifier(KEY)
    messages = []
    for i in range(10_000):
        msg = MESSAGES['SnapshotRequest']()
        msg.client_id = f'drone{i}'
        messages.append(signer.sign(msg))
        assert verifier.verify(msg, msg.client_id) == ''
    assert verifier.senders() == link_auth.MAX_SENDERS
    assert verifier.verify(messages[-1], 'drone9999') == 'replayed'
    # The least recently accepted were forgotten: documented, a first message passes.
    assert verifier.verify(messages[0], 'drone0') == ''
    # Forgeries never reach the memory.
    for i in range(100):
        forged = MESSAGES['SnapshotRequest']()
        forged.auth_tag = bytes(32)
        assert verifier.verify(forged, f'rogue{i}') == 'bad-signature'
    assert verifier.verify(messages[-1], 'drone9999') == 'replayed'
    assert verifier.senders() == link_auth.MAX_SENDERS


def test_without_a_key_the_verifier_keeps_no_state():
    verifier = LinkVerifier(None)
    msg = signed('FrameBatch')
    assert [verifier.verify(msg, 'drone1') for _ in range(2)] == ['', '']
    assert verifier.senders() == 0


# -- the conversions, signed and verified --------------------------------------------------------

def built(name, signer):
    """Build a message of this type through its conversions builder."""
    if name == 'FrameBatch':
        return conv.batch_to_msg(UplinkBatch('drone1', 3, 'jpeg', 64, 32, (1.5, 2.0), b'\1\2',
                                             0.1, 10.0), 'cam', signer=signer)
    if name == 'SamplingControl':
        return conv.sampling_control('drone1', 0.1, 15.0, 3.5, signer=signer)
    if name == 'SnapshotRequest':
        return conv.snapshot_request('drone1', 'm-1', 4, 'gap', 3.5, signer=signer)
    if name == 'EdgeStatus':
        return conv.edge_status(3.5, signer=signer, client_id='drone1', model_id='m-1',
                                active_version=4, active_digest=bytes(range(32)),
                                inference_fps=29.9, frames_received=10, sampling_rate=0.1,
                                update_period=10.0, last_error='')
    if name == 'ModelPatch':
        return conv.patch_to_msg(patch(), 3.5, signer=signer)
    return conv.snapshot_to_msg(SnapshotPayload(
        client_id='drone1', model_id='m-1', version=4, format='onnx', model_data=b'onnx',
        parameters=(('w', (3, 2), 0),), class_names=('road',), input_height=32, input_width=64,
        mean=(0.5, 0.25, 0.125), std=(1.0, 2.0, 4.0), digest=bytes(32)), 3.5, signer=signer)


READERS = {'FrameBatch': conv.batch_from_msg, 'SamplingControl': conv.sampling_from_msg,
           'SnapshotRequest': conv.request_from_msg, 'EdgeStatus': conv.status_from_msg,
           'ModelPatch': conv.patch_from_msg, 'ModelSnapshot': conv.snapshot_from_msg}


def refusal(read, msg, **keywords):
    with pytest.raises(conv.MessageError) as error:
        read(msg, **keywords)
    return error.value.reason


@TYPES
def test_conversions_sign_and_verify_every_type(name):
    read, verifier = READERS[name], LinkVerifier(KEY)
    msg = wire(built(name, LinkSigner(KEY)))
    assert read(msg, verifier=verifier) == read(msg, verifier=LinkVerifier(None))
    assert refusal(read, msg, verifier=verifier) == 'replayed'
    assert refusal(read, wire(built(name, None)), verifier=verifier) == 'unsigned'
    assert refusal(read, wire(built(name, LinkSigner(OTHER_KEY))), verifier=verifier) == \
        'bad-signature'
    altered = wire(built(name, LinkSigner(KEY)))
    altered.header.stamp.nanosec += 1
    assert refusal(read, altered, verifier=verifier) == 'bad-signature'


def test_verification_comes_before_any_other_check():
    empty = {'FrameBatch': M.FrameBatch(), 'ModelPatch': M.ModelPatch(),
             'ModelSnapshot': M.ModelSnapshot(), 'SamplingControl': M.SamplingControl(),
             'SnapshotRequest': M.SnapshotRequest(), 'EdgeStatus': M.EdgeStatus()}
    for name, msg in empty.items():
        assert refusal(READERS[name], msg) != 'unsigned'   # impossible fields, no verifier
        assert refusal(READERS[name], msg, verifier=LinkVerifier(KEY)) == 'unsigned', name
    assert refusal(conv.batch_from_msg, M.ModelPatch(), verifier=LinkVerifier(KEY)) == \
        'wrong-type'


def test_the_sender_is_the_client_id_uplink_and_the_ground_downlink():
    signer, verifier = LinkSigner(KEY), LinkVerifier(KEY)
    earlier = conv.snapshot_request('drone2', 'm-1', 4, 'gap', signer=signer)
    later = conv.snapshot_request('drone1', 'm-1', 4, 'gap', signer=signer)
    assert conv.request_from_msg(later, verifier=verifier).client_id == 'drone1'
    assert conv.request_from_msg(earlier, verifier=verifier).client_id == 'drone2', \
        "each drone's counters are its own"
    earlier, later = built('ModelPatch', signer), built('ModelPatch', signer)
    assert conv.patch_from_msg(later, verifier=verifier).client_id == 'drone1'
    assert refusal(conv.patch_from_msg, earlier, verifier=verifier) == 'replayed'
    assert conv.patch_from_msg(earlier, verifier=verifier, sender='ground2').version == 4


def test_patches_and_snapshots_carry_the_tag_on_the_message_only():
    msg = conv.patch_to_msg(patch(), signer=LinkSigner(KEY))
    assert len(msg.auth_tag) == 32
    assert conv.patch_from_msg(wire(msg), verifier=LinkVerifier(KEY)) == patch()
    assert conv.patch_from_msg(conv.patch_to_msg(patch())) == patch()  # no keywords: unsigned
    keyless = conv.patch_to_msg(patch(), signer=LinkSigner(None))
    assert len(keyless.auth_tag) == 0 and keyless.auth_counter > 0
    assert len(conv.patch_to_msg(patch()).auth_tag) == 0
    snapshot_msg = built('ModelSnapshot', LinkSigner(KEY))
    assert conv.snapshot_from_msg(wire(snapshot_msg), verifier=LinkVerifier(KEY)) == \
        conv.snapshot_from_msg(snapshot_msg)


def test_the_encoding_is_unambiguous():
    # Plain concatenation would make each of the first two pairs equal.
    def encoded(**fields):
        return canonical_message_bytes(M.SnapshotRequest(**fields))

    assert encoded(client_id='ab', model_id='c') != encoded(client_id='a', model_id='bc')
    assert encoded(header=Header(frame_id='ab'), client_id='c') != \
        encoded(header=Header(frame_id='a'), client_id='bc')
    assert encode_value(12, None) != encode_value('12', None)
    assert encode_value(b'onnx', None) == encode_value(array.array('B', b'onnx'), None), \
        'uint8[] as array(B) or bytes must sign alike'


def test_status_and_request_readers_check_their_fields():
    status = conv.status_from_msg(wire(built('EdgeStatus', None)))
    assert (status.client_id, status.active_version, status.active_digest,
            status.frames_received) == ('drone1', 4, bytes(range(32)), 10)
    assert status.sampling_rate == pytest.approx(0.1) and status.update_period == 10.0
    no_model = built('EdgeStatus', None)
    no_model.active_digest = b''
    assert conv.status_from_msg(no_model).active_digest == b''
    short = built('EdgeStatus', None)
    short.active_digest = b'\1' * 31
    assert refusal(conv.status_from_msg, short) == 'bad-digest'
    for field, value in [('sampling_rate', 0.0), ('inference_fps', float('nan')),
                         ('client_id', '')]:
        bad = built('EdgeStatus', None)
        setattr(bad, field, value)
        assert refusal(conv.status_from_msg, bad) in ('bad-field', 'no-client-id'), field
    assert conv.request_from_msg(built('SnapshotRequest', None)) == conv.SnapshotRequestInfo(
        client_id='drone1', model_id='m-1', active_version=4, reason='gap')
