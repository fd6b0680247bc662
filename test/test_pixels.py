"""One resizing convention for frames and class-id maps (ams_ros.pixels)."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from ams_ros.pixels import resize_frame, resize_labels


@pytest.mark.parametrize('shape,size', [((7, 13), (32, 64)), ((64, 128), (25, 31)),
                                        ((90, 160), (32, 64)), ((3, 5), (3, 5))])
def test_labels_resize_as_torch_nearest_exact(shape, size):
    labels = np.random.default_rng(0).integers(0, 200, shape).astype(np.uint8)
    expected = F.interpolate(torch.from_numpy(labels)[None, None].float(), size=size,
                             mode='nearest-exact')[0, 0].numpy().astype(np.uint8)
    np.testing.assert_array_equal(resize_labels(labels, *size), expected)


def test_labels_keep_their_ids_and_batches_resize_alike():
    labels = np.random.default_rng(1).integers(0, 6, (3, 40, 50)).astype(np.int64)
    small = resize_labels(labels, 8, 12)
    assert small.shape == (3, 8, 12) and small.dtype == np.int64
    assert set(np.unique(small)) <= set(np.unique(labels))
    for one, many in zip(labels, small, strict=True):
        np.testing.assert_array_equal(resize_labels(one, 8, 12), many)


def test_frames_are_resized_and_checked():
    frame = np.random.default_rng(2).integers(0, 256, (48, 64, 3)).astype(np.uint8)
    assert resize_frame(frame, 24, 32).shape == (24, 32, 3)
    assert resize_frame(frame, 96, 128).shape == (96, 128, 3)
    uniform = np.full((48, 64, 3), 77, np.uint8)
    assert (resize_frame(uniform, 20, 30) == 77).all()  # area averaging keeps a flat colour
    with pytest.raises(ValueError):
        resize_frame(frame.astype(np.float32), 24, 32)
