"""A task in one file: the classes, the teacher that knows them and the student that learns them.

A task file is YAML (documented in ``config/tasks/README.md``)::

    name: person
    classes:                      # class ids in this order: 0, 1, ...
      - {name: background, colour: [0, 0, 0]}
      - {name: person, colour: [230, 60, 60]}
    ignore_label: 255             # the value in label files that means "not labelled"
    teacher:
      kind: tflite                # onnx, tflite, torchscript, torchvision or synthetic
      path: package://ams_ros/data/teachers/selfie_segmentation.tflite
      input: {scale: unit}        # ams_ros.model.conventions.InputConvention
      output: {kind: foreground}  # ams_ros.model.conventions.OutputConvention
      classes: {0: background, 1: person}  # teacher class id -> task class, many to one
      unmapped: ignore            # or a task class for the teacher's other classes
    student:
      arch: deeplabv3_mbv2_small  # a built-in architecture (or package.module:function) ...
      input_size: [144, 256]      # ... at this (height, width); or {path: checkpoint.pt},
                                  # or {onnx: / torchscript: file, input:, output:}
    sizes: {uplink: [144, 256]}   # optional: frames sent at; teacher_input: where not fixed

Relative paths are relative to the task file; ``package://ams_ros/...`` names a file shipped with
the package, as ROS resource paths do. Every error names the file and the field.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import yaml

from ams_ros import IGNORE_LABEL
from ams_ros.model import conventions

TEACHER_KINDS = ('onnx', 'tflite', 'torchscript', 'torchvision', 'synthetic')
PACKAGE_SCHEME = 'package://'


class TaskError(ValueError):
    """A task file that cannot be used; the message names the file and the field."""


@dataclass(frozen=True)
class TaskClass:
    name: str
    colour: tuple[int, int, int]


@dataclass(frozen=True)
class Task:
    name: str
    classes: tuple[TaskClass, ...]
    teacher: dict  # a make_teacher config: paths resolved, class map as teacher id -> task id
    student: dict  # {'arch', 'input_size'} or {'path'}
    ignore_label: int = IGNORE_LABEL
    source: str = ''  # the file it came from
    uplink_size: tuple[int, int] | None = None  # (H, W) frames travel at; None: the student's

    @property
    def class_names(self) -> tuple[str, ...]:
        return tuple(c.name for c in self.classes)

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @property
    def class_colours(self) -> tuple[tuple[int, int, int], ...]:
        return tuple(c.colour for c in self.classes)


def load_task(path: str | Path) -> Task:
    """Read and check a task file; a bare name (e.g. 'person') is one of config/tasks/."""
    path = Path(path)
    if not path.suffix and not path.exists():
        from ams_ros.launcher import config_dir

        path = config_dir() / 'tasks' / f'{path}.yaml'
    if not path.is_file():
        raise TaskError(f'task file not found: {path}')
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as e:
        raise TaskError(f'{path}: not YAML: {e}') from e
    return task_from_dict(data, path.parent, str(path))


def task_from_dict(data, base_dir: str | Path, source: str = '<task>') -> Task:
    """Check a task's mapping (as read from YAML) and build the Task."""
    where = _Where(source)
    if not isinstance(data, Mapping):
        raise where.error('', f'expected a mapping, got {type(data).__name__}')
    where.known('', data, ('name', 'classes', 'ignore_label', 'teacher', 'student', 'sizes'))
    classes = _classes(where, data.get('classes'))
    names = [c.name for c in classes]
    ignore = data.get('ignore_label', IGNORE_LABEL)
    if not isinstance(ignore, int) or not 0 <= ignore <= 255:
        raise where.error('ignore_label', f'expected an integer in 0..255, got {ignore!r}')
    if ignore < len(classes):
        raise where.error('ignore_label', f'{ignore} is the id of class {names[ignore]!r}')
    sizes = data.get('sizes') or {}
    where.known('sizes', sizes, ('teacher_input', 'uplink'))
    teacher = _teacher(where, data.get('teacher'), names, Path(base_dir))
    if 'teacher_input' in sizes:  # where the teacher's model does not fix its size
        teacher.setdefault('input', {})['size'] = _size(where, 'sizes.teacher_input',
                                                       sizes['teacher_input'])
    return Task(
        name=str(data.get('name') or Path(source).stem), classes=classes, teacher=teacher,
        student=_student(where, data.get('student'), Path(base_dir)), ignore_label=ignore,
        source=source,
        uplink_size=_size(where, 'sizes.uplink', sizes['uplink']) if 'uplink' in sizes else None)


class _Where:
    """Error messages that say which file and which field."""

    def __init__(self, source: str):
        self.source = source

    def error(self, field_name: str, text: str) -> TaskError:
        return TaskError(f'{self.source}: {field_name + ": " if field_name else ""}{text}')

    def known(self, field_name: str, mapping, allowed) -> None:
        if not isinstance(mapping, Mapping):
            raise self.error(field_name, f'expected a mapping, got {mapping!r}')
        unknown = sorted(set(mapping) - set(allowed))
        if unknown:
            raise self.error(field_name, f'unknown keys {unknown}; known: {sorted(allowed)}')


def _classes(where: _Where, value) -> tuple[TaskClass, ...]:
    if not isinstance(value, list) or len(value) < 2:
        raise where.error('classes', 'expected a list of at least two classes')
    if len(value) > IGNORE_LABEL:
        raise where.error('classes', f'at most {IGNORE_LABEL} classes fit uint8 masks')
    classes = []
    for i, item in enumerate(value):
        name, colour = (item, None) if isinstance(item, str) else (
            (item.get('name'), item.get('colour')) if isinstance(item, Mapping) else (None, None))
        if isinstance(item, Mapping):
            where.known(f'classes[{i}]', item, ('name', 'colour'))
        if not isinstance(name, str) or not name.strip():
            raise where.error(f'classes[{i}]', 'expected a name, or {name, colour}')
        if colour is None:  # a distinct colour by default
            colour = tuple(int(c) for c in np.random.default_rng(i).integers(40, 256, 3))
        if (not isinstance(colour, (list, tuple)) or len(colour) != 3
                or not all(isinstance(c, int) and 0 <= c <= 255 for c in colour)):
            raise where.error(f'classes[{i}].colour', f'expected [R, G, B] in 0..255, '
                              f'got {colour!r}')
        classes.append(TaskClass(name.strip(), tuple(colour)))
    names = [c.name for c in classes]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise where.error('classes', f'names must be unique: {duplicates} repeat')
    return tuple(classes)


def _teacher(where: _Where, value, names: list[str], base: Path) -> dict:
    if not isinstance(value, Mapping):
        raise where.error('teacher', 'expected a mapping with a kind')
    spec = dict(value)
    kind = spec.get('kind')
    if kind not in TEACHER_KINDS:
        raise where.error('teacher.kind', f'expected one of {list(TEACHER_KINDS)}, '
                          f'got {kind!r}')
    for key in ('path', 'weights'):
        if key in spec:
            spec[key] = str(resolve_path(where, f'teacher.{key}', spec[key], base))
    for key, build in (('input', conventions.input_convention),
                       ('output', conventions.output_convention)):
        if key in spec:
            try:
                build(spec[key])
            except conventions.ConventionError as e:
                raise where.error('teacher', str(e)) from e
    if 'classes' in spec or 'unmapped' in spec:
        spec['class_map'] = _class_map(where, spec.pop('classes', None),
                                       spec.pop('unmapped', 'ignore'), names)
    elif kind != 'synthetic':
        raise where.error('teacher.classes', "say which task class each teacher class is "
                          "(e.g. {0: background, 15: person}); unmapped ones: 'unmapped'")
    return spec


def _class_map(where: _Where, classes, unmapped, names: list[str]) -> list[int]:
    """Return teacher id -> task id (IGNORE_LABEL where unmapped) as a list."""
    if not isinstance(classes, Mapping) or not classes:
        raise where.error('teacher.classes', 'expected a mapping: teacher class id -> task '
                          'class name')

    def task_id(field_name: str, name) -> int:
        if name is None or name == 'ignore':
            return IGNORE_LABEL
        if name not in names:
            raise where.error(field_name, f'{name!r} is not a task class; the classes are '
                              f'{names} (or ignore)')
        return names.index(name)

    pairs = {}
    for key, name in classes.items():
        try:
            teacher_id = int(key)
        except (TypeError, ValueError):
            teacher_id = -1
        if not 0 <= teacher_id < 65536:
            raise where.error('teacher.classes', f'teacher class ids are integers >= 0, '
                              f'got {key!r}')
        pairs[teacher_id] = task_id(f'teacher.classes[{key}]', name)
    fill = task_id('teacher.unmapped', unmapped)
    table = [fill] * (max(pairs) + 1)
    for teacher_id, task in pairs.items():
        table[teacher_id] = task
    if fill != IGNORE_LABEL:  # classes past the table would be ignored: spell the fill out
        table += [fill] * (256 - len(table))
    return table


def _student(where: _Where, value, base: Path) -> dict:
    if not isinstance(value, Mapping):
        raise where.error('student', 'expected a mapping: {arch, input_size}, {path} or {onnx}')
    where.known('student', value, ('arch', 'input_size', 'path', 'onnx', 'torchscript', 'input',
                                   'output'))
    kinds = [k for k in ('arch', 'path', 'onnx', 'torchscript') if k in value]
    if len(kinds) != 1:
        raise where.error('student', f'give one of arch (a built-in or factory student), path '
                          f'(a checkpoint), onnx or torchscript (your model file), not '
                          f'{kinds or "none"}')
    if 'path' in value:
        return {'path': str(resolve_path(where, 'student.path', value['path'], base))}
    if kinds[0] in ('onnx', 'torchscript'):
        kind = kinds[0]
        spec = {kind: str(resolve_path(where, f'student.{kind}', value[kind], base)),
                'input': dict(value.get('input') or {}), 'output': value.get('output', 'logits')}
        if 'input_size' in value:
            spec['input']['size'] = _size(where, 'student.input_size', value['input_size'])
        elif kind == 'torchscript':
            raise where.error('student.input_size', 'a TorchScript student needs its input '
                              'size: [height, width]')
        try:
            conventions.input_convention(spec['input'])
            conventions.output_convention(spec['output'])
        except conventions.ConventionError as e:
            raise where.error('student', str(e)) from e
        return spec
    from ams_ros.model.student import check_arch

    arch = value.get('arch')
    try:
        check_arch(str(arch))
    except ValueError as e:
        raise where.error('student.arch', str(e)) from e
    return {'arch': arch, 'input_size': _size(where, 'student.input_size',
                                              value.get('input_size'))}


def _size(where: _Where, field_name: str, value) -> tuple[int, int]:
    if (not isinstance(value, (list, tuple)) or len(value) != 2
            or not all(isinstance(v, int) and 16 <= v <= 4096 for v in value)):
        raise where.error(field_name, f'expected [height, width] in 16..4096, got {value!r}')
    return tuple(value)


def resolve_path(where: _Where, field_name: str, value, base: Path) -> Path:
    """Resolve a task file's path: package://<package>/<file>, absolute, or relative to it."""
    if not isinstance(value, str) or not value:
        raise where.error(field_name, f'expected a path, got {value!r}')
    if value.startswith(PACKAGE_SCHEME):
        package, _, rest = value[len(PACKAGE_SCHEME):].partition('/')
        found = importlib.util.find_spec(package) if package else None
        if found is None or not found.submodule_search_locations:
            raise where.error(field_name, f'no Python package {package!r} for {value}')
        path = Path(next(iter(found.submodule_search_locations))) / rest
    else:
        path = Path(value).expanduser()
        path = path if path.is_absolute() else base / path
    if not path.is_file():
        raise where.error(field_name, f'no such file: {path}')
    return path
