"""Confusion matrix, IoU and mIoU as the paper reports them, on hand-built cases."""

import numpy as np
import pytest

from ams_ros import IGNORE_LABEL
from ams_ros.metrics import MiouAccumulator, class_iou, confusion_matrix, frame_miou, mean_iou

# Pairs (label, prediction), ignored ones left out: class 0: TP 2, FN 1, FP 1;
# class 1: TP 2, FP 1; class 2: FN 1; class 3: absent.
LABELS = np.array([[0, 0, 0, 1], [2, 1, IGNORE_LABEL, 0]], np.uint8)
PREDICTIONS = np.array([[0, 0, 1, 1], [0, 1, 2, IGNORE_LABEL]], np.uint8)


def test_confusion_matrix_counts_pairs_and_leaves_out_ignored_pixels():
    expected = np.zeros((4, 4), np.int64)
    expected[0, 0] = 2
    expected[0, 1] = 1
    expected[1, 1] = 2
    expected[2, 0] = 1
    np.testing.assert_array_equal(confusion_matrix(LABELS, PREDICTIONS, 4), expected)


def test_class_iou_and_miou_skip_absent_classes():
    confusion = confusion_matrix(LABELS, PREDICTIONS, 4)
    ious = class_iou(confusion)
    # class 0: 2 / (2 + 1 + 1); class 1: 2 / (2 + 1); class 2: 0 / 1; class 3 absent: NaN
    np.testing.assert_allclose(ious[:3], [0.5, 2 / 3, 0.0])
    assert np.isnan(ious[3])
    assert mean_iou(confusion) == pytest.approx((0.5 + 2 / 3 + 0.0) / 3)
    assert mean_iou(confusion, classes=[0, 1]) == pytest.approx((0.5 + 2 / 3) / 2)
    assert mean_iou(confusion, classes=[1, 3]) == pytest.approx(2 / 3)  # 3 skipped, not 0
    assert np.isnan(mean_iou(confusion, classes=[3]))


def test_perfect_and_disjoint_predictions():
    labels = np.array([[0, 1], [2, 2]], np.uint8)
    assert frame_miou(labels, labels, 3) == 1.0
    assert frame_miou(labels, (labels + 1) % 3, 3) == 0.0


def test_matches_a_per_class_loop():
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 6, (64, 80)).astype(np.uint8)
    labels[rng.random(labels.shape) < 0.1] = IGNORE_LABEL
    noise = rng.integers(0, 6, labels.shape)
    predictions = np.where(rng.random(labels.shape) < 0.6, labels, noise).astype(np.uint8)
    predictions[predictions == IGNORE_LABEL] = 0
    valid = labels != IGNORE_LABEL
    expected = [np.sum((labels == c) & (predictions == c) & valid)
                / np.sum(((labels == c) | (predictions == c)) & valid) for c in range(6)]
    np.testing.assert_allclose(class_iou(confusion_matrix(labels, predictions, 6)), expected)


def test_accumulator_pools_pixels_and_averages_frames():
    accumulator = MiouAccumulator(num_classes=2)
    big = np.zeros((10, 10), np.uint8)  # frame 1: all class 0, predicted right
    assert accumulator.add(big, big) == 1.0
    small_labels = np.array([[1, 1]], np.uint8)  # frame 2: class 1, predicted as 0
    assert accumulator.add(small_labels, np.zeros_like(small_labels)) == 0.0
    # Pooled: class 0 IoU 100 / 102, class 1 IoU 0 / 2.
    np.testing.assert_allclose(accumulator.class_iou(), [100 / 102, 0.0])
    assert accumulator.miou() == pytest.approx(50 / 102)
    assert accumulator.mean_frame_miou() == pytest.approx(0.5)
    assert accumulator.confusion.sum() == 102


def test_accumulator_class_subset_and_empty_frames():
    accumulator = MiouAccumulator(num_classes=3, classes=[1, 2])
    labels = np.array([[0, 0, 1]], np.uint8)
    assert accumulator.add(labels, labels) == 1.0
    assert np.isnan(accumulator.add(np.zeros((1, 3), np.uint8), np.zeros((1, 3), np.uint8)))
    assert accumulator.mean_frame_miou() == 1.0  # the frame with none of the classes is skipped
    assert np.isnan(MiouAccumulator(num_classes=3).miou())


def test_bad_inputs_are_refused():
    labels = np.zeros((2, 2), np.uint8)
    with pytest.raises(ValueError, match='differ'):
        confusion_matrix(labels, np.zeros((2, 3), np.uint8), 2)
    with pytest.raises(ValueError, match='label values'):
        confusion_matrix(labels + 5, labels, 2)
    with pytest.raises(ValueError, match='prediction values'):
        confusion_matrix(labels, labels + 5, 2)
    with pytest.raises(ValueError, match='classes'):
        mean_iou(np.eye(2), classes=[-1])
    with pytest.raises(ValueError, match='classes'):
        MiouAccumulator(num_classes=2, classes=[2])
