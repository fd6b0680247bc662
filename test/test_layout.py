"""The package layout keeps its promises: the drone never needs torch, the engine never ROS."""

import subprocess
import sys
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / 'ams_ros'


def modules(*subpackages: str) -> list[str]:
    return sorted(f'ams_ros.{sub}.{path.stem}' for sub in subpackages
                  for path in (PACKAGE / sub).glob('*.py') if path.stem != '__init__')


def imported_in_fresh_interpreter(names: list[str], probe: str) -> bool:
    """Import `names` in a new Python process; return whether `probe` was imported too."""
    code = ''.join(f'import {name}\n' for name in names) + (
        f'import sys\nprint({probe!r} in sys.modules)\n')
    result = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True,
                            timeout=120, check=True)
    return result.stdout.strip() == 'True'


def test_the_drone_side_runs_without_torch():
    drone = modules('drone', 'wire') + ['ams_ros.model.manifest', 'ams_ros.model.onnx_params',
                                        'ams_ros.model.conventions']
    assert 'ams_ros.drone.agent' in drone and 'ams_ros.wire.snapshot' in drone
    assert not imported_in_fresh_interpreter(drone, 'torch')
    # The drone node with its parameters, QoS and conversions, too.
    assert not imported_in_fresh_interpreter(['ams_ros.ros.drone_node'], 'torch')


def test_the_probe_sees_torch_where_it_is_used():
    # Guards the test above: the same probe does report torch when a ground module loads it.
    assert imported_in_fresh_interpreter(['ams_ros.ground.trainer'], 'torch')


def test_the_engine_never_imports_ros():
    engine = modules('drone', 'wire', 'ground', 'model') + ['ams_ros.evaluation.schemes']
    assert not imported_in_fresh_interpreter(engine, 'rclpy')
