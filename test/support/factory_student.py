"""A user's own PyTorch student, named by its factory in tests: `support.factory_student:tiny`."""

from torch import nn


def tiny(num_classes: int) -> nn.Module:
    """Conv-BN-ReLU at half resolution, a 1x1 head: logits at half the input's size."""
    return nn.Sequential(
        nn.Conv2d(3, 12, 3, stride=2, padding=1), nn.BatchNorm2d(12), nn.ReLU(),
        nn.Conv2d(12, 12, 3, padding=1), nn.BatchNorm2d(12), nn.ReLU(),
        nn.Conv2d(12, num_classes, 1))


def not_a_module(num_classes: int):
    return [num_classes]
