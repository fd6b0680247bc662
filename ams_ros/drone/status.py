"""What the drone reports about itself: its health in one line and its diagnostic values."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

from ams_ros.counters import Counters
from ams_ros.drone.edge_runtime import RuntimeStatus
from ams_ros.drone.model_updates import ModelUpdates


@dataclass(frozen=True)
class StatusReport:
    """One report period of the drone: its EdgeStatus fields and its /diagnostics entry."""

    edge_status: dict  # every EdgeStatus field but stamp and signature
    level: str  # 'ok', 'warn' or 'error'
    message: str
    values: dict


def status_report(updates: ModelUpdates, counters: Counters) -> StatusReport:
    """Close the counters' report period and describe the drone over it."""
    counts, period, elapsed = counters.take_period()
    fps = period.get('frames_inferred', 0) / elapsed
    runtime = updates.agent.runtime
    status = runtime.status() if runtime is not None else None
    last_error = counters.last_error
    level, message = drone_health(period, status, updates.unconfirmed_version, last_error)
    return StatusReport(edge_status_fields(updates, status, counts, fps, last_error), level,
                        message, diagnostic_values(updates, status, counts, fps, last_error))


def drone_health(period: Mapping[str, int], status: RuntimeStatus | None,
                 unconfirmed_version: int | None, last_error: str) -> tuple[str, str]:
    """Return (level, message): 'ok', 'warn' or 'error', worst cause first.

    `period` holds the counters of the last report period, `status` the runtime's (None
    without a model).
    """
    bad = sum(v for k, v in period.items() if k.startswith('bad_images.'))
    received = period.get('frames_received', 0)
    if received and bad >= received:
        return 'error', f'every camera image in the last period was refused: {last_error}'
    if status is None:
        return 'warn', 'no model yet: waiting for a snapshot from the ground'
    if status.last_swap is not None and status.last_swap.outcome == 'failed':
        return 'error', f'the latest model failed to build: {status.last_swap.error}'
    if period.get('errors', 0):
        return 'warn', f"{period['errors']} errors in the last period: {last_error}"
    if unconfirmed_version is not None:
        return 'warn', (f'v{unconfirmed_version} running, from a snapshot the drone did not ask '
                        'for; no patch from the ground has confirmed it yet')
    if not received:
        return 'warn', f'v{status.active_version} running; no camera frames'
    return 'ok', f'v{status.active_version} running'


def edge_status_fields(updates: ModelUpdates, status: RuntimeStatus | None,
                       counts: Mapping[str, int], fps: float, last_error: str) -> dict:
    """Return the fields of the drone's ams_msgs/EdgeStatus (all but stamp and signature)."""
    agent = updates.agent
    latency = status.latency if status is not None else None
    active = status.active_version if status else 0
    return dict(
        client_id=agent.config.client_id, model_id=agent.model_id, active_version=active,
        active_digest=agent.state.digest_of(active) or b'', sampling_rate=agent.sampler.rate,
        update_period=agent.sampler.update_period, inference_fps=fps,
        latency_p50_ms=latency.p50_ms if latency else 0.0,
        latency_p99_ms=latency.p99_ms if latency else 0.0,
        **{k: counts.get(k, 0) for k in (
            'frames_received', 'frames_inferred', 'frames_sampled', 'batches_sent', 'bytes_up',
            'bytes_down', 'patches_applied', 'patches_rejected')},
        last_error=last_error)


def diagnostic_values(updates: ModelUpdates, status: RuntimeStatus | None,
                      counts: Mapping[str, int], fps: float, last_error: str) -> dict:
    """Return the key/values of the drone's /diagnostics entry."""
    agent = updates.agent
    latency = status.latency if status is not None else None
    # Patch-apply latency (submit to active) of the swaps the runtime keeps, newest last.
    swaps = agent.runtime.swap_history if agent.runtime is not None else []
    swap_ms = [1e3 * r.submit_to_active_s for r in swaps]
    nan = float('nan')
    return {
        'client_id': agent.config.client_id, 'model_id': agent.model_id,
        'active_version': status.active_version if status else 0,
        'verified_version': agent.version,
        # What the ground's mirror of this version must hash to (the mirror invariant).
        'verified_digest': (agent.state.digest or b'').hex(),
        'unconfirmed_version': updates.unconfirmed_version or 0,
        'fps': fps,
        'latency_p50_ms': latency.p50_ms if latency else nan,
        'latency_p99_ms': latency.p99_ms if latency else nan,
        'providers': ','.join(status.providers) if status else '',
        'sampling_rate': agent.sampler.rate, 'update_period': agent.sampler.update_period,
        'snapshot_requests': updates.requester.sent,
        **dict(sorted(counts.items())),
        'swaps_failed': status.counters.swaps_failed if status else 0,
        'swap_version': swaps[-1].version if swaps else 0,
        'swap_ms_last': swap_ms[-1] if swaps else nan,
        'swap_ms_p50': float(np.percentile(swap_ms, 50)) if swaps else nan,
        'swap_ms_p99': float(np.percentile(swap_ms, 99)) if swaps else nan,
        'last_error': last_error,
    }
