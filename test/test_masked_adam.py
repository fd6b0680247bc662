"""Masked Adam and SGD against references written from the paper's lines and from torch.optim."""

import numpy as np
import pytest
import torch
from torch import nn

from ams_ros.ground.masked_adam import MaskedAdam, MaskedSGD
from ams_ros.ground.selection import GRADIENT_GUIDED, select_indices
from ams_ros.model.manifest import ParameterManifest, module_to_vector, vector_to_module

LR, BETAS, EPS = 1e-2, (0.9, 0.999), 1e-8


def tiny_model():
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.Tanh(), nn.Conv2d(4, 3, 1))


class TinyProblem:
    """Loss gradients of a tiny conv model at any flat parameter vector, one batch per step."""

    def __init__(self, batches=4):
        self.model = tiny_model()
        self.manifest = ParameterManifest.from_module(self.model)
        self.w0 = module_to_vector(self.model, self.manifest)
        gen = torch.Generator().manual_seed(1)
        self.batches = [(torch.randn(2, 3, 5, 5, generator=gen),
                         torch.randint(0, 3, (2, 5, 5), generator=gen)) for _ in range(batches)]
        self.calls = 0

    def gradient(self, flat: np.ndarray) -> np.ndarray:
        x, y = self.batches[self.calls % len(self.batches)]
        self.calls += 1
        vector_to_module(np.asarray(flat, np.float32), self.model, self.manifest)
        self.model.zero_grad()
        nn.functional.cross_entropy(self.model(x), y).backward()
        return self.manifest.join({n: p.grad.numpy() for n, p in self.model.named_parameters()})


def reference_phase(state, problem, first_indices, fraction, iterations):
    """Algorithm 2, one line at a time, in numpy (float32 like the model)."""
    w, m, v, i, u_prev = state
    n = w.size
    if u_prev is None:  # first phase: the random choice under test, checked separately
        chosen = first_indices
    else:  # line 1: gamma fraction with the largest |u_{n-1}|
        chosen = np.argsort(-np.abs(u_prev), kind='stable')[:round(fraction * n)]
    b = np.zeros(n, np.float32)  # line 2
    b[chosen] = 1
    beta1, beta2 = BETAS
    for _ in range(iterations):
        g = problem.gradient(w)  # line 8
        m = beta1 * m + (1 - beta1) * g  # line 9
        v = beta2 * v + (1 - beta2) * g ** 2  # line 10
        i = i + 1  # line 11
        u = LR * np.sqrt(1 - beta2 ** i) / (1 - beta1 ** i) * m / np.sqrt(v + EPS)  # line 12
        w = w - u * b  # line 13
    return (w, m, v, i, u), np.sort(chosen)


def test_masked_adam_matches_algorithm_2_over_several_gradient_guided_phases():
    fraction, iterations, phases = 0.2, 3, 4
    under_test, reference = TinyProblem(), TinyProblem()
    n = under_test.manifest.total_size
    weights = torch.from_numpy(under_test.w0.copy())
    adam = MaskedAdam(weights, LR, BETAS, EPS)
    rng = np.random.default_rng(0)
    zeros = np.zeros(n, np.float32)
    state = (reference.w0.copy(), zeros, zeros, 0, None)
    for phase in range(phases):
        previous = adam.update.numpy().copy() if adam.steps else None
        indices = select_indices(GRADIENT_GUIDED, n, fraction, rng, previous_update=previous)
        before = weights.numpy().copy()
        for _ in range(iterations):
            grad = torch.from_numpy(under_test.gradient(weights.numpy()))
            adam.step(grad, torch.from_numpy(indices))
        state, expected_indices = reference_phase(state, reference, indices, fraction,
                                                  iterations)
        np.testing.assert_array_equal(indices, expected_indices)
        w, m, v, i, u = state
        np.testing.assert_allclose(weights.numpy(), w, rtol=1e-6, atol=1e-7)
        np.testing.assert_allclose(adam.m.numpy(), m, rtol=1e-6, atol=1e-9)
        np.testing.assert_allclose(adam.v.numpy(), v, rtol=1e-6, atol=1e-12)
        np.testing.assert_allclose(adam.update.numpy(), u, rtol=1e-5, atol=1e-9)
        assert adam.steps == i == (phase + 1) * iterations
        # Only the selected parameters moved, but the moments moved everywhere.
        outside = np.ones(n, bool)
        outside[indices] = False
        np.testing.assert_array_equal(weights.numpy()[outside], before[outside])
        assert np.all(adam.m.numpy()[outside] != 0)
        assert np.all(adam.v.numpy()[outside] > 0)
        assert np.all(weights.numpy()[indices] != before[indices])


def test_first_phase_mask_is_random_of_the_right_size():
    n = 1000
    first = select_indices(GRADIENT_GUIDED, n, 0.05, np.random.default_rng(1))
    other = select_indices(GRADIENT_GUIDED, n, 0.05, np.random.default_rng(2))
    assert first.size == other.size == 50
    assert np.unique(first).size == 50
    assert not np.array_equal(first, other)
    assert first.min() >= 0 and first.max() < n


def test_eps_sits_inside_the_square_root():
    weights = torch.zeros(1)
    adam = MaskedAdam(weights, lr=1.0, betas=BETAS, eps=1e-8)
    g = 1e-5
    adam.step(torch.tensor([g]), torch.tensor([0]))
    m, v = 0.1 * g, 0.001 * g * g
    paper = np.sqrt(1 - 0.999) / (1 - 0.9) * m / np.sqrt(v + 1e-8)
    torch_style = 1.0 * g / (g + 1e-8)  # m_hat / (sqrt(v_hat) + eps): about 1
    assert adam.update.item() == pytest.approx(paper, rel=1e-5)
    assert adam.update.item() < 0.5 * torch_style
    assert weights.item() == pytest.approx(-paper, rel=1e-5)


def test_unmasked_full_adam_equals_torch_adam_when_eps_is_zero():
    # With eps = 0 Algorithm 2's update is exactly Adam's, so torch.optim.Adam is a reference.
    problem, model = TinyProblem(), tiny_model()
    manifest = problem.manifest
    weights = torch.from_numpy(problem.w0.copy())
    adam = MaskedAdam(weights, LR, BETAS, eps=0.0)
    everything = torch.arange(manifest.total_size)
    torch_adam = torch.optim.Adam(model.parameters(), lr=LR, betas=BETAS, eps=0.0)
    for x, y in problem.batches * 2:
        adam.step(torch.from_numpy(problem.gradient(weights.numpy())), everything)
        torch_adam.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        torch_adam.step()
    np.testing.assert_allclose(weights.numpy(), module_to_vector(model, manifest),
                               rtol=1e-5, atol=1e-6)


def test_masked_sgd_with_momentum_matches_torch_sgd_and_respects_the_mask():
    problem, model = TinyProblem(), tiny_model()
    manifest = problem.manifest
    n = manifest.total_size
    weights = torch.from_numpy(problem.w0.copy())
    sgd = MaskedSGD(weights, lr=0.1, momentum=0.9)
    torch_sgd = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    for x, y in problem.batches:
        sgd.step(torch.from_numpy(problem.gradient(weights.numpy())), torch.arange(n))
        torch_sgd.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        torch_sgd.step()
    np.testing.assert_allclose(weights.numpy(), module_to_vector(model, manifest),
                               rtol=1e-5, atol=1e-6)

    # Now a partial mask: the velocity keeps moving everywhere, weights only where selected.
    before, velocity = weights.numpy().copy(), sgd.velocity.numpy().copy()
    chosen = torch.tensor([0, 5, 7])
    grad = problem.gradient(weights.numpy())
    sgd.step(torch.from_numpy(grad), chosen)
    np.testing.assert_allclose(sgd.velocity.numpy(), 0.9 * velocity + grad, rtol=1e-6)
    np.testing.assert_allclose(sgd.update.numpy(), 0.1 * sgd.velocity.numpy(), rtol=1e-6)
    changed = np.flatnonzero(weights.numpy() != before)
    np.testing.assert_array_equal(changed, chosen.numpy())


def test_plain_sgd_update_is_lr_times_gradient():
    weights = torch.ones(4)
    sgd = MaskedSGD(weights, lr=0.5)
    sgd.step(torch.tensor([1.0, 2.0, 3.0, 4.0]), torch.tensor([1, 3]))
    np.testing.assert_allclose(weights.numpy(), [1.0, 0.0, 1.0, -1.0])
    np.testing.assert_allclose(sgd.update.numpy(), [0.5, 1.0, 1.5, 2.0])


def test_state_carries_across_phases_and_rejects_non_flat_weights():
    weights = torch.zeros(3)
    adam = MaskedAdam(weights)
    adam.step(torch.ones(3), torch.tensor([0]))
    m_after_one = adam.m.clone()
    adam.step(torch.ones(3), torch.tensor([1]))  # a new phase's mask
    assert adam.steps == 2
    assert torch.all(adam.m > m_after_one)
    with pytest.raises(ValueError):
        MaskedAdam(torch.zeros(3, dtype=torch.float64))
    with pytest.raises(ValueError):
        MaskedAdam(torch.zeros(2, 2))
