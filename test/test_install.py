"""The setup produced a real ROS 2 installation: ament index entries and a working `ams` tool."""

import subprocess
import sys
from pathlib import Path

import pytest

packages = pytest.importorskip('ament_index_python.packages')


@pytest.mark.parametrize('package', ['ams_ros', 'ams_msgs'])
def test_package_is_in_the_ament_index(package):
    share = Path(packages.get_package_share_directory(package))
    assert (share / 'package.xml').is_file()


def test_message_definitions_are_installed():
    share = Path(packages.get_package_share_directory('ams_msgs'))
    installed = {p.stem for p in (share / 'msg').glob('*.msg')}
    assert {'FrameBatch', 'ModelPatch', 'ModelSnapshot', 'SamplingControl',
            'EdgeStatus'} <= installed


def test_ams_doctor_finds_a_working_stack():
    result = subprocess.run([sys.executable, '-m', 'ams_ros.cli', 'doctor'],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
    assert 'rmw_fastrtps_cpp' in result.stdout
    assert '[FAIL]' not in result.stdout
