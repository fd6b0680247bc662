"""The evaluation harness: the simulated link, the sources, and the schemes on a tiny flight."""

import json

import av
import cv2
import numpy as np
import pytest
import torch
from support.tiny_student import calibrated_template

from ams_ros import IGNORE_LABEL
from ams_ros.cli import main as ams_main
from ams_ros.drone.agent import DroneConfig
from ams_ros.evaluation.baselines import JustInTime, RemoteTracking
from ams_ros.evaluation.core import EvalContext, SchemeResult
from ams_ros.evaluation.link import Channel, ChannelConfig, Link, LinkConfig
from ams_ros.evaluation.runner import base_configs, build_parser, make_variants, resolve
from ams_ros.evaluation.schemes import CONTROL_NBYTES, Ams, NoCustomization, OneTime
from ams_ros.evaluation.sources import (
    CachedLabelTeacher,
    CachedSource,
    LabelFolderTeacher,
    SyntheticSource,
    VideoFileSource,
)
from ams_ros.ground.drone_session import GroundConfig
from ams_ros.ground.rate_control import AtrConfig
from ams_ros.ground.trainer import TrainerConfig
from ams_ros.model.student import InputSpec
from ams_ros.profiles import AMS, PAPER
from ams_ros.wire.frame_codec import CodecSettings
from ams_ros.wire.patch_codec import PAPER_FORMAT

# -- link -------------------------------------------------------------------------------------


def test_delivery_is_fifo_serialisation_plus_latency():
    channel = Channel(ChannelConfig(bandwidth_kbps=8.0, latency_s=0.5))  # 1000 bytes/s
    assert channel.send(0.0, 'a', 1000) == pytest.approx(1.5)
    # Sent while 'a' is still on the wire: waits for it, then 0.5 s of its own.
    assert channel.send(0.2, 'b', 500) == pytest.approx(2.0)
    assert channel.send(5.0, 'c', 0) == pytest.approx(5.5)
    assert channel.receive(1.49) == []
    assert channel.receive(1.5) == [(pytest.approx(1.5), 'a')]
    assert channel.receive(1.99) == []
    assert [m for _, m in channel.receive(10.0)] == ['b', 'c']
    assert channel.bytes_sent == 1500 and channel.messages_sent == 3


def test_unlimited_bandwidth_is_latency_only():
    channel = Channel(ChannelConfig(latency_s=0.1))
    assert channel.send(3.0, 'x', 10**7) == pytest.approx(3.1)
    assert channel.send(3.0, 'y', 10**7) == pytest.approx(3.1)


def test_loss_is_seeded_and_lost_bytes_still_count():
    def losses(seed):
        channel = Channel(ChannelConfig(loss=0.3), seed=seed)
        delivered = [channel.send(float(i), i, 10) is not None for i in range(1000)]
        return channel, delivered

    channel, first = losses(7)
    assert 240 < channel.messages_lost < 360
    assert channel.bytes_sent == 10_000
    assert len(channel.receive(1e9)) == 1000 - channel.messages_lost
    assert losses(7)[1] == first and losses(8)[1] != first
    link = Link(LinkConfig.symmetric(loss=0.5), seed=3)
    ups = [link.uplink.send(0, i, 1) is None for i in range(64)]
    downs = [link.downlink.send(0, i, 1) is None for i in range(64)]
    assert ups != downs  # each direction draws its own losses


def test_bandwidth_trace_spreads_bytes_over_serialisation():
    channel = Channel(ChannelConfig(bandwidth_kbps=8.0))
    channel.send(0.5, 'a', 1500)  # on the wire from 0.5 to 2.0
    channel.send(2.5, 'b', 0)
    assert channel.trace(0.0, 3.0, 1.0) == pytest.approx([500.0, 1000.0, 0.0])
    instant = Channel()
    instant.send(1.2, 'a', 300)
    assert instant.trace(0.0, 3.0, 1.0) == pytest.approx([0.0, 300.0, 0.0])
    assert instant.trace(0.0, 1.0, 1.0) == pytest.approx([0.0])
    assert Link().bandwidth(0.0, 2.0)['uplink'] == [0.0, 0.0]


# -- sources ----------------------------------------------------------------------------------


def write_video(path, count, fps, height=32, width=48):
    """Frame i is uniformly grey with value 8 * i, so its index can be read back."""
    with av.open(str(path), 'w') as container:
        stream = container.add_stream('libx264', rate=fps)
        stream.width, stream.height, stream.pix_fmt = width, height, 'yuv420p'
        stream.options = {'crf': '0', 'preset': 'ultrafast'}
        for i in range(count):
            frame = np.full((height, width, 3), 8 * i, np.uint8)
            for packet in stream.encode(av.VideoFrame.from_ndarray(frame, format='rgb24')):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)


def test_video_file_source_with_label_folder(tmp_path):
    write_video(tmp_path / 'v.mp4', 30, 10)
    labels = tmp_path / 'labels'
    labels.mkdir()
    for i in range(0, 30, 2):  # odd frames have no label
        cv2.imwrite(str(labels / f'gt_{i:06d}.png'), np.full((32, 48), i % 6, np.uint8))
    source = VideoFileSource(tmp_path / 'v.mp4', labels, start_s=100.0)
    assert source.native_fps == pytest.approx(10) and source.duration_s == pytest.approx(3.0)
    frames = list(source.frames(2.0, 16, 24))
    stamps = [s for s, _, _ in frames]
    assert stamps == pytest.approx([100.0, 100.5, 101.0, 101.5, 102.0, 102.5])
    for stamp, frame, label in frames:
        index = source.frame_index(stamp)
        assert frame.shape == (16, 24, 3)
        assert abs(int(frame.mean()) - 8 * index) <= 3
        assert label is None if index % 2 else (label.shape == (16, 24)
                                                and (label == index % 6).all())
    teacher = LabelFolderTeacher(source)
    got = teacher.label(np.zeros((2, 8, 12, 3), np.uint8), [100.4, 100.5])
    assert (got[0] == 4).all() and (got[1] == IGNORE_LABEL).all()
    assert isinstance(source.default_teacher(), LabelFolderTeacher)
    assert VideoFileSource(tmp_path / 'v.mp4', duration_s=1.0).duration_s == 1.0


def test_synthetic_source_and_cache():
    source = CachedSource(SyntheticSource(1000, 4.0))
    first = list(source.frames(2.0, 16, 32))
    assert len(first) == 8 and first[0][2].shape == (16, 32)
    again = list(source.frames(2.0, 16, 32))
    assert all(a[1] is b[1] for a, b in zip(first, again, strict=True))
    perfect = source.default_teacher()
    teacher = CachedLabelTeacher(source, perfect)
    frames = np.stack([first[1][1], first[2][1]])
    stamps = [first[1][0], first[1][0] + 0.25]  # the second is off the camera's grid
    np.testing.assert_array_equal(teacher.label(frames, stamps), perfect.label(frames, stamps))
    np.testing.assert_array_equal(teacher.label(frames, stamps)[0], first[1][2])


# -- schemes ----------------------------------------------------------------------------------

SPEC = InputSpec(32, 64)


@pytest.fixture(scope='module', autouse=True)
def one_torch_thread():
    """Train on one thread: these tiny models are overhead-bound, extra threads only spin."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope='module')
def template():
    return calibrated_template(SPEC)


@pytest.fixture(scope='module')
def flight():
    return CachedSource(SyntheticSource(1000, 36.0))


def context(template, flight, **kw):
    ground = GroundConfig(trainer=TrainerConfig(iterations=2, batch_size=2, channels_last=False),
                          atr=AtrConfig(period_min=kw.pop('t_update', 10.0)))
    defaults = dict(fps=1.0, eval_stride=2, ground=ground, phase_time_s=1.0, seed=0,
                    link=LinkConfig.symmetric(2000.0, 0.05))
    defaults.update(kw)
    return EvalContext(flight, flight.default_teacher(), template, **defaults)


@pytest.fixture(scope='module')
def ams_result(template, flight):
    return Ams().run(context(template, flight))


def test_ams_streams_patches_that_the_drone_applies(ams_result):
    r = ams_result
    assert r.name == 'ams' and r.flight == 'synthetic-1000'
    # Batches close at 10, 20, 30 s; each phase ends 1 s after its batch arrives.
    assert len(r.updates) == 3 and r.updates == sorted(r.updates)
    assert all(10.0 < u < 12.0 + 20 for u in r.updates)
    assert r.extra['final_version'] == 1 + len(r.updates) == r.extra['ground_version']
    assert r.downlink_bytes > 0 and r.uplink_bytes > 0
    # Patches, and the sampling control the ground sends every drone on first contact.
    assert r.extra['downlink_by_kind'] == {'patch': r.downlink_bytes - CONTROL_NBYTES,
                                           'control': CONTROL_NBYTES}
    assert sum(r.bandwidth['downlink']) == pytest.approx(r.downlink_bytes)
    assert r.downlink_kbps == pytest.approx(r.downlink_bytes * 8 / 1000 / 36.0)
    assert len(r.frame_miou) == 18 and 0.0 <= r.miou <= 1.0
    assert r.sampling[0] == (0.0, 1.0)
    assert [p['frames'] for p in r.extra['phases']] == [10, 10, 10]
    assert SchemeResult.from_dict(json.loads(json.dumps(r.to_dict()))).to_dict() == r.to_dict()


def test_ams_is_deterministic_given_the_seed(template, flight):
    # JPEG frames: libx264 itself is not bit-exact run to run on frames this tiny (32x64; a
    # few percent of encodes differ, even with one thread), which would leak into training.
    drone = DroneConfig(uplink=CodecSettings(codec='jpeg'))
    first = Ams().run(context(template, flight, drone=drone)).to_dict()
    again = Ams().run(context(template, flight, drone=drone)).to_dict()
    for key in ('frame_miou', 'confusion', 'uplink_bytes', 'downlink_bytes', 'updates',
                'sampling', 'bandwidth'):
        assert again[key] == first[key], key


def test_no_customization_uses_no_link(template, flight):
    r = NoCustomization().run(context(template, flight))
    assert r.uplink_bytes == r.downlink_bytes == 0 and r.updates == []
    assert sum(r.bandwidth['uplink']) == sum(r.bandwidth['downlink']) == 0
    assert len(r.frame_miou) == 18 and r.extra['final_version'] == 1


def test_one_time_sends_one_whole_model(template, flight):
    r = OneTime(iterations=2).run(context(template, flight, one_time_s=8.0))
    assert len(r.updates) == 1 and 8.0 < r.updates[0] < 12.0
    assert r.extra['frames'] == 8 and r.extra['final_version'] == 2
    # Every parameter travels (fp16 deltas, compressed): far more than a 5% patch carries.
    assert r.downlink_bytes > 0.2 * template.manifest.total_size


def test_lost_patches_are_recovered_with_a_snapshot(template, flight):
    link = LinkConfig(ChannelConfig(latency_s=0.05),
                      ChannelConfig(latency_s=0.05, loss=0.5))
    r = Ams().run(context(template, flight, link=link, t_update=5.0, seed=1))
    assert r.extra['downlink_lost'] > 0 and r.extra['patch.out_of_order'] > 0
    assert r.extra['snapshot_requests'] > 0 and r.extra['snapshots_sent'] > 0
    assert r.extra['downlink_by_kind']['snapshot'] > r.extra['downlink_by_kind']['patch'] / 10
    # After the last snapshot the drone caught up with the ground again.
    assert r.extra['final_version'] >= r.extra['ground_version'] - 1


@pytest.fixture(scope='module')
def second_flight():
    return CachedSource(SyntheticSource(1001, 36.0))


@pytest.mark.parametrize('policy', ['round_robin', 'phi_weighted'])
def test_a_fleet_shares_one_ground_and_each_drone_gets_only_its_patches(
        template, flight, second_flight, policy):
    # Two drones each sending a batch every 5 s to a ground whose phase takes 4 s: the one
    # training device is the bottleneck, so drones wait for each other.
    contexts = [context(template, f, t_update=5.0, phase_time_s=4.0)
                for f in (flight, second_flight)]
    results = Ams('ams[fleet]', policy=policy).run_fleet(contexts)
    assert [r.flight for r in results] == ['synthetic-1000', 'synthetic-1001']
    phases = sorted((p['start'], p['end'], r.flight) for r in results for p in r.extra['phases'])
    # One phase at a time: the drones share one training device.
    assert all(b[0] >= a[1] for a, b in zip(phases, phases[1:], strict=False))
    fleet = results[0].extra['fleet']
    assert fleet['policy'] == policy and fleet['drones'] == ['synthetic-1000', 'synthetic-1001']
    assert fleet['ground_busy_s'] == pytest.approx(4.0 * len(phases))
    assert fleet['ground_busy_s'] > 0.6 * 36.0
    for r in results:
        own = r.extra['phases']
        assert own, f'{r.flight} was never trained'
        # Every patch this drone received was trained for it: its bytes are its phases'.
        assert r.extra['downlink_by_kind']['patch'] == sum(p['patch_bytes'] for p in own)
        assert [p['version'] for p in own] == list(range(2, 2 + len(own)))
        assert r.extra['final_version'] >= r.extra['ground_version'] - 1
        assert sum(p['frames'] for p in own) <= r.extra['frames_sent']
        assert all(p['waited_s'] >= 0 for p in own)
    assert max(p['waited_s'] for r in results for p in r.extra['phases']) > 0
    if policy == 'round_robin':
        counts = [len(r.extra['phases']) for r in results]
        assert abs(counts[0] - counts[1]) <= 1


def test_ams_eval_writes_results_and_table(tmp_path, capsys):
    out = tmp_path / 'out'
    assert ams_main(['eval', '--student', 'fresh', '--size', '32x64', '--duration', '12',
                      '--seeds', '1000', '--schemes', 'no_customization', 'ams',
                      '--iterations', '1', '--batch-size', '2', '--t-update', '5',
                      '--phase-time', '0.5', '--out', str(out), '--no-progress']) == 0
    data = json.loads((out / 'results.json').read_text())
    assert [r['name'] for r in data['results']] == ['no_customization', 'ams']
    assert data['meta']['flights'] == ['synthetic-1000']
    assert data['meta']['student']['kind'] == 'fresh-bn-calibrated'
    assert data['results'][1]['downlink_bytes'] > 0
    assert 'no_customization' in (out / 'table.txt').read_text()


def test_ams_eval_flies_a_fleet_on_one_ground(tmp_path):
    out = tmp_path / 'out'
    assert ams_main(['eval', '--student', 'fresh', '--size', '32x64', '--duration', '12',
                     '--seeds', '1000', '1001', '--schemes', 'ams', '--ablation', 'fleet',
                     '--policies', 'phi_weighted', '--iterations', '1', '--batch-size', '2',
                     '--t-update', '5', '--phase-time', '3', '--out', str(out),
                     '--no-progress']) == 0
    results = json.loads((out / 'results.json').read_text())['results']
    assert [(r['name'], r['flight']) for r in results] == [
        ('ams', 'synthetic-1000'), ('ams', 'synthetic-1001'),
        ('ams[fleet,phi_weighted]', 'synthetic-1000'),
        ('ams[fleet,phi_weighted]', 'synthetic-1001')]
    fleet = results[2]['extra']['fleet']
    assert fleet == results[3]['extra']['fleet'] and fleet['policy'] == 'phi_weighted'
    # Alone, each drone had a ground to itself; in the fleet they share one.
    alone = sum(len(r['extra']['phases']) for r in results[:2])
    shared = sum(len(r['extra']['phases']) for r in results[2:])
    assert 0 < shared <= alone
    assert 'Fleets: several drones on one ground' in (out / 'tables.txt').read_text()


def test_ablations_add_the_variants_of_figure_4():
    args = resolve(build_parser().parse_args(
        ['--schemes', 'ams', '--ablation', 't_update', '--t-updates', '20', '30',
         '--ablation', 'jit_threshold', '--jit-thresholds', '0.5', '0.8']))
    ground, drone = base_configs(args)
    variants = make_variants(args, ground, drone)
    assert [v.label for v in variants] == [
        'ams', 'ams[T_update=20]', 'ams[T_update=30]', 'just_in_time[threshold=0.5]',
        'just_in_time[threshold=0.8]']
    assert [v.drone.update_period for v in variants[1:3]] == [20.0, 30.0]
    jit = variants[3:]
    assert all(isinstance(v.scheme, JustInTime) for v in jit)
    assert [v.scheme.config.threshold for v in jit] == [0.5, 0.8]


def test_the_default_schemes_run_the_paper_profile_and_remote_tracking_on_real_links():
    args = resolve(build_parser().parse_args(['--fps', '1']))
    ground, drone = base_configs(args)
    variants = {v.label: v for v in make_variants(args, ground, drone)}
    assert list(variants) == [
        'no_customization', 'one_time', 'ams', 'ams_paper', 'remote_tracking@0.1s',
        'remote_tracking@0.3s', 'remote_tracking@1s']
    # AMS runs the project's profile; ams_paper the paper's, whatever the options say.
    assert ground.trainer.strategy == AMS.strategy and ground.patch_format == AMS.patch_format
    paper = variants['ams_paper']
    assert paper.ground.trainer.strategy == PAPER.strategy == 'gradient_guided'
    assert paper.ground.patch_format == PAPER_FORMAT
    assert paper.ground.atr.period_min == paper.drone.update_period == PAPER.t_update
    assert paper.ground.trainer.iterations == ground.trainer.iterations  # the rest is shared
    for latency in (0.1, 0.3, 1.0):
        remote = variants[f'remote_tracking@{latency:g}s']
        assert isinstance(remote.scheme, RemoteTracking) and remote.fps == 5.0
        assert remote.link.uplink.latency_s == remote.link.downlink.latency_s == latency
    # One option changes one value of the profile; --ams-profile paper takes the paper's.
    args = resolve(build_parser().parse_args(['--fraction', '0.1']))
    assert base_configs(args)[0].trainer.fraction == 0.1
    assert base_configs(args)[0].trainer.strategy == AMS.strategy
    args = resolve(build_parser().parse_args(['--ams-profile', 'paper']))
    assert base_configs(args)[0].trainer.strategy == 'gradient_guided'
    assert base_configs(args)[0].patch_format == PAPER_FORMAT


def test_the_drift_ablation_flies_the_flights_again_over_slower_drifting_worlds(tmp_path):
    out = tmp_path / 'out'
    assert ams_main(['eval', '--student', 'fresh', '--size', '32x64', '--duration', '12',
                     '--seeds', '1000', '--schemes', 'no_customization', 'ams',
                     '--ablation', 'drift', '--look-regions', '1', '4', '--iterations', '1',
                     '--batch-size', '2', '--t-update', '5', '--phase-time', '0.5',
                     '--out', str(out), '--no-progress']) == 0
    results = json.loads((out / 'results.json').read_text())['results']
    assert [(r['name'], r['flight']) for r in results] == [
        ('no_customization', 'synthetic-1000'), ('ams', 'synthetic-1000'),
        ('no_customization', 'synthetic-1000-looks4'), ('ams', 'synthetic-1000-looks4')]
    assert [r['extra']['world']['look_region'] for r in results] == [1, 1, 4, 4]
    assert all(0 < r['extra']['world']['look_dwell_s'] <= 12 for r in results)
    tables = (out / 'tables.txt').read_text()
    assert 'Drift sweep' in tables and '(region 4)' in tables
    drift = json.loads((out / 'figures.json').read_text())['drift']
    assert drift['regions'] == [1, 4]
    assert set(drift['miou']) == {'no_customization', 'ams'}


def test_runs_split_by_training_seed_merge_into_one_report(tmp_path):
    for seed in (0, 1):
        assert ams_main(['eval', '--student', 'fresh', '--size', '32x64', '--duration', '6',
                         '--seeds', '1000', '--schemes', 'no_customization', 'one_time',
                         '--one-time', '3', '--iterations', '1', '--batch-size', '2',
                         '--phase-time', '0.5', '--seed', str(seed), '--out',
                         str(tmp_path / f'seed{seed}'), '--no-progress']) == 0
    out = tmp_path / 'merged'
    assert ams_main(['eval', '--merge', str(tmp_path / 'seed0'), str(tmp_path / 'seed1'),
                     '--out', str(out)]) == 0
    data = json.loads((out / 'results.json').read_text())
    assert data['meta']['seeds'] == [0, 1]
    assert [(r['name'], r['flight']) for r in data['results']] == [
        ('no_customization', 'synthetic-1000 seed 0'), ('one_time', 'synthetic-1000 seed 0'),
        ('no_customization', 'synthetic-1000 seed 1'), ('one_time', 'synthetic-1000 seed 1')]
    seeds = [json.loads((tmp_path / f'seed{s}' / 'results.json').read_text())['results']
             for s in (0, 1)]
    average = json.loads((out / 'figures.json').read_text())['table1']['average']
    expected = np.mean([run[1]['miou'] for run in seeds])
    assert average['one_time']['miou'] == pytest.approx(expected)
    assert average['one_time']['flights'] == 2


def test_remote_tracking_at_a_latency_sees_its_labels_that_much_later():
    source = CachedSource(SyntheticSource(1000, 12.0))
    ctx = dict(source=source, teacher=CachedLabelTeacher(source, source.default_teacher()),
               template=calibrated_template(SPEC), fps=5.0, eval_stride=5, frame_size=(32, 64),
               phase_time_s=0.05)
    ages = []
    for latency in (0.1, 1.0):
        link = LinkConfig(ChannelConfig(None, latency), ChannelConfig(None, latency))
        result = RemoteTracking().run(EvalContext(link=link, **ctx))
        assert len(result.frame_miou) == 12  # the camera at 5 fps, scored at 1 fps
        ages.append(result.extra['mean_label_age_s'])
    assert ages[1] - ages[0] == pytest.approx(1.8, abs=0.25)  # two one-way trips, 0.9 s each


# -- a real task ------------------------------------------------------------------------------

def person_clip(path, frames: int = 40, fps: float = 5.0, size=(96, 128)) -> str:
    """Write an H.264 clip of a cartoon person drifting across a wall (made here, no download)."""
    from test_teachers import head_and_shoulders

    height, width = size
    person = head_and_shoulders(height, width // 2)
    with av.open(str(path), 'w') as container:
        stream = container.add_stream('libx264', rate=int(fps))
        stream.width, stream.height, stream.pix_fmt = width, height, 'yuv420p'
        for i in range(frames):
            image = np.full((height, width, 3), (90, 140, 200), np.uint8)
            x = int(i * (width // 2) / max(frames - 1, 1))
            image[:, x:x + width // 2] = person
            for packet in stream.encode(av.VideoFrame.from_ndarray(image, format='rgb24')):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return str(path)


def test_ams_eval_runs_a_task_with_its_teacher_on_a_video(tmp_path):
    clip = person_clip(tmp_path / 'person.mp4')
    out = tmp_path / 'out'
    assert ams_main(['eval', '--task', 'person', '--video', clip, '--size', '48x64',
                     '--schemes', 'no_customization', 'ams', '--iterations', '2',
                     '--batch-size', '2', '--t-update', '2', '--phase-time', '0.5',
                     '--fps', '5', '--eval-fps', '5', '--out', str(out),
                     '--no-progress']) == 0
    data = json.loads((out / 'results.json').read_text())
    assert data['meta']['task']['name'] == 'person'
    assert data['meta']['class_names'] == ['background', 'person']
    ams = data['results'][1]
    assert ams['name'] == 'ams' and ams['downlink_bytes'] > 0 and ams['updates']
    # The truth is the TFLite teacher's: both classes occur in every frame of this clip.
    confusion = np.array(ams['confusion'])
    assert confusion.shape == (2, 2) and confusion.sum(axis=1).min() > 0
    tables = (out / 'tables.txt').read_text()
    assert 'IoU per class (%)' in tables and 'person' in tables


def test_a_task_without_synthetic_flights_needs_a_video():
    with pytest.raises(SystemExit, match='give --video'):
        resolve(build_parser().parse_args(['--task', 'person']))
