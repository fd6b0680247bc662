"""Ground side: export the student to ONNX so that the edge can patch its parameters by name.

The exported graph takes `image`, a uint8 RGB frame [1, H, W, 3] already resized to the input
spec, normalises it inside the graph, and returns `labels` (uint8 class ids [1, H, W]) and
`logits` (float32 [1, C, H, W]).

The legacy exporter merges initializers that hold identical values (a fresh model's BatchNorm
weights are all ones), after which several parameters would share one initializer and patching
one by name would silently change the others. So the export traces a copy whose parameters hold
distinct random values, finds each parameter's initializer by value, renames it to the
parameter's manifest name, and only then writes the true values in.
"""

from __future__ import annotations

import copy
import io
import warnings
from dataclasses import dataclass

import numpy as np
import onnx
import torch
from onnx import numpy_helper
from torch import nn

from ams_ros import IGNORE_LABEL
from ams_ros.model.manifest import ParameterManifest, module_to_vector, vector_to_module
from ams_ros.model.onnx_params import MANIFEST_KEY, InitializerWriter
from ams_ros.model.student import InputSpec

OPSET = 17


@dataclass(frozen=True)
class OnnxExport:
    """A serialized model whose initializer for each manifest entry carries the entry's name."""

    model_bytes: bytes
    manifest: ParameterManifest


class _UInt8ImageModel(nn.Module):
    """Wrap the student with the edge's pre- and post-processing, so both live in the graph."""

    def __init__(self, student: nn.Module, spec: InputSpec):
        super().__init__()
        self.student = student
        std = torch.tensor(spec.std).view(1, 3, 1, 1)
        # (x/255 - mean) / std folded into one multiply-add.
        self.register_buffer('scale', 1.0 / (255.0 * std), persistent=False)
        self.register_buffer('shift', -torch.tensor(spec.mean).view(1, 3, 1, 1) / std,
                             persistent=False)

    def forward(self, image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = image.permute(0, 3, 1, 2).float() * self.scale + self.shift
        logits = self.student(x)
        return logits.argmax(dim=1).to(torch.uint8), logits


def export_student_onnx(model: nn.Module, input_spec: InputSpec,
                        metadata: dict[str, str] | None = None) -> OnnxExport:
    """Export the student (in eval mode, on a copy) with a one-to-one parameter mapping.

    The manifest and any extra `metadata` are stored in the model's metadata_props.
    """
    manifest = ParameterManifest.from_module(model)
    true_values = module_to_vector(model, manifest)
    traced = copy.deepcopy(model).cpu().eval()
    marker_values = np.random.default_rng(0).standard_normal(manifest.total_size, np.float32)
    vector_to_module(marker_values, traced, manifest)

    image = torch.zeros(1, input_spec.height, input_spec.width, 3, dtype=torch.uint8)
    wrapper = _UInt8ImageModel(traced, input_spec)
    with torch.no_grad():
        num_classes = wrapper(image)[1].shape[1]
    if num_classes > IGNORE_LABEL:
        raise ValueError(f'{num_classes} classes do not fit uint8 labels below {IGNORE_LABEL}')
    buffer = io.BytesIO()
    with torch.no_grad(), warnings.catch_warnings():
        # The legacy exporter is chosen on purpose: it keeps parameters as named initializers.
        warnings.simplefilter('ignore', DeprecationWarning)
        torch.onnx.export(wrapper, (image,), buffer, dynamo=False, opset_version=OPSET,
                          do_constant_folding=False, input_names=['image'],
                          output_names=['labels', 'logits'])
    onnx_model = onnx.load_from_string(buffer.getvalue())
    _name_initializers_after_manifest(onnx_model, manifest, marker_values)
    onnx.checker.check_model(onnx_model)
    for key, value in {MANIFEST_KEY: manifest.to_json(), **(metadata or {})}.items():
        onnx_model.metadata_props.add(key=key, value=value)
    return OnnxExport(InitializerWriter(onnx_model, manifest).write(true_values), manifest)


def _name_initializers_after_manifest(model: onnx.ModelProto, manifest: ParameterManifest,
                                      marker_values: np.ndarray) -> None:
    """Find each entry's initializer by its marker value and give it the entry's name."""
    by_bytes: dict[bytes, list[onnx.TensorProto]] = {}
    for init in model.graph.initializer:
        if init.data_type == onnx.TensorProto.FLOAT:
            by_bytes.setdefault(numpy_helper.to_array(init).tobytes(), []).append(init)
    renames = {}
    for entry in manifest.entries:
        found = by_bytes.get(marker_values[entry.offset:entry.stop].tobytes(), [])
        matches = [init for init in found if tuple(init.dims) == entry.shape]
        if len(matches) != 1:
            raise ValueError(f'parameter {entry.name} appears in {len(matches)} ONNX '
                             'initializers, expected exactly 1')
        if matches[0].name in renames:
            raise ValueError(f'parameters {renames[matches[0].name]} and {entry.name} share '
                             f'ONNX initializer {matches[0].name}')
        renames[matches[0].name] = entry.name

    taken = {name for node in model.graph.node for name in (*node.input, *node.output)}
    taken |= {init.name for init in model.graph.initializer}
    clashes = (set(renames.values()) & taken) - set(renames)
    if clashes:
        raise ValueError(f'manifest names already used in the ONNX graph: {sorted(clashes)}')
    for init in model.graph.initializer:
        init.name = renames.get(init.name, init.name)
    for node in model.graph.node:
        node.input[:] = [renames.get(name, name) for name in node.input]
