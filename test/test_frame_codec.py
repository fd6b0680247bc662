"""Uplink codecs: quality, the H.264 budget cap, and refusal of every damaged blob."""

import struct
import zlib

import numpy as np
import pytest

from ams_ros.wire.frame_codec import (
    CODECS,
    CodecSettings,
    FrameCodecError,
    Reason,
    decode_frames,
    encode_frames,
    h264_budget_bytes,
    psnr,
)

HEADER = struct.Struct('<4sBBHHHI')  # the container header documented in frame_codec


def smooth_pattern(count=10, height=128, width=256, step=6):
    """Make a smooth colour pattern panning `step` pixels per frame."""
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    frames = []
    for k in range(count):
        xs = x + step * k
        red = 128 + 90 * np.sin(xs / 17) * np.cos(y / 23)
        green = 128 + 90 * np.sin((xs + y) / 31)
        blue = 128 + 60 * np.cos(xs / 11 - y / 29)
        frames.append(np.stack([red, green, blue], -1).clip(0, 255).astype(np.uint8))
    return np.stack(frames)


def noisy_pan(count=10, height=128, width=256, step=48, seed=0):
    """Make a fast pan over fine noise, so hard that x264's plain ABR overshoots 50 kbps."""
    rng = np.random.default_rng(seed)
    coarse = rng.integers(0, 256, (height // 2, (width + step * count) // 2, 3), dtype=np.uint8)
    texture = coarse.repeat(2, axis=0).repeat(2, axis=1)
    return np.stack([texture[:, k * step:k * step + width] for k in range(count)])


def with_header(blob, **fields):
    """Replace header fields and make the CRC valid again."""
    names = ('magic', 'version', 'codec_id', 'count', 'width', 'height', 'crc')
    header = dict(zip(names, HEADER.unpack_from(blob), strict=True))
    header.update(fields)
    body = blob[HEADER.size:]
    header['crc'] = zlib.crc32(body)
    return HEADER.pack(*header.values()) + body


def with_body(blob, body):
    """Put another body behind the header, with a valid CRC: damage only the codec sees."""
    return with_header(blob[:HEADER.size] + body)


def chunk(payload):
    return struct.pack('<I', len(payload)) + payload


@pytest.mark.parametrize('rate_control', ['vbv', 'two-pass'])
def test_h264_round_trip_is_faithful_and_under_target(rate_control):
    frames = smooth_pattern()
    settings = CodecSettings(bitrate_kbps=200, rate_control=rate_control)
    blob = encode_frames(frames, settings, frame_rate=1.0)
    decoded = decode_frames(blob, 'h264', 256, 128, 10)
    assert decoded.shape == frames.shape and decoded.dtype == np.uint8
    assert psnr(frames, decoded) > 25
    assert len(blob) * 8 / 10.0 <= 200_000  # 10 frames at 1 fps: 10 s at 200 kbps


@pytest.mark.parametrize('rate_control', ['vbv', 'two-pass'])
def test_h264_stays_under_target_where_plain_rate_control_overshoots(rate_control):
    frames = noisy_pan()  # x264 ABR alone spends about 76 kbps on this at a 50 kbps target
    blob = encode_frames(frames, CodecSettings(bitrate_kbps=50, rate_control=rate_control))
    assert len(blob) <= h264_budget_bytes(10, 50, 1.0)
    assert psnr(frames, decode_frames(blob, 'h264', 256, 128, 10)) > 15


@pytest.mark.parametrize('frame_rate', [0.1, 0.37, 3.0])
def test_h264_budget_follows_the_sampling_rate(frame_rate):
    frames = noisy_pan(count=4, step=32)
    blob = encode_frames(frames, CodecSettings(bitrate_kbps=60, preset='veryfast'), frame_rate)
    assert len(blob) <= 60_000 / 8 * 4 / frame_rate
    assert decode_frames(blob, 'h264', 256, 128, 4).shape == (4, 128, 256, 3)


def test_h264_odd_sizes_are_padded_and_cropped_back():
    frames = smooth_pattern(count=3, height=63, width=95)
    blob = encode_frames(frames, CodecSettings(preset='veryfast'))
    decoded = decode_frames(blob, 'h264', 95, 63, 3)
    assert decoded.shape == (3, 63, 95, 3)
    assert psnr(frames, decoded) > 25


def test_h264_refuses_a_budget_it_cannot_meet():
    frames = smooth_pattern(count=10)
    with pytest.raises(ValueError, match='too low'):
        encode_frames(frames, CodecSettings(bitrate_kbps=0.5))  # below the stream headers
    noise = np.random.default_rng(1).integers(0, 256, (1, 768, 768, 3), dtype=np.uint8)
    with pytest.raises(ValueError, match='coarsest quantiser'):  # over budget even at QP 51
        encode_frames(noise, CodecSettings(bitrate_kbps=10, preset='ultrafast'))


def test_image_codecs_round_trip():
    frames = smooth_pattern(count=3, height=64, width=96)
    for codec in ('png', 'raw'):
        blob = encode_frames(frames, CodecSettings(codec=codec))
        np.testing.assert_array_equal(decode_frames(blob, codec, 96, 64, 3), frames)
    blob = encode_frames(frames, CodecSettings(codec='jpeg', jpeg_quality=75))
    assert psnr(frames, decode_frames(blob, 'jpeg', 96, 64, 3)) > 30
    lower = encode_frames(frames, CodecSettings(codec='jpeg', jpeg_quality=20))
    assert len(lower) < len(blob)


def test_decoded_frames_are_writable_copies():
    frames = smooth_pattern(count=2, height=16, width=16)
    decoded = decode_frames(encode_frames(frames, CodecSettings(codec='raw')), 'raw', 16, 16, 2)
    decoded[0, 0, 0] = 0  # a training pipeline may augment in place


@pytest.mark.parametrize('codec', ['h264', 'jpeg'])
def test_truncated_and_corrupted_blobs_are_refused(codec):
    frames = smooth_pattern(count=4, height=64, width=128)
    blob = encode_frames(frames, CodecSettings(codec=codec, preset='veryfast'))
    for cut in (0, 5, HEADER.size, HEADER.size + 3, len(blob) // 2, len(blob) - 1):
        with pytest.raises(FrameCodecError) as error:
            decode_frames(blob[:cut], codec, 128, 64, 4)
        assert error.value.reason in (Reason.MALFORMED, Reason.CHECKSUM)
    flipped = bytearray(blob)
    flipped[len(blob) * 2 // 3] ^= 0x10
    with pytest.raises(FrameCodecError) as error:
        decode_frames(bytes(flipped), codec, 128, 64, 4)
    assert error.value.reason == Reason.CHECKSUM


def test_h264_stream_damage_behind_a_valid_crc_is_refused():
    frames = smooth_pattern(count=4, height=64, width=128)
    blob = encode_frames(frames, CodecSettings(preset='veryfast'))
    stream = blob[HEADER.size + 4:]
    cut = with_body(blob, chunk(stream[:len(stream) // 2]))
    with pytest.raises(FrameCodecError) as error:
        decode_frames(cut, 'h264', 128, 64, 4)
    assert error.value.reason in (Reason.FRAME_COUNT, Reason.UNDECODABLE)
    garbage = with_body(blob, chunk(bytes(np.random.default_rng(2).integers(0, 256, 4000,
                                                                            dtype=np.uint8))))
    with pytest.raises(FrameCodecError) as error:
        decode_frames(garbage, 'h264', 128, 64, 4)
    assert error.value.reason in (Reason.FRAME_COUNT, Reason.UNDECODABLE)


def test_h264_stream_of_another_size_or_count_is_refused():
    blob = encode_frames(smooth_pattern(count=3, height=64, width=64), CodecSettings())
    with pytest.raises(FrameCodecError) as error:
        decode_frames(with_header(blob, width=32, height=32), 'h264', 32, 32, 3)
    assert error.value.reason == Reason.FRAME_SIZE
    big = encode_frames(smooth_pattern(count=3, height=128, width=256), CodecSettings())
    with pytest.raises(FrameCodecError) as error:  # refused before allocating the pictures
        decode_frames(with_header(big, width=8, height=8), 'h264', 8, 8, 3)
    assert error.value.reason == Reason.UNDECODABLE
    for count in (2, 4):
        with pytest.raises(FrameCodecError) as error:
            decode_frames(with_header(blob, count=count), 'h264', 64, 64, count)
        assert error.value.reason == Reason.FRAME_COUNT


def test_image_payload_damage_behind_a_valid_crc_is_refused():
    frames = smooth_pattern(count=2, height=32, width=48)
    jpeg = encode_frames(frames, CodecSettings(codec='jpeg'))
    bogus = with_body(jpeg, chunk(b'\xff\xd8 not a jpeg') * 2)
    with pytest.raises(FrameCodecError) as error:
        decode_frames(bogus, 'jpeg', 48, 32, 2)
    assert error.value.reason == Reason.UNDECODABLE
    # A PNG header claiming a huge picture is refused from its header, before decoding.
    ihdr = struct.pack('>4sIIBBBBB', b'IHDR', 30000, 30000, 8, 2, 0, 0, 0)
    huge = b'\x89PNG\r\n\x1a\n' + struct.pack('>I', 13) + ihdr + struct.pack('>I', 0)
    png = encode_frames(frames, CodecSettings(codec='png'))
    with pytest.raises(FrameCodecError) as error:
        decode_frames(with_body(png, chunk(huge) * 2), 'png', 48, 32, 2)
    assert error.value.reason == Reason.FRAME_SIZE
    raw = encode_frames(frames, CodecSettings(codec='raw'))
    with pytest.raises(FrameCodecError) as error:
        decode_frames(with_body(raw, chunk(b'\0' * 10) * 2), 'raw', 48, 32, 2)
    assert error.value.reason == Reason.FRAME_SIZE


def test_blob_must_match_what_the_caller_expects():
    blob = encode_frames(smooth_pattern(count=2, height=32, width=48), CodecSettings(codec='png'))
    for codec, width, height, count in (('jpeg', 48, 32, 2), ('png', 50, 32, 2),
                                        ('png', 48, 30, 2), ('png', 48, 32, 3)):
        with pytest.raises(FrameCodecError) as error:
            decode_frames(blob, codec, width, height, count)
        assert error.value.reason == Reason.MISMATCH
    with pytest.raises(FrameCodecError) as error:
        decode_frames(blob, 'vp9', 48, 32, 2)
    assert error.value.reason == Reason.UNKNOWN_CODEC
    with pytest.raises(FrameCodecError) as error:
        decode_frames(blob, 'png', 48, 32, 0)
    assert error.value.reason == Reason.MISMATCH
    for junk in (b'', b'AMSF', b'\0' * 64, [1, 2, 3]):
        with pytest.raises(FrameCodecError) as error:
            decode_frames(junk, 'png', 48, 32, 2)
        assert error.value.reason == Reason.MALFORMED


def test_random_damage_only_ever_raises_frame_codec_error():
    rng = np.random.default_rng(3)
    frames = smooth_pattern(count=3, height=32, width=48)
    blobs = {codec: encode_frames(frames, CodecSettings(codec=codec, preset='veryfast'))
             for codec in CODECS}
    for trial in range(400):
        codec = CODECS[trial % len(CODECS)]
        damaged = bytearray(blobs[codec])
        for _ in range(rng.integers(1, 8)):
            damaged[rng.integers(HEADER.size, len(damaged))] = rng.integers(0, 256)
        if trial % 3 == 0:
            damaged = damaged[:rng.integers(HEADER.size, len(damaged))]
        for candidate in (bytes(damaged), with_header(bytes(damaged))):
            try:
                decoded = decode_frames(candidate, codec, 48, 32, 3)
            except FrameCodecError:
                continue
            assert decoded.shape == (3, 32, 48, 3)


def test_encoder_refuses_bad_frames_and_settings():
    with pytest.raises(ValueError):
        encode_frames([], CodecSettings(codec='raw'))
    with pytest.raises(ValueError):
        encode_frames([np.zeros((8, 8, 3), np.uint8), np.zeros((8, 9, 3), np.uint8)])
    with pytest.raises(ValueError):
        encode_frames(np.zeros((1, 8, 8, 3), np.float32))
    with pytest.raises(ValueError):
        encode_frames(np.zeros((1, 8, 8), np.uint8))
    for bad in ({'codec': 'vp9'}, {'bitrate_kbps': 0}, {'rate_control': 'abr'},
                {'preset': 'turbo'}, {'jpeg_quality': 101}, {'png_level': 10}):
        with pytest.raises(ValueError):
            CodecSettings(**bad)


def test_psnr():
    a = np.zeros((4, 4, 3), np.uint8)
    assert psnr(a, a) == float('inf')
    assert psnr(a, a + 1) == pytest.approx(20 * np.log10(255))
