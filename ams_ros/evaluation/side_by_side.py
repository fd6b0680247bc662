"""A side-by-side video of a run: camera | teacher | student without updates | adapting student.

People would rather watch than read: each frame of the video shows the camera image and three
colour masks at the camera's size, captioned with each mask's mIoU against the teacher's labels
and the adapting student's model version. H.264 in an .mp4 (PyAV, libx264).
"""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np

from ams_ros.metrics import confusion_matrix, mean_iou
from ams_ros.pixels import resize_labels

CAPTION_PX = 22


class SideBySideWriter:
    """Append frames to the video; the first frame fixes its size."""

    def __init__(self, path: str | Path, colours: np.ndarray, fps: float, num_classes: int):
        self.path = Path(path)
        self.colours = np.asarray(colours, np.uint8)  # class id -> RGB, 256 entries
        self.fps = fps
        self.num_classes = num_classes
        self.frames = 0
        self._container = self._stream = None

    def add(self, rgb: np.ndarray, label: np.ndarray, baseline: np.ndarray | None,
            adapted: np.ndarray, version: int) -> None:
        """Add one camera frame with its teacher labels and both students' masks."""
        height, width = rgb.shape[:2]
        panels, captions = [rgb], ['camera']
        for name, ids in (('teacher', label), ('no updates', baseline),
                          (f'adapting v{version}', adapted)):
            if ids is None:
                panels.append(np.zeros_like(rgb))
                captions.append(f'{name}: -')
                continue
            ids = resize_labels(ids, height, width)
            panels.append(self.colours[ids])
            if name == 'teacher':
                captions.append(name)
            else:
                miou = mean_iou(confusion_matrix(label, ids, self.num_classes))
                captions.append(f'{name}: {100 * miou:.0f}%' if miou == miou else name)
        picture = np.concatenate(panels, axis=1)
        bar = np.zeros((CAPTION_PX, picture.shape[1], 3), np.uint8)
        for i, text in enumerate(captions):
            cv2.putText(bar, text, (i * width + 4, CAPTION_PX - 7), cv2.FONT_HERSHEY_SIMPLEX,
                        0.45, (255, 255, 255), 1, cv2.LINE_AA)
        self._write(np.concatenate([bar, picture], axis=0))

    def _write(self, picture: np.ndarray) -> None:
        import av

        picture = picture[:picture.shape[0] // 2 * 2, :picture.shape[1] // 2 * 2]  # yuv420p
        if self._container is None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._container = av.open(str(self.path), 'w')
            self._stream = self._container.add_stream('libx264', rate=max(1, round(self.fps)))
            self._stream.height, self._stream.width = picture.shape[:2]
            self._stream.pix_fmt = 'yuv420p'
            self._stream.options = {'preset': 'veryfast', 'crf': '23'}
        frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(picture), format='rgb24')
        for packet in self._stream.encode(frame):
            self._container.mux(packet)
        self.frames += 1

    def close(self) -> None:
        if self._container is None:
            return
        for packet in self._stream.encode():
            self._container.mux(packet)
        self._container.close()
        self._container = None
