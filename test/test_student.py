import pytest
import torch

from ams_ros.model.student import (
    STUDENT_ARCHS,
    InputSpec,
    build_student,
    freeze_batchnorm_statistics,
)


def _count(model):
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def test_default_student_is_about_the_papers_two_million_parameters():
    assert 2.0e6 < _count(build_student('deeplabv3_mbv2', 19)) < 2.2e6


def test_small_student_is_about_a_quarter_of_the_default():
    assert 0.5e6 < _count(build_student('deeplabv3_mbv2_small', 19)) < 0.6e6


def test_registry_and_default_input_spec():
    assert set(STUDENT_ARCHS) == {'deeplabv3_mbv2', 'deeplabv3_mbv2_small'}
    assert (InputSpec().height, InputSpec().width) == (256, 512)
    with pytest.raises(ValueError, match='unknown student arch'):
        build_student('resnet', 3)


def test_logits_come_back_at_input_resolution_from_stride_16_features():
    model = build_student('deeplabv3_mbv2_small', 5).eval()
    x = torch.randn(1, 3, 64, 128)
    with torch.no_grad():
        assert model.backbone(x).shape[2:] == (4, 8)
        assert model(x).shape == (1, 5, 64, 128)
        assert model(torch.randn(2, 3, 40, 72)).shape == (2, 5, 40, 72)


def test_training_works_with_batch_of_one():
    model = build_student('deeplabv3_mbv2_small', 3).train()
    model(torch.randn(1, 3, 32, 64)).sum().backward()


def _bn_state(model):
    return {k: v.clone() for k, v in model.state_dict().items()
            if 'running' in k or 'num_batches' in k}


def _train_step(model):
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    target = torch.randint(0, 3, (2, 32, 64))
    loss = torch.nn.functional.cross_entropy(model(torch.randn(2, 3, 32, 64)), target)
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()


def test_frozen_batchnorm_keeps_running_statistics_but_trains_affine_parameters():
    torch.manual_seed(0)
    model = build_student('deeplabv3_mbv2_small', 3)
    freeze_batchnorm_statistics(model)
    assert model.training and not model.backbone.stem[1].training
    stats_before = _bn_state(model)
    bn = model.aspp.project[1]  # near the loss, so its gradient is not vanishingly small
    affine_before = bn.weight.detach().clone(), bn.bias.detach().clone()
    _train_step(model)
    for name, value in _bn_state(model).items():
        assert torch.equal(value, stats_before[name]), name
    assert not torch.equal(bn.weight, affine_before[0])
    assert not torch.equal(bn.bias, affine_before[1])


def test_plain_training_mode_does_move_running_statistics():
    torch.manual_seed(0)
    model = build_student('deeplabv3_mbv2_small', 3).train()
    before = _bn_state(model)
    _train_step(model)
    after = _bn_state(model)
    assert not torch.equal(after['backbone.stem.1.running_mean'],
                           before['backbone.stem.1.running_mean'])
