#!/usr/bin/env bash
# Build ams_msgs with CMake against the ROS 2 wheels of the active virtualenv and install it
# into that virtualenv. Skips the build when the .msg files have not changed since the last one.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
venv=${VIRTUAL_ENV:?activate the virtualenv first}
build=$root/build/ams_msgs
stamp=$venv/share/ams_msgs/.source-hash
hash=$(cat "$root"/ams_msgs/CMakeLists.txt "$root"/ams_msgs/package.xml "$root"/ams_msgs/msg/*.msg \
  "$root"/scripts/pip_wheels_fix.cmake | sha256sum | cut -d' ' -f1)
if [[ -f $stamp && $(cat "$stamp") == "$hash" ]] \
  && "$venv/bin/python" -c 'import ams_msgs.msg' 2>/dev/null; then
  echo "ams_msgs is up to date"
  exit 0
fi
rm -rf "$build"
mkdir -p "$build"
# The interface generators find their packages through the ament index of the venv.
export AMENT_PREFIX_PATH=$venv
cmake -S "$root/ams_msgs" -B "$build" -G "Unix Makefiles" \
  -DCMAKE_BUILD_TYPE=Release \
  -DCMAKE_INSTALL_PREFIX="$venv" \
  -DCMAKE_PREFIX_PATH="$venv" \
  -DPython3_EXECUTABLE="$venv/bin/python" \
  -DCMAKE_PROJECT_INCLUDE="$root/scripts/pip_wheels_fix.cmake" \
  -DBUILD_TESTING=OFF > "$build/build.log" 2>&1 || { cat "$build/build.log"; exit 1; }
cmake --build "$build" -j"$(nproc)" >> "$build/build.log" 2>&1 || { tail -50 "$build/build.log"; exit 1; }
cmake --install "$build" >> "$build/build.log" 2>&1 || { tail -50 "$build/build.log"; exit 1; }
echo "$hash" > "$stamp"
echo "ams_msgs built and installed into $venv"
