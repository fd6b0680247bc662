"""The student every drone starts from: its weights, its drone export and how to load one."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ams_ros.model.manifest import ParameterManifest, module_to_vector
from ams_ros.model.onnx_params import CLASS_COLOURS_KEY, CLASS_NAMES_KEY, MODEL_ID_KEY


class TemplateError(ValueError):
    """The student named cannot be loaded (no such file, not a checkpoint, no classes)."""


@dataclass(frozen=True)
class StudentTemplate:
    """What every drone starts from: the student's weights, export and metadata."""

    model: object  # torch.nn.Module holding the initial (pretrained) weights
    manifest: ParameterManifest
    model_id: str
    onnx_bytes: bytes
    class_names: tuple[str, ...]
    input_spec: object  # ams_ros.model.student.InputSpec

    @classmethod
    def from_model(cls, model, arch: str, class_names, input_spec,
                   class_colours=()) -> StudentTemplate:
        """Export the model once; every client's snapshots are written into this export.

        class_colours: [R, G, B] per class, for the drone's colour masks (none: its default).
        """
        from ams_ros.model.onnx_export import export_student_onnx

        model_id = ParameterManifest.from_module(model).model_id(arch)
        metadata = {MODEL_ID_KEY: model_id, CLASS_NAMES_KEY: json.dumps(list(class_names))}
        if class_colours:
            metadata[CLASS_COLOURS_KEY] = json.dumps([list(c) for c in class_colours])
        exported = export_student_onnx(model, input_spec, metadata)
        return cls(model=model, manifest=exported.manifest, model_id=model_id,
                   onnx_bytes=exported.model_bytes, class_names=tuple(class_names),
                   input_spec=input_spec)

    @property
    def initial_vector(self) -> np.ndarray:
        return module_to_vector(self.model, self.manifest)



def from_checkpoint(path: str | Path) -> StudentTemplate:
    """Load a checkpoint (ams_ros.model.pretrain format) as a StudentTemplate."""
    from ams_ros.model.pretrain import load_student

    model, meta = load_student(path)
    return StudentTemplate.from_model(model, meta.arch, meta.class_names, meta.input_spec,
                                      meta.class_colours)


def load_template(student: str, class_names, input_size: tuple[int, int], seed: int,
                  device: str, log):
    """Return the StudentTemplate: from a checkpoint, a packaged one, or a fresh arch.

    A packaged student that is not shipped is pretrained on `device` first (once, then cached).
    """
    import torch

    from ams_ros.model.student import STUDENT_ARCHS, InputSpec, build_student, is_factory

    if student in STUDENT_ARCHS or is_factory(student):
        if not class_names:
            raise TemplateError('class_names must not be empty for a fresh student')
        torch.manual_seed(seed)
        model = build_student(student, len(class_names))
        return StudentTemplate.from_model(model, student, tuple(class_names),
                                          InputSpec(*input_size))
    from ams_ros.model import pretrain

    path = pretrain.packaged_student(student, log, device) if student in pretrain.PACKAGED \
        else Path(student).expanduser()
    if not path.is_file():
        raise TemplateError(f"student '{student}': no checkpoint at {path}, and not an "
                            f'architecture ({sorted(STUDENT_ARCHS)})')
    try:
        return from_checkpoint(path)
    except Exception as e:  # noqa: BLE001 - report any unusable checkpoint as a refusal
        raise TemplateError(f"student '{path}': {type(e).__name__}: {e}") from e


def needs_pretraining(student: str) -> bool:
    """Whether `student` names a packaged student that is neither shipped nor cached yet.

    Loading one pretrains it first: minutes on a GPU, hours on a CPU.
    """
    from ams_ros.model import pretrain

    if student not in pretrain.PACKAGED:
        return False
    shipped, _ = pretrain.PACKAGED[student]
    return not (shipped.is_file() or pretrain.cached_student(shipped).is_file())
