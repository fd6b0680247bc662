"""Training phases: the loss, the masks, the flat parameter vector, and the input pipeline."""

import copy

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from ams_ros import IGNORE_LABEL
from ams_ros.ground.horizon_buffer import HorizonBuffer
from ams_ros.ground.masked_adam import MaskedSGD
from ams_ros.ground.trainer import (
    PhaseResult,
    Trainer,
    TrainerConfig,
    segmentation_loss,
)
from ams_ros.model.manifest import ParameterManifest, module_to_vector
from ams_ros.model.student import InputSpec
from ams_ros.pixels import resize_labels

SPEC = InputSpec(height=8, width=12)
CLASSES = 3


def pixelwise_model(seed=0):
    """1x1 convs only, so each pixel's logits depend on that pixel alone."""
    torch.manual_seed(seed)
    return nn.Sequential(nn.Conv2d(3, 6, 1), nn.BatchNorm2d(6), nn.Tanh(),
                         nn.Conv2d(6, CLASSES, 1))


def colour_world(count=8, seed=0, size=(8, 12)):
    """Frames whose label is the dominant colour channel: learnable by a pixelwise model."""
    rng = np.random.default_rng(seed)
    frames = rng.integers(0, 256, size=(count, *size, 3), dtype=np.uint8)
    return frames, frames.argmax(axis=-1).astype(np.uint8)


def filled_buffer(frames, labels, start=0.0):
    buffer = HorizonBuffer(horizon_s=1000.0)
    for k, (frame, label) in enumerate(zip(frames, labels, strict=True)):
        buffer.add(start + k, frame, label)
    return buffer


def make_trainer(model=None, seed=0, **config):
    model = model or pixelwise_model()
    config = {'iterations': 5, 'batch_size': 4, 'channels_last': False, **config}
    return Trainer(model, ParameterManifest.from_module(model), TrainerConfig(**config),
                   seed=seed, input_spec=SPEC)


def test_phase_reduces_loss_and_changes_only_the_selected_parameters():
    trainer = make_trainer(learning_rate=0.05, fraction=0.3, iterations=10)
    buffer = filled_buffer(*colour_world())
    losses = []
    for _ in range(4):
        before = trainer.weights()
        result = trainer.run_phase(buffer)
        after = trainer.weights()
        assert isinstance(result, PhaseResult) and result.iterations == 10
        assert result.indices.dtype == np.int64 and np.all(np.diff(result.indices) > 0)
        assert result.indices.size == round(0.3 * after.size)
        assert result.values.dtype == np.float32
        np.testing.assert_array_equal(result.values, after[result.indices])
        assert np.isin(np.flatnonzero(after != before), result.indices).all()
        assert result.seconds > 0
        losses.append(result.mean_loss)
    assert losses[-1] < 0.8 * losses[0]


def test_full_training_equals_torch_adam_on_a_plain_copy_of_the_model():
    # eps = 0 makes Algorithm 2's step Adam's; batch = whole buffer makes sampling irrelevant.
    model = pixelwise_model()
    reference = copy.deepcopy(model)
    frames, labels = colour_world(count=4)
    trainer = make_trainer(model, strategy='full', eps=0.0, learning_rate=0.01, iterations=6)
    trainer.run_phase(filled_buffer(frames, labels))

    mean = torch.tensor(SPEC.mean).view(1, 3, 1, 1)
    std = torch.tensor(SPEC.std).view(1, 3, 1, 1)
    x = (torch.from_numpy(frames).permute(0, 3, 1, 2).float() / 255 - mean) / std
    y = torch.from_numpy(labels).long()
    reference.train()
    reference[1].eval()  # BatchNorm statistics stay frozen during fine-tuning
    adam = torch.optim.Adam(reference.parameters(), lr=0.01, eps=0.0)
    for _ in range(6):
        adam.zero_grad()
        F.cross_entropy(reference(x), y).backward()
        adam.step()
    manifest = trainer.manifest
    np.testing.assert_allclose(trainer.weights(), module_to_vector(reference, manifest),
                               rtol=1e-4, atol=1e-5)
    # Running statistics are buffers, not patchable parameters: they must not drift.
    np.testing.assert_array_equal(model[1].running_mean.numpy(),
                                  reference[1].running_mean.numpy())


def test_gradient_guided_phases_rank_the_previous_update():
    trainer = make_trainer(fraction=0.2, iterations=2)
    buffer = filled_buffer(*colour_world())
    trainer.run_phase(buffer)
    update = trainer.optimizer.update.numpy().copy()
    second = trainer.run_phase(buffer)
    assert trainer.optimizer.steps == 4
    top = np.sort(np.argsort(-np.abs(update))[:second.indices.size])
    np.testing.assert_array_equal(second.indices, top)


def test_gradient_magnitude_phases_rank_the_first_moment():
    trainer = make_trainer(strategy='gradient_magnitude', fraction=0.2, iterations=2)
    buffer = filled_buffer(*colour_world())
    trainer.run_phase(buffer)
    moment = trainer.optimizer.m.numpy().copy()
    update = trainer.optimizer.update.numpy().copy()
    second = trainer.run_phase(buffer)
    top = np.sort(np.argsort(-np.abs(moment))[:second.indices.size])
    np.testing.assert_array_equal(second.indices, top)
    # Not the paper's ranking of |u|: the two pick different parameters.
    assert not np.array_equal(top, np.sort(np.argsort(-np.abs(update))[:top.size]))


def test_gauss_southwell_uses_sgd_and_the_phase_start_gradient():
    trainer = make_trainer(strategy='gauss_southwell', optimizer='sgd', learning_rate=0.1,
                           fraction=0.1, iterations=1)
    buffer = filled_buffer(*colour_world(count=4))
    result = trainer.run_phase(buffer)
    gradient = trainer.flat_grads.numpy()
    top = np.sort(np.argsort(-np.abs(gradient))[:result.indices.size])
    np.testing.assert_array_equal(result.indices, top)
    assert isinstance(trainer.optimizer, MaskedSGD) and trainer.optimizer.steps == 1


def test_ignored_pixels_do_not_contribute():
    frames, labels = colour_world(count=4)
    labels = labels.copy()
    labels[:, :, :6] = IGNORE_LABEL
    noisy = frames.copy()
    noisy[:, :, :6] = np.random.default_rng(9).integers(0, 256, noisy[:, :, :6].shape)
    results = [make_trainer(iterations=3).run_phase(filled_buffer(f, labels))
               for f in (frames, noisy)]
    np.testing.assert_array_equal(results[0].indices, results[1].indices)
    np.testing.assert_allclose(results[0].values, results[1].values, rtol=1e-6)
    assert results[0].mean_loss == pytest.approx(results[1].mean_loss, rel=1e-6)


def test_loss_averages_labelled_pixels_and_is_zero_when_none_are():
    logits = torch.randn(2, CLASSES, 3, 4, requires_grad=True)
    labels = torch.randint(0, CLASSES, (2, 3, 4))
    labels[0, 0] = IGNORE_LABEL
    kept = labels != IGNORE_LABEL
    expected = F.cross_entropy(logits.permute(0, 2, 3, 1)[kept], labels[kept])
    assert segmentation_loss(logits, labels).item() == pytest.approx(expected.item(), rel=1e-6)
    nothing = torch.full_like(labels, IGNORE_LABEL)
    loss = segmentation_loss(logits, nothing)
    loss.backward()
    assert loss.item() == 0.0 and torch.all(logits.grad == 0)


def test_class_balance_weighs_each_pixel_by_its_class_share():
    logits = torch.randn(1, CLASSES, 4, 4)
    labels = torch.zeros(1, 4, 4, dtype=torch.long)
    labels[0, 0, :3] = 1  # three pixels of a small class among thirteen of a large one
    labels[0, 3, 3] = IGNORE_LABEL
    kept = labels != IGNORE_LABEL
    pixel_losses = F.cross_entropy(logits.permute(0, 2, 3, 1)[kept], labels[kept],
                                   reduction='none')
    share = {0: 12 / 15, 1: 3 / 15}
    for balance in (0.5, 1.0):
        weight = torch.tensor([share[int(c)] ** -balance for c in labels[kept]])
        # Weights are scaled so that their mean over the labelled pixels is one.
        expected = (weight * pixel_losses).sum() / weight.sum()
        got = segmentation_loss(logits, labels, class_balance=balance)
        assert got.item() == pytest.approx(expected.item(), rel=1e-5)
    # At balance 1 both classes weigh the same in all: the small one is not drowned.
    plain = segmentation_loss(logits, labels)
    assert plain.item() == pytest.approx(pixel_losses.mean().item(), rel=1e-6)
    small = labels[kept] == 1
    balanced = 0.5 * pixel_losses[small].mean() + 0.5 * pixel_losses[~small].mean()
    assert segmentation_loss(logits, labels, 1.0).item() == pytest.approx(balanced.item(),
                                                                        rel=1e-5)


def test_frames_at_another_resolution_are_resized_to_the_model_input():
    frames, labels = colour_world(count=3, size=(16, 24))  # twice the model's input size
    trainer = make_trainer(channels_last=True, iterations=2)
    result = trainer.run_phase(filled_buffer(frames, labels))
    assert np.isfinite(result.mean_loss)
    label = np.arange(16 * 24, dtype=np.uint8).reshape(16, 24) % 5
    small = resize_labels(label, 8, 12)
    expected = F.interpolate(torch.from_numpy(label)[None, None].float(), size=(8, 12),
                             mode='nearest-exact')[0, 0].numpy().astype(np.uint8)
    np.testing.assert_array_equal(small, expected)
    assert set(np.unique(resize_labels(label, 40, 50))) == set(np.unique(label))


def test_set_weights_loads_the_model_and_replaced_parameters_are_detected():
    trainer = make_trainer()
    x = torch.zeros(1, 3, 2, 2)
    trainer.model.eval()
    before = trainer.model(x).detach()
    flat = trainer.weights()
    trainer.set_weights(flat + np.float32(0.5))
    np.testing.assert_array_equal(trainer.weights(), flat + np.float32(0.5))
    assert not torch.allclose(trainer.model(x), before)
    with pytest.raises(ValueError):
        trainer.set_weights(flat[:-1])
    trainer.model.zero_grad()  # drops .grad: re-attached, training still works
    trainer.run_phase(filled_buffer(*colour_world(count=4)))
    trainer.model[0].weight.data = trainer.model[0].weight.data.clone()
    with pytest.raises(RuntimeError):
        trainer.run_phase(filled_buffer(*colour_world(count=4)))


def test_phases_are_deterministic_given_the_seed_and_need_frames():
    buffer = filled_buffer(*colour_world())
    first, second = (make_trainer(seed=3).run_phase(buffer) for _ in range(2))
    np.testing.assert_array_equal(first.indices, second.indices)
    np.testing.assert_array_equal(first.values, second.values)
    with pytest.raises(ValueError):
        make_trainer().run_phase(buffer, now=-10.0)
    with pytest.raises(ValueError):
        TrainerConfig(strategy='largest_layers')
    with pytest.raises(ValueError):
        Trainer(pixelwise_model(), ParameterManifest.from_module(nn.Conv2d(3, 1, 1)))
