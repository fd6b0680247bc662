"""The ground node (`ams_ground`): label, train and stream model updates to any number of drones.

A thin adapter around ``GroundStation`` (ams_ros.ground.station has the rules). Each drone lives
in its own namespace and talks on ``<ns>/ams/...`` (see drone_node). The ground serves a drone
namespace when

- it is listed in ``drone_namespaces`` (served from start-up and bound to the client id the
  drone uses by default: the namespace without slashes), or
- ``discover`` is on and a topic ``<ns>/ams/frames``, ``<ns>/ams/snapshot_request`` or
  ``<ns>/ams/status`` appears in the graph (checked every ``discovery_period`` seconds; at most
  2 x ``max_clients`` namespaces).

Per served namespace it subscribes to ``ams/frames`` (FrameBatch), ``ams/snapshot_request`` and
``ams/status`` (EdgeStatus) and publishes ``ams/patch``, ``ams/snapshot`` and ``ams/sampling``
(the latter two reliable + transient-local, depth 1, so a drone that starts later still gets
them). Every message is converted and, with ``auth_key_file`` set, verified (tag and sender
counter, see link_auth), then admitted by the ``ClientRegistry`` (client ids bound to one
namespace, ``max_clients``, ``client_ids`` and the shard, ``client_timeout``) before it is
queued. Replies go to the namespace the client is bound to.

Threads. DDS callbacks only convert, verify, admit and queue (``EventQueue``); one worker runs
the station's rounds: events, owed snapshots, one training phase. The node spins at once: a
packaged student that has to be pretrained first is prepared by the worker, and
``/diagnostics`` says so meanwhile.
"""

from __future__ import annotations

import sys
import threading
import time
from dataclasses import dataclass, field

from diagnostic_msgs.msg import DiagnosticArray
from rcl_interfaces.msg import SetParametersResult
from rclpy.clock import Clock, ClockType
from rclpy.node import Node

from ams_msgs.msg import (
    EdgeStatus,
    FrameBatch,
    ModelPatch,
    ModelSnapshot,
    SamplingControl,
    SnapshotRequest,
)
from ams_ros.ground.client_registry import ClientRegistry
from ams_ros.ground.event_queue import BATCH, CONTACT, SNAPSHOT, STATUS, DroneEvent, EventQueue
from ams_ros.ground.station import GroundStation
from ams_ros.ros import conversions as conv
from ams_ros.ros.drone_parameters import default_client_id
from ams_ros.ros.ground_parameters import PARAMETERS, ground_engine, station_config
from ams_ros.ros.link_auth import link_ends
from ams_ros.ros.node_parameters import ParameterError, check, declare_all, read
from ams_ros.ros.qos import LATCHED, RELIABLE
from ams_ros.ros.spin import guarded, run

NODE_NAME = 'ams_ground'
DRONE_TOPICS = ('/ams/frames', '/ams/snapshot_request', '/ams/status')


def drone_namespace(topic: str) -> str | None:
    """Return the namespace of a drone topic such as /drone1/ams/frames ('/' at the root)."""
    for suffix in DRONE_TOPICS:
        if topic.endswith(suffix):
            return topic[:-len(suffix)] or '/'
    return None


@dataclass
class _Endpoints:
    """The publishers of one drone namespace (its subscriptions are kept alive here too)."""

    patch: object
    snapshot: object
    sampling: object
    subscriptions: list = field(default_factory=list)


class GroundNode(Node):
    """ROS adapter of the GroundStation: any number of drones, one training worker."""

    def __init__(self, **node_kwargs):
        super().__init__(NODE_NAME, **node_kwargs)
        self._params = declare_all(self, PARAMETERS)
        p = {name: read(self, name) for name in self._params}
        engine = ground_engine(p, self.get_logger().warning)
        # The link is authenticated message by message; the engine sees verified payloads.
        self._signer, self._verifier = link_ends(p['auth_key_file'])
        self.registry = ClientRegistry(p['max_clients'], p['client_timeout'], engine.owns)
        self.station = GroundStation(engine.scheduler, self.registry, self,
                                     station_config(p), self._log)
        self._load_template = engine.load_template
        self.events = EventQueue(p['max_queued_batches'])
        self._shard = f"{p['shard_index']}/{p['shard_count']}"
        self._max_namespaces = 2 * p['max_clients']  # discovery serves no more than this
        self._endpoints: dict[str, _Endpoints] = {}
        self._preparing = ('' if engine.scheduler.template
                           else f"pretraining the packaged student {p['student']}")

        self.diagnostics_pub = self.create_publisher(DiagnosticArray, '/diagnostics', 10)
        steady = Clock(clock_type=ClockType.STEADY_TIME)
        self.status_timer = self.create_timer(p['status_period'], self._report, clock=steady)
        if p['discover']:
            self.create_timer(p['discovery_period'], self._scan_graph, clock=steady)
        self.add_on_set_parameters_callback(
            lambda ps: SetParametersResult(successful=not check(self._params, ps),
                                           reason=check(self._params, ps)))
        self.add_post_set_parameters_callback(self._apply_parameters)
        self._worker = threading.Thread(target=self._loop, name='ams-ground', daemon=True)
        for namespace in p['drone_namespaces']:
            namespace = '/' + namespace.strip('/')
            self._serve(namespace)
            client_id = default_client_id(namespace)
            if engine.owns(client_id):
                try:
                    self.registry.bind(namespace, client_id)
                except ValueError as e:
                    raise ParameterError(f'drone_namespaces: {e}') from e
                self.events.put(DroneEvent(CONTACT, client_id))  # its sampling control
        self._worker.start()
        self.get_logger().info(
            f"student {p['student']}, teacher {p['teacher.kind']}, device {engine.device}, shard "
            f"{self._shard}, discovery {'on' if p['discover'] else 'off'}"
            + (f'; {self._preparing} first' if self._preparing else ''))

    # -- which drones ----------------------------------------------------------------------

    @guarded
    def _scan_graph(self) -> None:
        for topic, _types in self.get_topic_names_and_types():
            namespace = drone_namespace(topic)
            if namespace is None or namespace in self._endpoints:
                continue
            if len(self._endpoints) >= self._max_namespaces:
                self.station.error('', f'namespace {namespace} not served: already serving '
                                   f'{len(self._endpoints)} (2 x max_clients)',
                                   'namespaces_refused')
                continue
            self._serve(namespace)

    def _serve(self, namespace: str) -> None:
        """Create the endpoints of one drone namespace."""
        if namespace in self._endpoints:
            return
        prefix = '' if namespace == '/' else namespace
        ends = _Endpoints(
            patch=self.create_publisher(ModelPatch, f'{prefix}/ams/patch', RELIABLE),
            snapshot=self.create_publisher(ModelSnapshot, f'{prefix}/ams/snapshot', LATCHED),
            sampling=self.create_publisher(SamplingControl, f'{prefix}/ams/sampling', LATCHED))
        ends.subscriptions = [self.create_subscription(
            msg_type, f'{prefix}/ams/{topic}',
            lambda m, c=convert, k=kind: self._on_message(namespace, c, k, m), RELIABLE)
            for msg_type, topic, convert, kind in (
                (FrameBatch, 'frames', conv.batch_from_msg, BATCH),
                (SnapshotRequest, 'snapshot_request', conv.request_from_msg, SNAPSHOT),
                (EdgeStatus, 'status', conv.status_from_msg, STATUS))]
        self._endpoints[namespace] = ends
        self.get_logger().info(f'serving drone namespace {namespace}')

    # -- callbacks: convert, verify, admit and queue -----------------------------------------

    @guarded
    def _on_message(self, namespace: str, convert, kind: str, msg) -> None:
        try:
            data = convert(msg, verifier=self._verifier)
        except conv.MessageError as e:
            self.station.error('', f'{kind} from {msg.client_id!r} refused: {e}',
                               f'refused.{e.reason}')
            return
        if not self.station.admit(namespace, data.client_id, time.monotonic()):
            return
        client_id = data.client_id
        if kind == BATCH:
            self.station.count('bytes_up', len(data.data))
        elif kind == SNAPSHOT:
            self._log('info', f"'{client_id}' asks for a snapshot ({data.reason}, runs "
                      f'v{data.active_version})', 5.0)
            data = data.reason
        self.events.put(DroneEvent(kind, client_id, data))

    # -- the worker ------------------------------------------------------------------------

    def _loop(self) -> None:
        if self._preparing:
            try:
                self.station.scheduler.template = self._load_template()
            except Exception as e:  # noqa: BLE001 - reported in /diagnostics, node stays up
                self._preparing = f'the student could not be prepared: {type(e).__name__}: {e}'
                self.get_logger().error(self._preparing)
                return
            self._preparing = ''
        while (events := self.events.take(1.0, self.station.has_training)) is not None:
            self.station.run_round(events, time.monotonic)

    # -- the station's downlink ------------------------------------------------------------

    def _publisher(self, client_id: str, kind: str):
        return getattr(self._endpoints[self.registry.namespace_of(client_id)], kind)

    def patch(self, client_id: str, payload) -> None:
        self._publisher(client_id, 'patch').publish(conv.patch_to_msg(
            payload, self.get_clock().now().to_msg(), signer=self._signer))

    def snapshot(self, client_id: str, payload) -> None:
        self._publisher(client_id, 'snapshot').publish(conv.snapshot_to_msg(
            payload, self.get_clock().now().to_msg(), signer=self._signer))

    def sampling(self, client_id: str, rate: float, period: float) -> None:
        self._publisher(client_id, 'sampling').publish(conv.sampling_control(
            client_id, rate, period, self.get_clock().now().to_msg(), signer=self._signer))

    # -- status ----------------------------------------------------------------------------

    def _log(self, level: str, text: str, throttle_s: float = 0.0) -> None:
        logger = self.get_logger()
        if level == 'warning':
            logger.warning(text, throttle_duration_sec=2.0)
        elif throttle_s:
            logger.info(text, throttle_duration_sec=throttle_s)
        else:
            logger.info(text)

    def on_callback_error(self, where: str, error: Exception) -> None:
        self.station.error('', f'{where} failed: {type(error).__name__}: {error}',
                           'callback_errors')

    def _apply_parameters(self, parameters) -> None:
        for parameter in parameters:
            if parameter.name == 'status_period':
                self.status_timer.timer_period_ns = int(parameter.value * 1e9)
                self.status_timer.reset()

    @guarded
    def _report(self) -> None:
        entries = self.station.diagnostics(
            NODE_NAME, self._preparing,
            {'namespaces': ','.join(sorted(self._endpoints)), 'queued_events': len(self.events),
             'shard': self._shard}, {'batches_dropped': self.events.batches_dropped})
        self.diagnostics_pub.publish(conv.diagnostic_array(
            [conv.diagnostic_status(*entry) for entry in entries],
            self.get_clock().now().to_msg()))

    def close(self) -> None:
        """Stop the worker (after the phase in progress, at most a few seconds)."""
        self.events.close()
        self._worker.join(timeout=10.0)


def main(args=None) -> int:
    """Run the ground node (`ams_ground`)."""
    return run(GroundNode, NODE_NAME, args)


if __name__ == '__main__':
    sys.exit(main())
