"""The `ams` command-line tool.

Each subcommand lives in its own module with `build_parser(parser)` and `run(args)`; only the
chosen one is imported, so `ams launch drone` on a drone never imports torch.
"""

from __future__ import annotations

import argparse
import importlib
import sys

COMMANDS = {
    'doctor': ('ams_ros.ros.doctor', 'check that this machine can run the drone and ground nodes'),
    'launch': ('ams_ros.launcher', 'start the drone, ground or demo nodes as processes'),
    'demo': ('ams_ros.ros.demo', 'run a synthetic flight through camera, drone and ground nodes'),
    'bag': ('ams_ros.ros.bag', 'record and replay rosbag2 files without a ROS install'),
    'eval': ('ams_ros.evaluation.runner', "the paper's schemes offline, on synthetic flights "
             'or (--task) your footage'),
    'pretrain': ('ams_ros.model.pretrain', 'pretrain the generic student on the synthetic world, '
                 "or (--task) distil a task's teacher into its student"),
}


def build_parser(chosen: str | None = None) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog='ams', description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest='command', required=True)
    for name, (module_name, help_text) in COMMANDS.items():
        sub = commands.add_parser(name, help=help_text, description=help_text)
        if name == chosen:
            module = importlib.import_module(module_name)
            module.build_parser(sub)
            sub.set_defaults(run=module.run)
    return parser


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    chosen = next((a for a in argv if not a.startswith('-')), None)
    args = build_parser(chosen).parse_args(argv)
    return args.run(args)


if __name__ == '__main__':
    sys.exit(main())
