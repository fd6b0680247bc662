"""`ams demo --task --video`: the whole system on a user's clip with their task, over real DDS.

The camera plays the clip (looped), the ground runs the person task (its TFLite teacher, a
student distilled here), the drone the student's .onnx; the demo's monitor scores both students
against the teacher and writes the report with its side-by-side video.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import av
import torch
from test_evaluation import person_clip

from ams_ros.ground.teachers import make_teacher
from ams_ros.model.distill import DistillConfig, distil
from ams_ros.task import load_task

ROOT = Path(__file__).resolve().parents[1]


def test_the_demo_runs_a_task_on_a_clip(tmp_path):
    torch.set_num_threads(1)
    task = load_task('person')
    clip = person_clip(tmp_path / 'clip.mp4', frames=25)
    student = tmp_path / 'student.pt'
    distil(DistillConfig(videos=(clip,), height=48, width=64, steps=10, batch_size=4,
                         warmup_steps=2), task, make_teacher(task.teacher), student,
           log=lambda _: None, cache=tmp_path / 'labels', progress=False)
    report = tmp_path / 'report'
    result = subprocess.run(
        [sys.executable, '-m', 'ams_ros.cli', 'demo', '--task', 'person', '--video', clip,
         '--checkpoint', str(student), '--duration', '25', '--report', str(report),
         '--progress-period', '100', '--ground-param', 'trainer.iterations:=2',
         '--ground-param', 'atr.period_min:=2.0', '--ground-param', 'asr.interval:=2.0'],
        env=dict(os.environ, PYTHONPATH=str(ROOT)), capture_output=True, text=True,
        timeout=240)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    summary = json.loads((report / 'summary.json').read_text())
    assert summary['classes'] == ['background', 'person']
    whole = summary['accuracy']['whole_run']
    assert whole['frames_compared'] > 20, summary['monitor']
    assert 0.0 <= whole['baseline_miou'] <= 1.0 and 0.0 <= whole['adapted_miou'] <= 1.0
    assert summary['model']['patches_applied'] >= 1 and summary['model']['patches_rejected'] == 0
    assert summary['video']['frames'] == whole['frames_compared']
    with av.open(str(report / 'side_by_side.mp4')) as container:
        assert sum(1 for _ in container.decode(video=0)) == whole['frames_compared']
    # The ground read a copy of the task naming the student it was given.
    assert str(student.resolve()) in (report / 'task.yaml').read_text()
