"""Child processes for tests that run the real nodes over DDS, and a spin-until helper.

Children run with the repository first on PYTHONPATH (the source, not an installed copy) and
one OpenMP thread (the test machine's few cores are shared by every node). Their output goes
to ``<folder>/<name>.log``; ``Children.logs`` gathers the tails for assertion messages.
"""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import rclpy
import yaml

REPO = Path(__file__).resolve().parents[2]


def child_env():
    path = os.environ.get('PYTHONPATH', '')
    return {**os.environ, 'PYTHONPATH': str(REPO) + (os.pathsep + path if path else ''),
            'OMP_NUM_THREADS': '1'}


def spin_until(node, condition, timeout):
    """Spin the node until condition() holds or timeout seconds pass; return condition()."""
    deadline = time.monotonic() + timeout
    while not condition() and time.monotonic() < deadline:
        rclpy.spin_once(node, timeout_sec=0.05)
    return condition()


class Children:
    """Child processes with their output in log files; all stopped at the end."""

    def __init__(self, folder: Path):
        self.folder = folder
        self.procs = {}

    def start(self, name, args, log_name=None):
        log = open(self.folder / f'{log_name or name}.log', 'w')  # noqa: SIM115 - child owns it
        self.procs[name] = subprocess.Popen([sys.executable, *args], stdout=log,
                                            stderr=subprocess.STDOUT, env=child_env())
        log.close()
        return self.procs[name]

    def node(self, name, module, params, remaps=(), log_name=None):
        """Start ams_ros.ros.<module> with a params file (and `from:=to` topic remaps)."""
        path = self.folder / f'{name}.yaml'
        path.write_text(yaml.safe_dump({name: {'ros__parameters': params}}))
        remap_args = [arg for rule in remaps for arg in ('-r', rule)]
        return self.start(name, ['-m', f'ams_ros.ros.{module}', '--ros-args',
                                 '--params-file', str(path), *remap_args], log_name)

    def stop(self, name, timeout=20.0):
        proc = self.procs.pop(name)
        if proc.poll() is None:
            proc.send_signal(signal.SIGINT)
            try:
                proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        return proc.returncode

    def kill(self, name):
        """End a child at once (SIGKILL), as a crash or a power loss would."""
        proc = self.procs.pop(name)
        proc.kill()
        proc.wait()

    def stop_all(self):
        for name in list(self.procs):
            self.stop(name)

    def logs(self):
        return '\n'.join(f'--- {p.name}\n' + '\n'.join(p.read_text().splitlines()[-20:])
                         for p in sorted(self.folder.glob('*.log')))
