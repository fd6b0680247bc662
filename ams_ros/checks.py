"""Argument checks shared by the engine's configurable classes."""

from __future__ import annotations

import math


def positive_finite(name: str, value: float) -> float:
    """Return value as a float; ValueError unless it is finite and above zero."""
    value = float(value)
    if not (math.isfinite(value) and value > 0):
        raise ValueError(f'{name} must be positive and finite, got {value}')
    return value
