"""The side-by-side video: camera | teacher | no updates | adapting, H.264, decodable."""

import av
import numpy as np

from ams_ros.evaluation.demo_report import DemoMonitor
from ams_ros.evaluation.side_by_side import CAPTION_PX, SideBySideWriter
from ams_ros.world import colour_table


def test_each_compared_frame_becomes_four_panels(tmp_path):
    rng = np.random.default_rng(0)
    height, width, frames = 48, 64, 6
    video = SideBySideWriter(tmp_path / 'run.mp4', colour_table(), 5.0, num_classes=3)
    labels = []
    for i in range(frames):
        label = np.zeros((height, width), np.uint8)
        label[:, : 10 + 8 * i] = 1  # a region that grows: the panels change frame to frame
        label[:8] = 2
        rgb = rng.integers(0, 256, (height, width, 3), np.uint8)
        adapted = label.copy()
        baseline = np.zeros_like(label)
        video.add(rgb, label, baseline, adapted, version=2 + i)
        labels.append(label)
    video.close()
    with av.open(str(tmp_path / 'run.mp4')) as container:
        decoded = [f.to_ndarray(format='rgb24') for f in container.decode(video=0)]
    assert len(decoded) == frames == video.frames
    assert decoded[0].shape == (height + CAPTION_PX, 4 * width, 3)
    lut = colour_table().astype(np.int16)
    for picture, label in zip(decoded, labels, strict=True):
        panels = picture[CAPTION_PX:].astype(np.int16)
        teacher, adapted = panels[:, width:2 * width], panels[:, 3 * width:]
        baseline = panels[:, 2 * width:3 * width]
        # H.264 blurs colour edges a little; away from them the panels are the label's colours.
        assert np.median(np.abs(teacher - lut[label])) < 8
        assert np.median(np.abs(adapted - lut[label])) < 8
        assert np.median(np.abs(baseline - lut[np.zeros_like(label)])) < 8


def test_the_demo_monitor_writes_what_it_compares(tmp_path):
    video = SideBySideWriter(tmp_path / 'side_by_side.mp4', colour_table(), 5.0, 2)
    monitor = DemoMonitor(['a', 'b'], baseline=lambda rgb: np.zeros(rgb.shape[:2], np.uint8),
                          video=video)
    for i in range(4):
        stamp = (i + 1) * 10**9
        label = np.zeros((16, 32), np.uint8)
        label[:, 16:] = 1
        monitor.on_image(stamp, np.full((16, 32, 3), 100, np.uint8))
        monitor.on_label(stamp, label)
        monitor.on_mask(stamp, label)
    monitor.close(timeout=30.0)
    summary = monitor.write_report(tmp_path)
    assert summary['video'] == {'file': 'side_by_side.mp4', 'frames': 4}
    assert summary['accuracy']['whole_run']['frames_compared'] == 4
