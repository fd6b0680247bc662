"""A lossy link for fault tests: relays the ams topics between ground and drone, with faults.

DDS delivers everything or nothing, so faults are made here. The drone is started with its
patch, snapshot and frames topics remapped to the ``*_link`` names, so every model update and
every uplink batch passes through this node:

    /ams/patch        -> /ams/patch_link       ModelPatch     ground -> drone
    /ams/snapshot     -> /ams/snapshot_link    ModelSnapshot  latched, like the ground's
    /ams/frames_link  -> /ams/frames           FrameBatch     drone -> ground

The parameter ``plan`` (JSON, settable at run time) names, per link, one fault and the share
of messages it hits, e.g. ``{"name": "loss30", "seed": 3, "patch": {"fault": "drop", "p":
0.3}}``; links the plan does not name pass every message unchanged. Each plan restarts the
links' random generators from its seed, so a plan faults the same messages of the same
stream every time. Faults:

    drop       the message is lost
    duplicate  it is sent twice
    reorder    it is held back and sent right after the next message
    delay      it is held back for ``delay_s`` seconds (later messages overtake it)
    flip       one random bit flips in one of ``fields`` (default: the link's payload fields)
    truncate   one of ``fields`` is cut to a random shorter length (the framing survives)
    cut        the serialised message is cut short (the middleware must refuse it)

A new plan first sends what the old one held back. Being a second writer of the latched
snapshot, the relay keeps it after the ground dies (the ground's own copy dies with it): a
test that kills every node on the link restarts the relay too.

Each message's fate goes out as JSON on ``lossy_relay/events`` (std_msgs/String, reliable),
so the test knows which versions or batches were faulted, and when.

Run: ``python lossy_relay.py [--ros-args -p plan:='{...}']``.
"""

import json
import random
import sys
import time
from dataclasses import dataclass

import rclpy
from rcl_interfaces.msg import SetParametersResult
from rclpy.executors import ExternalShutdownException
from rclpy.node import Node
from rclpy.qos import DurabilityPolicy, QoSProfile, ReliabilityPolicy
from rclpy.serialization import serialize_message
from std_msgs.msg import String

from ams_msgs.msg import FrameBatch, ModelPatch, ModelSnapshot

RELIABLE = QoSProfile(depth=10, reliability=ReliabilityPolicy.RELIABLE)
LATCHED = QoSProfile(depth=1, reliability=ReliabilityPolicy.RELIABLE,
                     durability=DurabilityPolicy.TRANSIENT_LOCAL)
FAULTS = ('drop', 'duplicate', 'reorder', 'delay', 'flip', 'truncate', 'cut')


@dataclass(frozen=True)
class LinkSpec:
    name: str
    msg_type: type
    source: str
    target: str
    qos: QoSProfile
    fields: tuple[str, ...]  # payload fields that flip / truncate may damage

    def label(self, msg) -> str:
        """Return which message this is, for the events: the patch's versions, the seq."""
        if self.msg_type is ModelPatch:
            return f'{msg.base_version}->{msg.version}'
        return str(msg.version if self.msg_type is ModelSnapshot else msg.seq)


LINKS = (
    LinkSpec('patch', ModelPatch, '/ams/patch', '/ams/patch_link', RELIABLE,
             ('index_data', 'value_data')),
    LinkSpec('snapshot', ModelSnapshot, '/ams/snapshot', '/ams/snapshot_link', LATCHED,
             ('model_data',)),
    LinkSpec('frames', FrameBatch, '/ams/frames_link', '/ams/frames', RELIABLE, ('data',)),
)


def parse_plan(text: str) -> dict:
    """Return the plan as a dict; ValueError says what is wrong with it."""
    plan = json.loads(text or '{}')
    if not isinstance(plan, dict):
        raise ValueError('the plan must be a JSON object')
    for link in LINKS:
        spec = plan.get(link.name)
        if spec is None:
            continue
        if spec.get('fault') not in FAULTS:
            raise ValueError(f'{link.name}: fault must be one of {FAULTS}')
        if not 0.0 <= float(spec.get('p', 1.0)) <= 1.0:
            raise ValueError(f'{link.name}: p must be in [0, 1]')
        if spec['fault'] == 'delay' and not float(spec.get('delay_s', 0.0)) > 0.0:
            raise ValueError(f'{link.name}: delay needs delay_s > 0')
        if not set(spec.get('fields', ())) <= set(link.fields):
            raise ValueError(f'{link.name}: fields must be among {link.fields}')
    return plan


class Link:
    """One relayed topic: its fault, its random stream and the messages it holds back."""

    def __init__(self, node: 'LossyRelay', spec: LinkSpec):
        self.node, self.spec = node, spec
        self.fault = None
        self.rng = random.Random()
        self.reordered = None  # the message waiting for the next one
        self.delayed = []  # (release time, message)
        self.pub = node.create_publisher(spec.msg_type, spec.target, spec.qos)
        self.sub = node.create_subscription(spec.msg_type, spec.source, self.on_message,
                                            spec.qos)

    def set_fault(self, fault: dict | None, seed: int) -> None:
        self.flush()
        self.fault = fault
        self.rng = random.Random(f'{seed}:{self.spec.name}')

    def flush(self) -> None:
        """Send what is held back, oldest first."""
        held = [m for _, m in sorted(self.delayed, key=lambda d: d[0])]
        if self.reordered is not None:
            held.append(self.reordered)
        self.delayed, self.reordered = [], None
        for msg in held:
            self.send(msg, 'released')

    def on_message(self, msg) -> None:
        fault = self.fault
        kind = fault['fault'] if fault and self.rng.random() < fault.get('p', 1.0) else None
        if kind is None:
            self.send(msg, 'pass')
        elif kind == 'drop':
            self.node.event(self.spec, msg, 'drop')
        elif kind == 'duplicate':
            self.send(msg, 'duplicate')
            self.send(msg, 'duplicate')
        elif kind == 'reorder' and self.reordered is None:
            self.reordered = msg
            self.node.event(self.spec, msg, 'reorder')
            return  # sent after the next message
        elif kind == 'reorder':
            self.send(msg, 'pass')  # one is held already: it follows this one
        elif kind == 'delay':
            self.delayed.append((time.monotonic() + fault['delay_s'], msg))
            self.node.event(self.spec, msg, 'delay')
        elif kind == 'cut':
            raw = serialize_message(msg)
            self.pub.publish(raw[:self.rng.randrange(len(raw))])
            self.node.event(self.spec, msg, 'cut')
        else:
            self.damage(msg, kind, fault.get('fields') or self.spec.fields)
        if self.reordered is not None:
            held, self.reordered = self.reordered, None
            self.send(held, 'released')

    def damage(self, msg, kind: str, fields) -> None:
        names = [f for f in fields if len(getattr(msg, f))]
        if not names:
            self.send(msg, 'pass')  # nothing there to damage
            return
        name = self.rng.choice(names)
        data = bytearray(getattr(msg, name))
        if kind == 'flip':
            bit = self.rng.randrange(8 * len(data))
            data[bit // 8] ^= 1 << (bit % 8)
            detail = f'{name} bit {bit}'
        else:
            cut = self.rng.randrange(len(data))
            detail = f'{name} {len(data)} -> {cut} bytes'
            del data[cut:]
        setattr(msg, name, bytes(data))
        self.send(msg, kind, detail)

    def release_due(self) -> None:
        now = time.monotonic()
        due = sorted((d for d in self.delayed if d[0] <= now), key=lambda d: d[0])
        self.delayed = [d for d in self.delayed if d[0] > now]
        for _, msg in due:
            self.send(msg, 'released')

    def send(self, msg, fate: str, detail: str = '') -> None:
        self.pub.publish(msg)
        self.node.event(self.spec, msg, fate, detail)


class LossyRelay(Node):
    def __init__(self):
        super().__init__('lossy_relay')
        self.events = self.create_publisher(String, '~/events', QoSProfile(
            depth=1000, reliability=ReliabilityPolicy.RELIABLE))
        self.links = {spec.name: Link(self, spec) for spec in LINKS}
        self.plan = {}
        self.declare_parameter('plan', '{}')
        self.add_on_set_parameters_callback(self._check)
        self.add_post_set_parameters_callback(lambda _: self._apply())
        self._apply()
        self.create_timer(0.05, self._tick)

    def _check(self, parameters) -> SetParametersResult:
        for parameter in parameters:
            if parameter.name == 'plan':
                try:
                    parse_plan(parameter.value)
                except (ValueError, TypeError, AttributeError) as e:
                    return SetParametersResult(successful=False, reason=f'plan: {e}')
        return SetParametersResult(successful=True)

    def _apply(self) -> None:
        self.plan = parse_plan(self.get_parameter('plan').value)
        for name, link in self.links.items():
            link.set_fault(self.plan.get(name), int(self.plan.get('seed', 0)))
        self.get_logger().info(f'plan: {self.plan}')

    def _tick(self) -> None:
        for link in self.links.values():
            link.release_due()

    def event(self, spec: LinkSpec, msg, fate: str, detail: str = '') -> None:
        self.events.publish(String(data=json.dumps({
            'plan': self.plan.get('name', ''), 'link': spec.name, 'msg': spec.label(msg),
            'fate': fate, 'detail': detail, 't': time.time()})))


def main(args=None) -> int:
    rclpy.init(args=args)
    node = None
    try:
        node = LossyRelay()
        rclpy.spin(node)
    except (KeyboardInterrupt, ExternalShutdownException):
        pass
    finally:
        if node is not None:
            node.destroy_node()
        rclpy.try_shutdown()
    return 0


if __name__ == '__main__':
    sys.exit(main())
