"""Edge side: the student's parameters as ONNX initializers (onnx + numpy, no torch).

The exported model names each trainable parameter's initializer after its manifest entry
(`onnx_export` guarantees and checks this), so the manifest alone, which travels in the
snapshot, is the map from the flat vector to the graph.
"""

from __future__ import annotations

import json
from collections import Counter

import numpy as np
import onnx
from onnx import numpy_helper

from ams_ros.model.manifest import FLAT_DTYPE, ParameterManifest


def check_initializers(model: onnx.ModelProto, manifest: ParameterManifest) -> None:
    """Raise ValueError unless every manifest entry is exactly one used float32 initializer.

    The shape must match, and some node must read it, or writing it would change nothing.
    """
    graph = model.graph
    counts = Counter(init.name for init in graph.initializer)
    by_name = {init.name: init for init in graph.initializer}
    used = {name for node in graph.node for name in node.input}
    problems = []
    for entry in manifest.entries:
        init = by_name.get(entry.name)
        if init is None:
            problems.append(f'{entry.name}: no initializer of that name')
        elif counts[entry.name] > 1:
            problems.append(f'{entry.name}: {counts[entry.name]} initializers share the name')
        elif init.data_type != onnx.TensorProto.FLOAT:
            problems.append(f'{entry.name}: initializer is not float32')
        elif tuple(init.dims) != entry.shape:
            problems.append(f'{entry.name}: initializer shape {tuple(init.dims)} '
                            f'!= manifest {entry.shape}')
        elif entry.name not in used:
            problems.append(f'{entry.name}: initializer is not read by any node')
    if problems:
        raise ValueError('manifest does not map one-to-one onto the ONNX initializers:\n  '
                         + '\n  '.join(problems))


def read_vector(model: onnx.ModelProto, manifest: ParameterManifest) -> np.ndarray:
    """Copy the manifest's initializers out of the model into a new flat vector."""
    check_initializers(model, manifest)
    wanted = set(manifest.names)
    return manifest.join({init.name: numpy_helper.to_array(init)
                          for init in model.graph.initializer if init.name in wanted})


# metadata_props keys of an exported student: with them an ONNX file alone is enough for a
# drone to start and accept patches.
MANIFEST_KEY = 'ams.manifest'
MODEL_ID_KEY = 'ams.model_id'
CLASS_NAMES_KEY = 'ams.class_names'
CLASS_COLOURS_KEY = 'ams.class_colours'  # [[R, G, B], ...] per class, for colour masks


def model_metadata(model: onnx.ModelProto) -> dict[str, str]:
    return {prop.key: prop.value for prop in model.metadata_props}


def class_colours(model: onnx.ModelProto) -> tuple[tuple[int, int, int], ...]:
    """Return the class colours the model declares; () when it declares none or bad ones."""
    try:
        colours = json.loads(model_metadata(model).get(CLASS_COLOURS_KEY, '[]'))
        parsed = tuple(tuple(int(c) for c in colour) for colour in colours)
    except (ValueError, TypeError):
        return ()
    if all(len(c) == 3 and all(0 <= v <= 255 for v in c) for c in parsed):
        return parsed
    return ()


def manifest_from_metadata(model: onnx.ModelProto) -> ParameterManifest:
    """Return the manifest stored in the model, checked against its initializers."""
    text = model_metadata(model).get(MANIFEST_KEY)
    if text is None:
        raise ValueError(f"the ONNX model has no '{MANIFEST_KEY}' metadata: export it with "
                         'ams_ros.model.onnx_export.export_student_onnx')
    manifest = ParameterManifest.from_json(text)
    check_initializers(model, manifest)
    return manifest


class InitializerWriter:
    """Turn flat vectors into serialized models, reusing one serialized template.

    The template is serialized once and the byte offset of each manifest initializer's
    raw_data inside it is recorded; writing a vector then copies its slices into a copy of
    those bytes. That costs a few milliseconds with numpy instead of a protobuf
    re-serialization, which holds the interpreter lock for tens of milliseconds and would
    stall the inference thread on every swap. A ModelProto passed in is copied, not mutated.
    """

    def __init__(self, model: onnx.ModelProto | bytes, manifest: ParameterManifest):
        model = (onnx.load_from_string(model) if isinstance(model, bytes)
                 else _copy_model(model))
        check_initializers(model, manifest)
        self.manifest = manifest
        by_name = {init.name: init for init in model.graph.initializer}
        for entry in manifest.entries:
            init = by_name[entry.name]
            # Values may sit in float_data; raw_data must then be the only copy.
            if not init.HasField('raw_data'):
                init.raw_data = numpy_helper.to_array(init).astype(FLAT_DTYPE).tobytes()
                del init.float_data[:]
        self._template = model.SerializeToString()
        self._slices = _raw_data_offsets(self._template, model, manifest)

    def write(self, flat: np.ndarray) -> bytes:
        """Return the serialized model with the flat vector's values in its initializers."""
        self.manifest.check_vector(flat)
        out = bytearray(self._template)
        view = np.frombuffer(out, np.uint8)
        source = flat.astype(FLAT_DTYPE, copy=False).view(np.uint8)
        for offset, start, stop in self._slices:
            view[offset:offset + 4 * (stop - start)] = source[4 * start:4 * stop]
        return bytes(out)


def _copy_model(model: onnx.ModelProto) -> onnx.ModelProto:
    copy = onnx.ModelProto()
    copy.CopyFrom(model)
    return copy


def _raw_data_offsets(serialized: bytes, model: onnx.ModelProto,
                      manifest: ParameterManifest) -> list[tuple[int, int, int]]:
    """Locate each manifest initializer's raw_data bytes in the serialized model.

    A sub-message serializes to the same bytes inside its parent, and initializers are
    serialized in order, so each one is found by scanning forward; its raw_data (field 9)
    is its last field when no later field is set, which is checked.
    """
    wanted = {e.name: e for e in manifest.entries}
    slices, position = [], 0
    for init in model.graph.initializer:
        entry = wanted.get(init.name)
        if entry is None:
            continue
        encoded = init.SerializeToString()
        if not encoded.endswith(init.raw_data):
            raise ValueError(f'{init.name}: raw_data is not the last field of its initializer')
        found = serialized.find(encoded, position)
        if found < 0:
            raise ValueError(f'{init.name}: initializer bytes not found in the model')
        position = found + len(encoded)
        slices.append((position - len(init.raw_data), entry.offset, entry.stop))
    return slices
