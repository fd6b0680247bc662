"""Running a node: callbacks that survive any one message, and a main that spins until shutdown."""

from __future__ import annotations

import functools
import sys

import rclpy
from rclpy.executors import ExternalShutdownException

from ams_ros.ros.node_parameters import ParameterError


def guarded(callback):
    """Wrap a ROS callback: an unexpected exception is logged and counted, never fatal.

    An exception escaping a callback would end ``rclpy.spin`` and with it the node. The node
    class provides ``on_callback_error(name, error)``.
    """
    @functools.wraps(callback)
    def run_guarded(self, *args):
        try:
            return callback(self, *args)
        except Exception as e:  # noqa: BLE001 - the node must outlive any one message
            if self.context.ok():
                self.on_callback_error(callback.__name__, e)
    return run_guarded


def run(node_class, name: str, args=None) -> int:
    """Init rclpy, build and spin a node; a refused parameter exits with status 2."""
    rclpy.init(args=args)
    node = None
    try:
        node = node_class()
        rclpy.spin(node)
    except ParameterError as e:
        print(f'[{name}] refused to start: {e}', file=sys.stderr)
        return 2
    except (KeyboardInterrupt, ExternalShutdownException):
        pass
    finally:
        if node is not None:
            node.close()
            node.destroy_node()
        rclpy.try_shutdown()
    return 0
