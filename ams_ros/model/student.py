"""The student: DeepLabV3 with a MobileNetV2 backbone, in plain PyTorch (no torchvision).

This is the paper's edge model. The backbone is MobileNetV2 without its final 1x1 conv to 1280
channels (as in DeepLab's own MobileNetV2 variant), run at output stride 16: the stages that
would bring it to stride 32 keep stride 1 and dilate instead. On top sits ASPP with depthwise
separable atrous branches and an image-pooling branch, a 1x1 classifier, and a bilinear
upsample back to the input size. The default has about 2.1 M parameters.

BatchNorm during on-line fine-tuning: running statistics are frozen (`freeze_batchnorm_statistics`)
while the affine weight and bias stay trainable. The training batches are a few highly correlated
frames, so batch statistics are poor estimates; and running statistics are buffers, not
parameters, so they are not in the parameter manifest and patches never carry them. Updating them
on the ground would make the ground's mirror of the edge model silently diverge from the edge.
Pretraining (large, varied batches) uses ordinary training mode.

A user's own PyTorch student is named by its factory, ``package.module:function``: called with
the number of classes, it returns an nn.Module that takes normalised NCHW float frames and gives
class logits (N, C, h, w); logits at a lower resolution are upsampled bilinearly to the input
(`FactoryStudent`). Everything else (training, export, patches) treats it like the built-in one.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class InputSpec:
    """What the student expects: an RGB image of this size, normalised as (x/255 - mean) / std."""

    height: int = 256
    width: int = 512
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD


def pixel_normalisation(spec: InputSpec, device=None) -> tuple[torch.Tensor, torch.Tensor]:
    """Return the spec's (mean, std) in 0..255 pixel units as (1, 3, 1, 1) float32 tensors.

    The one place the student's normalisation is made for torch: ``(x - mean) / std`` on
    0..255 pixels is ``(x/255 - spec.mean) / spec.std``.
    """
    mean = torch.tensor(spec.mean, dtype=torch.float32, device=device).view(1, 3, 1, 1)
    std = torch.tensor(spec.std, dtype=torch.float32, device=device).view(1, 3, 1, 1)
    return mean * 255.0, std * 255.0


@dataclass(frozen=True)
class StudentConfig:
    width_mult: float
    aspp_channels: int
    atrous_rates: tuple[int, ...]


STUDENT_ARCHS = {
    'deeplabv3_mbv2': StudentConfig(width_mult=1.0, aspp_channels=128, atrous_rates=(6, 12, 18)),
    # For CPU-only runs, which also use smaller inputs: hence smaller dilation rates.
    'deeplabv3_mbv2_small': StudentConfig(
        width_mult=0.5, aspp_channels=64, atrous_rates=(3, 6, 9)),
}

# MobileNetV2 stages: expansion t, output channels c, repeats n, first stride s.
_MBV2_STAGES = (
    (1, 16, 1, 1),
    (6, 24, 2, 2),
    (6, 32, 3, 2),
    (6, 64, 4, 2),
    (6, 96, 3, 1),
    (6, 160, 3, 2),
    (6, 320, 1, 1),
)
_OUTPUT_STRIDE = 16


def _make_divisible(value: float, divisor: int = 8) -> int:
    """Round a scaled channel count as MobileNetV2 does (never down by more than 10%)."""
    rounded = max(divisor, int(value + divisor / 2) // divisor * divisor)
    return rounded + divisor if rounded < 0.9 * value else rounded


def _conv_bn(c_in: int, c_out: int, kernel: int = 1, stride: int = 1, dilation: int = 1,
             groups: int = 1, activation: type[nn.Module] | None = nn.ReLU6) -> nn.Sequential:
    layers = [
        nn.Conv2d(c_in, c_out, kernel, stride, padding=dilation * (kernel // 2),
                  dilation=dilation, groups=groups, bias=False),
        nn.BatchNorm2d(c_out),
    ]
    if activation is not None:
        layers.append(activation())
    return nn.Sequential(*layers)


class InvertedResidual(nn.Module):
    def __init__(self, c_in: int, c_out: int, stride: int, dilation: int, expansion: int):
        super().__init__()
        hidden = c_in * expansion
        layers = [] if expansion == 1 else [_conv_bn(c_in, hidden)]
        layers += [
            _conv_bn(hidden, hidden, 3, stride, dilation, groups=hidden),
            _conv_bn(hidden, c_out, activation=None),
        ]
        self.layers = nn.Sequential(*layers)
        self.residual = stride == 1 and c_in == c_out

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.layers(x)
        return x + y if self.residual else y


class MobileNetV2Backbone(nn.Module):
    """MobileNetV2 features up to the last inverted residual, at output stride 16."""

    def __init__(self, width_mult: float):
        super().__init__()
        c_in = _make_divisible(32 * width_mult)
        self.stem = _conv_bn(3, c_in, 3, stride=2)
        blocks, stride, dilation = [], 2, 1
        for expansion, channels, repeats, first_stride in _MBV2_STAGES:
            c_out = _make_divisible(channels * width_mult)
            for i in range(repeats):
                block_stride = first_stride if i == 0 else 1
                block_dilation = dilation
                if block_stride > 1 and stride == _OUTPUT_STRIDE:
                    # Past the target stride: this block keeps its rate, later ones dilate.
                    dilation *= block_stride
                    block_stride = 1
                stride *= block_stride
                blocks.append(InvertedResidual(c_in, c_out, block_stride, block_dilation,
                                               expansion))
                c_in = c_out
        self.blocks = nn.Sequential(*blocks)
        self.out_channels = c_in

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.blocks(self.stem(x))


class ImagePooling(nn.Module):
    """ASPP's global context branch, broadcast back to the feature map's size."""

    def __init__(self, c_in: int, c_out: int):
        super().__init__()
        # A bias instead of BatchNorm: BN over a 1x1 map fails in training with batch size 1.
        self.project = nn.Sequential(nn.Conv2d(c_in, c_out, 1), nn.ReLU())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # Mean over H, W exports as ReduceMean and works for any fixed input size.
        pooled = self.project(x.mean(dim=(2, 3), keepdim=True))
        return pooled.expand(-1, -1, x.shape[2], x.shape[3])


class ASPP(nn.Module):
    def __init__(self, c_in: int, c_out: int, rates: tuple[int, ...]):
        super().__init__()
        self.branches = nn.ModuleList(
            [_conv_bn(c_in, c_out, activation=nn.ReLU)]
            + [nn.Sequential(_conv_bn(c_in, c_in, 3, dilation=r, groups=c_in, activation=nn.ReLU),
                             _conv_bn(c_in, c_out, activation=nn.ReLU)) for r in rates]
            + [ImagePooling(c_in, c_out)])
        self.project = _conv_bn(c_out * len(self.branches), c_out, activation=nn.ReLU)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.project(torch.cat([branch(x) for branch in self.branches], dim=1))


class DeepLabV3(nn.Module):
    """Normalised NCHW float image in, class logits NCHW at the input's resolution out."""

    def __init__(self, config: StudentConfig, num_classes: int):
        super().__init__()
        self.backbone = MobileNetV2Backbone(config.width_mult)
        self.aspp = ASPP(self.backbone.out_channels, config.aspp_channels, config.atrous_rates)
        self.classifier = nn.Conv2d(config.aspp_channels, num_classes, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        logits = self.classifier(self.aspp(self.backbone(x)))
        return F.interpolate(logits, size=x.shape[2:], mode='bilinear', align_corners=False)


def build_student(arch: str, num_classes: int) -> nn.Module:
    """Build a freshly initialised student: a registered architecture or a factory's."""
    if is_factory(arch):
        return FactoryStudent(student_factory(arch)(num_classes))
    if arch not in STUDENT_ARCHS:
        raise ValueError(f'unknown student arch {arch!r}; known: {sorted(STUDENT_ARCHS)} or '
                         "a factory 'package.module:function'")
    return DeepLabV3(STUDENT_ARCHS[arch], num_classes)


def is_factory(arch: str) -> bool:
    return ':' in arch


def check_arch(arch: str) -> None:
    """ValueError, saying why, unless `arch` names a built-in student or an importable factory."""
    if is_factory(arch):
        student_factory(arch)
    elif arch not in STUDENT_ARCHS:
        raise ValueError(f'unknown student arch {arch!r}; known: {sorted(STUDENT_ARCHS)} or '
                         "a factory 'package.module:function'")


def student_factory(arch: str):
    """Return the callable `package.module:function` names (ValueError if there is none)."""
    import importlib

    module_name, _, function = arch.partition(':')
    try:
        factory = getattr(importlib.import_module(module_name), function)
    except (ImportError, AttributeError, ValueError) as e:
        raise ValueError(f'student factory {arch!r}: {type(e).__name__}: {e}') from e
    if not callable(factory):
        raise ValueError(f'student factory {arch!r} is not callable')
    return factory


class FactoryStudent(nn.Module):
    """A user's module, its logits brought to the input's resolution."""

    def __init__(self, model: nn.Module):
        super().__init__()
        if not isinstance(model, nn.Module):
            raise ValueError(f'a student factory must return an nn.Module, not '
                             f'{type(model).__name__}')
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        logits = self.model(x)
        # An export traces one size: keep the resize in the graph (at equal sizes, a no-op).
        if torch.jit.is_tracing() or logits.shape[2:] != x.shape[2:]:
            logits = F.interpolate(logits, size=x.shape[2:], mode='bilinear',
                                   align_corners=False)
        return logits


def freeze_batchnorm_statistics(model: nn.Module) -> nn.Module:
    """Put the model in training mode but every BatchNorm layer in eval mode.

    Running statistics then stay fixed (see the module docstring for why) while BN's affine
    weight and bias keep training. A later `model.train()` undoes this, so call it after that.
    """
    model.train()
    for module in model.modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm):
            module.eval()
    return model
