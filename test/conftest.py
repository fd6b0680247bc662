"""Test-wide settings: ROS traffic stays on loopback, in a DDS domain of this run's own."""

import os

# Set before anything imports rclpy; child processes inherit them.
os.environ['ROS_AUTOMATIC_DISCOVERY_RANGE'] = 'LOCALHOST'
os.environ.setdefault('ROS_DOMAIN_ID', str(1 + os.getpid() % 100))
