"""The drone's rules for patches, snapshots and snapshot requests (ModelUpdates), without ROS."""

import dataclasses

import numpy as np
import pytest
from test_drone_agent import SPEC, camera, drone_config, ground, template  # noqa: F401

from ams_ros.drone.agent import DroneAgent
from ams_ros.drone.model_updates import ModelUpdates
from ams_ros.drone.snapshot_requester import SnapshotRequester
from ams_ros.ground.drone_session import INITIAL_VERSION
from ams_ros.wire.model_version import APPLIED, NEEDS_SNAPSHOT, OUT_OF_ORDER


def test_requests_back_off_until_answered():
    requester = SnapshotRequester(interval_s=2.0, max_interval_s=8.0)
    assert requester.due(0.0) is None  # nothing wanted
    requester.want('gap')
    sent = [t for t in np.arange(0.0, 40.0, 0.5) if requester.due(t)]
    assert sent == [0.0, 2.0, 6.0, 14.0, 22.0, 30.0, 38.0]  # 2, 4, 8, then capped at 8
    requester.want('digest', at_once=True)  # re-armed: due now, the back-off goes on
    assert requester.due(38.5) == 'digest' and requester.due(39.0) is None
    requester.answered()
    assert requester.due(100.0) is None and requester.sent == 8
    requester.want('startup')
    assert requester.due(100.0) == 'startup' and requester.due(101.0) is None
    assert requester.due(102.0) == 'startup'  # a new back-off starts from interval_s


@pytest.mark.parametrize('bad', [0.0, -1.0, float('nan'), float('inf')])
def test_requester_refuses_a_bad_interval(bad):
    with pytest.raises(ValueError):
        SnapshotRequester(interval_s=bad)


def trained(template, n):  # noqa: F811
    """Return (session, patches): n phases of a ground session, each patch on the previous."""
    session = ground(template)
    rng = np.random.default_rng(0)
    patches = []
    for stamp, frame in camera(2 * n, rng):
        session.add_frames(frame[None, :32, :64], [stamp])
        if len(session.buffer) % 2 == 0:
            patches.append(session.train_phase().patch)
    return session, patches


def running_drone(template):  # noqa: F811
    drone = DroneAgent(drone_config())
    assert drone.load_model_file(template.onnx_bytes, INITIAL_VERSION).kind == APPLIED
    return ModelUpdates(drone, SnapshotRequester(interval_s=2.0))


def test_applied_patches_answer_a_pending_request(template):  # noqa: F811
    _, patches = trained(template, 2)
    updates = running_drone(template)
    updates.requester.want('startup')
    delivery = updates.patch(patches[0])
    assert delivery.changed and delivery.counts == {'patch.applied': 1, 'patches_applied': 1}
    assert updates.requester.reason == '' and updates.request_due(0.0) is None
    updates.agent.close()


def test_a_gap_asks_for_a_snapshot_at_once(template):  # noqa: F811
    _, patches = trained(template, 3)
    updates = running_drone(template)
    updates.requester.want('startup')
    assert updates.request_due(0.0) == 'startup'  # the back-off now waits 2 s
    delivery = updates.patch(patches[1])  # its base (v2) never came
    assert delivery.outcome.kind == OUT_OF_ORDER and not delivery.changed
    assert delivery.counts == {'patch.out_of_order': 1} and not delivery.warning
    assert updates.request_due(0.1) == 'gap'  # re-armed: the downlink works again
    updates.agent.close()


def test_a_corrupt_patch_is_refused_and_asks_for_a_snapshot(template):  # noqa: F811
    _, patches = trained(template, 1)
    updates = running_drone(template)
    bad = dataclasses.replace(patches[0], digest=bytes(32))
    delivery = updates.patch(bad)
    assert delivery.outcome.kind == NEEDS_SNAPSHOT and not delivery.changed
    assert delivery.counts['patches_rejected'] == 1 and 'digest' in delivery.warning
    assert updates.request_due(0.0) == delivery.outcome.reason
    assert updates.agent.version == INITIAL_VERSION
    updates.agent.close()


def test_an_unasked_snapshot_is_unconfirmed_until_a_patch_builds_on_it(template):  # noqa: F811
    session, patches = trained(template, 2)
    updates = running_drone(template)
    snapshot = session.snapshot()  # v3, the drone runs v1 and asked for nothing
    delivery = updates.snapshot(snapshot)
    assert delivery.changed and 'not asked for' in delivery.info
    assert updates.unconfirmed_version == snapshot.version
    session.add_frames(next(camera(1, np.random.default_rng(5)))[1][None, :32, :64], [99.0])
    assert updates.patch(session.train_phase().patch).changed
    assert updates.unconfirmed_version is None
    updates.agent.close()


def test_an_old_snapshot_is_stale_and_a_forged_one_asks_for_nothing(template):  # noqa: F811
    session, patches = trained(template, 1)
    old = session.snapshot()
    updates = running_drone(template)
    assert updates.patch(patches[0]).changed
    stale = updates.snapshot(dataclasses.replace(old, version=INITIAL_VERSION))
    assert stale.counts.get('snapshots_stale') == 1 and not stale.changed
    forged = updates.refused('snapshot', 'bad-signature', 'snapshot v9 refused: bad tag')
    assert forged.error_key == 'bad_snapshot.bad-signature'
    assert forged.counts == {'snapshot.rejected:bad-signature': 1}
    assert updates.request_due(0.0) is None  # a forgery is no sign that the model is lost
    broken = updates.refused('snapshot', 'bad-field', 'snapshot v9 refused: bad field')
    assert broken.error_key == 'bad_snapshot.bad-field'
    assert updates.request_due(0.0) == 'snapshot-bad-field'
    updates.agent.close()


def test_a_drone_without_a_model_asks_at_start_up():
    updates = ModelUpdates(DroneAgent(drone_config()))
    updates.ask_for_model()
    assert updates.request_due(0.0) == 'startup'
