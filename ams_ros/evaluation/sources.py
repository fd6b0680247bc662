"""Flights for the harness: (stamp, RGB uint8 frame, ground-truth label or None) at any rate.

- `SyntheticSource`: a flight of the procedural aerial world (ams_ros.world), with exact labels;
  its teacher is the world's PerfectTeacher.
- `VideoFileSource`: a video file (PyAV); labels are None, so the teacher's labels serve as
  ground truth (the paper evaluates against the teacher). With ``labels_dir`` it reads
  precomputed label images instead, in the original AMS code's convention: ``gt_%06d.png``,
  one 8-bit grey image of class ids per video frame, numbered from 0 by frame index; a frame
  whose file is missing has no label. `LabelFolderTeacher` serves the same images as the ground's
  teacher, so a run needs no teacher model at all.

Stamps are ``start_s + frame_index / native_fps`` for video files and the world's capture stamps
for synthetic flights. `CachedSource` keeps the frames of one (fps, size) in memory, so several
schemes on one flight render or decode it once.
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterator, Sequence
from pathlib import Path

import cv2
import numpy as np

from ams_ros import IGNORE_LABEL
from ams_ros.evaluation.core import SourceFrame
from ams_ros.pixels import resize_frame, resize_labels
from ams_ros.world.map import DEFAULT_LOOK_REGION

LABEL_PATTERN = 'gt_%06d.png'


class SyntheticSource:
    """Flight `seed` of the synthetic world, `duration_s` long (seeds >= 1000 are held out).

    look_region: the world's drift (ams_ros.world.map); a flight over a world of another drift
    than the default is named with it, e.g. ``synthetic-1000-looks4``.
    """

    def __init__(self, seed: int, duration_s: float = 600.0, start_s: float = 0.0,
                 look_region: int = DEFAULT_LOOK_REGION):
        from ams_ros.world import AerialVideo

        self.seed = int(seed)
        self.duration_s = float(duration_s)
        self.start_s = float(start_s)
        self.look_region = look_region
        self.video = AerialVideo(self.seed, self.duration_s, self.start_s, look_region)
        self.name = f'synthetic-{self.seed}' + (
            '' if look_region == DEFAULT_LOOK_REGION else f'-looks{look_region}')

    def frames(self, fps: float, height: int | None = None,
               width: int | None = None) -> Iterator[SourceFrame]:
        if height is None or width is None:
            raise ValueError('a synthetic flight needs a frame size')
        # The last instant, duration_s, is left out: a flight of D s at f fps has D*f frames.
        stop = self.duration_s - 0.5 / fps
        yield from self.video.frames(fps, height, width, stop_t=stop)

    def world(self) -> dict:
        """Return the world's drift: its look region and the flight's measured look dwell."""
        return {'look_region': self.look_region, 'look_dwell_s': self.video.look_dwell_s()}

    def default_teacher(self):
        """Return the world's perfect teacher for this flight."""
        from ams_ros.world import PerfectTeacher

        return PerfectTeacher(self.video)


def video_info(path: str | os.PathLike) -> tuple[float, float, int]:
    """Return (native fps, duration s, frame count) of a video file's first video stream."""
    import av

    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        fps = float(stream.average_rate or stream.guessed_rate or 30)
        frames = stream.frames
        if stream.duration is not None and stream.time_base is not None:
            duration = float(stream.duration * stream.time_base)
        elif container.duration is not None:
            duration = container.duration / 1e6
        else:
            duration = frames / fps if frames else math.inf
        if not frames:
            frames = int(round(duration * fps)) if math.isfinite(duration) else 0
    return fps, duration, frames


class VideoFileSource:
    """Frames of a video file; labels from ``labels_dir`` (gt_%06d.png) or None.

    ``duration_s`` cuts the flight short (None: the whole file). Frames are picked at the
    requested rate as the first decoded frame at or after each due time (within half a native
    frame interval), and resized to the requested size (area averaging down). Label pixels equal
    to ``ignore_label`` (the task's) are read as IGNORE_LABEL.
    """

    def __init__(self, path: str | os.PathLike, labels_dir: str | os.PathLike | None = None,
                 duration_s: float | None = None, start_s: float = 0.0,
                 name: str | None = None, ignore_label: int = IGNORE_LABEL):
        self.path = Path(path)
        if not self.path.is_file():
            raise FileNotFoundError(f'no video file {self.path}')
        self.labels_dir = None if labels_dir is None else Path(labels_dir)
        if self.labels_dir is not None and not self.labels_dir.is_dir():
            raise FileNotFoundError(f'no label folder {self.labels_dir}')
        self.native_fps, length, _ = video_info(self.path)
        self.duration_s = float(length if duration_s is None else min(duration_s, length))
        self.start_s = float(start_s)
        self.name = name or self.path.stem
        self.ignore_label = ignore_label

    def frame_index(self, stamp: float) -> int:
        """Return the video frame index captured at `stamp`."""
        return int(round((float(stamp) - self.start_s) * self.native_fps))

    def label_path(self, index: int) -> Path | None:
        return None if self.labels_dir is None else self.labels_dir / (LABEL_PATTERN % index)

    def read_label(self, index: int, size: tuple[int, int] | None = None) -> np.ndarray | None:
        """Return label image `index` (class ids, nearest-resized to size), or None if absent."""
        path = self.label_path(index)
        if path is None or not path.is_file():
            return None
        label = cv2.imread(str(path), cv2.IMREAD_GRAYSCALE)
        if label is None:
            raise ValueError(f'cannot read label image {path}')
        if self.ignore_label != IGNORE_LABEL:
            label = np.where(label == self.ignore_label, IGNORE_LABEL, label).astype(np.uint8)
        return label if size is None else resize_labels(label, *size)

    def frames(self, fps: float, height: int | None = None,
               width: int | None = None) -> Iterator[SourceFrame]:
        import av

        if not fps > 0:
            raise ValueError(f'fps must be positive, got {fps}')
        slack = 0.5 / self.native_fps
        due = 0.0
        with av.open(str(self.path)) as container:
            stream = container.streams.video[0]
            stream.thread_type = 'AUTO'
            for index, decoded in enumerate(container.decode(stream)):
                t = index / self.native_fps
                if t >= self.duration_s - 1e-9:
                    break
                if t < due - slack:
                    continue
                while due <= t + slack:
                    due += 1.0 / fps
                frame = decoded.to_ndarray(format='rgb24')
                size = None
                if height is not None and width is not None:
                    frame = resize_frame(frame, height, width)
                    size = (height, width)
                yield self.start_s + t, frame, self.read_label(index, size)

    def default_teacher(self):
        """Return a teacher serving the label folder, or None without one."""
        return None if self.labels_dir is None else LabelFolderTeacher(self)


class LabelFolderTeacher:
    """Teacher protocol over precomputed labels: the label of the frame captured at each stamp.

    Labels are nearest-resized to the frames' size; a frame with no label file gets
    IGNORE_LABEL everywhere, so it neither trains nor scores.
    """

    def __init__(self, source: VideoFileSource):
        if source.labels_dir is None:
            raise ValueError('the source has no label folder')
        self.source = source

    def label(self, frames: np.ndarray, stamps: Sequence[float]) -> np.ndarray:
        frames = np.asarray(frames)
        if len(frames) != len(stamps):
            raise ValueError(f'{len(frames)} frames but {len(stamps)} stamps')
        size = frames.shape[1:3]
        labels = np.full((len(frames), *size), IGNORE_LABEL, np.uint8)
        for i, stamp in enumerate(stamps):
            label = self.source.read_label(self.source.frame_index(stamp), size)
            if label is not None:
                labels[i] = label
        return labels


class CachedSource:
    """Wrap a source and keep the frames of the last (fps, size) asked for in memory."""

    def __init__(self, source):
        self.source = source
        self.name = source.name
        self.duration_s = source.duration_s
        self.start_s = source.start_s
        self._key: tuple | None = None
        self._frames: list[SourceFrame] = []

    def frames(self, fps: float, height: int | None = None,
               width: int | None = None) -> Iterator[SourceFrame]:
        key = (float(fps), height, width)
        if key != self._key:
            self._key, self._frames = None, []
            frames = []
            for item in self.source.frames(fps, height, width):
                frames.append(item)
                yield item
            self._key, self._frames = key, frames
            return
        yield from self._frames

    def default_teacher(self):
        return self.source.default_teacher()

    def label_at(self, stamp: float, size: tuple[int, int]) -> np.ndarray | None:
        """Return the cached label of the frame stamped `stamp` if it has that size, else None."""
        if self._key is None or (self._key[1], self._key[2]) != tuple(size):
            return None
        if getattr(self, '_by_stamp', (None,))[0] is not self._frames:
            self._by_stamp = (self._frames, {float(s): lab for s, _, lab in self._frames})
        return self._by_stamp[1].get(float(stamp))


class CachedLabelTeacher:
    """A teacher that reuses the source's own labels where it has them, else asks `teacher`.

    Only for sources whose labels *are* the teacher's (the synthetic world's perfect teacher
    renders exactly the labels the flight yields): it saves rendering each label twice.
    """

    def __init__(self, source: CachedSource, teacher):
        self.source = source
        self.teacher = teacher

    def label(self, frames: np.ndarray, stamps: Sequence[float]) -> np.ndarray:
        frames = np.asarray(frames)
        size = frames.shape[1:3]
        cached = [self.source.label_at(s, size) for s in stamps]
        missing = [i for i, lab in enumerate(cached) if lab is None]
        if missing:
            labelled = self.teacher.label(frames[missing], [stamps[i] for i in missing])
            for i, lab in zip(missing, labelled, strict=True):
                cached[i] = lab
        return np.stack(cached) if cached else np.zeros((0, *size), np.uint8)
