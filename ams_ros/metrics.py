"""Segmentation accuracy as the paper reports it (§4.1): mIoU of predictions against labels.

IoU of a class = true positives / (true positives + false positives + false negatives), and
mIoU is the mean IoU over a chosen subset of classes (the paper picks each video's most common
classes). A class absent from both the labels and the predictions of what is evaluated has IoU
0/0: it is skipped, not counted as 0 (which would punish a model for a class the scene lacks)
nor as 1 (which would reward it for nothing). This is also what the original code does
(nanmean over classes).

Pixels whose label or prediction is IGNORE_LABEL are left out entirely. Labels carry it where
the teacher abstains; a student's argmax prediction never does, and for the φ-score (teacher
label against teacher label) either side may.

The confusion matrix is indexed [label, prediction] and built with one np.bincount.
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np

from ams_ros import IGNORE_LABEL


def confusion_matrix(labels: np.ndarray, predictions: np.ndarray, num_classes: int,
                     ignore_label: int = IGNORE_LABEL) -> np.ndarray:
    """Count pixels per (label, prediction) pair: a num_classes x num_classes int64 matrix."""
    labels = np.asarray(labels)
    predictions = np.asarray(predictions)
    if labels.shape != predictions.shape:
        raise ValueError(f'labels {labels.shape} and predictions {predictions.shape} differ')
    if num_classes < 1:
        raise ValueError(f'num_classes must be >= 1, got {num_classes}')
    keep = (labels != ignore_label) & (predictions != ignore_label)
    kept_labels = labels[keep].astype(np.int64)
    kept_predictions = predictions[keep].astype(np.int64)
    for name, values in (('label', kept_labels), ('prediction', kept_predictions)):
        if values.size and (values.min() < 0 or values.max() >= num_classes):
            raise ValueError(f'{name} values must be in [0, {num_classes}) or {ignore_label}, '
                             f'found {values.min()}..{values.max()}')
    counts = np.bincount(kept_labels * num_classes + kept_predictions,
                         minlength=num_classes * num_classes)
    return counts.reshape(num_classes, num_classes)


def class_iou(confusion: np.ndarray) -> np.ndarray:
    """IoU per class; NaN for a class absent from both labels and predictions."""
    confusion = np.asarray(confusion, dtype=np.float64)
    true_positives = np.diag(confusion)
    union = confusion.sum(axis=0) + confusion.sum(axis=1) - true_positives
    with np.errstate(invalid='ignore', divide='ignore'):
        return np.where(union > 0, true_positives / union, np.nan)


def class_subset(classes: Iterable[int], num_classes: int) -> np.ndarray:
    """Class ids as an index array, refusing ids outside [0, num_classes)."""
    chosen = np.asarray(list(classes), dtype=np.int64)
    if chosen.size and (chosen.min() < 0 or chosen.max() >= num_classes):
        raise ValueError(f'classes must be in [0, {num_classes}), got {chosen.tolist()}')
    return chosen


def mean_iou(confusion: np.ndarray, classes: Iterable[int] | None = None) -> float:
    """Mean IoU over `classes` (all by default), skipping absent ones; NaN if all are absent."""
    ious = class_iou(confusion)
    if classes is not None:
        ious = ious[class_subset(classes, ious.size)]
    present = ious[~np.isnan(ious)]
    return float(present.mean()) if present.size else float('nan')


def frame_miou(labels: np.ndarray, predictions: np.ndarray, num_classes: int,
               classes: Iterable[int] | None = None, ignore_label: int = IGNORE_LABEL) -> float:
    """MIoU of one frame: classes absent from this frame are skipped."""
    return mean_iou(confusion_matrix(labels, predictions, num_classes, ignore_label), classes)


class MiouAccumulator:
    """Running evaluation over many frames.

    Two summaries, both skipping absent classes: `miou()` pools the pixels of all frames into
    one confusion matrix (a class counts once, weighted by its pixels across the whole
    evaluation); `mean_frame_miou()` averages the per-frame mIoUs (every frame counts equally,
    what a per-frame CDF such as the paper's Figure 5 is built from).
    """

    def __init__(self, num_classes: int, classes: Iterable[int] | None = None,
                 ignore_label: int = IGNORE_LABEL):
        if num_classes < 1:
            raise ValueError(f'num_classes must be >= 1, got {num_classes}')
        self.num_classes = num_classes
        self.classes = None if classes is None else class_subset(classes, num_classes)
        self.ignore_label = ignore_label
        self.confusion = np.zeros((num_classes, num_classes), dtype=np.int64)
        self.frame_mious: list[float] = []  # NaN for a frame with none of the classes

    def add(self, labels: np.ndarray, predictions: np.ndarray) -> float:
        """Add one frame; return its mIoU."""
        confusion = confusion_matrix(labels, predictions, self.num_classes, self.ignore_label)
        self.confusion += confusion
        miou = mean_iou(confusion, self.classes)
        self.frame_mious.append(miou)
        return miou

    def class_iou(self) -> np.ndarray:
        return class_iou(self.confusion)

    def miou(self) -> float:
        return mean_iou(self.confusion, self.classes)

    def mean_frame_miou(self) -> float:
        """Mean of the per-frame mIoUs, over frames that had any of the classes."""
        values = np.asarray(self.frame_mious, dtype=np.float64)
        values = values[~np.isnan(values)]
        return float(values.mean()) if values.size else float('nan')
