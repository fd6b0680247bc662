"""Whole-model snapshots: what the ground sends when a drone cannot continue from patches.

A snapshot is self-contained: the ONNX model with the current parameter values, the parameter
manifest (so later patches can be applied), class names, input size and normalisation, and the
digest of the flat vector. The drone activates it only after `open_snapshot` has checked the
model, the manifest's one-to-one mapping onto initializers, and the digest. Authenticity is
checked before, on the wire (ams_ros.ros.link_auth).

`open_snapshot` also returns the model's `ModelInterface`: what the drone's callers see of it.
A snapshot the drone did not ask for must keep the interface of the model it runs.
"""

from __future__ import annotations

import array
import dataclasses
import math
from dataclasses import dataclass

import numpy as np

from ams_ros.model.manifest import ParameterManifest, vector_digest
from ams_ros.model.onnx_params import (
    InitializerWriter,
    check_initializers,
    class_colours,
    read_vector,
)

FORMAT_ONNX = 'onnx'
# What a uint8[] field may arrive as; bytes() of anything else (an int) could allocate gigabytes.
_BYTES_LIKE = (bytes, bytearray, memoryview, array.array)


class SnapshotError(ValueError):
    """A snapshot that must not be activated; `reason` is a short code for counting."""

    def __init__(self, reason: str, message: str):
        super().__init__(f'{reason}: {message}')
        self.reason = reason


@dataclass(frozen=True)
class SnapshotPayload:
    """One ams_msgs/ModelSnapshot message's content (all but the header and auth fields)."""

    client_id: str
    model_id: str
    version: int
    format: str
    model_data: bytes
    parameters: tuple[tuple[str, tuple[int, ...], int], ...]  # (name, shape, offset)
    class_names: tuple[str, ...]
    input_height: int
    input_width: int
    mean: tuple[float, float, float]  # 0..255 pixel scale, float32-exact (survives the wire)
    std: tuple[float, float, float]
    digest: bytes

    @property
    def nbytes(self) -> int:
        return len(self.model_data) + sum(len(p[0]) + 8 * (len(p[1]) + 1)
                                          for p in self.parameters)


# One graph input or output: name, ONNX element type, dims (int, or the name of a free dim).
TensorSpec = tuple[str, int, tuple[int | str, ...]]


@dataclass(frozen=True)
class ModelInterface:
    """A model as its callers see it: parameter layout, graph inputs and outputs, labels.

    ``normalisation`` is (mean, std) on the 0..255 pixel scale, or None where it is not
    known: an exported model file does not record it (it is part of the graph).
    """

    manifest: ParameterManifest
    inputs: tuple[TensorSpec, ...]  # the graph's inputs that are not initializers
    outputs: tuple[TensorSpec, ...]
    class_names: tuple[str, ...]
    input_size: tuple[int, int]  # (height, width)
    normalisation: tuple[tuple[float, ...], tuple[float, ...]] | None = None
    class_colours: tuple[tuple[int, int, int], ...] = ()  # from the model's metadata, if any

    def matches(self, other: ModelInterface) -> bool:
        """Whether both describe the same interface; an unknown normalisation matches any."""
        if self.normalisation is None or other.normalisation is None:
            other = dataclasses.replace(other, normalisation=self.normalisation)
        return self == other


def model_interface(model, manifest: ParameterManifest, class_names, input_size,
                    normalisation=None) -> ModelInterface:
    """Return the interface of an ONNX model (an onnx.ModelProto) and its declared labels."""
    graph = model.graph
    initializers = {init.name for init in graph.initializer}
    return ModelInterface(
        manifest=manifest,
        inputs=tuple(_tensor_spec(v) for v in graph.input if v.name not in initializers),
        outputs=tuple(_tensor_spec(v) for v in graph.output),
        class_names=tuple(class_names), input_size=tuple(input_size),
        normalisation=normalisation, class_colours=class_colours(model))


@dataclass(frozen=True)
class OpenedSnapshot:
    payload: SnapshotPayload
    manifest: ParameterManifest
    vector: np.ndarray
    interface: ModelInterface


def build_snapshot(*, client_id: str, model_id: str, version: int, writer: InitializerWriter,
                   manifest: ParameterManifest, vector: np.ndarray, class_names,
                   input_spec) -> SnapshotPayload:
    """Serialise the model at `vector` into a snapshot."""
    return SnapshotPayload(
        client_id=client_id, model_id=model_id, version=int(version), format=FORMAT_ONNX,
        model_data=writer.write(vector),
        parameters=tuple((e.name, e.shape, e.offset) for e in manifest.entries),
        class_names=tuple(class_names), input_height=int(input_spec.height),
        input_width=int(input_spec.width), mean=_float32_triplet(input_spec.mean),
        std=_float32_triplet(input_spec.std), digest=vector_digest(vector))


def open_snapshot(payload: SnapshotPayload) -> OpenedSnapshot:
    """Verify a received snapshot and return its manifest and flat vector."""
    import onnx

    if payload.format != FORMAT_ONNX:
        raise SnapshotError('unknown-format', f"format '{payload.format}' is not onnx")
    try:
        manifest = ParameterManifest.from_shapes((name, shape)
                                                 for name, shape, _ in payload.parameters)
        if [e.offset for e in manifest.entries] != [int(p[2]) for p in payload.parameters]:
            raise ValueError('offsets are not the contiguous layout')
    except (ValueError, TypeError, OverflowError) as e:   # inf offsets, dims past int64
        raise SnapshotError('bad-manifest', str(e)) from e
    try:
        if not isinstance(payload.model_data, _BYTES_LIKE):
            raise TypeError(f'model_data is a {type(payload.model_data).__name__}')
        model = onnx.load_from_string(bytes(payload.model_data))
        check_initializers(model, manifest)
        vector = read_vector(model, manifest)
        interface = model_interface(model, manifest, _class_names(payload.class_names),
                                    _input_size(payload), (_finite_triplet(payload.mean),
                                                           _finite_triplet(payload.std)))
    except Exception as e:  # noqa: BLE001 - protobuf and onnx raise many types on bad bytes
        raise SnapshotError('bad-model', f'{type(e).__name__}: {e}') from e
    if (not isinstance(payload.digest, _BYTES_LIKE)
            or vector_digest(vector) != bytes(payload.digest)):
        raise SnapshotError('digest-mismatch', 'the parameters do not match the digest')
    return OpenedSnapshot(payload, manifest, vector, interface)


def _tensor_spec(value) -> TensorSpec:
    tensor = value.type.tensor_type
    return (value.name, tensor.elem_type,
            tuple(d.dim_param or d.dim_value for d in tensor.shape.dim))


def _class_names(values) -> tuple[str, ...]:
    names = tuple(values)
    if not all(isinstance(name, str) for name in names):
        raise TypeError('class names must be strings')
    return names


def _input_size(payload: SnapshotPayload) -> tuple[int, int]:
    size = (payload.input_height, payload.input_width)
    if not all(isinstance(v, (int, np.integer)) and not isinstance(v, bool) and v > 0
               for v in size):
        raise ValueError(f'input size must be two positive integers, got {size!r}')
    return int(size[0]), int(size[1])


def _finite_triplet(values) -> tuple[float, float, float]:
    # NaN would make an interface unequal to itself, so no snapshot could ever match it.
    triplet = tuple(float(v) for v in values)
    if len(triplet) != 3 or not all(math.isfinite(v) for v in triplet):
        raise ValueError(f'mean and std need three finite values, got {triplet!r}')
    return triplet


def _float32_triplet(values) -> tuple[float, float, float]:
    # Stored on the 0..255 pixel scale and rounded to float32, as the message carries it, so the
    # payload comes back from the wire unchanged.
    scaled = np.asarray(values, np.float64) * 255.0
    return tuple(float(v) for v in scaled.astype(np.float32))
