"""numpy <-> sensor_msgs/Image for the encodings cameras publish, and clear errors otherwise."""

import numpy as np
import pytest

pytest.importorskip('sensor_msgs')
from sensor_msgs.msg import Image  # noqa: E402

from ams_ros.ros.image_conversion import (  # noqa: E402
    ImageConversionError,
    array_to_image,
    image_to_array,
    image_to_rgb,
)

rng = np.random.default_rng(3)
CASES = {
    'rgb8': rng.integers(0, 256, (5, 7, 3), dtype=np.uint8),
    'bgr8': rng.integers(0, 256, (5, 7, 3), dtype=np.uint8),
    'mono8': rng.integers(0, 256, (5, 7), dtype=np.uint8),
    'mono16': rng.integers(0, 65536, (5, 7), dtype=np.uint16),
}


@pytest.mark.parametrize('encoding', sorted(CASES))
def test_round_trip(encoding):
    array = CASES[encoding]
    msg = array_to_image(array, encoding)
    assert (msg.height, msg.width, msg.encoding) == (5, 7, encoding)
    assert msg.step * msg.height == len(msg.data)
    back = image_to_array(msg)
    assert back.dtype == array.dtype
    np.testing.assert_array_equal(back, array)


def test_bgr_becomes_rgb():
    bgr = CASES['bgr8']
    np.testing.assert_array_equal(image_to_rgb(array_to_image(bgr, 'bgr8')), bgr[:, :, ::-1])
    mono = CASES['mono8']
    assert image_to_rgb(array_to_image(mono, 'mono8')).shape == (5, 7, 3)


def test_row_padding_is_dropped():
    array = CASES['rgb8']
    padded = np.zeros((5, 7 * 3 + 4), np.uint8)
    padded[:, :21] = array.reshape(5, 21)
    msg = Image(height=5, width=7, encoding='rgb8', step=25, data=padded.tobytes())
    np.testing.assert_array_equal(image_to_array(msg), array)


def test_big_endian_mono16():
    array = CASES['mono16']
    msg = Image(height=5, width=7, encoding='mono16', is_bigendian=1, step=14,
                data=array.astype('>u2').tobytes())
    np.testing.assert_array_equal(image_to_array(msg), array)


@pytest.mark.parametrize('msg,reason', [
    (Image(height=2, width=2, encoding='yuv422', step=4, data=bytes(8)), 'unsupported-encoding'),
    (Image(height=2, width=2, encoding='rgb8', step=6, data=bytes(11)), 'bad-length'),
    (Image(height=2, width=2, encoding='rgb8', step=6, data=bytes(13)), 'bad-length'),
    (Image(height=2, width=2, encoding='rgb8', step=5, data=bytes(10)), 'bad-step'),
    (Image(height=0, width=2, encoding='mono8', step=2, data=b''), 'empty'),
])
def test_bad_images_are_rejected_with_reason(msg, reason):
    with pytest.raises(ImageConversionError) as err:
        image_to_array(msg)
    assert err.value.reason == reason
    assert msg.encoding in str(err.value) or reason != 'unsupported-encoding'


def test_images_over_the_pixel_limit_are_refused():
    image = array_to_image(CASES['rgb8'], 'rgb8')  # 7x5
    assert image_to_rgb(image, max_pixels=35).shape == (5, 7, 3)
    with pytest.raises(ImageConversionError, match='7x5, more than 34 pixels') as err:
        image_to_rgb(image, max_pixels=34)
    assert err.value.reason == 'too-large'
    # Judged on the declared size, before the data: a huge header costs nothing to refuse.
    huge = Image(height=100_000, width=100_000, encoding='rgb8', step=300_000, data=bytes(3))
    with pytest.raises(ImageConversionError, match='too-large'):
        image_to_array(huge, max_pixels=16_000_000)


def test_rgb_of_16_bit_image_is_refused():
    with pytest.raises(ImageConversionError, match='8-bit'):
        image_to_rgb(array_to_image(CASES['mono16'], 'mono16'))


def test_array_must_match_encoding():
    with pytest.raises(ImageConversionError) as err:
        array_to_image(CASES['mono8'], 'rgb8')
    assert err.value.reason == 'shape-mismatch'
