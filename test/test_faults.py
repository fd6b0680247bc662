"""Faults on the link never make the drone run a wrong model or stop seeing.

The real nodes run as separate processes over Fast DDS: the ground (synthetic teacher, a fresh
small student at 32x64, T_update 2.5 s), the drone, and between them the lossy relay
(support/lossy_relay.py), which carries every patch, snapshot and uplink batch and applies
each case's fault plan. This process is the camera (the synthetic flight, 5 frames/s) and the
observer: it reads every version and digest the ground produced from the ground's own log, which
the ground writes before it sends each patch or snapshot (a subscription can miss the first
messages of a restarted ground while discovery is still matching it), and it hears the drone's
masks, the relay's events and both nodes' /diagnostics. One system serves the cases in file
order; the last three kill (SIGKILL) and restart nodes.

Every case writes a report (printed, and <case>.json in the module's tmp folder): frames in
and masks out, patches and snapshots by outcome, the ground's batch counts and errors, what
the relay did, the time to recover and the mirror check. Every case asserts:

- the mirror invariant: every (version, digest) the drone ever reported running is one the
  ground computed for that version;
- the drone kept publishing masks (no gap over MAX_MASK_GAP_S while it was alive);
- within two update periods after the fault ended, it ran the ground's latest model;
- frames in = masks out under the latest-frame policy's accounting (checked with the camera
  paused until the drone has drained): every frame received was inferred (one mask each),
  replaced by a newer one before inference, or refused.

Then each case checks that its fault happened and what it must have caused.
"""

import json
import re
import time
from collections import Counter

import pytest

rclpy = pytest.importorskip('rclpy')
torch = pytest.importorskip('torch')
from diagnostic_msgs.msg import DiagnosticArray  # noqa: E402
from rclpy.parameter import Parameter  # noqa: E402
from rclpy.parameter_client import AsyncParameterClient  # noqa: E402
from rclpy.qos import (  # noqa: E402
    QoSProfile,
    ReliabilityPolicy,
    qos_profile_sensor_data,
)
from sensor_msgs.msg import Image  # noqa: E402
from std_msgs.msg import Header, String  # noqa: E402
from support.processes import REPO, Children, spin_until  # noqa: E402

from ams_ros.model.manifest import vector_digest  # noqa: E402
from ams_ros.model.student import InputSpec, build_student  # noqa: E402
from ams_ros.model.template import StudentTemplate  # noqa: E402
from ams_ros.ros.conversions import seconds_to_stamp  # noqa: E402
from ams_ros.ros.image_conversion import array_to_image  # noqa: E402
from ams_ros.world import CLASS_NAMES, AerialVideo  # noqa: E402

RELAY = REPO / 'test' / 'support' / 'lossy_relay.py'
ARCH, HEIGHT, WIDTH = 'deeplabv3_mbv2_small', 32, 64
SEED, START, FPS = 1003, 100.0, 5.0  # the flight this camera flies and the teacher labels
# A lost last patch shows when the next one comes (T_update and a training phase later), then
# a snapshot is asked for, built, sent and loaded: about 1.5 s more on two busy cores.
T_UPDATE = 2.5
RECOVERY_S = 2 * T_UPDATE
# Frames come every 0.2 s; the nodes share the test machine's cores (a ground starting up).
MAX_MASK_GAP_S = 3.0
TIMEOUT = 60.0  # for conditions that take a few update periods on a quiet machine
# The cases force many snapshots in a few minutes (every damaged or lost patch costs one) on a
# link with T_update 2.5 s: the snapshot budget is sized for that link, not a 1 Mbit/s one, and
# its back-off starts at a fifth of T_update (test_hostile checks the default budget).
FAST_LINK_SNAPSHOTS = {'snapshot_budget.kbps': 20_000.0, 'snapshot_budget.burst': 10.0,
                       'snapshot_budget.backoff_min_s': 0.5}
RELIABLE = QoSProfile(depth=100, reliability=ReliabilityPolicy.RELIABLE)
DRONE_DIAGNOSTICS, GROUND_DIAGNOSTICS = 'ams_drone: drone', 'ams_ground: drone'
LINKED = ('ams/patch', 'ams/snapshot', 'ams/frames')  # the drone's topics the relay carries
# What a node logs once it is up: the ground serving the drone, the drone running.
UP = {'ground': 'serving drone namespace /', 'drone': "client 'drone': camera"}


def number(values, key):
    return int(float(values.get(key, 0)))


def frame_accounting(values) -> dict:
    """Return the drone's frame counts; every frame received is in exactly one outcome."""
    counts = {'frames_in': number(values, 'frames_received'),
              'inferred': number(values, 'frames_inferred'),
              'dropped_stale': number(values, 'frames_dropped_stale'),
              'refused': sum(number(values, k) for k in values if k.startswith('bad_images.')),
              'without_model': number(values, 'frames_without_model'),
              'failed': number(values, 'frame_errors')}
    counts['in_flight'] = counts['frames_in'] - sum(v for k, v in counts.items()
                                                    if k != 'frames_in')
    return counts


def outcomes(values, prefix) -> Counter:
    return Counter({k[len(prefix):]: number(values, k) for k in values if k.startswith(prefix)})


# What the ground logs before it sends a model to the drone: "'drone' v<version> (<digest>): ...".
PRODUCED = re.compile(r"\[ams_ground\]: 'drone' v(\d+) \(([0-9a-f]{64})\)")


class Observer:
    """What the grounds produced (their logs), the drone's masks and both nodes' reports.

    Messages of a killed node can still wait in this process's queues when its successor
    starts, so each message is attributed by its publisher: a killed node's are retired.
    """

    def __init__(self, node, template_digest: str, folder):
        self.template = (1, template_digest)
        self.folder = folder
        self.ground_sent = {self.template}  # (version, digest): what the grounds computed
        self.ground_latest = self.template
        self.ground_log = None  # the current ground's
        self.drone_ran = {}  # (version, digest) -> when the drone first reported it
        self.reports = []  # (time, values, in sync with the ground) of the current drone
        self.ground = {}  # the current ground's latest report on the drone
        self.masks = []  # receive times, current drone
        self.events = []  # the relay's
        self.publishers = {'ground': set(), 'drone': set()}  # of the current ones
        self.retired = set()  # publishers of killed nodes
        node.create_subscription(DiagnosticArray, '/diagnostics', self._on_diagnostics,
                                 RELIABLE)
        self.mask_sub = node.create_subscription(Image, '/ams_drone/mask', self._on_mask,
                                                 RELIABLE)
        self.events_sub = node.create_subscription(
            String, '/lossy_relay/events', lambda m: self.events.append(json.loads(m.data)),
            QoSProfile(depth=1000, reliability=ReliabilityPolicy.RELIABLE))

    def _current(self, node, info) -> bool:
        """Return whether a message comes from the current ground or drone (not a killed one)."""
        publisher = bytes(info['publisher_gid']['data'])
        if publisher in self.retired:
            return False
        self.publishers[node].add(publisher)
        return True

    def read_ground_logs(self) -> None:
        """Take in every model the grounds logged; the current ground's last one is its latest."""
        for log in sorted(self.folder.glob('ground_*.log')):
            produced = [(int(v), digest) for v, digest in PRODUCED.findall(log.read_text())]
            self.ground_sent.update(produced)
            if log == self.ground_log and produced:
                self.ground_latest = produced[-1]

    def _on_mask(self, _msg, info) -> None:
        if self._current('drone', info):
            self.masks.append(time.monotonic())

    def _on_diagnostics(self, msg, info) -> None:
        now = time.monotonic()
        for status in msg.status:
            values = {kv.key: kv.value for kv in status.values}
            if status.name == DRONE_DIAGNOSTICS:
                self.read_ground_logs()  # what the drone runs was logged before it was sent
                running = (number(values, 'verified_version'), values['verified_digest'])
                self.drone_ran.setdefault(running, now)
                if self._current('drone', info):
                    in_sync = (running == self.ground_latest
                               and number(values, 'active_version') == running[0])
                    self.reports.append((now, values, in_sync))
            elif status.name == GROUND_DIAGNOSTICS and self._current('ground', info):
                self.ground = values

    @property
    def drone(self) -> dict:
        return self.reports[-1][1] if self.reports else {}

    def new_drone(self) -> None:
        self.retired |= self.publishers['drone']
        self.publishers['drone'] = set()
        self.reports, self.masks = [], []

    def new_ground(self, log) -> None:
        """Start over with a ground that runs the template and has heard of no drone yet."""
        self.retired |= self.publishers['ground']
        self.publishers['ground'] = set()
        self.ground_latest, self.ground, self.ground_log = self.template, {}, log

    def mirror_violations(self) -> list:
        self.read_ground_logs()
        return sorted(pair for pair in self.drone_ran if pair not in self.ground_sent)


class Camera:
    """The synthetic flight at FPS, published from this process (paused for accounting)."""

    def __init__(self, node):
        self.video = AerialVideo(SEED)
        self.pub = node.create_publisher(Image, '/camera/image_raw', qos_profile_sensor_data)
        self.paused = True
        self.index = 0
        node.create_timer(1.0 / FPS, self._tick)

    def _tick(self) -> None:
        if self.paused:
            return
        t = self.index / FPS
        rgb, _ = self.video.render(t, HEIGHT, WIDTH)
        header = Header(stamp=seconds_to_stamp(START + t), frame_id='camera')
        self.pub.publish(array_to_image(rgb, 'rgb8', header))
        self.index += 1


class System:
    """Ground, relay and drone as child processes; this process as camera and observer."""

    def __init__(self, folder, node, onnx):
        self.folder, self.node, self.onnx = folder, node, onnx
        self.children = Children(folder)
        self.starts = Counter()
        self.relay = None

    def start(self, name) -> None:
        self.starts[name] += 1
        log = f'{name}_{self.starts[name]}'
        if name == 'ground':
            self.children.node('ams_ground', 'ground_node', {
                'student': ARCH, 'input_height': HEIGHT, 'input_width': WIDTH, 'seed': 0,
                'device': 'cpu', 'torch_threads': 1, 'teacher.kind': 'synthetic',
                'teacher.seed': SEED, 'teacher.start_s': START, 'teacher.duration_s': 900.0,
                'trainer.iterations': 4, 'trainer.batch_size': 4, 'trainer.horizon_s': 20.0,
                'asr.initial_rate': 2.0, 'asr.rate_min': 2.0, 'asr.rate_max': 2.0,
                'atr.period_min': T_UPDATE, 'discovery_period': 0.5, 'status_period': 0.5,
                **FAST_LINK_SNAPSHOTS}, log_name=log)
            self.observer.new_ground(self.folder / f'{log}.log')
        elif name == 'drone':
            self.children.node('ams_drone', 'drone_node', {
                'model_path': str(self.onnx), 'ort.threads': 1, 'uplink.preset': 'ultrafast',
                'sampling_rate': 2.0, 'update_period': T_UPDATE, 'status_period': 0.5,
                'snapshot_request_interval': 0.5},
                remaps=[f'{topic}:={topic}_link' for topic in LINKED], log_name=log)
            self.observer.new_drone()
        else:
            self.children.start('relay', [str(RELAY)], log_name=log)
            self.relay = self.relay or AsyncParameterClient(self.node, 'lossy_relay')

    def wait(self, condition, what, timeout=TIMEOUT) -> None:
        assert spin_until(self.node, condition, timeout), f'{what}\n{self.children.logs()}'

    def spin(self, seconds) -> None:
        spin_until(self.node, lambda: False, seconds)

    def up_at(self, name) -> float:
        """Wait until the node logs that it is up; return when it did (monotonic clock).

        The log line's own stamp says when: this process may hear from the node later.
        """
        log = self.folder / f'{name}_{self.starts[name]}.log'
        pattern = re.compile(r'\[(\d+\.\d+)\] \[ams_\w+\]: ' + re.escape(UP[name]))

        def stamp():
            found = pattern.search(log.read_text()) if log.exists() else None
            return float(found[1]) if found else None
        self.wait(lambda: stamp() is not None, f'the {name} did not come up')
        return stamp() - time.time() + time.monotonic()

    def wait_until_up(self) -> float:
        """Wait until the relay takes plans, and ground and drone are up; return when."""
        # The relay's events count the faults: none may go out before this process hears them.
        self.wait(lambda: self.relay.services_are_ready()
                  and self.observer.events_sub.get_publisher_count() >= 1,
                  'the relay did not come up')
        up = max(self.up_at('ground'), self.up_at('drone'))
        self.wait(lambda: self.observer.reports
                  and self.camera.pub.get_subscription_count() >= 1
                  and self.observer.mask_sub.get_publisher_count() >= 1,
                  'this process does not hear the drone')
        return up

    def set_plan(self, plan: dict) -> float:
        """Give the relay a fault plan; return when it applies (monotonic time)."""
        future = self.relay.set_parameters([Parameter('plan', value=json.dumps(plan))])
        self.wait(future.done, 'the relay did not take the plan', 20.0)
        assert all(r.successful for r in future.result().results), future.result()
        return time.monotonic()

    def wait_in_sync(self, since: float) -> float:
        """Return seconds from `since` to the drone's first report running the ground's latest."""
        def first():
            return next((t for t, _, in_sync in self.observer.reports
                         if in_sync and t >= since), None)
        self.wait(lambda: first() is not None, 'the drone did not catch up with the ground')
        return first() - since

    def accounting(self) -> dict:
        """Return the drone's last reported frame accounting, and the masks heard so far."""
        return frame_accounting(self.observer.drone) | {'masks_out': len(self.observer.masks)}

    def drain(self) -> dict:
        """Pause the camera until the drone has handled every frame; return its accounting."""
        self.camera.paused = True
        observer = self.observer

        def drained():
            received = [number(v, 'frames_received') for _, v, _ in observer.reports[-2:]]
            counts = frame_accounting(observer.drone)
            return (len(received) == 2 and received[0] == received[1]
                    and counts['in_flight'] == 0 and len(observer.masks) == counts['inferred'])
        spin_until(self.node, drained, 15.0)
        self.camera.paused = False
        return self.accounting()


@pytest.fixture(scope='module')
def system(tmp_path_factory):
    folder = tmp_path_factory.mktemp('faults')
    rclpy.init()
    node = rclpy.create_node('ams_fault_test')
    system = System(folder, node, folder / 'student.onnx')
    try:
        system.start('relay')  # start-up overlaps the template's export
        # The ground builds the same student (seed 0): this export is its version 1.
        torch.manual_seed(0)
        template = StudentTemplate.from_model(build_student(ARCH, len(CLASS_NAMES)), ARCH,
                                              CLASS_NAMES, InputSpec(HEIGHT, WIDTH))
        system.onnx.write_bytes(template.onnx_bytes)
        system.observer = Observer(node, vector_digest(template.initial_vector).hex(), folder)
        system.camera = Camera(node)
        system.start('ground')
        system.start('drone')
        system.wait_until_up()
        system.camera.paused = False
        system.wait(lambda: any(in_sync and number(v, 'verified_version') >= 2
                                for _, v, in_sync in system.observer.reports),
                    'no patch reached the drone on a clean link')
        system.drain()
        yield system
    finally:
        system.children.stop_all()
        node.destroy_node()
        rclpy.try_shutdown()


class Case:
    """One fault case: the counts at its start, and its report at the end."""

    def __init__(self, system, name, plan=None):
        self.system, self.name, self.plan = system, name, plan or {}
        observer = system.observer
        self.starts = Counter(system.starts)
        self.drone_before, self.ground_before = dict(observer.drone), dict(observer.ground)
        self.masks_before, self.events_before = len(observer.masks), len(observer.events)
        self.drone_ran_before = set(observer.drone_ran)

    def before(self, node) -> dict:
        """Return the node's report at the case's start; {} if it restarted since."""
        same = self.system.starts[node] == self.starts[node]
        return (self.drone_before if node == 'drone' else self.ground_before) if same else {}

    def events(self, link) -> list:
        """Return what the relay did on a link since the case started (under any plan)."""
        return [e for e in self.system.observer.events[self.events_before:]
                if e['link'] == link]

    def faulted(self, link) -> list:
        return [e for e in self.events(link)
                if e['plan'] == self.name and e['fate'] not in ('pass', 'released')]

    def run_plan(self, patch=3, snapshot=1, frames=3) -> float:
        """Apply the plan until each link it names carried that many messages, one faulted.

        Return when the fault ended (the relay took the clean plan).
        """
        self.system.set_plan({'name': self.name, **self.plan})
        least = {'patch': patch, 'snapshot': snapshot, 'frames': frames}

        def enough():
            return all(self.faulted(link) and len(self.events(link)) >= n
                       for link, n in least.items() if link in self.plan)
        self.system.wait(enough, f'{self.name}: the faults did not happen', 120.0)
        return self.system.set_plan({})

    def uplink(self) -> dict:
        """Return the ground's batch counts since the case started."""
        now, before = self.system.observer.ground, self.before('ground')

        def count(values):
            errors = sum(number(values, k) for k in values if k.startswith('errors.decode.'))
            return Counter(batches=number(values, 'batches'), decode_errors=errors,
                           batches_lost=number(values, 'batches_lost'))
        return dict(count(now) - count(before)) | {
            'sent': len([e for e in self.events('frames') if e['fate'] != 'released'])}

    def finish(self, fault_end: float, **extra) -> dict:
        """Measure the recovery, account for frames and batches, check the invariants.

        Return the case's report (also printed and written to <case>.json), with `extra`.
        """
        system, observer = self.system, self.system.observer
        recovery = system.wait_in_sync(fault_end)
        if not self.before('drone'):
            # A restarted drone's camera subscription is new: until this process's camera
            # has matched it (a dead drone's match may still count) it receives no frames.
            system.wait(lambda: number(observer.drone, 'frames_received') > 0
                        and observer.masks, 'the restarted drone gets no camera frames')
        if self.before('ground'):
            # Every batch the drone sent is counted: trained on, refused, or lost (a seq gap).
            sent = self.uplink()['sent']
            system.wait(lambda: sum(v for k, v in self.uplink().items() if k != 'sent') >= sent,
                        'the ground did not account for every batch')
        alive = observer.masks[self.masks_before if self.before('drone') else 0:]
        gaps = [b - a for a, b in zip(alive, alive[1:], strict=False)]
        drone = self.before('drone')
        total = system.drain()
        frames = Counter(total)
        frames.subtract(frame_accounting(drone) | {
            'masks_out': self.masks_before if drone else 0})
        report = {
            'case': self.name, 'plan': self.plan,
            'relay': {link: dict(Counter(e['fate'] for e in self.events(link)))
                      for link in ('patch', 'snapshot', 'frames') if self.events(link)},
            'frames': dict(frames), 'frames_drone_total': total,
            'patches': dict(outcomes(observer.drone, 'patch.') - outcomes(drone, 'patch.')),
            'snapshots': dict(outcomes(observer.drone, 'snapshot.')
                              - outcomes(drone, 'snapshot.')),
            'snapshot_requests': number(observer.drone, 'snapshot_requests')
            - number(drone, 'snapshot_requests'),
            'uplink': self.uplink(),
            'recovery_s': round(recovery, 2),
            'max_mask_gap_s': round(max(gaps, default=0.0), 2),
            'mirror': {'versions_run': len(set(observer.drone_ran) - self.drone_ran_before),
                       'violations': observer.mirror_violations()},
            'ground_version': observer.ground_latest[0],
            **extra,
        }
        print(json.dumps(report, indent=1))
        (system.folder / f'{self.name}.json').write_text(json.dumps(report, indent=1))
        logs = system.children.logs()
        assert not report['mirror']['violations'], (report, logs)
        assert report['max_mask_gap_s'] <= MAX_MASK_GAP_S, report
        for counts in (frames, total):
            assert counts['in_flight'] == 0, report
            assert counts['masks_out'] == counts['inferred'] > 0, report
        assert recovery <= RECOVERY_S, (report, logs)
        return report


def refused(report, what='patches') -> int:
    """Return how many patches (or snapshots) the drone refused for their content."""
    return sum(n for k, n in report[what].items()
               if k.startswith(('rejected', 'needs_snapshot')) and k != 'needs_snapshot:gap')


def version(event) -> int:
    return int(event['msg'].split('->')[1])


# -- downlink: lost, duplicated, reordered, delayed --------------------------------------------

# The seeds (here and below) fault the first message of each link named: short cases.
@pytest.mark.parametrize('p, seed', [(0.1, 218), (0.3, 141), (0.5, 1445)])
def test_lost_patches_cost_a_snapshot_never_a_wrong_model(system, p, seed):
    drop = {'fault': 'drop', 'p': p}
    case = Case(system, f'loss{round(100 * p)}', {'seed': seed, 'patch': drop, 'frames': drop})
    report = case.finish(case.run_plan(patch=4, frames=4))
    # A lost patch shows as a gap when the next one arrives: the drone asks for a snapshot.
    assert report['snapshots'].get('applied:snapshot', 0) >= 1, report
    assert report['snapshot_requests'] >= 1 and refused(report) == 0, report
    # A lost batch shows as a gap in the batch numbers: the ground counts each one.
    assert report['uplink']['batches_lost'] == len(case.faulted('frames')), report


def test_duplicated_patches_are_ignored(system):
    case = Case(system, 'duplicate', {'seed': 0, 'patch': {'fault': 'duplicate', 'p': 0.5}})
    report = case.finish(case.run_plan())
    duplicated = len(case.faulted('patch')) // 2  # each sent twice
    assert report['patches'].get('duplicate', 0) >= duplicated >= 1, report
    assert refused(report) == 0 and report['snapshot_requests'] == 0, report


def test_reordered_patches_are_held_until_the_gap_fills(system):
    case = Case(system, 'reorder', {'seed': 0, 'patch': {'fault': 'reorder', 'p': 0.5}})
    report = case.finish(case.run_plan())
    assert report['patches'].get('out_of_order', 0) >= 1 and refused(report) == 0, report


def test_patches_delayed_past_the_next_are_ignored_as_stale(system):
    case = Case(system, 'delay', {'seed': 0, 'patch': {'fault': 'delay', 'p': 0.5,
                                                        'delay_s': 1.5 * T_UPDATE}})
    report = case.finish(case.run_plan())
    events = case.events('patch')
    overtaken = [e for i, e in enumerate(events) if e['fate'] == 'released'
                 and any(version(f) > version(e) for f in events[:i] if f['fate'] == 'pass')]
    assert overtaken, events
    # By the time it arrives the drone is past it (the gap it left was filled by a snapshot).
    assert report['patches'].get('duplicate', 0) >= 1 and refused(report) == 0, report


# -- bytes damaged in flight, both ways --------------------------------------------------------

@pytest.mark.parametrize('fault', ['flip', 'truncate', 'cut'])
def test_damaged_messages_are_refused_with_a_reason(system, fault):
    plan = {'seed': 46, 'patch': {'fault': fault, 'p': 0.5}, 'frames': {'fault': fault, 'p': 0.3}}
    if fault != 'cut':
        # Every snapshot damaged, four at least: the drone's request back-off grows to 8 s
        # (0.5, 1, 2, 4...), and must not delay its recovery once the link heals.
        plan['snapshot'] = {'fault': fault}
    case = Case(system, fault, plan)
    report = case.finish(case.run_plan(patch=2, snapshot=4, frames=2))
    uplink, damaged = report['uplink'], len(case.faulted('frames'))
    if fault == 'cut':
        # The middleware cannot deserialise a cut message and drops it: a loss on both links.
        assert refused(report) == 0, report
        assert uplink.get('decode_errors', 0) == 0 and uplink['batches_lost'] == damaged, report
        return
    # Damaged patches and snapshots never verify. (One whose damage left the model intact,
    # e.g. a flipped bit the decoder ignores, would be harmless: the mirror check holds.)
    assert 1 <= refused(report) <= len(case.faulted('patch')), report
    assert 1 <= refused(report, 'snapshots') <= len(case.faulted('snapshot')), report
    # The ground refuses every damaged batch (its CRC) with a counted error, and loses none.
    assert uplink['decode_errors'] == damaged and 'batches_lost' not in uplink, report


# -- restarts ----------------------------------------------------------------------------------

def running(report_values) -> tuple:
    return number(report_values, 'verified_version'), report_values['verified_digest']


def test_ground_killed_and_restarted(system):
    observer = system.observer
    case = Case(system, 'ground_restart')
    last_good = running(observer.drone)
    system.children.kill('ams_ground')
    killed = time.monotonic()
    system.spin(T_UPDATE)  # the drone alone for an update period, at least
    system.start('ground')
    fault_end = system.up_at('ground')
    # Meanwhile the drone ran its last good model.
    alone = [running(v) for t, v, _ in observer.reports if t > killed]
    assert alone and set(alone) == {last_good}, alone
    report = case.finish(fault_end)
    # The new ground starts over from its template and sends it: the drone takes it.
    assert report['snapshots'].get('applied:snapshot', 0) >= 1, report
    wait_for_next_patch(system)


def test_drone_killed_and_restarted(system):
    case = Case(system, 'drone_restart')
    last_words = kill_drone(system)
    system.start('drone')
    report = case.finish(system.up_at('drone'), killed_drone=last_words)
    # The ground saw the restart in the drone's status and sent its model: the drone did not
    # have to wait for the next patch (an update period and a phase away) to find the gap.
    # A patch already on its way may still reach the new drone first and make it ask too.
    ground_log = system.folder / f"ground_{system.starts['ground']}.log"
    assert "'drone' restarted: sending its model" in ground_log.read_text(), report
    assert report['snapshots'].get('applied:snapshot', 0) >= 1, report
    assert report['snapshot_requests'] <= 1, report
    wait_for_next_patch(system)


def test_both_killed_and_restarted(system):
    case = Case(system, 'both_restart')
    # The relay stands for the link. As a second writer it would keep the dead ground's
    # latched snapshot (the ground's own copy dies with it), so it restarts too.
    last_words = kill_drone(system)
    for name in ('ams_ground', 'relay'):
        system.children.kill(name)
    for name in ('relay', 'ground', 'drone'):
        system.start(name)
    case.finish(system.wait_until_up(), killed_drone=last_words)
    wait_for_next_patch(system)


def kill_drone(system) -> dict:
    """Kill the drone mid-flight; return its frame accounting, drained just before."""
    # Drained, so that its last report and its masks agree (two topics, no common order).
    last_words = system.drain()
    system.children.kill('ams_drone')
    assert last_words['masks_out'] == last_words['inferred'] > 0, last_words
    return last_words


def wait_for_next_patch(system) -> None:
    """Wait until a patch trained after the restart runs on the drone: the loop works again."""
    reports, after = system.observer.reports, system.observer.ground_latest[0]
    seen = len(reports)
    system.wait(lambda: any(in_sync and number(v, 'verified_version') > after
                            for _, v, in_sync in reports[seen:]),
                'no patch reached the drone after the restart')
