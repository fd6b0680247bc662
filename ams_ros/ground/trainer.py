"""The server's training phase (Algorithm 1, lines 10-16, with Algorithm 2 inside).

Each phase selects the parameters to train, runs K iterations on mini-batches sampled from the
horizon buffer, and returns the selected indices with their new values: the content of a patch.

The trainer owns the model's parameter storage: at construction every trainable parameter (and
its .grad) is re-pointed at a slice of one flat float32 weight (and gradient) vector laid out by
the manifest. Backward then accumulates straight into the flat gradient and the optimiser
updates the flat weights in place, so an iteration copies no parameter-sized tensor. Change the
weights through `set_weights` (or in-place copies into the parameters); anything that replaces
parameter tensors, such as `model.to(...)`, breaks that link and is detected at the next phase.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from ams_ros import IGNORE_LABEL
from ams_ros.ground.horizon_buffer import DEFAULT_HORIZON_S, HorizonBuffer
from ams_ros.ground.masked_adam import MaskedAdam, MaskedSGD
from ams_ros.ground.selection import (
    DEFAULT_FRACTION,
    GAUSS_SOUTHWELL,
    GRADIENT_GUIDED,
    GRADIENT_MAGNITUDE,
    STRATEGIES,
    select_indices,
)
from ams_ros.model.manifest import FLAT_DTYPE, ParameterManifest
from ams_ros.model.student import InputSpec, freeze_batchnorm_statistics, pixel_normalisation
from ams_ros.pixels import resize_labels

OPTIMIZERS = ('adam', 'sgd')


@dataclass(frozen=True)
class TrainerConfig:
    """Training hyper-parameters: K, alpha, betas, gamma and T_horizon default to the paper's."""

    iterations: int = 20  # K
    batch_size: int = 8
    learning_rate: float = 1e-3  # alpha
    betas: tuple[float, float] = (0.9, 0.999)
    eps: float = 1e-8  # inside the square root, as Algorithm 2 writes it (see MaskedAdam)
    fraction: float = DEFAULT_FRACTION  # gamma
    strategy: str = GRADIENT_GUIDED
    horizon_s: float = DEFAULT_HORIZON_S  # T_horizon: sampling window; the buffer's own
    # horizon bounds what it keeps, so it should be at least this long.
    optimizer: str = 'adam'  # 'sgd' for Just-In-Time (momentum 0.9) and Gauss-Southwell
    momentum: float = 0.0  # SGD only
    device: str = 'cpu'
    channels_last: bool = True  # NHWC activations: about half the CPU step time (no gain on CUDA)
    class_balance: float = 0.0  # weigh classes by (batch pixel share) ** -class_balance

    def __post_init__(self):
        if self.strategy not in STRATEGIES:
            raise ValueError(f'unknown strategy {self.strategy!r}; expected one of {STRATEGIES}')
        if self.optimizer not in OPTIMIZERS:
            raise ValueError(f'unknown optimizer {self.optimizer!r}; expected one of {OPTIMIZERS}')
        if self.iterations < 1 or self.batch_size < 1:
            raise ValueError('iterations and batch_size must be at least 1')


@dataclass(frozen=True)
class PhaseResult:
    indices: np.ndarray  # int64, sorted: I_n
    values: np.ndarray  # float32 new absolute values at `indices`: w~_n
    mean_loss: float  # mean over the K iterations of the mini-batch loss before each step
    iterations: int
    seconds: float


class Trainer:
    """Trains the ground's copy of one edge model, one phase per model update."""

    def __init__(self, model: torch.nn.Module, manifest: ParameterManifest,
                 config: TrainerConfig | None = None, seed: int = 0,
                 input_spec: InputSpec | None = None):
        if ParameterManifest.from_module(model) != manifest:
            raise ValueError("manifest does not match the model's trainable parameters")
        self.config = config or TrainerConfig()
        self.input_spec = input_spec or InputSpec()
        self.manifest = manifest
        self.device = torch.device(self.config.device)
        self.model = model.to(self.device)
        self.flat_weights, self.flat_grads = bind_flat_parameters(model, manifest)
        self.optimizer = make_optimizer(self.config, self.flat_weights)
        self.rng = np.random.default_rng(seed)
        # Normalisation folded into one subtract and one divide on 0..255 pixel values.
        self._pixel_mean, self._pixel_std = pixel_normalisation(self.input_spec, self.device)

    def weights(self) -> np.ndarray:
        """Return a copy of the current flat parameter vector (manifest order)."""
        return self.flat_weights.detach().cpu().numpy().astype(FLAT_DTYPE, copy=True)

    def set_weights(self, flat: np.ndarray) -> None:
        """Load a flat vector, e.g. to snap onto the values the edge decoded from a patch.

        The optimiser state is kept: Algorithm 2 carries it across phases regardless.
        """
        self.manifest.check_vector(flat)
        self.flat_weights.copy_(torch.from_numpy(np.array(flat, copy=True)))

    def run_phase(self, buffer: HorizonBuffer, now: float | None = None) -> PhaseResult:
        """One training phase on the buffer's frames in [now - T_horizon, now]."""
        start = time.perf_counter()
        self.begin()
        config = self.config
        indices = None
        if config.strategy != GAUSS_SOUTHWELL:
            indices = self.select()
        losses = []
        for _ in range(config.iterations):
            batch = buffer.sample(config.batch_size, self.rng, now, config.horizon_s)
            if not batch:
                raise ValueError('no labelled frames within the training horizon')
            x, y = self.inputs([s.frame for s in batch], [s.label for s in batch])
            loss = self.backward(self.forward(x), y)
            losses.append(loss)
            if indices is None:  # Gauss-Southwell ranks the gradient at the phase's start
                indices = self.select()
            self.optimizer.step(self.flat_grads, indices)
        return PhaseResult(
            indices=indices.cpu().numpy(), values=self.values(indices),
            mean_loss=float(torch.stack(losses).mean()), iterations=config.iterations,
            seconds=time.perf_counter() - start)

    # Single steps, for schemes that train outside phases (Just-In-Time): begin, then any
    # number of forward / backward / select / step.

    def begin(self) -> None:
        """Check the flat binding and freeze BatchNorm statistics before training."""
        ensure_flat_binding(self.model, self.manifest, self.flat_weights, self.flat_grads)
        freeze_batchnorm_statistics(self.model)

    def inputs(self, frames, labels) -> tuple[torch.Tensor, torch.Tensor]:
        """Return (x, y): the frames normalised and their labels, at the model's input size."""
        size = (self.input_spec.height, self.input_spec.width)
        x = frames_to_input(list(frames), size, self._pixel_mean, self._pixel_std,
                            self.config.channels_last)
        y = np.stack([resize_labels(label, *size) for label in labels])
        return x, torch.from_numpy(y).to(self.device).long()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Return the model's logits for x, with the flat gradient zeroed for a backward."""
        self.flat_grads.zero_()
        return self.model(x)

    def backward(self, logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Accumulate the loss's gradient into the flat gradient; return the loss."""
        loss = segmentation_loss(logits, y, self.config.class_balance)
        loss.backward()
        return loss.detach()

    def select(self) -> torch.Tensor:
        """Return the indices the configured strategy picks now (on the training device).

        Gauss-Southwell ranks the current gradient, so call it after a backward.
        """
        config = self.config
        total = self.manifest.total_size
        if config.strategy == GAUSS_SOUTHWELL:
            indices = select_indices(config.strategy, total, config.fraction,
                                     gradient=self.flat_grads.cpu().numpy())
        else:
            indices = select_indices(config.strategy, total, config.fraction, self.rng,
                                     previous_update=self._ranking_signal())
        return torch.from_numpy(indices).to(self.device)

    def step(self, indices: torch.Tensor) -> None:
        """Apply one optimiser step to `indices` (every parameter's state is updated)."""
        self.optimizer.step(self.flat_grads, indices)

    def values(self, indices: torch.Tensor) -> np.ndarray:
        """Return the current weights at `indices` (float32)."""
        return self.flat_weights[indices].cpu().numpy()

    def reset_optimizer(self) -> None:
        """Forget the optimiser's state (e.g. after a diverged step).

        The next selection is then random, as a first phase's.
        """
        self.optimizer = make_optimizer(self.config, self.flat_weights)

    def _ranking_signal(self) -> np.ndarray | None:
        """Return what the gradient strategies rank to pick the next phase's parameters."""
        if not self.optimizer.steps:
            return None
        signal = (self.optimizer.gradient_average if self.config.strategy == GRADIENT_MAGNITUDE
                  else self.optimizer.update)
        return signal.cpu().numpy()


def segmentation_loss(logits: torch.Tensor, labels: torch.Tensor,
                      class_balance: float = 0.0) -> torch.Tensor:
    """Mean per-pixel cross entropy over the pixels the teacher labelled.

    class_balance b > 0 weighs each class present in the batch by its pixel share ** -b
    (normalised so the pixels' mean weight is 1): mIoU counts every class alike, and a class
    of few pixels (vehicles) otherwise barely moves the gradient.
    A batch with no labelled pixel gives 0 (and a zero gradient) instead of torch's NaN, which
    would otherwise poison the optimiser's moments for good.
    """
    labelled = labels != IGNORE_LABEL
    count = labelled.sum().clamp_min(1)
    weight = None
    if class_balance > 0:
        pixels = torch.bincount(labels[labelled], minlength=logits.shape[1])[:logits.shape[1]]
        share = pixels.float() / count
        weight = torch.where(pixels > 0, share.clamp_min(1e-6) ** -class_balance,
                             torch.zeros_like(share))
        weight = weight / (weight * share).sum().clamp_min(1e-12)
    total = F.cross_entropy(logits, labels, weight=weight, ignore_index=IGNORE_LABEL,
                            reduction='sum')
    return total / count


def frames_to_input(frames: list[np.ndarray], size: tuple[int, int], pixel_mean: torch.Tensor,
                    pixel_std: torch.Tensor, channels_last: bool) -> torch.Tensor:
    """Uint8 HxWx3 RGB frames -> normalised float NCHW batch at `size` (H, W).

    Frames are resized bilinearly, with antialiasing so that downscaling averages rather than
    skips pixels. `pixel_mean`/`pixel_std` are (1, 3, 1, 1) in 0..255 units.
    """
    device = pixel_mean.device
    images = []
    for frame in frames:
        image = torch.tensor(frame, device=device).permute(2, 0, 1).unsqueeze(0).float()
        if tuple(image.shape[2:]) != tuple(size):
            image = F.interpolate(image, size=size, mode='bilinear', align_corners=False,
                                  antialias=True)
        images.append(image)
    x = torch.cat(images).sub_(pixel_mean).div_(pixel_std)
    memory_format = torch.channels_last if channels_last else torch.contiguous_format
    return x.contiguous(memory_format=memory_format)


def bind_flat_parameters(model: torch.nn.Module,
                         manifest: ParameterManifest) -> tuple[torch.Tensor, torch.Tensor]:
    """Re-point each trainable parameter and its .grad at slices of two new flat vectors.

    Returns (weights, grads). Autograd accumulates into an existing .grad in place, so after
    `grads.zero_()` and a backward pass the flat gradient holds the full gradient.
    """
    params = dict(model.named_parameters())
    device = params[manifest.names[0]].device
    weights = torch.empty(manifest.total_size, dtype=torch.float32, device=device)
    grads = torch.zeros_like(weights)
    with torch.no_grad():
        for entry in manifest.entries:
            param = params[entry.name]
            view = weights[entry.offset:entry.stop].view(entry.shape)
            view.copy_(param)
            param.data = view
            param.grad = grads[entry.offset:entry.stop].view(entry.shape)
    return weights, grads


def ensure_flat_binding(model: torch.nn.Module, manifest: ParameterManifest,
                       weights: torch.Tensor, grads: torch.Tensor) -> None:
    """Fail if a parameter left the flat weight vector; re-attach dropped flat gradients."""
    params = dict(model.named_parameters())
    item = weights.element_size()
    for entry in manifest.entries:
        param = params[entry.name]
        if param.data_ptr() != weights.data_ptr() + entry.offset * item:
            raise RuntimeError(f'{entry.name} no longer lives in the flat weight vector; '
                               'update weights with Trainer.set_weights or in place')
        if param.grad is None or param.grad.data_ptr() != grads.data_ptr() + entry.offset * item:
            # zero_grad(set_to_none=True) drops the grads; re-attach rather than fail.
            param.grad = grads[entry.offset:entry.stop].view(entry.shape)


def make_optimizer(config: TrainerConfig, weights: torch.Tensor) -> MaskedAdam | MaskedSGD:
    if config.optimizer == 'adam':
        return MaskedAdam(weights, config.learning_rate, config.betas, config.eps)
    return MaskedSGD(weights, config.learning_rate, config.momentum)
