"""The drone's side of AMS: run the student, apply model updates, sample frames for the ground.

The drone node and the offline harness both drive this class, so what the harness measures is
what the drone does. Model updates are verified by EdgeModelState (versions, digests, values)
before the EdgeRuntime builds them off the inference path; a model that fails any check is never
run. A snapshot the drone did not ask for must also keep the interface of the model it runs
(model_version's module docstring has the rules). Authenticity is checked before, on the wire
(ams_ros.ros.link_auth).

The ground's sampling control is kept within DroneConfig's bounds: an absurd rate or period
(a forged or broken message) would stall the uplink for good or fill the memory with frames.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field

import numpy as np
import onnx

from ams_ros.drone.edge_runtime import EdgeRuntime, RuntimeConfig
from ams_ros.drone.frame_sampler import FrameSampler
from ams_ros.model.manifest import ParameterManifest, vector_digest
from ams_ros.model.onnx_params import (
    CLASS_NAMES_KEY,
    MODEL_ID_KEY,
    manifest_from_metadata,
    model_metadata,
    read_vector,
)
from ams_ros.pixels import resize_frame
from ams_ros.wire.frame_codec import CodecSettings, encode_frames
from ams_ros.wire.model_version import NEEDS_SNAPSHOT, EdgeModelState, Outcome, PatchPayload
from ams_ros.wire.snapshot import (
    ModelInterface,
    SnapshotError,
    SnapshotPayload,
    model_interface,
    open_snapshot,
)
from ams_ros.wire.uplink_batch import UplinkBatch


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
    # What the ground may set (frames/s and T_update in s); set_sampling refuses the rest.
    # The paper's ranges (0.1-1 frames/s, 10-40 s) with room on both sides: 30 frames/s is a
    # camera's rate, 0.01 one frame in 100 s; 0.5 s is shorter than any training phase and
    # 600 s ten minutes of frames between updates.
    sampling_rate_min: float = 0.01
    sampling_rate_max: float = 30.0
    update_period_min: float = 0.5
    update_period_max: float = 600.0

    def __post_init__(self):
        for name in ('sampling_rate', 'update_period'):
            low, high = getattr(self, f'{name}_min'), getattr(self, f'{name}_max')
            if not (math.isfinite(high) and 0 < low <= high):
                raise ValueError(f'{name} bounds must be finite with 0 < min <= max, '
                                 f'got [{low}, {high}]')
            _check_within(name, getattr(self, name), low, high)


class DroneAgent:
    """Student inference, verified model updates and uplink sampling for one drone."""

    def __init__(self, config: DroneConfig | None = None):
        self.config = config or DroneConfig()
        self.state = EdgeModelState(max_pending=self.config.max_pending_patches)
        self.sampler = FrameSampler(self.config.sampling_rate, self.config.update_period)
        self.runtime: EdgeRuntime | None = None
        self.class_names: tuple[str, ...] = ()
        self.class_colours: tuple[tuple[int, int, int], ...] = ()  # the model's, if it has any
        self._interface: ModelInterface | None = None  # of the model the runtime runs
        self._seq = 0

    @property
    def version(self) -> int:
        """Active model version; 0 before any model."""
        return self.state.version or 0

    @property
    def model_id(self) -> str:
        return self.state.model_id

    def load_model_file(self, model_bytes: bytes, version: int) -> Outcome:
        """Start from an exported student (ONNX with the ams metadata), e.g. the pretrained one.

        The operator's file counts as requested: it may replace any model, at any version.
        """
        model = onnx.load_from_string(model_bytes)
        manifest = manifest_from_metadata(model)
        metadata = model_metadata(model)
        vector = read_vector(model, manifest)
        runtime = EdgeRuntime(model_bytes, manifest, version, self.config.runtime)
        interface = model_interface(model, manifest,
                                    json.loads(metadata.get(CLASS_NAMES_KEY, '[]')),
                                    runtime.input_size)
        outcome = self.state.load_snapshot(version, vector, vector_digest(vector),
                                           model_id=metadata.get(MODEL_ID_KEY, ''),
                                           requested=True)
        if outcome.applied_versions:
            self._run_active(runtime, interface, version)
        else:
            runtime.close()
        return outcome

    def load_snapshot(self, payload: SnapshotPayload, *, requested: bool = True) -> Outcome:
        """Verify a whole-model snapshot and make it active (off the inference path).

        ``requested``: the drone asked for a snapshot and has not received one since. The
        default keeps what callers before this argument got; the drone node passes its own
        state. An unrequested snapshot while a model runs must be that model (same id,
        manifest, graph inputs and outputs, class names, input size and normalisation) at a
        version a little newer, or it is rejected (EdgeModelState.load_snapshot).

        A snapshot of another interface (a new model, or the first) has its runtime built
        before anything is activated: one ONNX Runtime cannot load is refused as a bad model.
        """
        try:
            opened = open_snapshot(payload)
        except SnapshotError as e:
            return self._snapshot_refused(e)
        same = self._interface is not None and self._interface.matches(opened.interface)
        checks = dict(model_id=payload.model_id, requested=requested, same_interface=same)
        refusal = self.state.check_snapshot(payload.version, opened.vector, payload.digest,
                                            **checks)
        if refusal is not None:
            return refusal
        runtime = None
        if not same:
            try:
                runtime = self._new_runtime(payload, opened.manifest)
            except SnapshotError as e:
                return self._snapshot_refused(e)
        # It passed check_snapshot: this activates it.
        outcome = self.state.load_snapshot(payload.version, opened.vector, payload.digest,
                                           **checks)
        self._run_active(runtime, opened.interface, payload.version)
        return outcome

    def offer_patch(self, patch: PatchPayload) -> Outcome:
        """Apply a patch if it verifies; the new model swaps in once built."""
        outcome = self.state.offer(patch)
        if outcome.applied_versions and self.runtime is not None:
            self.runtime.submit(self.state.vector, self.state.version)
        return outcome

    def infer(self, frame_rgb: np.ndarray, resize_to_input: bool = False) -> np.ndarray | None:
        """Class-id mask of one frame, or None while the drone has no model yet."""
        runtime = self.runtime
        return None if runtime is None else runtime.infer(frame_rgb, resize_to_input)

    def set_sampling(self, rate: float, update_period: float) -> bool:
        """Sample at `rate` frames/s in batches of `update_period` s, as the ground says.

        Return whether that changed anything. ValueError (and the settings in force are kept)
        unless both lie within the config's bounds.
        """
        config = self.config
        _check_within('sampling_rate', rate, config.sampling_rate_min, config.sampling_rate_max)
        _check_within('update_period', update_period, config.update_period_min,
                      config.update_period_max)
        changed = (rate, update_period) != (self.sampler.rate, self.sampler.update_period)
        self.sampler.set_rate(rate)
        self.sampler.set_update_period(update_period)
        return changed

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

    def _new_runtime(self, payload: SnapshotPayload, manifest: ParameterManifest) -> EdgeRuntime:
        """Build the runtime of a verified snapshot's model; SnapshotError if it cannot run."""
        try:
            return EdgeRuntime(bytes(payload.model_data), manifest, payload.version,
                               self.config.runtime)
        except Exception as e:  # noqa: BLE001 - ONNX Runtime raises its own types on bad graphs
            raise SnapshotError('bad-model', f'{type(e).__name__}: {e}') from e

    def _snapshot_refused(self, error: SnapshotError) -> Outcome:
        return Outcome(NEEDS_SNAPSHOT, f'snapshot-{error.reason}', self.state.version)

    def _run_active(self, runtime: EdgeRuntime | None, interface: ModelInterface,
                    built_version: int) -> None:
        """Run the state's newly active vector: in `runtime` (built at built_version) if new."""
        if runtime is not None:
            self._install(runtime, interface)
        self._interface = interface  # a matching one may add the normalisation a file lacks
        if runtime is None or self.state.version != built_version:  # held patches applied
            self.runtime.submit(self.state.vector, self.state.version)

    def _install(self, runtime: EdgeRuntime, interface: ModelInterface) -> None:
        # A different model (architecture, layout or interface) needs a new runtime; the
        # reference swap is atomic, and the old runtime finishes the frame it is on before it
        # is closed.
        previous = self.runtime
        self.runtime = runtime
        self.class_names = interface.class_names
        self.class_colours = interface.class_colours
        if previous is not None:
            previous.close()


def _check_within(name: str, value: float, low: float, high: float) -> None:
    if not low <= value <= high:   # False for NaN too
        raise ValueError(f'{name} must be within [{low:g}, {high:g}], got {value!r}')
