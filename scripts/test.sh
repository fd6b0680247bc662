#!/usr/bin/env bash
# Run the whole test suite in the setup's virtualenv (ROS tests stay on loopback: see conftest.py).
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
venv=${AMS_VENV:-$root/.venv}
cd "$root"
exec "$venv/bin/python" -m pytest test "$@"
