"""The generic student: pretraining, checkpoints, ONNX export, a gap that specialising closes."""

import dataclasses
import itertools
import json

import numpy as np
import pytest
import torch

from ams_ros.model.pretrain import (
    SMALL_CHECKPOINT,
    FramePool,
    PretrainConfig,
    StudentMetadata,
    export_onnx,
    flight_frames,
    load_student,
    main,
    metadata_path,
    predict,
    pretrain,
    save_student,
    score,
    shipped_or_pretrained,
    specialise,
    world_fingerprint,
)
from ams_ros.world import CLASS_NAMES, FIRST_HELD_OUT_SEED

# A fixed pool (no fresh frames), so the loss measures learning rather than the frames drawn.
TINY = PretrainConfig(height=32, width=64, steps=30, batch_size=8, learning_rate=2e-3,
                      warmup_steps=1, pool_size=16, episode_frames=16, fresh_per_step=0,
                      seeds=(0, 50))


@pytest.fixture(scope='module', autouse=True)
def one_thread():
    """Run torch on one thread: on a busy machine several threads per process thrash."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope='module')
def tiny(tmp_path_factory):
    path = tmp_path_factory.mktemp('tiny') / 'student.pt'
    return path, pretrain(TINY, log=lambda line: None, checkpoint=path)


def test_tiny_pretraining_learns(tiny):
    _, result = tiny
    losses = result.losses
    assert len(losses) == TINY.steps
    assert np.mean(losses[-6:]) < 0.9 * np.mean(losses[:6])
    assert result.metadata.pretrain['steps_done'] == TINY.steps
    # Pretraining learns BatchNorm statistics (the on-line fine-tuning later freezes them).
    bn = next(m for m in result.model.modules() if isinstance(m, torch.nn.BatchNorm2d))
    assert int(bn.num_batches_tracked) == TINY.steps


def test_the_pool_replaces_frames_with_fresh_ones():
    stream = ((np.full((2, 4, 3), i, np.uint8), np.full((2, 4), i, np.uint8))
              for i in itertools.count())
    pool = FramePool(stream, 6, np.random.default_rng(0))
    frames, labels = pool.batch(4)
    assert frames.shape == (4, 2, 4, 3) and len(set(labels[:, 0, 0])) == 4
    pool.refresh(3)
    assert sorted(pool.labels[:, 0, 0])[-3:] == [6, 7, 8]
    assert (pool.frames[:, 0, 0, 0] == pool.labels[:, 0, 0]).all()


def test_checkpoint_round_trips(tiny):
    path, result = tiny
    model, meta = load_student(path)
    assert not model.training
    saved = json.loads(metadata_path(path).read_text())
    assert saved['arch'] == TINY.arch and tuple(saved['class_names']) == CLASS_NAMES
    assert meta == StudentMetadata.from_json(metadata_path(path).read_text())
    assert dataclasses.replace(meta, weights_sha256='') == result.metadata
    assert meta.input_spec.height == 32 and meta.input_spec.width == 64
    assert meta.pretrain['config']['seeds'] == [0, 50]
    expected = result.model.state_dict()
    for name, value in model.state_dict().items():
        assert torch.equal(value, expected[name]), name


def test_a_tampered_checkpoint_is_refused(tiny, tmp_path):
    path, result = tiny
    copy = tmp_path / 'copy.pt'
    save_student(copy, result.model, result.metadata)
    data = bytearray(copy.read_bytes())
    data[-100] ^= 1
    copy.write_bytes(bytes(data))
    with pytest.raises(ValueError, match='digest'):
        load_student(copy)


def test_an_unshipped_student_is_pretrained_once_then_reused(tmp_path):
    recipe = dataclasses.replace(TINY, steps=2, pool_size=8, episode_frames=8)
    shipped, cache, logs = tmp_path / 'data' / 'student_x.pt', tmp_path / 'cache', []
    path = shipped_or_pretrained(shipped, recipe, cache, logs.append, 'cpu')
    assert path.parent == cache and world_fingerprint() in path.name
    assert any('not shipped' in line for line in logs)
    model, meta = load_student(path)  # also verifies the weights' digest
    assert (meta.height, meta.width) == (32, 64) and meta.pretrain['steps_done'] == 2
    assert meta.world_fingerprint == world_fingerprint()
    made, logs[:] = path.stat().st_mtime_ns, []
    assert shipped_or_pretrained(shipped, recipe, cache, logs.append, 'cpu') == path
    assert not logs and path.stat().st_mtime_ns == made
    # A shipped checkpoint is used as it is.
    assert shipped_or_pretrained(SMALL_CHECKPOINT, recipe, tmp_path / 'unused') == SMALL_CHECKPOINT
    assert not (tmp_path / 'unused').exists()


def test_pretraining_never_uses_held_out_worlds():
    with pytest.raises(ValueError, match='held-out'):
        PretrainConfig(seeds=(0, FIRST_HELD_OUT_SEED + 1))
    with pytest.raises(SystemExit):
        main(['--arch', 'no-such-arch'])


@pytest.fixture(scope='module')
def committed():
    if not SMALL_CHECKPOINT.exists():
        pytest.fail(f'{SMALL_CHECKPOINT} is missing: run `ams pretrain` '
                    '(see ams_ros/model/pretrain.py)')
    return load_student(SMALL_CHECKPOINT)


def test_committed_checkpoint_matches_this_world(committed):
    _, meta = committed
    assert meta.arch == 'deeplabv3_mbv2_small'
    assert (meta.height, meta.width) == (128, 256)
    assert tuple(meta.class_names) == CLASS_NAMES
    assert meta.world_fingerprint == world_fingerprint(), (
        'the world generator changed since the student was pretrained: pretrain it again')
    assert max(SMALL_CHECKPOINT.stat().st_size,
               SMALL_CHECKPOINT.with_suffix('.onnx').stat().st_size) < 10e6


def test_committed_onnx_agrees_with_the_checkpoint(committed):
    ort = pytest.importorskip('onnxruntime')
    model, meta = committed
    spec = meta.input_spec
    _, frames, _ = flight_frames(FIRST_HELD_OUT_SEED + 5, spec, fps=1.0, duration_s=2.0)
    session = ort.InferenceSession(SMALL_CHECKPOINT.with_suffix('.onnx').read_bytes(),
                                   providers=['CPUExecutionProvider'])
    labels = session.run(['labels'], {'image': frames[:1]})[0][0]
    assert (labels == predict(model, frames[:1], spec)[0]).mean() > 0.99
    fresh = export_onnx(model, meta)
    assert len(fresh) > 0.9 * SMALL_CHECKPOINT.with_suffix('.onnx').stat().st_size


def test_generic_student_works_on_a_held_out_flight_and_specialising_helps(committed):
    """A sanity floor for the generic student, and fine-tuning on the flight beats it."""
    model, meta = committed
    spec = meta.input_spec
    torch.manual_seed(0)
    _, frames, labels = flight_frames(FIRST_HELD_OUT_SEED + 7, spec, fps=1.0, duration_s=24.0)
    before = score(labels, predict(model, frames, spec))['mean_frame_miou']
    tuned, _ = specialise(model, frames, labels, spec, steps=24, batch_size=8, seed=0)
    after = score(labels, predict(tuned, frames, spec))['mean_frame_miou']
    assert before > 0.2  # well above chance (about 0.1 for six classes)
    assert after > before + 0.05
