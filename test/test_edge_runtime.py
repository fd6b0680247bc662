import copy
import threading
import time

import cv2
import numpy as np
import onnxruntime as ort
import pytest
import torch

from ams_ros.drone.edge_runtime import (
    APPLIED,
    FAILED,
    EdgeRuntime,
    LatencyStats,
    RuntimeConfig,
    resize_frame,
    select_providers,
)
from ams_ros.model.manifest import module_to_vector, vector_to_module
from ams_ros.model.onnx_export import export_student_onnx
from ams_ros.model.onnx_params import InitializerWriter
from ams_ros.model.student import InputSpec, build_student
from ams_ros.pixels import resize_labels

SPEC = InputSpec(height=64, width=128)
NUM_CLASSES = 5
CONFIG = RuntimeConfig(intra_op_threads=1)
TIMEOUT_S = 60.0  # generous: the machine is shared; only a hang should reach it


@pytest.fixture(scope='module')
def student():
    """Export a student whose BatchNorm statistics come from data, so every layer matters."""
    torch.manual_seed(0)
    model = build_student('deeplabv3_mbv2_small', NUM_CLASSES)
    batchnorms = [m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    for bn in batchnorms:
        bn.momentum = None
    with torch.no_grad():
        model.train()(torch.randn(4, 3, SPEC.height, SPEC.width))
    model.eval()
    export = export_student_onnx(model, SPEC)
    return model, export, module_to_vector(model, export.manifest)


@pytest.fixture
def runtime(student):
    _, export, _ = student
    with EdgeRuntime(export.model_bytes, export.manifest, version=0, config=CONFIG) as rt:
        yield rt


def _frame(seed=1, height=90, width=160):
    return np.random.default_rng(seed).integers(0, 256, (height, width, 3), np.uint8)


def _perturbed(base, seed, fraction=0.05, scale=0.05):
    """Change a fraction of the parameters by about a training phase's worth, as a patch does."""
    rng = np.random.default_rng(seed)
    flat = base.copy()
    idx = rng.choice(flat.size, int(fraction * flat.size), replace=False)
    flat[idx] += scale * rng.standard_normal(idx.size).astype(np.float32)
    return flat


def _fresh_run(export, flat, image):
    """Return (labels, logits) of a new session built from the exported model and `flat`."""
    model_bytes = InitializerWriter(export.model_bytes, export.manifest).write(flat)
    session = ort.InferenceSession(model_bytes, providers=['CPUExecutionProvider'])
    labels, logits = session.run(['labels', 'logits'], {'image': image[None]})
    return labels[0], logits[0]


def _fresh_labels(export, flat, image):
    return _fresh_run(export, flat, image)[0]


def _torch_logits(model, image):
    x = torch.from_numpy(image).permute(2, 0, 1)[None].float() / 255
    x = (x - torch.tensor(SPEC.mean).view(1, 3, 1, 1)) / torch.tensor(SPEC.std).view(1, 3, 1, 1)
    with torch.no_grad():
        return model.eval()(x)[0].numpy()


def test_select_providers_keeps_available_in_preferred_order():
    gpu_box = ['CPUExecutionProvider', 'CUDAExecutionProvider', 'TensorrtExecutionProvider']
    assert select_providers(available=gpu_box) == [
        'TensorrtExecutionProvider', 'CUDAExecutionProvider', 'CPUExecutionProvider']
    assert select_providers(use_tensorrt=False, available=gpu_box) == [
        'CUDAExecutionProvider', 'CPUExecutionProvider']
    assert select_providers(available=['AzureExecutionProvider', 'CPUExecutionProvider']) == [
        'CPUExecutionProvider']
    assert select_providers(('CUDAExecutionProvider',), available=['CPUExecutionProvider']) == [
        'CPUExecutionProvider']


def test_infer_resizes_any_frame_to_the_model_and_the_mask_back(runtime, student):
    _, export, base = student
    frame = _frame(height=90, width=160)
    mask = runtime.infer(frame)
    assert runtime.input_size == (SPEC.height, SPEC.width)
    assert mask.dtype == np.uint8 and mask.shape == (SPEC.height, SPEC.width)
    expected = _fresh_labels(export, base, cv2.resize(frame, (SPEC.width, SPEC.height),
                                                      interpolation=cv2.INTER_AREA))
    np.testing.assert_array_equal(mask, expected)
    assert len(np.unique(mask)) > 1  # a constant mask would make these comparisons vacuous

    full = runtime.infer(frame, resize_to_input=True)
    assert full.shape == frame.shape[:2]
    np.testing.assert_array_equal(full, resize_labels(mask, 90, 160))  # pixel-centre nearest


def test_resize_frame_rejects_non_rgb_uint8():
    with pytest.raises(ValueError, match='uint8 HxWx3'):
        resize_frame(np.zeros((10, 10), np.uint8), 4, 4)
    with pytest.raises(ValueError, match='uint8 HxWx3'):
        resize_frame(np.zeros((10, 10, 3), np.float32), 4, 4)


def test_swapped_model_equals_fresh_session_and_torch(runtime, student):
    model, export, base = student
    flat = _perturbed(base, seed=2)
    image = _frame(seed=3, height=SPEC.height, width=SPEC.width)
    before = runtime.infer(image)

    runtime.submit(flat, version=1)
    assert runtime.wait_for_version(1, TIMEOUT_S)
    after = runtime.infer(image)
    assert not np.array_equal(before, after)
    fresh_labels, fresh_logits = _fresh_run(export, flat, image)
    np.testing.assert_array_equal(after, fresh_labels)

    # Torch with the same vector: same logits, same labels where the top two are apart.
    patched = copy.deepcopy(model)
    vector_to_module(flat, patched, export.manifest)
    logits = _torch_logits(patched, image)
    np.testing.assert_allclose(fresh_logits, logits, atol=1e-3)
    top2 = np.sort(logits, axis=0)[-2:]
    clear = top2[1] - top2[0] > 1e-3
    assert clear.mean() > 0.9
    np.testing.assert_array_equal(after[clear], logits.argmax(axis=0)[clear])

    record = runtime.swap_history[-1]
    assert (record.version, record.outcome, record.error) == (1, APPLIED, None)
    assert 0 < record.build_s <= record.submit_to_active_s


def test_inference_goes_on_while_new_models_are_built(runtime, student):
    _, _, base = student
    frame = _frame(seed=4)
    calls, errors, stop = [], [], threading.Event()

    def infer_loop():
        try:
            while not stop.is_set():
                started = time.monotonic()
                runtime.infer(frame)
                calls.append((started, time.monotonic()))
        except Exception as exc:  # surfaced by the assertion below
            errors.append(exc)

    thread = threading.Thread(target=infer_loop)
    thread.start()
    try:
        for version in range(1, 6):
            runtime.submit(_perturbed(base, seed=version), version)
            assert runtime.wait_for_version(version, TIMEOUT_S)
    finally:
        stop.set()
        thread.join()

    assert errors == []
    builds = [(r.started_at, r.built_at) for r in runtime.swap_history]
    assert len(builds) == 5
    # Frames were segmented from start to finish while a new session was being built. This
    # needs an ONNX Runtime that releases the GIL while building a session (1.32 does, 1.30
    # did not).
    during_builds = [c for c in calls for b in builds if b[0] <= c[0] and c[1] <= b[1]]
    assert len(during_builds) > 0
    assert runtime.status().counters.frames == len(calls)


def test_latest_submission_wins_when_several_queue(runtime, student):
    _, export, base = student
    vectors = {version: _perturbed(base, seed=10 + version) for version in range(1, 6)}
    for version, flat in vectors.items():
        runtime.submit(flat, version)
    assert runtime.wait_until_idle(TIMEOUT_S)

    assert runtime.active_version == 5
    image = _frame(seed=5, height=SPEC.height, width=SPEC.width)
    np.testing.assert_array_equal(runtime.infer(image), _fresh_labels(export, vectors[5], image))
    # Submissions queued behind a build were replaced, not built one after another.
    built = [r.version for r in runtime.swap_history]
    assert len(built) < 5 and built[-1] == 5
    counters = runtime.status().counters
    assert counters.swaps_submitted == 5
    assert counters.swaps_applied + counters.swaps_superseded == 5


def test_an_older_submission_never_replaces_a_newer_swap(runtime, student):
    _, _, base = student
    runtime.submit(_perturbed(base, seed=20), version=1)
    runtime.swap_in(_perturbed(base, seed=21), version=2)
    assert runtime.wait_until_idle(TIMEOUT_S)
    assert runtime.active_version == 2


def test_failed_build_keeps_the_previous_model_and_reports_why(runtime, student):
    _, export, base = student
    flat = _perturbed(base, seed=30)
    assert runtime.swap_in(flat, version=1).outcome == APPLIED
    image = _frame(seed=6, height=SPEC.height, width=SPEC.width)
    good = runtime.infer(image)

    runtime.submit(flat[:-1], version=2)  # one parameter short
    assert runtime.wait_until_idle(TIMEOUT_S)

    assert runtime.active_version == 1
    assert not runtime.wait_for_version(2, timeout=0.05)
    np.testing.assert_array_equal(runtime.infer(image), good)
    record = runtime.status().last_swap
    assert (record.version, record.outcome) == (2, FAILED)
    assert 'flat vector must be' in record.error and runtime.last_error == record.error
    assert runtime.status().counters.swaps_failed == 1

    # The runtime still takes the next good vector.
    runtime.submit(flat, version=3)
    assert runtime.wait_for_version(3, TIMEOUT_S)


def test_latency_statistics_cover_a_rolling_window():
    stats = LatencyStats(window=100)
    for i in range(150):  # the first 50 fall out of the window
        stats.record(latency_s=(1.0 if i < 50 else 0.010 + 0.001 * (i % 2)),
                     finished_at=0.5 * i)
    summary = stats.summary()
    assert summary.count == 100 and stats.total == 150
    assert summary.p50_ms == pytest.approx(10.5)
    assert summary.p99_ms == pytest.approx(11.0)
    assert summary.fps == pytest.approx(2.0)  # one frame completed every 0.5 s


def test_runtime_status_reports_frames_and_latency(runtime):
    for _ in range(5):
        runtime.infer(_frame())
    status = runtime.status()
    assert status.active_version == 0 and status.providers == ['CPUExecutionProvider']
    assert status.counters.frames == 5 and status.latency.count == 5
    assert 0 < status.latency.p50_ms <= status.latency.p99_ms
    assert status.latency.fps > 0 and not status.building
