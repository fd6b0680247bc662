"""Coordinate-descent optimisers over the flat parameter vector (paper Algorithm 2).

Both optimisers keep their state for *every* parameter and update it from the full gradient on
every iteration, but apply the step only to the parameters a phase has selected. Their state
(moments, global step count and the last update u) carries across phases, and `update` is u_n,
the vector the gradient-guided strategy ranks to pick the next phase's parameters.

All tensors are flat float32 vectors laid out by the parameter manifest, so each iteration is a
handful of vectorised ops plus a gather/scatter over the selected indices.
"""

from __future__ import annotations

import math

import torch


class MaskedAdam:
    """Adam with a parameter mask, exactly as Algorithm 2 writes it.

    Line 12 computes u = alpha * sqrt(1 - beta2^i) / (1 - beta1^i) * m / sqrt(v + eps): eps sits
    *inside* the square root, unlike torch.optim.Adam's m_hat / (sqrt(v_hat) + eps). With the
    default eps = 1e-8 the denominator is floored at 1e-4 rather than 1e-8, which damps the
    steps of parameters whose gradients are tiny.
    """

    def __init__(self, weights: torch.Tensor, lr: float = 1e-3,
                 betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8):
        check_flat(weights)
        self.weights = weights  # updated in place; the model's parameters are views of it
        self.lr = float(lr)
        self.beta1, self.beta2 = (float(b) for b in betas)
        self.eps = float(eps)
        self.m = torch.zeros_like(weights)
        self.v = torch.zeros_like(weights)
        self.update = torch.zeros_like(weights)  # u of the latest iteration
        self.steps = 0  # Adam's global step count i, never reset between phases
        self._denominator = torch.empty_like(weights)  # scratch, reused every step

    def step(self, grad: torch.Tensor, indices: torch.Tensor) -> None:
        """One iteration (lines 8-13): update m, v, u everywhere; apply u at `indices` only."""
        self.m.mul_(self.beta1).add_(grad, alpha=1.0 - self.beta1)
        self.v.mul_(self.beta2).addcmul_(grad, grad, value=1.0 - self.beta2)
        self.steps += 1
        i = self.steps
        scale = self.lr * math.sqrt(1.0 - self.beta2 ** i) / (1.0 - self.beta1 ** i)
        torch.add(self.v, self.eps, out=self._denominator).sqrt_()
        torch.div(self.m, self._denominator, out=self.update).mul_(scale)
        apply_masked(self.weights, self.update, indices)

    @property
    def gradient_average(self) -> torch.Tensor:
        """The running average of the gradient: the first moment m."""
        return self.m


class MaskedSGD:
    """SGD (heavy-ball momentum when momentum > 0) with a parameter mask.

    The momentum buffer follows torch.optim.SGD (buf = momentum * buf + g, no dampening) and,
    like Adam's moments in Algorithm 2, is updated for all parameters. u = lr * buf.
    """

    def __init__(self, weights: torch.Tensor, lr: float = 1e-3, momentum: float = 0.0):
        check_flat(weights)
        self.weights = weights
        self.lr = float(lr)
        self.momentum = float(momentum)
        self.velocity = torch.zeros_like(weights)
        self.update = torch.zeros_like(weights)
        self.steps = 0

    def step(self, grad: torch.Tensor, indices: torch.Tensor) -> None:
        """One iteration: update the momentum everywhere; apply u at `indices` only."""
        if self.momentum:
            self.velocity.mul_(self.momentum).add_(grad)
        else:
            self.velocity.copy_(grad)
        self.steps += 1
        torch.mul(self.velocity, self.lr, out=self.update)
        apply_masked(self.weights, self.update, indices)

    @property
    def gradient_average(self) -> torch.Tensor:
        """The running (momentum) sum of the gradient."""
        return self.velocity


def apply_masked(weights: torch.Tensor, update: torch.Tensor, indices: torch.Tensor) -> None:
    """Line 13, w -= u * b, touching only the selected entries.

    Indexing instead of multiplying by a 0/1 mask leaves unselected weights bit-identical
    even if u holds a non-finite value there.
    """
    weights[indices] -= update[indices]


def check_flat(weights: torch.Tensor) -> None:
    if weights.dtype != torch.float32 or weights.dim() != 1 or not weights.is_contiguous():
        raise ValueError('weights must be a contiguous 1-D float32 tensor')
