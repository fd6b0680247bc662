"""Edge side: the drone's student in ONNX Runtime, double-buffered so patches never stall it.

How new weights get into the running model (measured on ONNX Runtime 1.32; bench/bench_edge.py
measures what swaps cost a running model):

- ``SessionOptions.add_initializer`` at the default optimisation level is silently ignored:
  constant folding and BatchNorm fusion bake the original values into the optimised graph;
- with optimisations off, or with the weights as graph inputs, swaps work but every frame
  runs about 2x slower;
- writing the new values into the initializers' raw bytes, re-serialising, and building a new
  ``InferenceSession`` costs about 25 ms on the CPU and leaves inference at full speed.

So each new vector gets a fresh session, built by a background worker while the old session
keeps serving frames; the worker then replaces the active model with one attribute assignment.
``infer`` reads that attribute once per frame and never takes a lock, so it never waits for a
build. Submissions that arrive while a build runs queue with ``maxlen=1``: only the latest is
built, since an older vector would be replaced at once anyway.

Threads share the GIL, so the build is off the inference path only where the libraries release
it. ONNX Runtime 1.32 releases it while building a session; 1.30 held it for about 35 of the
50 ms a session of the 2.1 M-parameter student takes (measured on a 16-core x86 host), which
stalls frames in flight. Serialising the patched model (protobuf) holds it in any version,
about 12-20 ms for that student: a frame in flight may wait that long, once per swap.

The vector handed in must already be verified (``model_version.EdgeModelState`` does that):
this module only runs what it is given.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from dataclasses import dataclass

import numpy as np
import onnxruntime as ort

from ams_ros.model.manifest import ParameterManifest
from ams_ros.model.onnx_params import InitializerWriter
from ams_ros.pixels import resize_frame, resize_labels

# Fastest first. TensorRT compiles an engine per session, i.e. per swap: seconds to minutes.
DEFAULT_PROVIDER_ORDER = (
    'TensorrtExecutionProvider', 'CUDAExecutionProvider', 'CPUExecutionProvider')


@dataclass(frozen=True)
class RuntimeConfig:
    """How sessions are built.

    providers: ONNX Runtime providers to try, in order; those not available are skipped.
    use_tensorrt: keep TensorRT among the providers when it is available (fastest inference,
        but every swap compiles an engine: seconds to minutes); False drops it, where swaps
        must be quick.
    intra_op_threads: threads per inference (0: ONNX Runtime's default).
    latency_window: how many recent frames the latency statistics cover.
    swap_history: how many recent swap records are kept.
    """

    providers: tuple[str, ...] = DEFAULT_PROVIDER_ORDER
    use_tensorrt: bool = True
    intra_op_threads: int = 0
    latency_window: int = 300
    swap_history: int = 100


def select_providers(preferred: tuple[str, ...] = DEFAULT_PROVIDER_ORDER,
                     use_tensorrt: bool = True,
                     available: list[str] | None = None) -> list[str]:
    """Keep the preferred providers this ONNX Runtime build has, in order; CPU is the floor."""
    available = ort.get_available_providers() if available is None else available
    chosen = [p for p in preferred if p in available
              and (use_tensorrt or p != 'TensorrtExecutionProvider')]
    if 'CPUExecutionProvider' not in chosen:
        chosen.append('CPUExecutionProvider')
    return chosen


@dataclass(frozen=True)
class LatencySummary:
    count: int          # frames in the window
    p50_ms: float
    p99_ms: float
    fps: float          # frames completed per second of wall time across the window


class LatencyStats:
    """Rolling window of per-frame latencies, with the completion times that give fps."""

    def __init__(self, window: int):
        self._samples: deque[tuple[float, float]] = deque(maxlen=window)
        self._lock = threading.Lock()
        self.total = 0      # frames ever recorded

    def record(self, latency_s: float, finished_at: float) -> None:
        with self._lock:
            self._samples.append((latency_s, finished_at))
            self.total += 1

    def summary(self) -> LatencySummary:
        with self._lock:
            samples = list(self._samples)
        if not samples:
            return LatencySummary(0, float('nan'), float('nan'), 0.0)
        latencies_ms = 1e3 * np.array([s[0] for s in samples])
        span = samples[-1][1] - samples[0][1]
        # n completions span n-1 intervals; one sample alone says nothing about the rate.
        fps = (len(samples) - 1) / span if span > 0 else 0.0
        p50, p99 = np.percentile(latencies_ms, [50, 99])
        return LatencySummary(len(samples), float(p50), float(p99), fps)


APPLIED = 'applied'
FAILED = 'failed'            # the old model stays active
SUPERSEDED = 'superseded'    # built, but a later submission was swapped in first


@dataclass(frozen=True)
class SwapRecord:
    """The fate of one built vector."""

    version: int
    outcome: str
    # time.monotonic() at submission, build start, session built, and swap (or failure) done.
    submitted_at: float
    started_at: float
    built_at: float
    finished_at: float
    error: str | None = None

    @property
    def build_s(self) -> float:
        """Writing the vector into the model and building its session."""
        return self.built_at - self.started_at

    @property
    def submit_to_active_s(self) -> float:
        return self.finished_at - self.submitted_at


@dataclass(frozen=True)
class RuntimeCounters:
    frames: int = 0
    swaps_submitted: int = 0
    swaps_applied: int = 0
    swaps_failed: int = 0
    swaps_superseded: int = 0   # dropped from the queue or built too late: a later one won


@dataclass(frozen=True)
class RuntimeStatus:
    active_version: int
    providers: list[str]
    latency: LatencySummary
    counters: RuntimeCounters
    last_swap: SwapRecord | None
    building: bool


@dataclass(frozen=True)
class _ActiveModel:
    """Everything infer needs from one model, replaced as a whole by a swap."""

    session: ort.InferenceSession
    version: int
    sequence: int       # submission order: a slower, older build never replaces a newer one
    input_name: str
    height: int
    width: int


@dataclass(frozen=True)
class _Submission:
    flat: np.ndarray
    version: int
    sequence: int
    submitted_at: float


class EdgeRuntime:
    """The student in ONNX Runtime: ``infer`` frames, ``submit`` new weights to swap in.

    ``infer`` may be called from any number of threads. Builds for ``submit`` run on one
    background worker; ``swap_in`` builds on the calling thread instead. Call ``close`` (or use
    the runtime as a context manager) to stop the worker.
    """

    def __init__(self, model_bytes: bytes, manifest: ParameterManifest, version: int = 0,
                 config: RuntimeConfig = RuntimeConfig()):
        self.config = config
        self.providers = select_providers(config.providers, config.use_tensorrt)
        self._writer = InitializerWriter(model_bytes, manifest)  # checks the manifest mapping
        self._build_lock = threading.Lock()    # the writer's template is not thread-safe
        self._swap_lock = threading.Lock()     # held only to replace the active model
        self._changed = threading.Condition()  # notified after every swap or failure
        self._latency = LatencyStats(config.latency_window)
        self._counts = {name: 0 for name in RuntimeCounters.__dataclass_fields__
                        if name != 'frames'}
        self._history: deque[SwapRecord] = deque(maxlen=config.swap_history)
        self._pending: deque[_Submission] = deque(maxlen=1)
        self._building = False
        self._next_sequence = 1
        self._closed = False
        self._active = self._make_active(self._new_session(model_bytes), version, 0)
        self._worker = threading.Thread(target=self._work, name='edge-runtime-swap', daemon=True)
        self._worker.start()

    # -- inference -------------------------------------------------------------------------

    @property
    def input_size(self) -> tuple[int, int]:
        active = self._active
        return active.height, active.width

    @property
    def active_version(self) -> int:
        return self._active.version

    def infer(self, frame_rgb: np.ndarray, resize_to_input: bool = False) -> np.ndarray:
        """Segment one RGB uint8 frame of any size: class ids uint8 at the model's input size.

        With resize_to_input the mask is scaled back (nearest) to the frame's own size.
        """
        frame_rgb = np.asarray(frame_rgb)
        started = time.perf_counter()
        # One read of the reference: a swap during this call does not affect it.
        active = self._active
        image = resize_frame(frame_rgb, active.height, active.width)
        mask = active.session.run(['labels'], {active.input_name: image[None]})[0][0]
        if resize_to_input and mask.shape != frame_rgb.shape[:2]:
            mask = resize_labels(mask, *frame_rgb.shape[:2])
        finished = time.perf_counter()
        self._latency.record(finished - started, finished)
        return mask

    # -- swapping --------------------------------------------------------------------------

    def submit(self, flat: np.ndarray, version: int) -> None:
        """Queue a verified flat vector to be built and swapped in off this thread.

        If a submission is still waiting, this one replaces it. The vector is copied, so the
        caller may reuse its array.
        """
        submission = self._new_submission(flat, version)
        with self._changed:
            if self._closed:
                raise RuntimeError('EdgeRuntime is closed')
            if self._pending:
                self._counts['swaps_superseded'] += 1
            self._pending.append(submission)
            self._changed.notify_all()

    def swap_in(self, flat: np.ndarray, version: int) -> SwapRecord:
        """Build the vector's session on the calling thread and swap it in; return the record.

        Inference goes on with the old model meanwhile. A failure is recorded, not raised.
        """
        return self._build_and_swap(self._new_submission(flat, version))

    def wait_for_version(self, version: int, timeout: float) -> bool:
        """Block until `version` is the active one; False if the timeout passes first."""
        with self._changed:
            return self._changed.wait_for(lambda: self._active.version == version, timeout)

    def wait_until_idle(self, timeout: float) -> bool:
        """Block until no submission is queued or being built; False on timeout."""
        with self._changed:
            return self._changed.wait_for(
                lambda: not self._pending and not self._building, timeout)

    @property
    def swap_history(self) -> list[SwapRecord]:
        return list(self._history)

    @property
    def last_error(self) -> str | None:
        failed = [r for r in self._history if r.outcome == FAILED]
        return failed[-1].error if failed else None

    def status(self) -> RuntimeStatus:
        with self._changed:
            counters = RuntimeCounters(frames=self._latency.total, **self._counts)
            last = self._history[-1] if self._history else None
            building = self._building or bool(self._pending)
        return RuntimeStatus(self.active_version, list(self.providers),
                             self._latency.summary(), counters, last, building)

    def close(self) -> None:
        """Stop the worker after its current build; queued submissions are dropped."""
        with self._changed:
            self._closed = True
            self._pending.clear()
            self._changed.notify_all()
        if threading.current_thread() is not self._worker:
            self._worker.join()

    def __enter__(self) -> EdgeRuntime:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # -- internals -------------------------------------------------------------------------

    def _new_submission(self, flat: np.ndarray, version: int) -> _Submission:
        submitted_at = time.monotonic()
        with self._changed:
            sequence = self._next_sequence
            self._next_sequence += 1
            self._counts['swaps_submitted'] += 1
        return _Submission(np.array(flat, copy=True), int(version), sequence, submitted_at)

    def _work(self) -> None:
        while True:
            with self._changed:
                self._changed.wait_for(lambda: self._pending or self._closed)
                if self._closed:
                    return
                submission = self._pending.popleft()
                self._building = True
            try:
                self._build_and_swap(submission)
            finally:
                with self._changed:
                    self._building = False
                    self._changed.notify_all()

    def _build_and_swap(self, submission: _Submission) -> SwapRecord:
        started = time.monotonic()
        error = None
        try:
            with self._build_lock:
                model_bytes = self._writer.write(submission.flat)
            built = self._make_active(self._new_session(model_bytes), submission.version,
                                      submission.sequence)
        except Exception as exc:  # any failure keeps the old model; the record reports it
            built, error = None, f'{type(exc).__name__}: {exc}'
        built_at = time.monotonic()
        outcome = FAILED
        if built is not None:
            with self._swap_lock:
                outcome = APPLIED if built.sequence > self._active.sequence else SUPERSEDED
                if outcome == APPLIED:
                    self._active = built
        finished = time.monotonic()
        record = SwapRecord(submission.version, outcome, submission.submitted_at, started,
                            built_at, finished, error)
        with self._changed:
            self._history.append(record)
            self._counts[{APPLIED: 'swaps_applied', FAILED: 'swaps_failed',
                          SUPERSEDED: 'swaps_superseded'}[outcome]] += 1
            self._changed.notify_all()
        return record

    def _new_session(self, model_bytes: bytes) -> ort.InferenceSession:
        options = ort.SessionOptions()
        options.intra_op_num_threads = self.config.intra_op_threads
        return ort.InferenceSession(model_bytes, options, providers=self.providers)

    @staticmethod
    def _make_active(session: ort.InferenceSession, version: int,
                     sequence: int) -> _ActiveModel:
        (image,) = session.get_inputs()
        if image.type != 'tensor(uint8)' or len(image.shape) != 4 or image.shape[3] != 3:
            raise ValueError(f'expected input uint8 [1, H, W, 3], got {image.type} {image.shape}')
        height, width = image.shape[1:3]
        if not (isinstance(height, int) and isinstance(width, int)):
            raise ValueError(f'the input size must be fixed, got {image.shape}')
        if 'labels' not in {o.name for o in session.get_outputs()}:
            raise ValueError("the model has no 'labels' output")
        # One run before going live: a model that cannot run never replaces a working one,
        # and the first real frame does not pay for the session's lazy allocations.
        session.run(['labels'], {image.name: np.zeros((1, height, width, 3), np.uint8)})
        return _ActiveModel(session, version, sequence, image.name, height, width)
