"""A user's own PyTorch student, named by its factory: exported, patched and trained like ours."""

import numpy as np
import onnxruntime as ort
import pytest
import torch
from test_teachers import head_and_shoulders

from ams_ros.ground.drone_session import DroneSession, GroundConfig
from ams_ros.ground.teachers import make_teacher
from ams_ros.ground.trainer import TrainerConfig
from ams_ros.model.manifest import module_to_vector, vector_to_module
from ams_ros.model.onnx_params import InitializerWriter
from ams_ros.model.student import InputSpec, build_student, pixel_normalisation
from ams_ros.model.template import StudentTemplate
from ams_ros.task import load_task

ARCH = 'support.factory_student:tiny'
SPEC = InputSpec(48, 64)


@pytest.fixture(scope='module')
def template():
    torch.manual_seed(0)
    model = build_student(ARCH, 2)
    with torch.no_grad():  # BatchNorm statistics that are not the identity
        model.train()(torch.randn(8, 3, SPEC.height, SPEC.width))
    return StudentTemplate.from_model(model.eval(), ARCH, ('background', 'person'), SPEC)


def ort_logits(model_bytes: bytes, frame: np.ndarray) -> np.ndarray:
    session = ort.InferenceSession(model_bytes, providers=['CPUExecutionProvider'])
    return session.run(['logits'], {'image': frame[None]})[0]


def torch_logits(model, frame: np.ndarray) -> np.ndarray:
    mean, std = pixel_normalisation(SPEC)
    x = torch.from_numpy(frame).permute(2, 0, 1)[None].float()
    with torch.no_grad():
        return model.eval()((x - mean) / std).numpy()


def test_torch_and_onnx_runtime_agree_before_and_after_sparse_patches(template):
    frame = head_and_shoulders(SPEC.height, SPEC.width)
    model, manifest = template.model, template.manifest
    assert torch_logits(model, frame).shape == (1, 2, SPEC.height, SPEC.width)  # upsampled
    np.testing.assert_allclose(ort_logits(template.onnx_bytes, frame),
                               torch_logits(model, frame), atol=1e-4)
    writer = InitializerWriter(template.onnx_bytes, manifest)
    rng = np.random.default_rng(1)
    vector = module_to_vector(model, manifest)
    for _ in range(3):
        chosen = rng.choice(vector.size, vector.size // 20, replace=False)
        vector[chosen] += rng.normal(0.0, 0.05, chosen.size).astype(np.float32)
        vector_to_module(vector, model, manifest)
        np.testing.assert_allclose(ort_logits(writer.write(vector), frame),
                                   torch_logits(model, frame), atol=1e-4)
    vector_to_module(module_to_vector(template.model, manifest), model, manifest)


def test_training_phases_lower_the_loss_on_the_teachers_labels(template):
    torch.set_num_threads(1)
    task = load_task('person')
    session = DroneSession('d', template, make_teacher(task.teacher), GroundConfig(
        trainer=TrainerConfig(iterations=15, batch_size=4, learning_rate=1e-2,
                              fraction=0.5, channels_last=False)), seed=0)
    frames = np.stack([np.roll(head_and_shoulders(SPEC.height, SPEC.width), 3 * i, axis=1)
                       for i in range(8)])
    session.add_frames(frames, [float(i) for i in range(8)])
    losses = [session.train_phase(8.0).result.mean_loss for _ in range(3)]
    assert losses[2] < losses[0], losses


def test_a_factory_that_is_no_student_is_refused():
    with pytest.raises(ValueError, match='must return an nn.Module'):
        build_student('support.factory_student:not_a_module', 2)
    with pytest.raises(ValueError, match="student factory 'support.factory_student:none'"):
        build_student('support.factory_student:none', 2)
