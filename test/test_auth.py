import array
import dataclasses

import numpy as np
import pytest

from ams_ros.auth import canonical_bytes, check_tag, load_key, sign
from ams_ros.model_version import PatchPayload

KEY = bytes(range(32))


def patch(**changes):
    fields = dict(client_id='drone1', model_id='m-1', base_version=3, version=4,
                  num_params=100, index_codec='gaps+zstd', index_data=b'\x01\x02',
                  value_codec='fp16+none', value_data=b'\x00\x3c' * 2, digest=bytes(32))
    fields.update(changes)
    return PatchPayload(**fields)


@dataclasses.dataclass(frozen=True)
class Spec:
    name: str
    shape: tuple


@dataclasses.dataclass(frozen=True)
class Snapshot:
    client_id: str
    version: int
    parameters: tuple
    mean: np.ndarray
    model_data: bytes
    auth_tag: bytes = b''


def snapshot(**changes):
    fields = dict(client_id='drone1', version=4, parameters=(Spec('w', (3, 2)),),
                  mean=np.array([1.0, 2.0, 3.0], np.float32), model_data=b'onnx')
    fields.update(changes)
    return Snapshot(**fields)


def test_signed_messages_pass_and_unsigned_ones_do_not():
    signed = sign(patch(), KEY)
    assert len(signed.auth_tag) == 32
    assert check_tag(signed, KEY) == ''
    assert check_tag(patch(), KEY) == 'unsigned'
    assert check_tag(signed, b'another key of 32 bytes.........') == 'bad-signature'
    assert check_tag(dataclasses.replace(signed, auth_tag=b'\0' * 32), KEY) == 'bad-signature'


def test_every_field_is_covered_by_the_tag():
    signed = sign(patch(), KEY)
    for f in dataclasses.fields(PatchPayload):
        if f.name == 'auth_tag':
            continue
        value = getattr(signed, f.name)
        changed = value + 1 if isinstance(value, int) else value + value[:1] + (
            'x' if isinstance(value, str) else b'x')
        tampered = dataclasses.replace(signed, **{f.name: changed})
        assert check_tag(tampered, KEY) == 'bad-signature', f.name


def test_without_a_key_tags_are_ignored():
    assert check_tag(patch(), None) == ''
    assert check_tag(patch(auth_tag=b'junk'), None) == ''
    assert sign(patch(), None).auth_tag == b''


def test_serialisation_is_unambiguous():
    # Plain concatenation would make these equal.
    assert canonical_bytes(patch(client_id='ab', model_id='c')) != \
        canonical_bytes(patch(client_id='a', model_id='bc'))
    assert canonical_bytes(patch(index_data=b'1', value_codec='x')) != \
        canonical_bytes(patch(index_data=b'', value_codec='1x'))
    assert canonical_bytes(patch(version=12)) != canonical_bytes(patch(version='12'))


def test_a_patch_tag_does_not_pass_for_another_message_type():
    @dataclasses.dataclass(frozen=True)
    class PatchPayloadLookalike:
        client_id: str
        auth_tag: bytes = b''

    @dataclasses.dataclass(frozen=True)
    class Other:
        client_id: str
        auth_tag: bytes = b''

    signed = sign(PatchPayloadLookalike('drone1'), KEY)
    assert check_tag(Other('drone1', signed.auth_tag), KEY) == 'bad-signature'


def test_snapshots_with_nested_fields_and_arrays_are_signed():
    signed = sign(snapshot(), KEY)
    assert check_tag(signed, KEY) == ''
    assert check_tag(dataclasses.replace(signed, mean=np.array([1.0, 2.0, 3.5], np.float32)),
                     KEY) == 'bad-signature'
    assert check_tag(dataclasses.replace(signed, parameters=(Spec('w', (2, 3)),)),
                     KEY) == 'bad-signature'
    assert check_tag(dataclasses.replace(signed, model_data=array.array('B', b'onnx')),
                     KEY) == '', 'uint8[] as array(B) or bytes must sign alike'


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
