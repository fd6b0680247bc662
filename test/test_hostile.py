"""Hostile and extreme input against the running nodes, without and with the shared key.

The real ground and drone (/drone1) run as processes over Fast DDS; this process is the camera
(the synthetic flight at 5 frames/s) and the observer; a third process
(support/hostile_publisher.py) publishes each probe on the nodes' own topics. The drone starts
without a model and asks the ground for it, so the forger can read the model off the wire.

Each mode runs the probes in groups (one test each, in file order) and asserts the exact
reason each was refused under; the last test checks what holds throughout: both nodes alive,
masks flowing, no model the ground did not produce still active one T_update after it came
(unkeyed) or ever (keyed), snapshot bytes within the default budget, and both nodes' memory
within 10% of what it was before the first probe, a while after the last one.

What the ground produced is read from its log, which it writes before sending any model.
"""

import json
import re
import select
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

rclpy = pytest.importorskip('rclpy')
torch = pytest.importorskip('torch')
from diagnostic_msgs.msg import DiagnosticArray  # noqa: E402
from rclpy.qos import (  # noqa: E402
    DurabilityPolicy,
    QoSProfile,
    ReliabilityPolicy,
    qos_profile_sensor_data,
)
from sensor_msgs.msg import Image  # noqa: E402
from std_msgs.msg import Header  # noqa: E402
from support.processes import Children, child_env, spin_until  # noqa: E402

from ams_msgs.msg import ModelPatch, ModelSnapshot  # noqa: E402
from ams_ros.ros.conversions import seconds_to_stamp  # noqa: E402
from ams_ros.ros.image_conversion import array_to_image  # noqa: E402
from ams_ros.world import AerialVideo  # noqa: E402

HOSTILE = Path(__file__).parent / 'support' / 'hostile_publisher.py'
ARCH, HEIGHT, WIDTH = 'deeplabv3_mbv2_small', 32, 64
SEED, START, FPS = 1003, 100.0, 5.0
T_UPDATE = 5.0
DRONE, GROUND = 'ams_drone: drone1', 'ams_ground: drone1'
RELIABLE = QoSProfile(depth=100, reliability=ReliabilityPolicy.RELIABLE)
LATCHED = QoSProfile(depth=1, reliability=ReliabilityPolicy.RELIABLE,
                     durability=DurabilityPolicy.TRANSIENT_LOCAL)
TIMEOUT = 60.0
MAX_MASK_GAP_S = 3.0
SETTLE_S = 60.0  # after the last probe, before memory is compared
# The ground's default snapshot budget (ground_node parameters snapshot_budget.*).
BUDGET_BYTES_S, BUDGET_BURST = 100.0 * 1000 / 8, 2
# What the ground logs before it sends drone1 a model: "'drone1' v<version> (<digest>): ...".
PRODUCED = re.compile(r"\[ams_ground\]: 'drone1' v(\d+) \(([0-9a-f]{64})\)")


def number(values, key):
    return int(float(values.get(key, 0)))


def rss_bytes(pid) -> int:
    for line in Path(f'/proc/{pid}/status').read_text().splitlines():
        if line.startswith('VmRSS:'):
            return int(line.split()[1]) * 1024
    raise AssertionError(f'no VmRSS for {pid}')


class Hostile:
    """The system under probe, what this process observes of it, and the forger."""

    def __init__(self, folder, node, keyed):
        self.folder, self.node, self.keyed = folder, node, keyed
        self.children = Children(folder)
        self.video = AerialVideo(SEED)
        self.frame_index = 0
        self.values = {DRONE: {}, GROUND: {}, 'ams_ground': {}}
        self.masks = []  # receive times
        self.ran = {}  # (version, digest) the drone reported verified -> first seen
        self.foreign = []  # models sent to the namespaces the forger used
        self.forger = None
        node.create_subscription(DiagnosticArray, '/diagnostics', self._on_diagnostics,
                                 RELIABLE)
        self.mask_sub = node.create_subscription(Image, '/drone1/ams_drone/mask',
                                                 lambda _m: self.masks.append(time.monotonic()),
                                                 RELIABLE)
        # The ground serves the forger's namespaces once it discovers them: whatever it ever
        # sent there reaches these (the latched snapshot even after the fact).
        self.foreign_subs = [
            sub for namespace in ('/evil1', '/evil2') for sub in (
                node.create_subscription(ModelPatch, f'{namespace}/ams/patch',
                                         self.foreign.append, RELIABLE),
                node.create_subscription(ModelSnapshot, f'{namespace}/ams/snapshot',
                                         self.foreign.append, LATCHED))]
        self.camera = node.create_publisher(Image, '/drone1/camera/image_raw',
                                            qos_profile_sensor_data)
        node.create_timer(1.0 / FPS, self._tick)

    def _tick(self) -> None:
        t = self.frame_index / FPS
        rgb, _ = self.video.render(t, HEIGHT, WIDTH)
        header = Header(stamp=seconds_to_stamp(START + t), frame_id='camera')
        self.camera.publish(array_to_image(rgb, 'rgb8', header))
        self.frame_index += 1

    def _on_diagnostics(self, msg) -> None:
        for status in msg.status:
            if status.name in self.values:
                values = {kv.key: kv.value for kv in status.values}
                self.values[status.name] = values
                if status.name == DRONE and number(values, 'verified_version'):
                    self.ran.setdefault((number(values, 'verified_version'),
                                         values['verified_digest']), time.monotonic())

    @property
    def drone(self) -> dict:
        return self.values[DRONE]

    @property
    def ground(self) -> dict:
        return self.values[GROUND]

    @property
    def overall(self) -> dict:
        return self.values['ams_ground']

    def produced(self) -> set:
        text = (self.folder / 'ground.log').read_text()
        return {(int(v), digest) for v, digest in PRODUCED.findall(text)}

    def running(self) -> tuple:
        return number(self.drone, 'verified_version'), self.drone.get('verified_digest')

    def start_node(self, name, module, namespace, params) -> None:
        path = self.folder / f'{name}.yaml'
        path.write_text(yaml.safe_dump({'/**': {'ros__parameters': params}}))
        self.children.start(name, ['-m', f'ams_ros.ros.{module}', '--ros-args', '-r',
                                   f'__ns:={namespace}', '--params-file', str(path)])

    def start(self, key_file) -> None:
        keyed = {'auth_key_file': str(key_file)} if key_file else {}
        self.start_node('ground', 'ground_node', '/', {
            'student': ARCH, 'input_height': HEIGHT, 'input_width': WIDTH, 'seed': 0,
            'device': 'cpu', 'torch_threads': 1, 'teacher.kind': 'synthetic',
            'teacher.seed': SEED, 'teacher.start_s': START, 'teacher.duration_s': 900.0,
            'trainer.iterations': 4, 'trainer.batch_size': 4, 'trainer.horizon_s': 20.0,
            'asr.initial_rate': 2.0, 'asr.rate_min': 2.0, 'asr.rate_max': 2.0,
            'atr.period_min': T_UPDATE, 'drone_namespaces': ['/drone1'],
            'discovery_period': 0.5, 'status_period': 0.5, **keyed})
        self.start_node('drone', 'drone_node', '/drone1', {
            'ort.threads': 1, 'uplink.preset': 'ultrafast', 'sampling_rate': 2.0,
            'update_period': T_UPDATE, 'status_period': 0.5,
            'snapshot_request_interval': 0.5, **keyed})
        args = ['--namespace', '/drone1', '--match-timeout', '10']
        if key_file:
            args += ['--key-file', str(key_file)]
        log = open(self.folder / 'hostile.log', 'w')  # noqa: SIM115 - the child owns it
        self.forger = subprocess.Popen(
            [sys.executable, str(HOSTILE), *args], stdin=subprocess.PIPE,
            stdout=subprocess.PIPE, stderr=log, bufsize=0, env=child_env())
        log.close()

    def line(self, timeout) -> str:
        """Return the forger's next line, spinning this node meanwhile ('' on time-out)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            ready, _, _ = select.select([self.forger.stdout], [], [], 0.0)
            if ready:
                return self.forger.stdout.readline().decode().strip()
            rclpy.spin_once(self.node, timeout_sec=0.05)
        return ''

    def after_a_patch(self) -> None:
        """Wait until the drone has just run a new patch (and the forger heard its status).

        Probes that claim a version (the drone's next) then reach it long before the ground's
        next patch does: otherwise the forger's version may be one the drone already ran.
        """
        version = number(self.drone, 'verified_version')
        self.wait(lambda: number(self.drone, 'verified_version') > version, 'no patch came')
        self.spin(1.0)

    def probe(self, name) -> float:
        """Send one probe; return when the forger reported it sent (monotonic time)."""
        self.forger.stdin.write(f'{name}\n'.encode())
        answer = self.line(30.0)
        assert answer.startswith(f'sent {name} '), (name, answer, self.logs())
        return time.monotonic()

    def wait(self, condition, what, timeout=TIMEOUT) -> None:
        if not spin_until(self.node, condition, timeout):
            print(json.dumps(self.values, indent=1, sort_keys=True))  # pytest shows it whole
            raise AssertionError(f'{what}\n{self.logs()}')

    def spin(self, seconds) -> None:
        spin_until(self.node, lambda: False, seconds)

    def rss(self) -> dict:
        return {name: rss_bytes(self.children.procs[name].pid) for name in ('ground', 'drone')}

    def alive(self) -> bool:
        return all(p.poll() is None for p in self.children.procs.values())

    def logs(self) -> str:
        return self.children.logs()


@pytest.fixture(scope='module', params=['unkeyed', 'keyed'])
def hostile(request, tmp_path_factory):
    keyed = request.param == 'keyed'
    folder = tmp_path_factory.mktemp(request.param)
    key_file = None
    if keyed:
        key_file = folder / 'ams.key'
        key_file.write_bytes(b'a shared key for the hostile-input suite\n')
    rclpy.init()
    node = rclpy.create_node('ams_hostile_test')
    system = Hostile(folder, node, keyed)
    try:
        system.start(key_file)
        assert system.line(120.0).startswith('ready v'), system.logs()
        # Warm: patches flow and the horizon buffer is full before anything is measured.
        system.wait(lambda: number(system.drone, 'patches_applied') >= 2
                    and number(system.ground, 'buffered_frames') >= 30,
                    'the loop did not start', 120.0)
        system.rss_before = system.rss()
        system.started = time.monotonic()
        yield system
    finally:
        if system.forger is not None:
            system.forger.stdin.close()
            system.forger.wait(timeout=20)
        system.children.stop_all()
        node.destroy_node()
        rclpy.try_shutdown()


def grows(system, source, key, by=1):
    """Return whether counter `key` of `source` (drone, ground, overall) grew `by` from now."""
    before = number(getattr(system, source), key)
    return lambda: number(getattr(system, source), key) >= before + by


def refused_on_link(system, source, what):
    """Return the condition of a forgery refused by the link's verifier (keyed mode)."""
    return grows(system, source, f'{what}.bad-signature')


def test_forged_models_never_stay(hostile):
    s = hostile
    checks = {
        # A patch that would make weights absurd: refused, and no snapshot asked for it.
        'huge-patch': ('drone', 'patch.rejected:out-of-range', 'bad_patch'),
        # Another model entirely, at version 2^62: refused unasked.
        'forged-snapshot-tiny': ('drone', 'snapshot.rejected:version-jump', 'bad_snapshot'),
        'nonfinite-snapshot': ('drone', 'snapshot.needs_snapshot:non-finite', 'bad_snapshot'),
        'huge-snapshot': ('drone', 'snapshot.needs_snapshot:out-of-range', 'bad_snapshot'),
    }
    for name, (source, counter, link_counter) in checks.items():
        refused = (refused_on_link(s, source, link_counter) if s.keyed
                   else grows(s, source, counter))
        requests = number(s.drone, 'snapshot_requests')
        s.after_a_patch()
        s.probe(name)
        s.wait(refused, f'{name} was not refused as {counter}')
        assert number(s.drone, 'snapshot_requests') == requests, name
        assert s.running() in s.produced(), (name, s.running())

    # The same model with other weights, one version ahead: without a key indistinguishable
    # from the ground's, so the drone may run it; the ground sees its status and resyncs.
    resyncs = number(s.ground, 'resyncs')
    s.after_a_patch()
    sent = s.probe('forged-snapshot-next')
    if s.keyed:
        s.wait(refused_on_link(s, 'drone', 'bad_snapshot'), 'the forged snapshot was taken')
    else:
        s.wait(lambda: number(s.ground, 'resyncs') > resyncs, 'the ground did not resync')
    # One T_update after the forgery went out, the drone runs the ground's model again.
    s.spin(max(0.0, sent + T_UPDATE - time.monotonic()))
    assert s.running() in s.produced(), (s.running(), s.drone)
    forged = [pair for pair, seen in s.ran.items() if pair not in s.produced()]
    assert len(forged) <= (0 if s.keyed else 1), forged


def test_hostile_frames_never_reach_training(hostile):
    s = hostile
    buffered = number(s.ground, 'buffered_frames')
    phases = number(s.ground, 'phases')
    if s.keyed:
        refused = grows(s, 'overall', 'refused.bad-signature', 2)
        s.probe('future-frames')
        s.probe('max-seq-frames')
        s.wait(refused, 'forged batches were not refused')
        assert number(s.ground, 'errors.stamps.stamp-jump') == 0
        assert number(s.ground, 'errors.seq.seq-jump') == 0
    else:
        refused = grows(s, 'ground', 'errors.stamps.stamp-jump')
        s.probe('future-frames')
        s.wait(refused, 'the far-future batch was not refused')
        lost = number(s.ground, 'batches_lost')
        refused = grows(s, 'ground', 'errors.seq.seq-jump')
        s.probe('max-seq-frames')
        s.wait(refused, 'the 2^64-1 batch was not refused')
        assert number(s.ground, 'batches_lost') <= lost + 1, s.ground
    # The horizon keeps its frames and training goes on.
    s.wait(lambda: number(s.ground, 'phases') >= phases + 2, 'training stopped')
    assert number(s.ground, 'buffered_frames') >= 0.8 * buffered, (buffered, s.ground)


def test_hostile_sampling_never_stalls_the_uplink(hostile):
    s = hostile
    rate, period = s.drone['sampling_rate'], s.drone['update_period']
    counter = 'bad_sampling.bad-signature' if s.keyed else 'bad_sampling.out-of-range'
    refused = grows(s, 'drone', counter, 3)
    for name in ('sampling-huge-rate', 'sampling-tiny-rate', 'sampling-huge-period'):
        s.probe(name)
    s.wait(refused, 'absurd sampling controls were not refused')
    assert (s.drone['sampling_rate'], s.drone['update_period']) == (rate, period)
    # Within the limits but nearly stopping the uplink: the ground sees it in the drone's
    # status and sends its own settings again, with no batch needed first.
    refused = grows(s, 'drone', counter) if s.keyed else grows(s, 'overall', 'sampling_resent')
    s.probe('sampling-stall')
    s.wait(refused, 'the stalling control was not refused, nor corrected by the ground')
    s.wait(lambda: (s.drone['sampling_rate'], s.drone['update_period']) == (rate, period),
           'the drone did not return to the ground\'s sampling')
    batches = number(s.drone, 'batches_sent')
    s.wait(lambda: number(s.drone, 'batches_sent') >= batches + 2, 'the uplink stalled')


def test_hostile_clients_are_refused(hostile):
    s = hostile
    reason = 'refused.bad-signature' if s.keyed else 'refused.wrong-namespace'
    refused = grows(s, 'overall', reason, 40)
    s.probe('ghost-status')
    s.wait(refused, 'ghost client ids were not refused')
    refused = grows(s, 'overall', reason)
    s.probe('redirect-status')
    s.wait(refused, "drone1's id on /evil2 was not refused")
    s.probe('garbage-frames-new-ns')
    # One drone served, bound to its own namespace; nothing ever sent to the forger's ones.
    s.wait(lambda: all(sub.get_publisher_count() for sub in s.foreign_subs),
           'the ground did not discover the forged namespaces')
    s.spin(2.0)
    assert number(s.overall, 'drones') == 1, s.overall
    assert s.ground['namespace'] == '/drone1', s.ground
    assert s.foreign == [], [type(m).__name__ for m in s.foreign]
    if s.keyed:
        refused = grows(s, 'overall', 'refused.replayed')
        s.probe('replay-status')
        s.wait(refused, 'a replayed status was accepted')


def test_snapshot_requests_cost_bounded_bytes(hostile):
    s = hostile
    asks = (s.folder / 'ground.log').read_text().count('asks for a snapshot')
    s.probe('malformed-patches')
    s.probe('snapshot-requests')
    s.spin(5.0)
    elapsed = time.monotonic() - s.started + 30.0  # the warm-up and start-up before it
    size = number(s.ground, 'snapshot_bytes') / max(1, number(s.ground, 'snapshots'))
    assert number(s.ground, 'snapshot_bytes') <= BUDGET_BURST * size + BUDGET_BYTES_S * elapsed, \
        s.ground
    # Thirty requests and twenty bad patches: a few log lines, not one per request.
    logged = (s.folder / 'ground.log').read_text().count('asks for a snapshot') - asks
    assert logged <= 3, logged
    if s.keyed:
        assert number(s.overall, 'refused.bad-signature') >= 30


def test_nodes_survive_with_bounded_memory(hostile):
    s = hostile
    s.spin(SETTLE_S)
    assert s.alive(), s.logs()
    gaps = [b - a for a, b in zip(s.masks, s.masks[1:], strict=False)]
    assert s.masks and max(gaps) <= MAX_MASK_GAP_S, max(gaps)
    assert time.monotonic() - s.masks[-1] < 1.0
    assert s.running() in s.produced(), s.running()
    after = s.rss()
    print({'rss_before': s.rss_before, 'rss_after': after, 'ground': s.ground})
    for name, before in s.rss_before.items():
        assert after[name] <= 1.1 * before, (name, before, after[name])
