"""A rogue publisher on the drone's DDS domain: forged model patches and snapshots.

Run as a separate process: `python rogue_publisher.py NAMESPACE`. It does what an attacker
without the shared key can do on an unprotected DDS graph: it reads the ground's latched
snapshot off the wire (the model, its version, its digest) and the drone's status (the active
version), then forges updates that pass every check but the link tag: the right client id and
model id, base_version = the drone's active version, and a digest that matches the forged
vector; unsigned, or signed with a key of its own. Once it has all that it prints
``ready v<version>``; then each line read on stdin names one attack (ATTACKS), which it
publishes before printing ``sent <attack>``. It exits when its standard input closes, so it
never outlives the test that started it.
"""

from __future__ import annotations

import dataclasses
import sys
import time

import numpy as np

from ams_ros.model.manifest import vector_digest
from ams_ros.model.onnx_params import InitializerWriter
from ams_ros.wire.model_version import GroundMirror, PatchPayload
from ams_ros.wire.snapshot import SnapshotPayload, open_snapshot

ROGUE_KEY = b'a key of the right length, not the shared one'
# How far ahead of the drone the version-jump patch claims to be.
VERSION_JUMP = 5


def malicious_vector(vector: np.ndarray) -> np.ndarray:
    """Return the model with its first parameters zeroed (any change the drone must not run)."""
    forged = vector.copy()
    forged[:4096] = 0.0
    return forged


def forge_patch(snapshot: SnapshotPayload, base_version: int) -> PatchPayload:
    """Return a patch from base_version to the malicious vector."""
    vector = open_snapshot(snapshot).vector
    mirror = GroundMirror(snapshot.client_id, snapshot.model_id, base_version, vector)
    forged = malicious_vector(vector)
    changed = np.flatnonzero(forged != vector)
    return mirror.make_patch(changed, forged[changed])


def forge_snapshot(snapshot: SnapshotPayload, version: int) -> SnapshotPayload:
    """Return a snapshot of the malicious model at version."""
    opened = open_snapshot(snapshot)
    forged = malicious_vector(opened.vector)
    writer = InitializerWriter(bytes(snapshot.model_data), opened.manifest)
    return dataclasses.replace(snapshot, version=version, model_data=writer.write(forged),
                               digest=vector_digest(forged))


def attacks(snapshot: SnapshotPayload, active: int) -> dict:
    """Return each attack's name -> ('patch' or 'snapshot', forged payload, signing key)."""
    return {
        'unsigned-patch': ('patch', forge_patch(snapshot, active), None),
        'wrong-key-patch': ('patch', forge_patch(snapshot, active), ROGUE_KEY),
        # Well formed (version = base + 1) but far ahead: unauthenticated, the drone would hold
        # it and ask the ground for a snapshot to fill the gap.
        'version-jump-patch': ('patch', forge_patch(snapshot, active + VERSION_JUMP),
                               ROGUE_KEY),
        'unsigned-snapshot': ('snapshot', forge_snapshot(snapshot, active + 1), None),
        'wrong-key-snapshot': ('snapshot', forge_snapshot(snapshot, active + 1), ROGUE_KEY),
    }


def to_message(kind: str, payload, key: bytes | None):
    """Return the ams_msgs message of a forged payload, link-signed with key (or unsigned)."""
    from ams_ros.ros import conversions as conv
    from ams_ros.ros.link_auth import LinkSigner

    signer = LinkSigner(key) if key else None
    build = conv.patch_to_msg if kind == 'patch' else conv.snapshot_to_msg
    return build(payload, signer=signer)


def main(namespace: str) -> int:
    import rclpy

    from ams_msgs.msg import EdgeStatus, ModelPatch, ModelSnapshot
    from ams_ros.ros import conversions as conv
    from ams_ros.ros.qos import LATCHED, RELIABLE

    rclpy.init()
    node = rclpy.create_node('ams_rogue')
    received = {'snapshot': None, 'status': None}
    listen = [node.create_subscription(ModelSnapshot, f'{namespace}/ams/snapshot',
                                       lambda m: received.update(snapshot=m), LATCHED),
              node.create_subscription(EdgeStatus, f'{namespace}/ams/status',
                                       lambda m: received.update(status=m), RELIABLE)]

    def drone_runs_the_snapshot():
        snapshot, status = received['snapshot'], received['status']
        return (snapshot is not None and status is not None
                and (status.model_id, status.active_version) == (snapshot.model_id,
                                                                 snapshot.version))

    def spin_until(predicate, what):
        deadline = time.monotonic() + 60.0
        while not predicate():
            if time.monotonic() > deadline:
                raise SystemExit(f'rogue: timed out waiting for {what}')
            rclpy.spin_once(node, timeout_sec=0.05)

    spin_until(drone_runs_the_snapshot, "the ground's snapshot and the drone running it")
    snapshot = conv.snapshot_from_msg(received['snapshot'])
    for subscription in listen:  # so the publishers below count only the drone's subscriptions
        node.destroy_subscription(subscription)
    forged = attacks(snapshot, snapshot.version)
    publishers = {'patch': node.create_publisher(ModelPatch, f'{namespace}/ams/patch', RELIABLE),
                  'snapshot': node.create_publisher(ModelSnapshot, f'{namespace}/ams/snapshot',
                                                    LATCHED)}
    spin_until(lambda: all(p.get_subscription_count() for p in publishers.values()),
               "the drone's patch and snapshot subscriptions")
    print(f'ready v{snapshot.version}', flush=True)
    for line in sys.stdin:
        kind, payload, key = forged[line.strip()]
        publishers[kind].publish(to_message(kind, payload, key))
        print(f'sent {line.strip()}', flush=True)
    node.destroy_node()
    rclpy.try_shutdown()
    return 0


if __name__ == '__main__':
    sys.exit(main(sys.argv[1]))
