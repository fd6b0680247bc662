"""The `ams` command-line tool."""

from __future__ import annotations

import argparse
import sys


def _doctor(args) -> int:
    from ams_ros.ros.doctor import doctor

    return doctor(args)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog='ams', description=__doc__)
    commands = parser.add_subparsers(dest='command', required=True)
    commands.add_parser('doctor', help='check that this machine can run the drone and ground '
                        'nodes').set_defaults(run=_doctor)
    return parser


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    return args.run(args)


if __name__ == '__main__':
    sys.exit(main())
