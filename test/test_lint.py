"""The whole tree passes ruff (pyflakes, pycodestyle, pep257 docstrings, import order)."""

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def test_ruff_passes_on_whole_tree():
    beside_python = Path(sys.executable).with_name('ruff')
    ruff = str(beside_python) if beside_python.exists() else shutil.which('ruff')
    if ruff is None:
        pytest.fail('ruff is not installed: install the test extra')
    result = subprocess.run([ruff, 'check', '--no-cache', str(ROOT)], cwd=ROOT,
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
