"""The drone's frame workers, camera watch and status report, without ROS."""

import threading
import time

import numpy as np
import pytest
from test_drone_agent import SPEC, drone_config, template  # noqa: F401

from ams_ros.counters import Counters
from ams_ros.drone.agent import DroneAgent
from ams_ros.drone.camera_watch import CameraWatch
from ams_ros.drone.frame_pipeline import FramePipeline
from ams_ros.drone.model_updates import ModelUpdates
from ams_ros.drone.status import status_report
from ams_ros.ground.drone_session import INITIAL_VERSION
from ams_ros.wire.model_version import APPLIED


def test_a_slow_model_skips_frames_instead_of_queueing_them():
    release, started = threading.Event(), threading.Event()
    inferred, sent = [], []

    def infer(frame):
        started.set()
        release.wait(5.0)
        inferred.append(frame)
        return frame * 10

    sent_all = threading.Event()

    def send(item):
        sent.append(item)
        if item == 30:
            sent_all.set()

    pipeline = FramePipeline(infer, send, on_error=lambda *a: pytest.fail(f'{a}'))
    assert pipeline.offer(1) is False
    assert started.wait(5.0)  # frame 1 is being inferred
    assert pipeline.offer(2) is False
    assert pipeline.offer(3) is True  # 2 waited and is replaced: the newest frame wins
    release.set()
    assert sent_all.wait(5.0)
    pipeline.close()
    assert inferred == [1, 3] and sent[-1] == 30 and set(sent) <= {10, 30}


def wait_until(predicate, timeout=5.0) -> bool:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.01)
    return True


def test_a_failing_item_is_reported_and_the_workers_go_on():
    errors, sent = [], []

    def infer(frame):
        if frame == 'bad':
            raise ValueError('not an image')
        return frame

    def send(item):
        if item == 'unsendable':
            raise OSError('encoder gone')
        sent.append(item)

    pipeline = FramePipeline(infer, send, on_error=lambda worker, e: errors.append((worker, e)))
    pipeline.offer('bad')
    assert wait_until(lambda: len(errors) == 1)
    pipeline.offer('unsendable')
    assert wait_until(lambda: len(errors) == 2)
    pipeline.offer('good')
    assert wait_until(lambda: sent == ['good'])
    pipeline.close()
    assert [(w, type(e).__name__) for w, e in errors] == [('frame', 'ValueError'),
                                                          ('uplink', 'OSError')]


def test_failures_while_shutting_down_are_not_errors():
    errors, stopping = [], threading.Event()
    failed = threading.Event()

    def infer(frame):
        failed.set()
        raise RuntimeError('publisher destroyed')

    pipeline = FramePipeline(infer, lambda item: None, lambda *a: errors.append(a),
                             shutting_down=stopping.is_set)
    stopping.set()
    pipeline.offer(1)
    assert failed.wait(5.0)
    pipeline.close()
    assert errors == []


def test_the_camera_watch_counts_resolution_changes_and_unstamped_frames():
    counters = Counters()
    watch = CameraWatch(counters)
    assert watch.resolution((480, 640, 3)) is None  # the first frame is no change
    assert watch.resolution((480, 640, 3)) is None
    assert watch.resolution((240, 320, 3)) == '640x480 -> 320x240'
    assert watch.sample_stamp(12.5, lambda: pytest.fail('a stamped frame keeps its stamp')) == 12.5
    assert watch.sample_stamp(0.0, lambda: 99.0) == 99.0
    assert counters.totals == {'camera_size_changes': 1, 'unstamped_frames': 1}


def test_the_status_report_says_what_runs_and_what_went_wrong(template):  # noqa: F811
    updates = ModelUpdates(DroneAgent(drone_config()))
    counters = Counters()
    waiting = status_report(updates, counters)
    assert (waiting.level, waiting.edge_status['active_version']) == ('warn', 0)
    assert 'no model yet' in waiting.message
    assert updates.agent.load_model_file(template.onnx_bytes, INITIAL_VERSION).kind == APPLIED
    assert updates.agent.runtime.wait_for_version(INITIAL_VERSION, 30.0)
    updates.agent.infer(np.zeros((SPEC.height, SPEC.width, 3), np.uint8))
    counters.count('frames_received', 4)
    counters.count('frames_inferred', 4)
    counters.error('camera image refused (bad encoding)', 'bad_images.encoding')
    report = status_report(updates, counters)
    assert report.level == 'warn' and 'bad encoding' in report.message
    assert report.edge_status['frames_inferred'] == 4
    assert report.edge_status['active_digest'] == updates.agent.state.digest
    assert report.values['verified_version'] == INITIAL_VERSION
    counters.count('frames_received', 2)
    healthy = status_report(updates, counters)  # a new period: the error is past
    assert (healthy.level, healthy.message) == ('ok', f'v{INITIAL_VERSION} running')
    assert healthy.edge_status['frames_received'] == 6  # totals go on across periods
    updates.agent.close()
