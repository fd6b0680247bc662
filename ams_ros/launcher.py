"""`ams launch`: start the nodes without ROS's launch tools, from the same YAML files.

``ros2 launch ams_ros drone.launch.py`` is the way on a ROS machine. Where ``launch`` and
``launch_ros`` cannot be installed (ROS from pip wheels), this starts the same nodes, with the
same parameter files, as separate processes::

    ams launch drone  [--namespace /drone1] [--params-file F] [-p name:=value ...]
    ams launch ground [--params-file F] [--profile paper] [-p name:=value ...]
    ams launch demo   [--namespace /drone1] [--seed N] [-p node:name:=value ...]

Each node runs as ``python -m ams_ros.ros.<node> --ros-args --params-file F -r __ns:=NS``.
``--profile NAME`` (ground and demo) adds config/profiles/NAME.yaml after the ground's file, as
ground.launch.py's ``profile`` argument does: ``paper`` runs the paper's AMS.
``demo`` starts what demo.launch.py starts: the synthetic camera, the drone and the ground
(CPU settings). There ``-p`` takes an optional node prefix (``camera:``, ``drone:`` or
``ground:``); a parameter without one goes to every node (nodes ignore parameters they do not
declare).

Unless FASTDDS_DEFAULT_PROFILES_FILE is set already (or RMW_IMPLEMENTATION names another
middleware), the nodes get config/fastdds.xml: Fast DDS with a 64 MB shared-memory segment,
which keeps multi-megabyte snapshots fast (see that file); ``--no-fastdds-profile`` skips it.

SIGINT and SIGTERM are forwarded to the nodes. When one node exits, the others are stopped
too, and the launcher exits with the first non-zero exit status (0 if all were clean). A node
still running ``--shutdown-timeout`` seconds after SIGINT gets SIGTERM, then SIGKILL.
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

PACKAGE = 'ams_ros'
NODES = {  # launch name -> (module, default params file)
    'camera': ('ams_ros.ros.camera_node', None),
    'drone': ('ams_ros.ros.drone_node', 'drone.yaml'),
    'ground': ('ams_ros.ros.ground_node', 'ground.yaml'),
}
DEMO_NAMESPACE = '/drone1'
DEMO_GROUND_FILE = 'ground_cpu.yaml'


def config_dir() -> Path:
    """Return the folder holding the package's YAML files (source tree, then install)."""
    candidates = [Path(__file__).resolve().parents[1] / 'config']
    try:
        from ament_index_python.packages import get_package_share_directory

        candidates.append(Path(get_package_share_directory(PACKAGE)) / 'config')
    except Exception:  # noqa: BLE001 - not in an ament index: look beside the interpreter
        pass
    candidates.append(Path(sys.prefix) / 'share' / PACKAGE / 'config')
    for candidate in candidates:
        if (candidate / 'drone.yaml').is_file():
            return candidate
    raise FileNotFoundError(f'no {PACKAGE} config folder in {[str(c) for c in candidates]}')


def config_file(name: str) -> Path:
    """Return the path of one of the package's YAML files."""
    return config_dir() / name


@dataclass
class NodeCommand:
    name: str
    argv: list[str]
    env: dict[str, str] = field(default_factory=dict)


def profile_file(name: str) -> Path:
    """Return a profile's parameter overlay (config/profiles/NAME.yaml)."""
    path = config_dir() / 'profiles' / f'{name}.yaml'
    if not path.is_file():
        known = sorted(p.stem for p in (config_dir() / 'profiles').glob('*.yaml'))
        raise SystemExit(f'ams launch: no profile {name!r} (known: {", ".join(known)})')
    return path


def node_command(name: str, params_file: Path | None, namespace: str | None,
                 overrides: list[str], use_sim_time: bool | None,
                 overlay: Path | None = None) -> NodeCommand:
    """Return the command line that runs one node as its launch file would.

    overlay: a second parameter file, read after params_file (a profile).
    """
    module = NODES[name][0]
    argv = [sys.executable, '-m', module, '--ros-args']
    for path in (params_file, overlay):
        if path is not None:
            argv += ['--params-file', str(path)]
    if namespace:
        argv += ['-r', f'__ns:=/{namespace.strip("/")}']
    if use_sim_time is not None:
        argv += ['-p', f'use_sim_time:={str(use_sim_time).lower()}']
    for override in overrides:
        argv += ['-p', override]
    return NodeCommand(name, argv)


def _check_override(text: str) -> str:
    if ':=' not in text:
        raise argparse.ArgumentTypeError(f"expected name:=value, got '{text}'")
    return text


def split_overrides(overrides: list[str], nodes) -> dict[str, list[str]]:
    """Split `node:name:=value` overrides by node; unprefixed ones go to every node."""
    split = {node: [] for node in nodes}
    for override in overrides:
        head, _, rest = override.partition(':')
        if head in split and not rest.startswith('='):
            split[head].append(rest)
        else:
            for node in split:
                split[node].append(override)
    return split


def build_parser(parser: argparse.ArgumentParser | None = None) -> argparse.ArgumentParser:
    """Add the `ams launch` options to `parser` (or a new parser)."""
    parser = parser or argparse.ArgumentParser(prog='ams launch', description=__doc__,
                                               formatter_class=argparse.RawTextHelpFormatter)
    parser.add_argument('what', choices=('drone', 'ground', 'demo'), help='what to start')
    parser.add_argument('--params-file', type=Path, help='YAML parameters (default: '
                        'config/drone.yaml or config/ground.yaml; demo: the drone\'s)')
    parser.add_argument('--ground-params-file', type=Path, help=f'demo: the ground\'s YAML '
                        f'(default: config/{DEMO_GROUND_FILE})')
    parser.add_argument('--profile', help="ground and demo: the ground's AMS settings overlay "
                        "(config/profiles/NAME.yaml; 'paper': the paper's algorithm)")
    parser.add_argument('--namespace', help='drone namespace (demo: '
                        f'{DEMO_NAMESPACE}); the ground runs in the root namespace')
    parser.add_argument('-p', '--param', dest='params', action='append', default=[],
                        type=_check_override, metavar='[NODE:]NAME:=VALUE',
                        help='parameter override (repeatable)')
    parser.add_argument('--seed', type=int, help='demo: flight seed of the camera and of the '
                        "ground's synthetic teacher")
    parser.add_argument('--use-sim-time', action='store_true', default=None,
                        help='set use_sim_time on every node (time from /clock, e.g. a bag)')
    parser.add_argument('--shutdown-timeout', type=float, default=10.0,
                        help='seconds a node gets to exit after SIGINT')
    parser.add_argument('--no-fastdds-profile', action='store_true',
                        help="leave Fast DDS's configuration alone (see config/fastdds.xml)")
    parser.add_argument('--dry-run', action='store_true', help='print the commands only')
    return parser


def middleware_env(skip: bool) -> dict[str, str]:
    """Return the environment that gives the nodes the package's Fast DDS profile."""
    if skip or os.environ.get('FASTDDS_DEFAULT_PROFILES_FILE') \
            or os.environ.get('RMW_IMPLEMENTATION', 'rmw_fastrtps_cpp') != 'rmw_fastrtps_cpp':
        return {}
    profile = config_dir() / 'fastdds.xml'
    return {'FASTDDS_DEFAULT_PROFILES_FILE': str(profile)} if profile.is_file() else {}


def plan(args) -> list[NodeCommand]:
    """Return the node commands the arguments ask for."""
    commands = _commands(args)
    env = middleware_env(getattr(args, 'no_fastdds_profile', False))
    for command in commands:
        command.env.update(env)
    return commands


def _commands(args) -> list[NodeCommand]:
    overlay = profile_file(args.profile) if getattr(args, 'profile', None) else None
    if overlay is not None and args.what == 'drone':
        raise SystemExit('ams launch: --profile sets the ground\'s AMS settings: use it with '
                         'ground or demo')
    if args.what in ('drone', 'ground'):
        params_file = args.params_file or config_file(NODES[args.what][1])
        namespace = args.namespace if args.what == 'drone' else None
        return [node_command(args.what, params_file, namespace, args.params, args.use_sim_time,
                             overlay)]
    namespace = args.namespace or DEMO_NAMESPACE
    overrides = split_overrides(args.params, ('camera', 'drone', 'ground'))
    if args.seed is not None:
        overrides['camera'].insert(0, f'seed:={args.seed}')
        overrides['ground'].insert(0, f'teacher.seed:={args.seed}')
    overrides['ground'].insert(0, f'drone_namespaces:=[/{namespace.strip("/")}]')
    return [
        node_command('camera', None, namespace, overrides['camera'], args.use_sim_time),
        node_command('drone', args.params_file or config_file('drone.yaml'), namespace,
                     overrides['drone'], args.use_sim_time),
        node_command('ground', args.ground_params_file or config_file(DEMO_GROUND_FILE), None,
                     overrides['ground'], args.use_sim_time, overlay),
    ]


def die_with_parent() -> None:
    """In the child: get SIGTERM if the launcher dies without stopping it (Linux)."""
    try:
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except Exception:  # noqa: BLE001 - elsewhere the launcher's own handlers must do
        pass


class Launcher:
    """Run node processes; forward signals; stop all when one exits."""

    def __init__(self, commands: list[NodeCommand], shutdown_timeout: float = 10.0):
        self.commands = commands
        self.shutdown_timeout = shutdown_timeout
        self.processes: dict[str, subprocess.Popen] = {}
        self._stop_since: float | None = None  # monotonic time the nodes were told to stop
        self._escalated: set[int] = set()

    def run(self) -> int:
        previous = {sig: signal.signal(sig, self._on_signal)
                    for sig in (signal.SIGINT, signal.SIGTERM)}
        try:
            for command in self.commands:
                print(f'[ams launch] {command.name}: {" ".join(command.argv)}', flush=True)
                # Own session: a terminal's Ctrl-C reaches only the launcher, which forwards it
                # once (a node seeing it twice could skip its clean shutdown).
                self.processes[command.name] = subprocess.Popen(
                    command.argv, env={**os.environ, **command.env}, start_new_session=True,
                    preexec_fn=die_with_parent)
            return self._supervise()
        finally:
            for process in self.processes.values():
                if process.poll() is None:  # only after an exception in the launcher itself
                    process.kill()
                    process.wait()
            for sig, handler in previous.items():
                signal.signal(sig, handler)

    def _on_signal(self, signum, _frame) -> None:
        print(f'[ams launch] {signal.Signals(signum).name}: stopping the nodes', flush=True)
        self._stop()

    def _stop(self) -> None:
        if self._stop_since is None:
            self._stop_since = time.monotonic()
            self._send(signal.SIGINT)

    def _send(self, sig) -> None:
        for process in self.processes.values():
            if process.poll() is None:
                try:
                    process.send_signal(sig)
                except ProcessLookupError:
                    pass

    def _supervise(self) -> int:
        status = 0
        reported = set()
        while True:
            for name, process in self.processes.items():
                code = process.poll()
                if code is None or name in reported:
                    continue
                reported.add(name)
                print(f'[ams launch] {name} exited with status {code}', flush=True)
                if code != 0 and status == 0:
                    status = code if code > 0 else 128 - code
                self._stop()  # one node gone: the system is incomplete, stop the others
            if len(reported) == len(self.processes):
                return status
            if self._stop_since is not None:
                waited = time.monotonic() - self._stop_since
                for step, sig in enumerate((signal.SIGTERM, signal.SIGKILL), start=1):
                    if waited > step * self.shutdown_timeout and sig not in self._escalated:
                        self._escalated.add(sig)
                        print(f'[ams launch] still running after {waited:.0f} s: '
                              f'{signal.Signals(sig).name}', flush=True)
                        self._send(sig)
            time.sleep(0.05)


def main(argv=None) -> int:
    """Run `ams launch` (argv without the leading 'launch')."""
    args = build_parser().parse_args(argv)
    return run(args)


def run(args) -> int:
    """Start the planned nodes (or print them with --dry-run)."""
    try:
        commands = plan(args)
    except FileNotFoundError as e:
        print(f'ams launch: {e}', file=sys.stderr)
        return 2
    if args.dry_run:
        for command in commands:
            print(' '.join([*(f'{k}={v}' for k, v in command.env.items()), *command.argv]))
        return 0
    return Launcher(commands, args.shutdown_timeout).run()


if __name__ == '__main__':
    sys.exit(main())
