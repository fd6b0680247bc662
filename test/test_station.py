"""The ground station's decisions (GroundStation, EventQueue) on a simulated clock, without ROS."""

import dataclasses

import numpy as np
import pytest
from test_ground_core import ChannelTeacher, fast_config, random_frames, template  # noqa: F401

from ams_ros.ground.client_registry import ClientRegistry, ownership, stable_shard
from ams_ros.ground.drone_session import INITIAL_VERSION
from ams_ros.ground.event_queue import BATCH, CONTACT, SNAPSHOT, STATUS, DroneEvent, EventQueue
from ams_ros.ground.phase_scheduler import PhaseScheduler
from ams_ros.ground.station import (
    SAMPLING_RESEND_S,
    DroneReport,
    GroundStation,
    StationConfig,
)
from ams_ros.wire.frame_codec import CodecSettings, encode_frames
from ams_ros.wire.uplink_batch import UplinkBatch


class Recorder:
    """A Downlink that keeps what the station sends, in order."""

    def __init__(self):
        self.sent = []

    def patch(self, client_id, payload):
        self.sent.append(('patch', client_id, payload))

    def snapshot(self, client_id, payload):
        self.sent.append(('snapshot', client_id, payload))

    def sampling(self, client_id, rate, period):
        self.sent.append(('sampling', client_id, (rate, period)))

    def take(self, kind=None):
        taken = [s for s in self.sent if kind is None or s[0] == kind]
        self.sent = [s for s in self.sent if s not in taken]
        return taken


def Status(model_id, active_version, active_digest=b'', frames_received=0):  # noqa: N802
    """Return drone 'a''s report: 5 fps, sampling as the ground's defaults."""
    return DroneReport('a', model_id, active_version, active_digest, frames_received, 5.0,
                       1.0, 10.0)


def make_station(template, **config):  # noqa: F811
    scheduler = PhaseScheduler(template, lambda _client_id: ChannelTeacher(), fast_config())
    downlink = Recorder()
    station = GroundStation(scheduler, ClientRegistry(max_clients=4, idle_timeout_s=60.0),
                            downlink, StationConfig(**config))
    return station, downlink


def frame_batch(client_id, seq, stamps, rng, data=None):
    frames = random_frames(rng, len(stamps))
    data = data if data is not None else encode_frames(frames, CodecSettings(codec='png'))
    return UplinkBatch(client_id, seq, 'png', 64, 32, tuple(stamps), data, 1.0, 10.0)


def deliver(station, client_id, kind, data, now):
    assert station.admit(f'/{client_id}', client_id, now)
    station.handle(DroneEvent(kind, client_id, data), now)


def test_each_patch_goes_to_the_drone_it_was_trained_for(template):  # noqa: F811
    station, downlink = make_station(template)
    rng = np.random.default_rng(0)
    for client_id in ('a', 'b'):
        deliver(station, client_id, CONTACT, None, 0.0)
    assert [(k, c) for k, c, _ in downlink.take()] == [('sampling', 'a'), ('sampling', 'b')]
    deliver(station, 'a', BATCH, frame_batch('a', 1, [0.0, 1.0], rng), 1.0)
    deliver(station, 'b', BATCH, frame_batch('b', 1, [0.0, 1.0], rng), 1.0)
    trained = [station.train_next(2.0)[0] for _ in range(2)]
    assert station.train_next(3.0) is None  # nobody has new frames
    patches = downlink.take('patch')
    assert [c for _, c, _ in patches] == trained and sorted(trained) == ['a', 'b']
    for _, client_id, patch in patches:
        assert patch.client_id == client_id
        assert patch.version == station.scheduler.session(client_id).mirror.version
    assert station.links['a'].phases == station.links['b'].phases == 1


def test_bad_batches_are_refused_and_counted(template):  # noqa: F811
    station, downlink = make_station(template, max_seq_gap=10)
    rng = np.random.default_rng(1)
    deliver(station, 'a', BATCH, frame_batch('a', 1, [0.0], rng, data=b'garbage'), 0.0)
    assert 'a' not in station.links  # undecodable bytes from a stranger make no state
    assert [k for k in station.counts if k.startswith('decode.')] == ['decode.malformed']
    deliver(station, 'a', BATCH, frame_batch('a', 1, [0.0], rng), 0.0)
    deliver(station, 'a', BATCH, frame_batch('a', 1, [1.0], rng), 1.0)  # seq again
    deliver(station, 'a', BATCH, frame_batch('a', 2, [1e9], rng), 2.0)  # off the clock
    assert station.counts['seq.duplicate'] == 1 and station.counts['stamps.stamp-jump'] == 1
    assert station.links['a'].batches == 1 and station.links['a'].errors['seq.duplicate'] == 1
    assert station.counts['errors'] == 3 and downlink.take('patch') == []


def test_diagnostics_have_one_entry_for_the_station_and_one_per_drone(template):  # noqa: F811
    station, _ = make_station(template, max_seq_gap=10)
    preparing = station.diagnostics('ams_ground', 'pretraining the student', {'shard': '0/1'},
                                    {'batches_dropped': 2})
    assert [e[:3] for e in preparing] == [('ams_ground', 'warn', 'pretraining the student')]
    assert preparing[0][4]['student'] == 'pretraining the student'
    rng = np.random.default_rng(2)
    deliver(station, 'a', BATCH, frame_batch('a', 1, [0.0], rng), 0.0)
    deliver(station, 'a', BATCH, frame_batch('a', 1, [1.0], rng), 1.0)  # seq again: an error
    node, drone = station.diagnostics('ams_ground', '', {'shard': '0/1'},
                                      {'batches_dropped': 2})
    assert node[1] == 'warn' and node[2].endswith(f'last error: {station.last_error}')
    assert node[4]['drones'] == 1 and node[4]['shard'] == '0/1'
    assert node[4]['batches_dropped'] == 2 and node[4]['seq.duplicate'] == 1
    assert drone[0] == 'ams_ground: a' and drone[3] == 'a'
    assert drone[4]['errors.seq.duplicate'] == 1 and drone[4]['batches'] == 1


def test_a_drone_without_the_model_gets_a_snapshot_within_its_budget(template):  # noqa: F811
    station, downlink = make_station(template, snapshot_burst=1.0, snapshot_backoff_min_s=10.0,
                                     snapshot_kbps=1e6)
    model_id = template.model_id
    deliver(station, 'a', STATUS, Status(model_id='', active_version=0), 0.0)
    [(_, _, snapshot)] = downlink.take('snapshot')
    assert snapshot.version == INITIAL_VERSION and station.links['a'].snapshots == 1
    deliver(station, 'a', SNAPSHOT, 'startup', 1.0)  # unconfirmed: the back-off holds it
    assert downlink.take('snapshot') == [] and station.links['a'].snapshot_wanted
    station.send_owed_snapshots(11.0)
    assert len(downlink.take('snapshot')) == 1
    deliver(station, 'a', STATUS, Status(model_id, INITIAL_VERSION,
                                         station.scheduler.session('a').mirror.digest), 12.0)
    assert not station.links['a'].snapshot_wanted and downlink.take('snapshot') == []


def test_a_drone_ahead_of_the_mirror_is_resynced_above_it(template):  # noqa: F811
    station, downlink = make_station(template)
    deliver(station, 'a', CONTACT, None, 0.0)
    mirror = station.scheduler.session('a').mirror
    deliver(station, 'a', STATUS, Status(template.model_id, 7, b'\x01' * 32,
                                         frames_received=10), 1.0)
    [(_, _, snapshot)] = downlink.take('snapshot')
    assert snapshot.version == mirror.version == 8 and station.counts['resyncs'] == 1


def test_a_restarted_drone_gets_its_model_and_drifted_sampling_is_resent(template):  # noqa: F811
    station, downlink = make_station(template)
    deliver(station, 'a', CONTACT, None, 0.0)
    digest = station.scheduler.session('a').mirror.digest
    running = Status(template.model_id, INITIAL_VERSION, digest, frames_received=50)
    deliver(station, 'a', STATUS, running, 0.5)
    downlink.take()
    deliver(station, 'a', STATUS, dataclasses.replace(running, frames_received=3), 1.0)
    assert len(downlink.take('snapshot')) == 1  # fewer frames than before: a new process
    drifted = dataclasses.replace(running, frames_received=60, sampling_rate=0.5)
    deliver(station, 'a', STATUS, drifted, 1.0 + SAMPLING_RESEND_S / 2)
    assert downlink.take('sampling') == []  # just sent: give it time to land
    deliver(station, 'a', STATUS, drifted, 1.0 + 2 * SAMPLING_RESEND_S)
    assert [d for _, _, d in downlink.take('sampling')] == [(1.0, 10.0)]


def test_silent_drones_are_dropped(template):  # noqa: F811
    station, _ = make_station(template)
    deliver(station, 'a', CONTACT, None, 0.0)
    deliver(station, 'b', CONTACT, None, 50.0)
    station.run_round([], lambda: 70.0)
    assert sorted(station.links) == ['b'] and station.scheduler.client_ids == ['b']


def test_the_event_queue_is_bounded_and_serves_requests_first():
    queue = EventQueue(max_batches=2)
    for seq in range(4):
        queue.put(DroneEvent(BATCH, 'a', seq))
    queue.put(DroneEvent(STATUS, 'a', 1))
    queue.put(DroneEvent(STATUS, 'a', 2))  # replaces the first: only the newest counts
    queue.put(DroneEvent(SNAPSHOT, 'a', 'gap'))
    events = queue.take(0.0, lambda: False)
    assert [(e.kind, e.data) for e in events] == [
        (STATUS, 2), (SNAPSHOT, 'gap'), (BATCH, 2), (BATCH, 3)]
    assert queue.batches_dropped == 2
    queue.close()
    assert queue.take(0.0, lambda: False) is None


def test_ownership_follows_the_filter_and_the_shard():
    owns = ownership(['drone1', 'drone2'], stable_shard('drone1', 3), 3)
    assert owns('drone1') and not owns('drone3')
    assert ownership([], 0, 1)('anything')
    with pytest.raises(ValueError):
        ownership([], 3, 3)
