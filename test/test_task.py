"""Task files: the shipped ones load and mean what they say; bad ones name the field."""

import numpy as np
import pytest
import yaml
from test_teachers import head_and_shoulders

from ams_ros import IGNORE_LABEL
from ams_ros.ground.teachers import make_teacher
from ams_ros.task import TaskError, load_task, task_from_dict
from ams_ros.world import CLASS_NAMES, PALETTE


def test_the_synthetic_task_is_the_world():
    task = load_task('synthetic')
    assert task.class_names == CLASS_NAMES
    np.testing.assert_array_equal(task.class_colours, PALETTE)
    assert task.teacher == {'kind': 'synthetic'}
    assert task.student == {'arch': 'deeplabv3_mbv2_small', 'input_size': (128, 256)}


def test_the_person_task_labels_a_person_with_its_packaged_teacher():
    task = load_task('person')
    assert task.class_names == ('background', 'person') and task.ignore_label == 255
    teacher = make_teacher(task.teacher)
    person = head_and_shoulders(144, 176)
    labels = teacher.label(np.stack([person, np.full_like(person, 90)]), [0.0, 1.0])
    assert labels[0, 60, 88] == task.class_names.index('person')
    assert labels[0, 3, 3] == task.class_names.index('background') and labels[1].max() == 0


def write(tmp_path, data) -> str:
    path = tmp_path / 'task.yaml'
    path.write_text(yaml.safe_dump(data))
    return str(path)


def base(tmp_path):
    model = tmp_path / 'teacher.onnx'
    model.write_bytes(b'not read until the teacher is built')
    return {'name': 'cars', 'classes': ['background', {'name': 'car', 'colour': [0, 0, 255]}],
            'teacher': {'kind': 'onnx', 'path': 'teacher.onnx',
                        'classes': {0: 'background', 7: 'car', 8: 'car', 3: 'ignore'},
                        'unmapped': 'background'},
            'student': {'arch': 'deeplabv3_mbv2_small', 'input_size': [64, 128]}}


def test_class_maps_are_many_to_one_with_a_named_fill(tmp_path):
    task = load_task(write(tmp_path, base(tmp_path)))
    table = task.teacher['class_map']
    assert table[7] == table[8] == 1 and table[0] == 0 and table[3] == IGNORE_LABEL
    assert table[5] == 0 and table[200] == 0 and len(table) == 256  # unmapped: background
    assert task.teacher['path'] == str(tmp_path / 'teacher.onnx')
    assert task.class_colours[1] == (0, 0, 255)
    ignored = base(tmp_path)
    del ignored['teacher']['unmapped']
    table = load_task(write(tmp_path, ignored)).teacher['class_map']
    assert len(table) == 9 and table[5] == IGNORE_LABEL


@pytest.mark.parametrize('change, match', [
    (lambda d: d.update(classes=['only']), 'classes: expected a list of at least two'),
    (lambda d: d.update(classes=['a', 'a']), r"names must be unique: \['a'\]"),
    (lambda d: d['classes'].__setitem__(1, {'name': 'car', 'colour': [0, 300, 0]}),
     r'classes\[1\].colour: expected \[R, G, B\]'),
    (lambda d: d.update(ignore_label=1), "ignore_label: 1 is the id of class 'car'"),
    (lambda d: d['teacher'].update(kind='caffe'), 'teacher.kind: expected one of'),
    (lambda d: d['teacher'].update(path='missing.onnx'), 'teacher.path: no such file'),
    (lambda d: d['teacher'].update(path='package://no_such_pkg/x.onnx'),
     "teacher.path: no Python package 'no_such_pkg'"),
    (lambda d: d['teacher']['classes'].update({9: 'truck'}),
     r"teacher.classes\[9\]: 'truck' is not a task class"),
    (lambda d: d['teacher'].update(classes={'x': 'car'}), 'teacher class ids are integers'),
    (lambda d: d['teacher'].pop('classes') and d['teacher'].pop('unmapped'),
     'teacher.classes: say which task class'),
    (lambda d: d['teacher'].update(output={'kind': 'softmax'}),
     r'teacher: output.kind: expected one of'),
    (lambda d: d['teacher'].update(input={'scale': 'percent'}), 'teacher: input.scale'),
    (lambda d: d['student'].update(arch='resnet'), 'student.arch: unknown student arch'),
    (lambda d: d['student'].update(arch='no_such_module:make'), 'student.arch: student factory'),
    (lambda d: d['student'].update(input_size=[64]), 'student.input_size: expected'),
    (lambda d: d.update(colours=[]), r"unknown keys \['colours'\]"),
    (lambda d: d['student'].update(onnx='teacher.onnx'), 'student: give one of arch'),
    (lambda d: d.update(student={'onnx': 'teacher.onnx', 'output': 'scores'}),
     'student: output.kind: expected one of'),
    (lambda d: d.update(student={'onnx': 'missing.onnx'}), 'student.onnx: no such file'),
])
def test_errors_name_the_file_and_the_field(tmp_path, change, match):
    data = base(tmp_path)
    change(data)
    path = write(tmp_path, data)
    with pytest.raises(TaskError, match=match) as error:
        load_task(path)
    assert str(error.value).startswith(path)


def test_sizes_set_the_uplink_and_the_teachers_input(tmp_path):
    data = base(tmp_path)
    data['sizes'] = {'uplink': [96, 128], 'teacher_input': [256, 256]}
    task = load_task(write(tmp_path, data))
    assert task.uplink_size == (96, 128) and task.teacher['input']['size'] == (256, 256)
    data['sizes'] = {'uplink': [96]}
    with pytest.raises(TaskError, match=r'sizes.uplink: expected \[height, width\]'):
        load_task(write(tmp_path, data))


def test_missing_and_malformed_files_say_so(tmp_path):
    with pytest.raises(TaskError, match='task file not found'):
        load_task(tmp_path / 'nope.yaml')
    (tmp_path / 'bad.yaml').write_text('classes: [a, b\n')
    with pytest.raises(TaskError, match='not YAML'):
        load_task(tmp_path / 'bad.yaml')
    with pytest.raises(TaskError, match='expected a mapping'):
        task_from_dict(['a'], tmp_path)
