"""numpy <-> sensor_msgs/Image without cv_bridge (PyPI's cv_bridge is the broken ROS 1 port).

Rows may carry padding (step > width * bytes per pixel); it is dropped on the way in.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class PixelFormat:
    channels: int
    dtype: np.dtype


PIXEL_FORMATS = {
    'rgb8': PixelFormat(3, np.dtype(np.uint8)),
    'bgr8': PixelFormat(3, np.dtype(np.uint8)),
    'rgba8': PixelFormat(4, np.dtype(np.uint8)),
    'bgra8': PixelFormat(4, np.dtype(np.uint8)),
    'mono8': PixelFormat(1, np.dtype(np.uint8)),
    'mono16': PixelFormat(1, np.dtype(np.uint16)),
    '8UC1': PixelFormat(1, np.dtype(np.uint8)),
    '8UC3': PixelFormat(3, np.dtype(np.uint8)),
    '16UC1': PixelFormat(1, np.dtype(np.uint16)),
}


class ImageConversionError(ValueError):
    """An image message that cannot be read; `reason` is a short code for counting."""

    def __init__(self, reason: str, message: str):
        super().__init__(f'{reason}: {message}')
        self.reason = reason


def image_to_array(msg, max_pixels: int | None = None) -> np.ndarray:
    """Return the pixels of a sensor_msgs/Image as an (H, W) or (H, W, C) array (a copy).

    An image of more than max_pixels pixels (when given) is refused before any pixel is copied.
    """
    fmt = PIXEL_FORMATS.get(msg.encoding) if isinstance(msg.encoding, str) else None
    if fmt is None:
        raise ImageConversionError(
            'unsupported-encoding',
            f"encoding '{msg.encoding}' is not one of {sorted(PIXEL_FORMATS)}")
    # rclpy checks field types only on request (ROS_PYTHON_CHECK_FIELDS), so check them here.
    sizes = (msg.height, msg.width, msg.step)
    if not all(isinstance(n, (int, np.integer)) and n >= 0 for n in sizes):
        raise ImageConversionError('malformed', f'height, width, step {sizes!r} are not uint32')
    height, width, step = (int(n) for n in sizes)
    if height == 0 or width == 0:
        raise ImageConversionError('empty', f'image is {width}x{height}')
    if max_pixels is not None and height * width > max_pixels:
        raise ImageConversionError(
            'too-large', f'image is {width}x{height}, more than {max_pixels} pixels')
    row_bytes = width * fmt.channels * fmt.dtype.itemsize
    if step < row_bytes:
        raise ImageConversionError(
            'bad-step', f'step {step} < width {width} x {fmt.channels * fmt.dtype.itemsize} bytes')
    try:
        data = np.frombuffer(msg.data, np.uint8)
    except (TypeError, ValueError) as e:
        raise ImageConversionError('malformed', f'data is not bytes: {e}') from None
    if data.size != height * step:
        raise ImageConversionError(
            'bad-length', f'data has {data.size} bytes, height x step = {height * step}')
    rows = data.reshape(height, step)[:, :row_bytes]
    dtype = fmt.dtype.newbyteorder('>' if msg.is_bigendian else '<')
    pixels = np.ascontiguousarray(rows).view(dtype).astype(fmt.dtype, copy=False)
    shape = (height, width) if fmt.channels == 1 else (height, width, fmt.channels)
    return pixels.reshape(shape).copy()


def image_to_rgb(msg, max_pixels: int | None = None) -> np.ndarray:
    """Return an (H, W, 3) uint8 RGB array for any 8-bit colour or mono encoding."""
    pixels = image_to_array(msg, max_pixels)
    encoding = msg.encoding
    if pixels.dtype != np.uint8:
        raise ImageConversionError('unsupported-encoding', f"'{encoding}' is not an 8-bit image")
    if pixels.ndim == 2:
        return np.repeat(pixels[:, :, None], 3, axis=2)
    if encoding.startswith('bgr'):
        pixels = pixels[:, :, 2::-1]
    return np.ascontiguousarray(pixels[:, :, :3])


def array_to_image(array: np.ndarray, encoding: str, header=None):
    """Build a sensor_msgs/Image from an array whose shape and dtype match the encoding."""
    from sensor_msgs.msg import Image

    fmt = PIXEL_FORMATS.get(encoding)
    if fmt is None:
        raise ImageConversionError('unsupported-encoding', f"encoding '{encoding}' is unknown")
    expected_ndim = 2 if fmt.channels == 1 else 3
    if (array.ndim != expected_ndim or array.dtype != fmt.dtype
            or (fmt.channels > 1 and array.shape[2] != fmt.channels)):
        raise ImageConversionError(
            'shape-mismatch',
            f'{encoding} needs {fmt.channels} channel(s) of {fmt.dtype}, '
            f'got shape {array.shape} of {array.dtype}')
    msg = Image()
    if header is not None:
        msg.header = header
    msg.height, msg.width = int(array.shape[0]), int(array.shape[1])
    msg.encoding = encoding
    msg.is_bigendian = 0
    little = np.ascontiguousarray(array, dtype=fmt.dtype.newbyteorder('<'))
    msg.step = msg.width * fmt.channels * fmt.dtype.itemsize
    msg.data = little.tobytes()
    return msg
