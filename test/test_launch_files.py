"""Launch files, YAML configs and the pip-only launcher agree with the nodes they start."""

import ast
import dataclasses
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

rclpy = pytest.importorskip('rclpy')
from rclpy.context import Context  # noqa: E402
from rclpy.parameter import Parameter  # noqa: E402

from ams_ros import launcher  # noqa: E402
from ams_ros.profiles import AMS, PAPER  # noqa: E402
from ams_ros.ros import drone_node, ground_node, ground_parameters  # noqa: E402
from ams_ros.ros.node_parameters import ParameterError, declare_all, read  # noqa: E402
from ams_ros.wire.patch_codec import PATCH_STREAMS  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
LAUNCH_FILES = sorted((ROOT / 'launch').glob('*.launch.py'))
CONFIGS = sorted((ROOT / 'config').glob('*.yaml'))
TABLES = {'ams_drone': drone_node.PARAMETERS, 'ams_ground': ground_node.PARAMETERS}
# Every node has these without declaring them.
BUILTIN = {'use_sim_time', 'start_type_description_service'}


def console_scripts() -> dict[str, str]:
    """Return setup.py's console_scripts as {name: 'module:function'}."""
    text = (ROOT / 'setup.py').read_text()
    block = re.search(r"'console_scripts'\s*:\s*\[(.*?)\]", text, re.S)
    assert block, 'setup.py has no console_scripts'
    return dict(re.findall(r"'\s*([\w-]+)\s*=\s*([\w.]+:\w+)\s*'", block.group(1)))


def launched_nodes(path: Path) -> list[dict]:
    """Return the keyword constants of every Node(...) call in a launch file."""
    nodes = []
    for call in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(call, ast.Call) and getattr(call.func, 'id', None) == 'Node':
            nodes.append({k.arg: k.value for k in call.keywords})
    return nodes


def flatten(tree: dict, prefix: str = '') -> dict:
    flat = {}
    for key, value in tree.items():
        name = f'{prefix}{key}'
        if isinstance(value, dict):
            flat.update(flatten(value, name + '.'))
        else:
            flat[name] = value
    return flat


def config_sections(path: Path):
    """Yield (node name, flat parameters) for every section of a params file."""
    for key, section in yaml.safe_load(path.read_text()).items():
        assert set(section) == {'ros__parameters'}, f'{path.name}: {key} is not a node section'
        yield key.rsplit('/', 1)[-1], flatten(section['ros__parameters'])


def test_there_are_launch_files_and_configs():
    assert {p.name for p in LAUNCH_FILES} >= {'drone.launch.py', 'ground.launch.py',
                                              'demo.launch.py'}
    assert {p.name for p in CONFIGS} >= {'drone.yaml', 'ground.yaml', 'ground_cpu.yaml'}


@pytest.mark.parametrize('path', LAUNCH_FILES, ids=lambda p: p.name)
def test_launch_file_names_only_installed_executables(path):
    scripts = console_scripts()
    nodes = launched_nodes(path)
    assert nodes, f'{path.name} starts no Node'
    for node in nodes:
        executable = ast.literal_eval(node['executable'])
        assert ast.literal_eval(node['package']) == 'ams_ros'
        assert executable in scripts, f'{path.name}: {executable} is not an entry point'
        assert ast.literal_eval(node['name']) == executable  # the YAML sections use these
        module, function = scripts[executable].split(':')
        source = ROOT / (module.replace('.', '/') + '.py')
        assert re.search(rf'^def {function}\(', source.read_text(), re.M), scripts[executable]
    # Config files it names exist.
    for constant in ast.walk(ast.parse(path.read_text())):
        value = constant.value if isinstance(constant, ast.Constant) else None
        if isinstance(value, str) and value.endswith('.yaml') and value != '.yaml':
            assert (ROOT / 'config' / value).is_file(), value


@pytest.mark.parametrize('path', LAUNCH_FILES, ids=lambda p: p.name)
def test_launch_file_parameter_overrides_are_declared(path):
    for node in launched_nodes(path):
        table = TABLES.get(ast.literal_eval(node['name']))
        if table is None:
            continue  # the camera node belongs to another module's tests
        declared = {p.name for p in table} | BUILTIN
        for item in ast.walk(node.get('parameters', ast.List(elts=[]))):
            if isinstance(item, ast.Dict):
                keys = {ast.literal_eval(k) for k in item.keys}
                assert keys <= declared, f'{path.name}: undeclared {keys - declared}'


def declared_with_file(table, *params_files: Path) -> dict:
    """Declare a node's table on a bare node that reads the files in turn; return the values."""
    context = Context()
    files = [arg for path in params_files for arg in ('--params-file', str(path))]
    rclpy.init(args=['--ros-args', *files], context=context)
    try:
        name = 'ams_drone' if table is drone_node.PARAMETERS else 'ams_ground'
        node = rclpy.create_node(name, namespace='/drone7', context=context)
        try:
            declare_all(node, table)
            return {p.name: read(node, p.name) for p in table}
        finally:
            node.destroy_node()
    finally:
        context.try_shutdown()


@pytest.mark.parametrize('path', CONFIGS, ids=lambda p: p.name)
def test_every_config_parameter_is_declared_and_accepted(path):
    for node_name, values in config_sections(path):
        assert node_name in TABLES, f'{path.name}: unknown node {node_name}'
        table = TABLES[node_name]
        declared = {p.name for p in table} | BUILTIN
        assert set(values) <= declared, f'{path.name}: undeclared {set(values) - declared}'
        # And the node takes every value (types, ranges, choices) from the file itself.
        got = declared_with_file(table, path)
        for name, value in values.items():
            assert got[name] == value, name


def test_configs_cover_every_parameter():
    for path in CONFIGS:
        for node_name, values in config_sections(path):
            missing = {p.name for p in TABLES[node_name]} - set(values)
            assert not missing, f'{path.name} leaves out {missing}'


def test_every_config_parameter_has_a_comment():
    for path in CONFIGS:
        lines = path.read_text().splitlines()
        for i, line in enumerate(lines):
            if re.match(r'^\s+[\w.]+: \S', line) and 'ros__parameters' not in line:
                assert lines[i - 1].strip().startswith('#'), f'{path.name}:{i + 1} {line}'


PROFILE_PARAMETERS = {  # ams_ros.profiles.AmsProfile field -> the ground node's parameter
    'strategy': 'trainer.strategy', 'fraction': 'trainer.fraction',
    'learning_rate': 'trainer.learning_rate', 'class_balance': 'trainer.class_balance',
    'horizon_s': 'trainer.horizon_s', 't_update': 'atr.period_min'}


def profile_values(profile) -> dict:
    values = {name: getattr(profile, field) for field, name in PROFILE_PARAMETERS.items()}
    streams = [k for k, fmt in PATCH_STREAMS.items()
               if dataclasses.replace(fmt, value_mode=profile.patch_format.value_mode)
               == profile.patch_format]
    assert len(streams) == 1, 'a profile packs its patches as one of the named streams'
    return {**values, 'patch.value_mode': profile.patch_format.value_mode,
            'patch.streams': streams[0]}


def test_the_shipped_files_run_the_projects_profile_and_the_paper_overlay_the_papers():
    overlays = sorted((ROOT / 'config' / 'profiles').glob('*.yaml'))
    assert [p.stem for p in overlays] == ['paper']
    expected = profile_values(PAPER)
    ((node_name, values),) = config_sections(overlays[0])
    assert node_name == 'ams_ground' and values == expected
    # The node takes the overlay on top of a base file, as the launch file passes them.
    defaults = {p.name: p.default for p in ground_node.PARAMETERS}
    assert {name: defaults[name] for name in expected} == profile_values(AMS)
    got = declared_with_file(ground_node.PARAMETERS, ROOT / 'config' / 'ground_cpu.yaml',
                             overlays[0])
    assert {name: got[name] for name in expected} == expected
    assert got['trainer.iterations'] == 10  # ground_cpu.yaml's, which the profile leaves alone
    config = ground_parameters.ground_config(got, 'cpu')
    assert config.patch_format == PAPER.patch_format
    assert config.trainer.strategy == 'gradient_guided'
    for base in ('ground.yaml', 'ground_cpu.yaml'):
        ((_, values),) = config_sections(ROOT / 'config' / base)
        assert {name: values[name] for name in expected} == profile_values(AMS), base


def test_the_launchers_profile_adds_its_overlay_after_the_grounds_file():
    for what in ('ground', 'demo'):
        args = launcher.build_parser().parse_args([what, '--profile', 'paper'])
        ground = {c.name: c.argv for c in launcher.plan(args)}['ground']
        files = [ground[i + 1] for i, a in enumerate(ground) if a == '--params-file']
        assert Path(files[-1]) == ROOT / 'config' / 'profiles' / 'paper.yaml'
        assert len(files) == 2
    with pytest.raises(SystemExit, match='no profile'):
        launcher.plan(launcher.build_parser().parse_args(['ground', '--profile', 'bogus']))
    with pytest.raises(SystemExit, match='ground or demo'):
        launcher.plan(launcher.build_parser().parse_args(['drone', '--profile', 'paper']))


def test_the_drone_node_declares_its_table():
    context = Context()
    rclpy.init(context=context)
    try:
        node = drone_node.DroneNode(context=context, namespace='/drone7')
        try:
            assert {p.name for p in drone_node.PARAMETERS} <= set(node._parameters)
            assert node.client_id == 'drone7'
        finally:
            node.close()
            node.destroy_node()
    finally:
        context.try_shutdown()


BAD_DRONE = [
    ('camera_qos', 'bogus', 'camera_qos'),
    ('uplink.jpeg_quality', 150, 'uplink.jpeg_quality'),
    ('status_period', 'fast', 'status_period'),
    ('uplink.bitrate_kbps', 0.0, 'uplink.bitrate_kbps'),
    ('uplink.height', 64, 'uplink.height and uplink.width'),
    ('model_path', '/nonexistent/model.onnx', 'model_path'),
    ('max_image_pixels', 0, 'max_image_pixels'),
]


@pytest.mark.parametrize('name,value,mentioned', BAD_DRONE, ids=[b[0] for b in BAD_DRONE])
def test_bad_drone_parameters_are_refused_at_start_up(name, value, mentioned):
    context = Context()
    rclpy.init(context=context)
    try:
        with pytest.raises(ParameterError, match=re.escape(mentioned)):
            drone_node.DroneNode(context=context,
                                 parameter_overrides=[Parameter(name, value=value)])
    finally:
        context.try_shutdown()


BAD_GROUND = [
    ('teacher.kind', 'oracle', 'teacher.kind'),
    ('shard_index', 2, 'shard_index'),  # with shard_count 1
    ('trainer.fraction', 1.5, 'trainer.fraction'),
    ('scheduler.policy', 'fifo', 'scheduler.policy'),
    ('student', '/nonexistent/student.pt', 'student'),
    ('task', '/nonexistent/task.yaml', 'task file not found'),
]


@pytest.mark.parametrize('name,value,mentioned', BAD_GROUND, ids=[b[0] for b in BAD_GROUND])
def test_bad_ground_parameters_are_refused_at_start_up(name, value, mentioned):
    context = Context()
    rclpy.init(context=context)
    try:
        with pytest.raises(ParameterError, match=re.escape(mentioned)):
            ground_node.GroundNode(context=context,
                                   parameter_overrides=[Parameter(name, value=value)])
    finally:
        context.try_shutdown()


def test_launcher_plans_the_nodes_of_the_launch_files():
    args = launcher.build_parser().parse_args(
        ['demo', '--seed', '7', '-p', 'ground:trainer.iterations:=3', '-p', 'x:=1'])
    commands = {c.name: c.argv for c in launcher.plan(args)}
    # The same nodes as demo.launch.py, from the same files.
    names = {ast.literal_eval(n['name']).removeprefix('ams_')
             for n in launched_nodes(ROOT / 'launch' / 'demo.launch.py')}
    assert set(commands) == names
    drone = commands['drone']
    assert drone[1:3] == ['-m', 'ams_ros.ros.drone_node']
    assert str(ROOT / 'config' / 'drone.yaml') in drone and '__ns:=/drone1' in drone
    ground = commands['ground']
    assert str(ROOT / 'config' / 'ground_cpu.yaml') in ground
    assert {'teacher.seed:=7', 'trainer.iterations:=3', 'x:=1',
            'drone_namespaces:=[/drone1]'} <= set(ground)
    assert 'trainer.iterations:=3' not in commands['camera'] and 'seed:=7' in commands['camera']


def test_launcher_reports_a_node_that_refuses_to_start():
    result = subprocess.run(
        [sys.executable, '-m', 'ams_ros.launcher', 'drone', '--namespace', 'bad',
         '-p', 'camera_qos:=bogus'], capture_output=True, text=True, timeout=60)
    assert result.returncode == 2, result.stdout + result.stderr
    assert "camera_qos' must be one of" in result.stderr
    assert 'drone exited with status 2' in result.stdout


def test_launcher_forwards_sigint_and_exits_when_the_nodes_do(tmp_path):
    log = tmp_path / 'launch.log'
    with open(log, 'w') as out:
        launch = subprocess.Popen(
            [sys.executable, '-u', '-m', 'ams_ros.launcher', 'drone', '--namespace', 'sig',
             '-p', 'status_period:=0.2'], stdout=out, stderr=subprocess.STDOUT)
        try:
            deadline = time.monotonic() + 60
            # The node logs its start-up line once it is up (no fixed sleep).
            while "client 'sig'" not in log.read_text() and time.monotonic() < deadline:
                assert launch.poll() is None, log.read_text()
                time.sleep(0.1)
            assert "client 'sig'" in log.read_text(), log.read_text()
            launch.send_signal(signal.SIGINT)
            assert launch.wait(timeout=30) == 0, log.read_text()
        finally:
            if launch.poll() is None:
                launch.kill()
    text = log.read_text()
    assert 'SIGINT: stopping the nodes' in text and 'drone exited with status 0' in text
