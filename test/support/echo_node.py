"""Echo node for DDS round-trip tests: republishes every ams_msgs message it receives.

Run as a separate process: `python echo_node.py TypeName...`. For each type it subscribes to
`/ams_test/<TypeName>` and republishes the same message on `/ams_test/<TypeName>/echo`.
It exits when its standard input closes, so it never outlives the test that started it.
"""

import sys
import threading

import rclpy
from rclpy.executors import ExternalShutdownException
from rclpy.qos import QoSProfile, ReliabilityPolicy

import ams_msgs.msg


def main(type_names):
    rclpy.init()
    node = rclpy.create_node('ams_echo')
    qos = QoSProfile(depth=10, reliability=ReliabilityPolicy.RELIABLE)
    keep = []
    for name in type_names:
        msg_type = getattr(ams_msgs.msg, name)
        pub = node.create_publisher(msg_type, f'/ams_test/{name}/echo', qos)
        keep.append(node.create_subscription(msg_type, f'/ams_test/{name}', pub.publish, qos))
    # Closing stdin (the test ending, or being killed) shuts the node down.
    threading.Thread(target=lambda: (sys.stdin.read(), rclpy.try_shutdown()), daemon=True).start()
    try:
        rclpy.spin(node)
    except (KeyboardInterrupt, ExternalShutdownException):
        pass


if __name__ == '__main__':
    main(sys.argv[1:])
