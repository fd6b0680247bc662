"""The QoS profiles of every ams topic, in one place for the drone and the ground."""

from __future__ import annotations

from rclpy.qos import (
    DurabilityPolicy,
    HistoryPolicy,
    QoSProfile,
    ReliabilityPolicy,
    qos_profile_sensor_data,
)

CAMERA_QOS = ('sensor_data', 'reliable', 'best_effort')
QOS_NAMES = ('sensor_data', 'reliable', 'best_effort', 'transient_local')
RELIABLE = QoSProfile(depth=10, reliability=ReliabilityPolicy.RELIABLE)
# State that must reach late joiners, like a map: the last model and the last sampling control.
LATCHED = QoSProfile(depth=1, history=HistoryPolicy.KEEP_LAST,
                     reliability=ReliabilityPolicy.RELIABLE,
                     durability=DurabilityPolicy.TRANSIENT_LOCAL)


def camera_qos(name: str) -> QoSProfile:
    """Return the camera subscription's QoS (CAMERA_QOS): depth 1, only the newest frame waits."""
    return qos_from_name(name, depth=1)


def qos_from_name(name: str, depth: int = 0) -> QoSProfile:
    """Return a QoS profile by name (QOS_NAMES); depth > 0 overrides the profile's depth."""
    if name == 'sensor_data':
        profile = QoSProfile(depth=qos_profile_sensor_data.depth,
                             reliability=qos_profile_sensor_data.reliability,
                             durability=qos_profile_sensor_data.durability,
                             history=HistoryPolicy.KEEP_LAST)
    elif name == 'reliable':
        profile = QoSProfile(depth=10, reliability=ReliabilityPolicy.RELIABLE)
    elif name == 'best_effort':
        profile = QoSProfile(depth=10, reliability=ReliabilityPolicy.BEST_EFFORT)
    elif name == 'transient_local':
        profile = QoSProfile(depth=1, reliability=ReliabilityPolicy.RELIABLE,
                             durability=DurabilityPolicy.TRANSIENT_LOCAL)
    else:
        raise ValueError(f'qos must be one of {QOS_NAMES}, got {name!r}')
    if depth > 0:
        profile.depth = depth
    return profile
