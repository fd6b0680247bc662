"""Uplink frame codecs: a buffer of RGB frames to one byte blob and back (paper §3.2).

Every blob has the same simple container, whatever the codec::

    header  '<4sBBHHHI'  magic b'AMSF', version, codec id, frame count, width, height,
                         CRC-32 of the body
    body    chunks, each a little-endian uint32 length then that many bytes: one chunk per
            frame for jpeg/png/raw, one chunk holding the whole Annex-B stream for h264

The CRC is there because the H.264 decoder conceals damage instead of reporting it: a
bit-flipped or truncated stream still decodes to the right number of (wrong) frames. With the
CRC a damaged blob is refused, so the ground never trains on garbage.

H.264 rate control. The paper sends each buffer with libx264 two-pass at 200 kbps, preset medium.
On 10-frame buffers x264's rate control has no time to converge. Measured here on 10-frame
pans over texture at 256x512 and 200 kbps: single-pass ABR spent up to 474 kbps and two-pass
alone up to 435 kbps. Both modes therefore run under a VBV cap that keeps the buffer within its
budget. x264 lets a frame use at most what the VBV buffer holds, which starts at one frame's
share (vbv-init) and refills by one share per frame (vbv-maxrate / fps), so N frames together
get at most N shares. The budget is ``bitrate_kbps * count / frame_rate`` bits, less an
allowance for the headers x264 writes outside its VBV model (SPS, PPS and a ~750-byte version
SEI). Over sizes 128x256 and 256x512, 10-200 kbps, 0.1-3 frames/s, 1-10 frames, presets
medium and ultrafast, both modes stayed at or under 92% of the budget. The cap makes x264
cautious, so it often spends well under the budget (bench/bench_uplink.py: 113 of 200 kbps).
'vbv' (the default) is one pass; 'two-pass' (the paper's mode) adds x264's first pass: about
twice the encode time (0.3 s vs 0.55 s per buffer at 256x512, preset medium, one thread) for
0.1-0.7 dB more PSNR.
"""

from __future__ import annotations

import math
import os
import struct
import tempfile
import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from enum import Enum
from fractions import Fraction

import av
import av.error
import cv2
import numpy as np

CODECS = ('raw', 'png', 'jpeg', 'h264')  # index = codec id in the header
RATE_CONTROLS = ('vbv', 'two-pass')
X264_PRESETS = ('ultrafast', 'superfast', 'veryfast', 'faster', 'fast', 'medium', 'slow',
                'slower', 'veryslow', 'placebo')

MAGIC = b'AMSF'
VERSION = 1
_HEADER = struct.Struct('<4sBBHHHI')
_CHUNK_LEN = struct.Struct('<I')
MAX_SIDE = 65535  # header fields are uint16
MAX_COUNT = 65535
MIN_FRAME_RATE = 1e-4  # h264: x264's frame rate fraction has a 16-bit denominator here

# Bytes outside x264's VBV accounting: its SPS + PPS + version SEI (measured 690-830) and
# this container's header and chunk length (20).
H264_HEADER_ALLOWANCE = 1024


class Reason(str, Enum):
    """Why a blob was refused; the value is a stable code for logs and status messages."""

    UNKNOWN_CODEC = 'unknown_codec'
    MALFORMED = 'malformed'  # container header or chunk framing is wrong (includes truncation)
    CHECKSUM = 'checksum'  # body does not match its CRC: damaged in transit
    MISMATCH = 'mismatch'  # container says another codec, size or count than the caller
    UNDECODABLE = 'undecodable'  # the codec library rejected the payload
    FRAME_COUNT = 'frame_count'
    FRAME_SIZE = 'frame_size'


class FrameCodecError(Exception):
    """A blob could not be decoded into the frames the caller expects."""

    def __init__(self, reason: Reason, message: str):
        super().__init__(f'{reason.value}: {message}')
        self.reason = reason


@dataclass(frozen=True)
class CodecSettings:
    """How the edge encodes one buffer of frames."""

    codec: str = 'h264'
    bitrate_kbps: float = 200.0  # h264: cap for the whole buffer (see module docstring)
    rate_control: str = 'vbv'  # h264: 'vbv' (one pass) or 'two-pass' (the paper's mode)
    preset: str = 'medium'  # h264: x264 preset, the paper's is medium
    threads: int = 1  # h264: one thread keeps the encoder off the inference cores
    jpeg_quality: int = 75
    png_level: int = 3  # zlib level, lossless at any level

    def __post_init__(self):
        if self.codec not in CODECS:
            raise ValueError(f'codec must be one of {CODECS}, got {self.codec!r}')
        if not self.bitrate_kbps > 0:
            raise ValueError(f'bitrate_kbps must be positive, got {self.bitrate_kbps}')
        if self.rate_control not in RATE_CONTROLS:
            raise ValueError(f'rate_control must be one of {RATE_CONTROLS}, '
                             f'got {self.rate_control!r}')
        if self.preset not in X264_PRESETS:
            raise ValueError(f'preset must be an x264 preset {X264_PRESETS}, '
                             f'got {self.preset!r}')
        if self.threads < 0:
            raise ValueError(f'threads must be >= 0 (0 = x264 decides), got {self.threads}')
        if not 0 <= self.jpeg_quality <= 100:
            raise ValueError(f'jpeg_quality must be in [0, 100], got {self.jpeg_quality}')
        if not 0 <= self.png_level <= 9:
            raise ValueError(f'png_level must be in [0, 9], got {self.png_level}')


# ---------------------------------------------------------------------------------------------
# Encoding


def encode_frames(frames: Sequence[np.ndarray] | np.ndarray,
                  settings: CodecSettings | None = None, frame_rate: float = 1.0) -> bytes:
    """Encode N same-size HxWx3 uint8 RGB frames into one blob.

    `frame_rate` is the sampling rate the frames were taken at (frames/s); with the bitrate it
    sets the h264 budget of ``bitrate_kbps * N / frame_rate`` bits, which the whole blob keeps
    to. Bad frames, and an h264 budget x264 cannot meet, raise ValueError.
    """
    settings = settings or CodecSettings()
    stack = _check_frames(frames)
    count, height, width, _ = stack.shape
    if settings.codec == 'h264':
        chunks = [_encode_h264(stack, settings, frame_rate)]
    else:
        chunks = [_encode_image(frame, settings) for frame in stack]
    body = b''.join(_CHUNK_LEN.pack(len(chunk)) + chunk for chunk in chunks)
    header = _HEADER.pack(MAGIC, VERSION, CODECS.index(settings.codec), count, width, height,
                          zlib.crc32(body))
    return header + body


def h264_budget_bytes(count: int, bitrate_kbps: float, frame_rate: float) -> int:
    """Most bytes an h264 buffer of `count` frames sampled at `frame_rate` may take."""
    return int(bitrate_kbps * 1000 * count / frame_rate / 8)


def _check_frames(frames: Sequence[np.ndarray] | np.ndarray) -> np.ndarray:
    if len(frames) == 0:
        raise ValueError('no frames to encode')
    shapes = {np.shape(frame) for frame in frames}
    if len(shapes) != 1:
        raise ValueError(f'frames differ in size: {sorted(shapes)}')
    stack = np.asarray(frames)
    if stack.dtype != np.uint8 or stack.ndim != 4 or stack.shape[3] != 3:
        raise ValueError(f'frames must be uint8 HxWx3 RGB, got {stack.dtype} {stack.shape[1:]}')
    count, height, width, _ = stack.shape
    if count > MAX_COUNT or not (1 <= height <= MAX_SIDE and 1 <= width <= MAX_SIDE):
        raise ValueError(f'at most {MAX_COUNT} frames of at most {MAX_SIDE}x{MAX_SIDE} pixels')
    return stack


def _encode_image(frame: np.ndarray, settings: CodecSettings) -> bytes:
    if settings.codec == 'raw':
        return np.ascontiguousarray(frame).tobytes()
    bgr = cv2.cvtColor(frame, cv2.COLOR_RGB2BGR)
    if settings.codec == 'jpeg':
        ok, encoded = cv2.imencode('.jpg', bgr, [cv2.IMWRITE_JPEG_QUALITY, settings.jpeg_quality])
    else:
        ok, encoded = cv2.imencode('.png', bgr, [cv2.IMWRITE_PNG_COMPRESSION, settings.png_level])
    if not ok:
        raise ValueError(f'OpenCV could not encode a {frame.shape} frame as {settings.codec}')
    return encoded.tobytes()


def _vbv_params(count: int, bitrate_kbps: float, frame_rate: float) -> tuple[int, str]:
    """Return the x264 bitrate and VBV parameters that cap the buffer at its budget."""
    usable_bits = 8 * (h264_budget_bytes(count, bitrate_kbps, frame_rate) - H264_HEADER_ALLOWANCE)
    # x264 takes kbit integers; rounding down keeps N frames within N shares (module docstring).
    maxrate_kbps = int(usable_bits / count * frame_rate / 1000)
    bufsize_kbit = int(2 * maxrate_kbps / frame_rate)  # two shares; vbv-init=0.5 is one share
    if maxrate_kbps < 1 or bufsize_kbit < 2:
        raise ValueError(f'{bitrate_kbps} kbps is too low for {count} frames at {frame_rate} '
                         'frames/s: x264 needs a VBV rate of at least 1 kbps after the '
                         f'{H264_HEADER_ALLOWANCE}-byte headers')
    return maxrate_kbps, f'vbv-maxrate={maxrate_kbps}:vbv-bufsize={bufsize_kbit}:vbv-init=0.5'


def _even_pad(stack: np.ndarray) -> np.ndarray:
    """Replicate the last row/column so both sides are even, as yuv420p needs."""
    _, height, width, _ = stack.shape
    pad = ((0, 0), (0, height % 2), (0, width % 2), (0, 0))
    return np.pad(stack, pad, mode='edge') if height % 2 or width % 2 else stack


def _encode_h264(stack: np.ndarray, settings: CodecSettings, frame_rate: float) -> bytes:
    if not MIN_FRAME_RATE <= frame_rate < math.inf:
        raise ValueError(f'frame_rate must be at least {MIN_FRAME_RATE} frames/s, '
                         f'got {frame_rate}')
    maxrate_kbps, vbv = _vbv_params(len(stack), settings.bitrate_kbps, frame_rate)
    padded = _even_pad(stack)
    if settings.rate_control == 'vbv':
        stream = _run_x264(padded, settings, frame_rate, maxrate_kbps, vbv)
    else:
        with tempfile.TemporaryDirectory(prefix='ams_x264_') as stats_dir:
            stats = os.path.join(stats_dir, 'pass.log')
            _run_x264(padded, settings, frame_rate, maxrate_kbps, f'pass=1:stats={stats}:{vbv}')
            stream = _run_x264(padded, settings, frame_rate, maxrate_kbps,
                               f'pass=2:stats={stats}:{vbv}')
    budget = h264_budget_bytes(len(stack), settings.bitrate_kbps, frame_rate)
    blob_size = _HEADER.size + _CHUNK_LEN.size + len(stream)
    if blob_size > budget:  # x264 breaks its VBV when even its coarsest quantiser is too big
        raise ValueError(f'{len(stack)} frames need {blob_size} bytes even at the coarsest '
                         f'quantiser: over the {budget}-byte budget of {settings.bitrate_kbps} '
                         'kbps')
    return stream


def _run_x264(stack: np.ndarray, settings: CodecSettings, frame_rate: float,
              bitrate_kbps: int, x264_params: str) -> bytes:
    rate = Fraction(frame_rate).limit_denominator(1 << 16)  # x264 takes fps as a fraction
    ctx = av.CodecContext.create('libx264', 'w')
    ctx.width, ctx.height = stack.shape[2], stack.shape[1]
    ctx.pix_fmt = 'yuv420p'
    ctx.framerate = rate
    ctx.time_base = 1 / rate
    ctx.bit_rate = bitrate_kbps * 1000
    ctx.thread_count = settings.threads
    ctx.options = {'preset': settings.preset, 'x264-params': x264_params}
    packets = []
    for index, frame in enumerate(stack):
        video_frame = av.VideoFrame.from_ndarray(frame, format='rgb24').reformat(format='yuv420p')
        video_frame.pts = index
        packets.extend(bytes(packet) for packet in ctx.encode(video_frame))
    packets.extend(bytes(packet) for packet in ctx.encode(None))  # flush delayed B-frames
    return b''.join(packets)


# ---------------------------------------------------------------------------------------------
# Decoding


def decode_frames(data: bytes, codec: str, width: int, height: int,
                  expected_count: int) -> np.ndarray:
    """Decode a blob into an (expected_count, height, width, 3) uint8 RGB array.

    `data` may be any bytes-like object (a ROS uint8[] field arrives as array.array). Any blob
    that does not hold exactly that (damaged, truncated, foreign, another codec, size or count)
    raises FrameCodecError; no other exception escapes for any input bytes.
    """
    if codec not in CODECS:
        raise FrameCodecError(Reason.UNKNOWN_CODEC, f'unknown codec {codec!r}')
    if not (all(isinstance(n, (int, np.integer)) for n in (width, height, expected_count))
            and 1 <= width <= MAX_SIDE and 1 <= height <= MAX_SIDE
            and 1 <= expected_count <= MAX_COUNT):
        raise FrameCodecError(Reason.MISMATCH, f'impossible request: {expected_count} frames of '
                                               f'{width}x{height}')
    try:
        data = memoryview(data).tobytes()
    except TypeError as error:
        raise FrameCodecError(Reason.MALFORMED, f'not a bytes-like object: {error}') from error
    chunks = _read_container(data, codec, width, height, expected_count)
    if codec == 'h264':
        frames = _decode_h264(chunks[0], width, height, expected_count)
    else:
        frames = [_decode_image(chunk, codec, width, height) for chunk in chunks]
    return np.stack(frames)


def _read_container(data: bytes, codec: str, width: int, height: int,
                    expected_count: int) -> list[bytes]:
    if len(data) < _HEADER.size:
        raise FrameCodecError(Reason.MALFORMED, f'{len(data)} bytes is shorter than the header')
    magic, version, codec_id, count, blob_width, blob_height, crc = _HEADER.unpack_from(data)
    if magic != MAGIC or version != VERSION:
        raise FrameCodecError(Reason.MALFORMED, f'not a version-{VERSION} frame blob')
    body = data[_HEADER.size:]
    if zlib.crc32(body) != crc:
        raise FrameCodecError(Reason.CHECKSUM, 'body does not match its CRC-32')
    found = (CODECS[codec_id] if codec_id < len(CODECS) else f'id {codec_id}', blob_width,
             blob_height, count)
    if found != (codec, width, height, expected_count):
        raise FrameCodecError(Reason.MISMATCH, f'blob holds {found[3]} {found[0]} frames of '
                                               f'{found[1]}x{found[2]}, expected {expected_count} '
                                               f'{codec} frames of {width}x{height}')
    chunks = []
    offset = 0
    while offset < len(body):
        if offset + _CHUNK_LEN.size > len(body):
            raise FrameCodecError(Reason.MALFORMED, 'chunk length cut off')
        (length,) = _CHUNK_LEN.unpack_from(body, offset)
        offset += _CHUNK_LEN.size
        if offset + length > len(body):
            raise FrameCodecError(Reason.MALFORMED, 'chunk runs past the end of the blob')
        chunks.append(body[offset:offset + length])
        offset += length
    wanted = 1 if codec == 'h264' else expected_count
    if len(chunks) != wanted:
        raise FrameCodecError(Reason.MALFORMED, f'{len(chunks)} chunks, expected {wanted}')
    return chunks


def _decode_h264(stream: bytes, width: int, height: int, expected_count: int) -> list[np.ndarray]:
    coded_width, coded_height = width + width % 2, height + height % 2
    ctx = av.CodecContext.create('h264', 'r')
    # Refuse much larger pictures before anything is allocated for them. FFmpeg checks the
    # size after aligning it for SIMD (width to 64 here), hence the margin; the exact size is
    # checked on every decoded frame.
    ctx.options = {'max_pixels': str((coded_width + 128) * (coded_height + 32))}
    frames: list[np.ndarray] = []
    try:
        # parse(None) flushes the parser's last packet, decode(None) the decoder's last frames.
        for packet in [*ctx.parse(stream), *ctx.parse(None), None]:
            for frame in ctx.decode(packet):
                if (frame.width, frame.height) != (coded_width, coded_height):
                    raise FrameCodecError(Reason.FRAME_SIZE, f'decoded {frame.width}x'
                                                             f'{frame.height}, expected '
                                                             f'{coded_width}x{coded_height}')
                if len(frames) == expected_count:  # stop before a flood of frames fills memory
                    raise FrameCodecError(Reason.FRAME_COUNT, f'more than {expected_count} '
                                                              'frames in the stream')
                frames.append(frame.to_ndarray(format='rgb24')[:height, :width])
    except (av.error.FFmpegError, ValueError) as error:
        raise FrameCodecError(Reason.UNDECODABLE, f'H.264 decoder: {error}') from error
    if len(frames) != expected_count:
        raise FrameCodecError(Reason.FRAME_COUNT, f'{len(frames)} frames in the stream, '
                                                  f'expected {expected_count}')
    return frames


def _decode_image(chunk: bytes, codec: str, width: int, height: int) -> np.ndarray:
    if codec == 'raw':
        if len(chunk) != width * height * 3:
            raise FrameCodecError(Reason.FRAME_SIZE, f'raw frame of {len(chunk)} bytes, '
                                                     f'expected {width * height * 3}')
        return np.frombuffer(chunk, np.uint8).reshape(height, width, 3)
    size = _png_size(chunk) if codec == 'png' else _jpeg_size(chunk)
    if size is None:
        raise FrameCodecError(Reason.UNDECODABLE, f'not a {codec} image')
    if size != (width, height):
        raise FrameCodecError(Reason.FRAME_SIZE, f'{codec} image is {size[0]}x{size[1]}, '
                                                 f'expected {width}x{height}')
    try:
        rgb = cv2.imdecode(np.frombuffer(chunk, np.uint8), cv2.IMREAD_COLOR_RGB)
    except cv2.error as error:
        raise FrameCodecError(Reason.UNDECODABLE, f'OpenCV: {error}') from error
    if rgb is None or rgb.shape != (height, width, 3):
        raise FrameCodecError(Reason.UNDECODABLE, f'OpenCV could not decode the {codec} image')
    return rgb


def _png_size(chunk: bytes) -> tuple[int, int] | None:
    """Width and height from the IHDR chunk, which a PNG must start with.

    None unless the PNG's chunks exactly fill the data: OpenCV allocates what a chunk's length
    field says (4 GB and 14 s for a 200-byte PNG whose IDAT length lies) before reading it.
    """
    if len(chunk) < 24 or chunk[:8] != b'\x89PNG\r\n\x1a\n' or chunk[12:16] != b'IHDR':
        return None
    offset = 8
    while offset < len(chunk):  # each chunk: length, type, that many bytes, CRC
        if offset + 12 > len(chunk):
            return None
        (length,) = struct.unpack_from('>I', chunk, offset)
        offset += 12 + length
    if offset != len(chunk):
        return None
    return struct.unpack('>II', chunk[16:24])


_JPEG_SOF_MARKERS = frozenset(range(0xC0, 0xD0)) - {0xC4, 0xC8, 0xCC}  # not DHT, JPG, DAC


def _jpeg_size(chunk: bytes) -> tuple[int, int] | None:
    """Width and height from the first start-of-frame segment, found by walking the segments."""
    if chunk[:2] != b'\xff\xd8':
        return None
    offset = 2
    while offset + 4 <= len(chunk):
        if chunk[offset] != 0xFF:
            return None
        marker = chunk[offset + 1]
        if marker == 0xFF:  # fill byte before a marker
            offset += 1
            continue
        if marker in _JPEG_SOF_MARKERS:
            if offset + 9 > len(chunk):
                return None
            height, width = struct.unpack('>HH', chunk[offset + 5:offset + 9])
            return width, height
        if marker == 0xDA:  # start of scan before any frame header
            return None
        (length,) = struct.unpack('>H', chunk[offset + 2:offset + 4])
        offset += 2 + max(length, 2)
    return None


# ---------------------------------------------------------------------------------------------
# Quality


def psnr(reference: np.ndarray, decoded: np.ndarray) -> float:
    """Peak signal-to-noise ratio in dB over all pixels and channels (inf when identical)."""
    if reference.shape != decoded.shape:
        raise ValueError(f'shapes differ: {reference.shape} vs {decoded.shape}')
    mse = np.mean((reference.astype(np.float64) - decoded.astype(np.float64)) ** 2)
    return float('inf') if mse == 0 else float(10 * np.log10(255.0 ** 2 / mse))
