"""Authenticity over real Fast DDS: a rogue publisher cannot make a keyed drone run its model.

Processes: the ground and drone 'a1' share a key; the ground sends the drone its first
snapshot. A rogue process on the same DDS domain (test/support/rogue_publisher.py) reads that
snapshot off the wire and forges patches and snapshots that are valid in every respect but the
link tag. The drone must reject each with its precise reason, keep running its verified model, and
still apply the ground's later patches.
"""

import os
import select
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

rclpy = pytest.importorskip('rclpy')
from diagnostic_msgs.msg import DiagnosticArray  # noqa: E402
from rclpy.qos import qos_profile_sensor_data  # noqa: E402
from sensor_msgs.msg import Image  # noqa: E402
from support.processes import spin_until  # noqa: E402
from support.rogue_publisher import VERSION_JUMP, attacks, to_message  # noqa: E402
from test_nodes import (  # noqa: E402
    KEY,
    RELIABLE,
    camera_frame,
    drone_diagnostics,
    logs,
    observed,
    params,
    publish_until_masked,
    start,
    start_keyed_ground,
    template,  # noqa: F401 - a fixture
)

import ams_msgs.msg as M  # noqa: E402
from ams_ros.drone.agent import DroneAgent  # noqa: E402
from ams_ros.ground.drone_session import DroneSession, GroundConfig  # noqa: E402
from ams_ros.ground.trainer import TrainerConfig  # noqa: E402
from ams_ros.ros import conversions as conv  # noqa: E402
from ams_ros.ros.link_auth import LinkVerifier  # noqa: E402
from ams_ros.wire.model_version import APPLIED, OUT_OF_ORDER  # noqa: E402
from ams_ros.wire.snapshot import open_snapshot  # noqa: E402

ROGUE = Path(__file__).parent / 'support' / 'rogue_publisher.py'


def refused(kind, version, reason):
    """Return the counter and the last_error start of a forgery the link verifier refuses."""
    what = (f'patch {version}->{version + 1}' if kind == 'patch' else f'snapshot v{version}')
    sender = 'ModelPatch' if kind == 'patch' else 'ModelSnapshot'
    return (f'bad_{kind}.{reason}',
            f"{what} refused: {reason}: {sender} from 'ground', counter ")


# Each attack, the diagnostics counter that must count it, and the start of the drone's
# last_error after it (the rogue's counter follows).
EXPECTED = {
    'unsigned-patch': refused('patch', 1, 'unsigned'),
    'wrong-key-patch': refused('patch', 1, 'bad-signature'),
    'version-jump-patch': refused('patch', 1 + VERSION_JUMP, 'bad-signature'),
    'unsigned-snapshot': refused('snapshot', 2, 'unsigned'),
    'wrong-key-snapshot': refused('snapshot', 2, 'bad-signature'),
}


def offer(agent, kind, payload):
    return agent.offer_patch(payload) if kind == 'patch' else agent.load_snapshot(payload)


def read(kind, msg, verifier):
    return (conv.patch_from_msg if kind == 'patch' else conv.snapshot_from_msg)(
        msg, verifier=verifier)


def test_the_forgeries_differ_from_genuine_updates_only_in_their_tag(template):  # noqa: F811
    """Each forgery is refused for its tag alone: signed with the shared key, it would be run."""
    genuine = DroneSession('a1', template, None, GroundConfig(
        trainer=TrainerConfig(iterations=1, batch_size=1, channels_last=False))).snapshot()
    original = open_snapshot(genuine).vector
    forged = attacks(genuine, genuine.version)
    assert set(forged) == set(EXPECTED)
    for name, (kind, payload, rogue_key) in forged.items():
        with pytest.raises(conv.MessageError) as refusal:
            read(kind, to_message(kind, payload, rogue_key), LinkVerifier(KEY))
        assert f'bad_{kind}.{refusal.value.reason}' == EXPECTED[name][0]
        agent = DroneAgent()
        assert agent.load_snapshot(genuine).kind == APPLIED
        outcome = offer(agent, kind, read(kind, to_message(kind, payload, KEY),
                                          LinkVerifier(KEY)))
        if name == 'version-jump-patch':
            assert outcome.kind == OUT_OF_ORDER  # held, and the drone would ask for a snapshot
        else:
            assert outcome.kind == APPLIED, (name, outcome)
            assert agent.version == genuine.version + 1
            assert not np.array_equal(agent.state.vector, original)
        agent.close()


def start_rogue(tmp_path, namespace):
    """Start the rogue: commands on its stdin, its 'ready' line on its stdout."""
    log = open(tmp_path / 'rogue.log', 'w')  # noqa: SIM115 - the child owns it
    process = subprocess.Popen(
        [sys.executable, str(ROGUE), namespace], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
        stderr=log, bufsize=0, env={**os.environ, 'PYTHONPATH': os.pathsep.join(sys.path)})
    log.close()
    process.log_path = tmp_path / 'rogue.log'
    return process


def read_line(process, timeout):
    """Return the child's next line of output, or '' if none comes within timeout seconds."""
    ready, _, _ = select.select([process.stdout], [], [], timeout)
    return process.stdout.readline().decode() if ready else ''


@pytest.fixture(scope='module')
def keyed_pair(tmp_path_factory):
    """Start the ground, drone a1 (both keyed) and the rogue together, to overlap start-up."""
    tmp_path = tmp_path_factory.mktemp('authenticity')
    key = tmp_path / 'ams.key'
    key.write_bytes(KEY + b'\n')
    processes = {
        'ground': start_keyed_ground(tmp_path, key, 'a1', discover=False),
        'a1': start('ams_ros.ros.drone_node', tmp_path, 'a1', '-r', '__ns:=/a1', *params(
            status_period=0.5, uplink__preset='ultrafast', uplink__bitrate_kbps=400.0,
            auth_key_file=key)),
        'rogue': start_rogue(tmp_path, '/a1'),
    }
    yield from observed(processes, 'ams_authenticity_test')


def test_a_rogue_publisher_cannot_make_the_drone_run_its_model(keyed_pair):
    node, processes = keyed_pair
    status, diagnostics, masks = [], [], []
    node.create_subscription(M.EdgeStatus, '/a1/ams/status', status.append, RELIABLE)
    node.create_subscription(DiagnosticArray, '/diagnostics', diagnostics.append, 10)
    node.create_subscription(Image, '/a1/ams_drone/mask', masks.append, RELIABLE)
    camera = node.create_publisher(Image, '/a1/camera/image_raw', qos_profile_sensor_data)

    def values():
        return drone_diagnostics(diagnostics, 'a1') or {}

    rogue = processes['rogue']
    # The rogue has the ground's snapshot and saw the drone run it (v1).
    assert read_line(rogue, 90) == 'ready v1\n', logs(processes)
    assert spin_until(node, lambda: status and values().get('verified_version') == '1', 30), \
        logs(processes)
    requests_before = values()['snapshot_requests']

    rejections = Counter()
    for attack, (counter, error) in EXPECTED.items():
        rejections[counter] += 1
        rogue.stdin.write(f'{attack}\n'.encode())

        def reported(counter=counter, error=error):
            return (int(values().get(counter, 0)) == rejections[counter]
                    and values()['last_error'].startswith(error)
                    and status[-1].last_error.startswith(error))

        assert spin_until(node, reported, 20), (attack, values(), logs(processes))
        assert (values()['verified_version'], values()['active_version']) == ('1', '1')
        assert status[-1].active_version == 1
        if attack == 'version-jump-patch':
            # Not held as a future patch, so no snapshot request to fill the gap.
            assert values()['snapshot_requests'] == requests_before
    assert (status[-1].patches_rejected, status[-1].patches_applied) == (0, 0)
    assert int(values()['errors']) >= 5
    rogue.stdin.close()
    assert rogue.wait(timeout=15) == 0, logs(processes)

    # Still running the verified model, and the ground's own patches still apply.
    assert publish_until_masked(node, camera, masks, camera_frame(0.0)), logs(processes)
    t = 0.5
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and status[-1].active_version < 2:
        camera.publish(camera_frame(t))
        t += 0.5
        spin_until(node, lambda: False, 0.1)
    assert status[-1].active_version >= 2, (status[-1], logs(processes))
    assert status[-1].patches_applied >= 1 and status[-1].patches_rejected == 0
    assert processes['ground'].poll() is None and processes['a1'].poll() is None, \
        logs(processes)
