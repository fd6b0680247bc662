"""The drone's side of AMS: run the student, apply model updates, sample frames for the ground.

The drone node and the offline harness both drive this class, so what the harness measures is
what the drone does. Model updates are verified by EdgeModelState (versions, digests, tags)
before the EdgeRuntime builds them off the inference path; a model that fails any check is
never run.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field

import numpy as np
import onnx

from ams_ros.edge_runtime import EdgeRuntime, RuntimeConfig, resize_frame
from ams_ros.frame_codec import CodecSettings, encode_frames
from ams_ros.frame_sampler import FrameSampler
from ams_ros.manifest import ParameterManifest, vector_digest
from ams_ros.model_version import APPLIED, NEEDS_SNAPSHOT, EdgeModelState, Outcome, PatchPayload
from ams_ros.onnx_params import (
    CLASS_NAMES_KEY,
    MODEL_ID_KEY,
    manifest_from_metadata,
    model_metadata,
    read_vector,
)
from ams_ros.snapshot import SnapshotError, SnapshotPayload, open_snapshot


@dataclass(frozen=True)
class DroneConfig:
    client_id: str = 'drone'
    uplink: CodecSettings = field(default_factory=CodecSettings)
    # (height, width) of the frames sent down; None sends them at the model's input size.
    uplink_size: tuple[int, int] | None = None
    runtime: RuntimeConfig = field(default_factory=RuntimeConfig)
    max_pending_patches: int = 4
    sampling_rate: float = 1.0  # until the ground says otherwise
    update_period: float = 10.0


@dataclass(frozen=True)
class UplinkBatch:
    """One ams_msgs/FrameBatch message's content (all but the header)."""

    client_id: str
    seq: int
    codec: str
    width: int
    height: int
    stamps: tuple[float, ...]
    data: bytes
    sampling_rate: float
    update_period: float


class DroneAgent:
    """Student inference, verified model updates and uplink sampling for one drone."""

    def __init__(self, config: DroneConfig | None = None, key: bytes | None = None):
        self.config = config or DroneConfig()
        self._key = key
        self.state = EdgeModelState(key=key, max_pending=self.config.max_pending_patches)
        self.sampler = FrameSampler(self.config.sampling_rate, self.config.update_period)
        self.runtime: EdgeRuntime | None = None
        self.class_names: tuple[str, ...] = ()
        self._manifest: ParameterManifest | None = None
        self._seq = 0
        self.snapshot_rejections: dict[str, int] = {}

    @property
    def version(self) -> int:
        """Active model version; 0 before any model."""
        return self.state.version or 0

    @property
    def model_id(self) -> str:
        return self.state.model_id

    def load_model_file(self, model_bytes: bytes, version: int) -> Outcome:
        """Start from an exported student (ONNX with the ams metadata), e.g. the pretrained one."""
        model = onnx.load_from_string(model_bytes)
        manifest = manifest_from_metadata(model)
        metadata = model_metadata(model)
        vector = read_vector(model, manifest)
        outcome = self.state.load_snapshot(version, vector, vector_digest(vector),
                                           model_id=metadata.get(MODEL_ID_KEY, ''))
        self._activate(model_bytes, manifest, json.loads(metadata.get(CLASS_NAMES_KEY, '[]')))
        return outcome

    def load_snapshot(self, payload: SnapshotPayload) -> Outcome:
        """Verify a whole-model snapshot and make it active (off the inference path).

        A snapshot that needs a new runtime (the first model, or another layout) has it built
        before anything is activated: one ONNX Runtime cannot load is refused as a bad model.
        """
        runtime = None
        try:
            opened = open_snapshot(payload, self._key)
            if self.runtime is None or opened.manifest != self._manifest:
                runtime, class_names = self._new_runtime(payload, opened.manifest)
        except SnapshotError as e:
            self.snapshot_rejections[e.reason] = self.snapshot_rejections.get(e.reason, 0) + 1
            return Outcome(NEEDS_SNAPSHOT, f'snapshot-{e.reason}', self.state.version)
        outcome = self.state.load_snapshot(payload.version, opened.vector, payload.digest,
                                           model_id=payload.model_id)
        if outcome.kind != APPLIED:
            if runtime is not None:
                runtime.close()
        elif runtime is None:
            self.runtime.submit(self.state.vector, self.state.version)
        else:
            self._install(runtime, opened.manifest, class_names)
            if self.state.version != payload.version:   # held patches applied on top
                runtime.submit(self.state.vector, self.state.version)
        return outcome

    def offer_patch(self, patch: PatchPayload) -> Outcome:
        """Apply a patch if it verifies; the new model swaps in once built."""
        outcome = self.state.offer(patch)
        if outcome.kind == APPLIED and self.runtime is not None:
            self.runtime.submit(self.state.vector, self.state.version)
        return outcome

    def infer(self, frame_rgb: np.ndarray, resize_to_input: bool = False) -> np.ndarray | None:
        """Class-id mask of one frame, or None while the drone has no model yet."""
        runtime = self.runtime
        return None if runtime is None else runtime.infer(frame_rgb, resize_to_input)

    def set_sampling(self, rate: float, update_period: float) -> None:
        self.sampler.set_rate(rate)
        self.sampler.set_update_period(update_period)

    def sample(self, stamp: float, frame_rgb: np.ndarray) -> UplinkBatch | None:
        """Offer a frame to the sampler; return an encoded batch once T_update is buffered.

        Also when the uplink size changed (a model of another input size): the frames buffered
        at the old size go first, as a batch of that size.
        """
        height, width = self._uplink_size(frame_rgb)
        if frame_rgb.shape[:2] != (height, width):
            frame_rgb = resize_frame(frame_rgb, height, width)
        batch = self.sampler.add(stamp, frame_rgb)
        if batch is None or len(batch.frames) == 0:
            return None
        height, width = batch.frames[0].shape[:2]
        data = encode_frames(batch.frames, self.config.uplink, frame_rate=batch.rate)
        self._seq += 1
        return UplinkBatch(self.config.client_id, self._seq, self.config.uplink.codec, width,
                           height, tuple(batch.stamps), data, batch.rate, batch.update_period)

    def close(self) -> None:
        if self.runtime is not None:
            self.runtime.close()

    def _uplink_size(self, frame_rgb: np.ndarray) -> tuple[int, int]:
        if self.config.uplink_size is not None:
            return self.config.uplink_size
        if self.runtime is not None:
            return self.runtime.input_size
        return frame_rgb.shape[:2]

    def _activate(self, model_bytes: bytes, manifest: ParameterManifest, class_names) -> None:
        runtime = EdgeRuntime(model_bytes, manifest, self.state.version, self.config.runtime)
        self._install(runtime, manifest, tuple(class_names))

    def _new_runtime(self, payload: SnapshotPayload,
                     manifest: ParameterManifest) -> tuple[EdgeRuntime, tuple]:
        """Build the runtime of a verified snapshot's model; SnapshotError if it cannot run."""
        try:
            class_names = tuple(payload.class_names)
            return EdgeRuntime(bytes(payload.model_data), manifest, payload.version,
                               self.config.runtime), class_names
        except Exception as e:  # noqa: BLE001 - ONNX Runtime raises its own types on bad graphs
            raise SnapshotError('bad-model', f'{type(e).__name__}: {e}') from e

    def _install(self, runtime: EdgeRuntime, manifest: ParameterManifest, class_names) -> None:
        # A different model (architecture or layout) needs a new runtime; the reference swap
        # is atomic, and the old runtime finishes the frame it is on before it is closed.
        previous = self.runtime
        self.runtime = runtime
        self._manifest = manifest
        self.class_names = class_names
        if previous is not None:
            previous.close()
