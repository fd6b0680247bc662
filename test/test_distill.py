"""`ams pretrain --task`: the person task's TFLite teacher distilled into a student over clips."""

import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from test_evaluation import person_clip

from ams_ros.drone.agent import DroneAgent, DroneConfig
from ams_ros.ground.teachers import make_teacher
from ams_ros.model.distill import DistillConfig, Footage, distil, split
from ams_ros.model.onnx_params import CLASS_COLOURS_KEY, class_colours
from ams_ros.model.template import from_checkpoint
from ams_ros.task import load_task
from ams_ros.wire.model_version import APPLIED

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope='module')
def clips(tmp_path_factory):
    folder = tmp_path_factory.mktemp('clips')
    return [person_clip(folder / 'a.mp4', frames=30), person_clip(folder / 'b.mp4', frames=20)]


class CountingTeacher:
    def __init__(self, teacher):
        self.teacher, self.frames = teacher, 0

    def label(self, frames, stamps):
        self.frames += len(frames)
        return self.teacher.label(frames, stamps)


def config(clips, **kw):
    settings = dict(videos=tuple(clips), height=48, width=64, steps=40, batch_size=4,
                    warmup_steps=5, sample_fps=2.0)
    settings.update(kw)
    return DistillConfig(**settings)


def test_a_distilled_student_learns_the_teacher_and_flies(clips, tmp_path):
    torch.set_num_threads(1)
    task = load_task('person')
    teacher = CountingTeacher(make_teacher(task.teacher))
    out = tmp_path / 'student.pt'
    model, meta = distil(config(clips), task, teacher, out, log=lambda _: None,
                         cache=tmp_path / 'labels', progress=False)
    assert teacher.frames == 20  # 6 s and 4 s of video at 2 frames/s
    assert meta.class_names == ('background', 'person') and (meta.height, meta.width) == (48, 64)
    info = meta.pretrain
    assert info['kind'] == 'distillation' and info['steps_done'] == 40
    assert info['train_frames'] == 12 and info['evaluation']['frames'] == 8  # b.mp4 held out
    assert info['loss_last_20'] < info['loss_first_20']
    assert 0.0 <= info['evaluation']['pooled_miou'] <= 1.0
    assert not out.with_suffix('.resume.pt').exists()
    # What the ground loads and what the drone runs, as they are.
    template = from_checkpoint(out)
    assert template.class_names == task.class_names
    drone = DroneAgent(DroneConfig(client_id='d'))
    assert drone.load_model_file(out.with_suffix('.onnx').read_bytes(), 1).kind == APPLIED
    assert drone.runtime.wait_for_version(1, 30.0)
    mask = drone.infer(np.zeros((48, 64, 3), np.uint8))
    assert mask.shape == (48, 64) and mask.max() <= 1
    # The task's colours travel in the model's metadata, for the drone's colour masks.
    assert drone.class_names == task.class_names
    assert drone.class_colours == task.class_colours == ((0, 0, 0), (230, 60, 60))
    drone.close()
    model = onnx.load(out.with_suffix('.onnx'))
    assert class_colours(model) == task.class_colours
    entry = next(p for p in model.metadata_props if p.key == CLASS_COLOURS_KEY)
    for bad in ('[[0, 0, 300], [1, 2, 3]]', '[[1, 2]]', 'not json'):
        entry.value = bad  # colours are cosmetic: bad ones are ignored, not fatal
        assert class_colours(model) == ()
    # A rerun labels nothing: the teacher's labels come from the cache.
    again = CountingTeacher(make_teacher(task.teacher))
    distil(config(clips, steps=2), task, again, tmp_path / 'again.pt', log=lambda _: None,
           cache=tmp_path / 'labels', progress=False)
    assert again.frames == 0


def test_one_file_is_split_in_time():
    frames = np.zeros((10, 4, 4, 3), np.uint8)
    train, held = split([Footage('a', frames, frames[..., 0])], 0.2)
    assert (len(train.frames), len(held.frames)) == (8, 2)
    train, held = split([Footage('a', frames, frames[..., 0])], 0.0)
    assert len(train.frames) == 10 and held is None


def test_a_stopped_run_resumes_where_it_was(clips, tmp_path):
    out = tmp_path / 'student.pt'
    command = [sys.executable, '-m', 'ams_ros.cli', 'pretrain', '--task', 'person', '--videos',
               *clips, '--height', '48', '--width', '64', '--steps', '60', '--batch-size', '4',
               '--threads', '1', '--out', str(out), '--no-progress']
    env = dict(os.environ, XDG_CACHE_HOME=str(tmp_path / 'cache'), PYTHONPATH=str(ROOT))
    first = subprocess.Popen([*command, '--checkpoint-every', '0'], env=env,
                             stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    resume = out.with_suffix('.resume.pt')
    deadline = time.monotonic() + 120
    while not resume.exists() and first.poll() is None and time.monotonic() < deadline:
        time.sleep(0.2)
    first.kill()
    first.wait()
    assert resume.exists(), first.stdout.read()
    step = torch.load(resume, weights_only=True)['step']
    assert 0 < step < 60
    second = subprocess.run(command, env=env, capture_output=True,
                            text=True, timeout=600)
    assert second.returncode == 0, second.stdout + second.stderr
    assert 'resuming from step' in second.stdout
    assert from_checkpoint(out).class_names == ('background', 'person')


def test_an_image_folder_of_mixed_sizes_is_distilled_too(tmp_path):
    import cv2
    from test_teachers import head_and_shoulders

    folder = tmp_path / 'images'
    folder.mkdir()
    for i, (h, w) in enumerate([(96, 128), (120, 160), (64, 64)]):
        cv2.imwrite(str(folder / f'{i}.png'), head_and_shoulders(h, w)[..., ::-1])
    (folder / 'notes.txt').write_text('not an image')
    task = load_task('person')
    teacher = CountingTeacher(make_teacher(task.teacher))
    _, meta = distil(DistillConfig(images=str(folder), height=48, width=64, steps=2,
                                   batch_size=2, holdout=0.0), task, teacher,
                     tmp_path / 's.pt', log=lambda _: None, cache=tmp_path / 'labels',
                     progress=False)
    assert teacher.frames == 3 and meta.pretrain['train_frames'] == 3
    assert meta.pretrain['evaluation'] == {}  # nothing held out
