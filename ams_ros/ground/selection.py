"""Which parameters a training phase updates (paper §3.1.2 and the Table 3 ablation).

Every strategy picks round(fraction * N) indices into the flat parameter vector (manifest order)
and returns them as a sorted int64 array, the form patches carry. 'first_layers' and
'last_layers' take the head or tail of the vector: the manifest follows named_parameters(),
which is the order layers are declared, input side first.
"""

from __future__ import annotations

import numpy as np

DEFAULT_FRACTION = 0.05

GRADIENT_GUIDED = 'gradient_guided'  # top |u_{n-1}| (Algorithm 2, line 1); random at first
# Beyond the paper: top |m_{n-1}|, the optimiser's running average of the gradient; random at
# first. |u| = |m| / sqrt(v) measures how steady a gradient's sign is and sits near its ceiling
# for many parameters, so its top 5% is close to a random pick; |m| ranks by how much the loss
# depends on the parameter.
GRADIENT_MAGNITUDE = 'gradient_magnitude'
RANDOM = 'random'  # uniformly at random, fresh every phase
FIRST_LAYERS = 'first_layers'
LAST_LAYERS = 'last_layers'
FIRST_LAST = 'first_last'  # half from each end
FULL = 'full'  # every parameter: full-model training
GAUSS_SOUTHWELL = 'gauss_southwell'  # top |gradient| at the start of the phase

STRATEGIES = (GRADIENT_GUIDED, GRADIENT_MAGNITUDE, RANDOM, FIRST_LAYERS, LAST_LAYERS, FIRST_LAST,
              FULL, GAUSS_SOUTHWELL)


def selection_size(total: int, fraction: float) -> int:
    """How many of `total` parameters a fraction selects (at least one)."""
    if not 0.0 < fraction <= 1.0:
        raise ValueError(f'fraction must be in (0, 1], got {fraction}')
    return min(total, max(1, round(fraction * total)))


def top_magnitude(values: np.ndarray, count: int) -> np.ndarray:
    """Return the indices of the `count` largest |values|, sorted by index."""
    values = np.abs(np.asarray(values).ravel())
    if count >= values.size:
        return np.arange(values.size, dtype=np.int64)
    # argpartition is O(N); only the winners are sorted, by index.
    top = np.argpartition(values, values.size - count)[values.size - count:]
    return np.sort(top).astype(np.int64)


def uniform_random(total: int, count: int, rng: np.random.Generator) -> np.ndarray:
    return np.sort(rng.choice(total, size=count, replace=False)).astype(np.int64)


def first(total: int, count: int) -> np.ndarray:
    return np.arange(count, dtype=np.int64)


def last(total: int, count: int) -> np.ndarray:
    return np.arange(total - count, total, dtype=np.int64)


def first_last(total: int, count: int) -> np.ndarray:
    head = count // 2
    return np.concatenate([first(total, head), last(total, count - head)])


def select_indices(strategy: str, total: int, fraction: float = DEFAULT_FRACTION,
                   rng: np.random.Generator | None = None,
                   previous_update: np.ndarray | None = None,
                   gradient: np.ndarray | None = None) -> np.ndarray:
    """Sorted int64 indices of the parameters to train in this phase.

    `previous_update` is what the previous phase ranks by (None before the first phase): u_{n-1}
    for 'gradient_guided', m_{n-1} for 'gradient_magnitude'. `gradient` is the full gradient
    at the start of the phase, needed by 'gauss_southwell' only. `rng` is needed whenever the
    choice is random: 'random', and the two gradient strategies in their first phase.
    """
    count = selection_size(total, fraction)
    if strategy in (GRADIENT_GUIDED, GRADIENT_MAGNITUDE):
        if previous_update is None:
            return uniform_random(total, count, _need(rng, 'rng'))
        return top_magnitude(_sized(previous_update, total), count)
    if strategy == GAUSS_SOUTHWELL:
        return top_magnitude(_sized(_need(gradient, 'gradient'), total), count)
    if strategy == RANDOM:
        return uniform_random(total, count, _need(rng, 'rng'))
    if strategy == FIRST_LAYERS:
        return first(total, count)
    if strategy == LAST_LAYERS:
        return last(total, count)
    if strategy == FIRST_LAST:
        return first_last(total, count)
    if strategy == FULL:
        return np.arange(total, dtype=np.int64)
    raise ValueError(f'unknown strategy {strategy!r}; expected one of {STRATEGIES}')


def _need(value, name: str):
    if value is None:
        raise ValueError(f'this strategy needs {name}')
    return value


def _sized(values: np.ndarray, total: int) -> np.ndarray:
    if np.size(values) != total:
        raise ValueError(f'expected {total} values, got {np.size(values)}')
    return values
