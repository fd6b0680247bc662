"""Parameter selection strategies of the Table 3 ablation."""

import numpy as np
import pytest

from ams_ros.ground.selection import (
    FIRST_LAST,
    FIRST_LAYERS,
    FULL,
    GAUSS_SOUTHWELL,
    GRADIENT_GUIDED,
    LAST_LAYERS,
    RANDOM,
    STRATEGIES,
    select_indices,
    selection_size,
)

N = 1000


def choose(strategy, fraction=0.05, seed=0, **kwargs):
    indices = select_indices(strategy, N, fraction, np.random.default_rng(seed), **kwargs)
    assert indices.dtype == np.int64
    assert np.all(np.diff(indices) > 0), 'sorted and unique'
    return indices


def test_sizes():
    assert selection_size(N, 0.05) == 50
    assert selection_size(10, 0.01) == 1  # never empty
    assert selection_size(N, 1.0) == N
    with pytest.raises(ValueError):
        selection_size(N, 0.0)
    with pytest.raises(ValueError):
        selection_size(N, 1.5)


@pytest.mark.parametrize('strategy', [s for s in STRATEGIES if s != FULL])
def test_every_strategy_selects_the_fraction(strategy):
    update = np.random.default_rng(5).normal(size=N)
    indices = choose(strategy, 0.1, previous_update=update, gradient=update)
    assert indices.size == 100
    assert 0 <= indices[0] and indices[-1] < N


def test_layer_strategies_take_the_ends_of_the_manifest_order():
    np.testing.assert_array_equal(choose(FIRST_LAYERS), np.arange(50))
    np.testing.assert_array_equal(choose(LAST_LAYERS), np.arange(950, 1000))
    np.testing.assert_array_equal(
        choose(FIRST_LAST, 0.051), np.r_[np.arange(25), np.arange(974, 1000)])
    np.testing.assert_array_equal(choose(FULL), np.arange(N))


def test_gradient_guided_takes_the_largest_previous_updates_by_magnitude():
    update = np.random.default_rng(3).normal(scale=1e-3, size=N).astype(np.float32)
    winners = np.array([3, 400, 999])
    update[winners] = [5.0, -7.0, 6.0]  # sign must not matter
    chosen = choose(GRADIENT_GUIDED, 0.003, previous_update=update)
    np.testing.assert_array_equal(chosen, winners)
    big = choose(GRADIENT_GUIDED, previous_update=update)
    threshold = np.sort(np.abs(update))[-50]
    np.testing.assert_array_equal(big, np.flatnonzero(np.abs(update) >= threshold))


def test_gradient_guided_first_phase_and_random_are_uniform_and_seeded():
    first = choose(GRADIENT_GUIDED, seed=7)
    np.testing.assert_array_equal(first, choose(GRADIENT_GUIDED, seed=7))
    assert not np.array_equal(first, choose(GRADIENT_GUIDED, seed=8))
    np.testing.assert_array_equal(choose(RANDOM, seed=7), choose(RANDOM, seed=7))
    # Uniform over the whole vector: picks from many draws cover both halves about equally.
    rng = np.random.default_rng(0)
    picks = np.concatenate([select_indices(RANDOM, N, 0.05, rng) for _ in range(200)])
    assert abs(np.mean(picks < N // 2) - 0.5) < 0.03
    with pytest.raises(ValueError):
        select_indices(RANDOM, N, 0.05)


def test_gauss_southwell_ranks_the_gradient_and_needs_it():
    gradient = np.zeros(N)
    gradient[[10, 20]] = [-1.0, 2.0]
    np.testing.assert_array_equal(choose(GAUSS_SOUTHWELL, 0.002, gradient=gradient), [10, 20])
    with pytest.raises(ValueError):
        select_indices(GAUSS_SOUTHWELL, N, 0.05)
    with pytest.raises(ValueError):
        select_indices(GAUSS_SOUTHWELL, N, 0.05, gradient=np.zeros(N - 1))


def test_unknown_strategy_is_refused():
    with pytest.raises(ValueError):
        select_indices('biggest_layers', N)
