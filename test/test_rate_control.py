"""φ-score, adaptive sampling rate (paper Eq. 1) and adaptive training rate."""

import numpy as np
import pytest

from ams_ros import IGNORE_LABEL
from ams_ros.ground.rate_control import (
    AdaptiveSamplingRate,
    AdaptiveTrainingRate,
    AsrConfig,
    AtrConfig,
    phi_score,
)


def test_phi_is_zero_for_unchanged_labels_and_one_for_all_changed():
    labels = np.array([[0, 1], [2, 2]], np.uint8)
    assert phi_score(labels, labels) == 0.0
    assert phi_score(labels, (labels + 1) % 3) == 1.0


def test_phi_is_one_minus_miou_of_new_labels_against_previous():
    previous = np.array([[0, 0, 1, 1]], np.uint8)
    current = np.array([[0, 1, 1, 1]], np.uint8)  # class 0 IoU 1/2, class 1 IoU 2/3
    assert phi_score(previous, current) == pytest.approx(1 - (1 / 2 + 2 / 3) / 2)


def test_phi_leaves_out_ignored_pixels():
    previous = np.array([[0, 0, 1, IGNORE_LABEL]], np.uint8)
    current = np.array([[0, 0, 1, 1]], np.uint8)
    assert phi_score(previous, current) == 0.0
    nothing = np.full((2, 2), IGNORE_LABEL, np.uint8)
    assert phi_score(nothing, current[:, :2].repeat(2, 0)) is None


def asr(**overrides):
    settings = dict(phi_target=0.4, step_size=2.0, rate_min=0.1, rate_max=1.0,
                    initial_rate=0.5, interval=10.0)
    settings.update(overrides)
    return AdaptiveSamplingRate(AsrConfig(**settings))


def observe_window(controller, start, phis):
    """Observe one φ per second from `start`, then update at the newest stamp."""
    for offset, phi in enumerate(phis):
        controller.observe(start + offset, phi)
    return controller.update(start + len(phis) - 1)


def test_asr_applies_eq1_every_interval():
    controller = asr()
    assert observe_window(controller, 0, [0.5] * 10) is None  # δt has not passed yet
    assert controller.rate == 0.5
    # Due at 10: φ̄ over the observations since the start, (0.5 * 10 + 0.6 * 10) / 20 = 0.55.
    assert observe_window(controller, 10, [0.6] * 10) == pytest.approx(0.5 + 2.0 * 0.15)
    assert controller.last_phi_mean == pytest.approx(0.55)
    # Due at 20: only the observations since the last update count.
    assert observe_window(controller, 20, [0.3] * 10) == pytest.approx(0.8 - 2.0 * 0.1)


def test_asr_raises_rate_on_change_and_lowers_it_when_stationary():
    busy = asr()
    observe_window(busy, 0, [0.55] * 10)
    assert observe_window(busy, 10, [0.55] * 10) == pytest.approx(0.8)
    calm = asr()
    observe_window(calm, 0, [0.25] * 10)
    assert observe_window(calm, 10, [0.25] * 10) == pytest.approx(0.2)


def test_asr_clips_the_rate():
    controller = asr()
    rates = [observe_window(controller, 10 * k, [1.0] * 10) for k in range(1, 6)]
    assert rates == [None, 1.0, 1.0, 1.0, 1.0]  # 0.5 + 2 * 0.6 = 1.7, clipped
    rates = [observe_window(controller, 10 * k, [0.0] * 10) for k in range(6, 12)]
    assert rates == pytest.approx([0.2, 0.1, 0.1, 0.1, 0.1, 0.1])  # 1.0 - 0.8, then clipped


def test_asr_waits_for_a_whole_interval_and_for_observations():
    controller = asr(interval=10.0)
    controller.observe(0.0, 0.9)
    assert controller.update(9.9) is None
    assert controller.update(10.0) is not None
    assert controller.update(19.0) is None  # next update due at 20
    assert controller.update(25.0) is None  # due, but nothing observed since the last one
    controller.observe(25.0, 0.9)
    assert controller.update(25.0) is not None


def test_asr_skips_missing_phi_and_restarts_on_a_clock_jump():
    controller = asr()
    controller.observe(0.0, None)
    controller.observe(5.0, 0.4)
    assert controller.update(10.0) == pytest.approx(0.5)  # φ̄ = 0.4, the None was skipped
    controller.observe(100.0, 0.9)
    controller.observe(1.0, 0.0)  # bag loop: pending 0.9 dropped, grid restarts at 1
    assert controller.update(10.0) is None
    assert controller.update(11.0) == pytest.approx(0.1)  # φ̄ = 0, not (0.9 + 0) / 2


def test_asr_closed_loop_settles_where_phi_meets_the_target():
    # Labels change in proportion to the time between samples: φ = speed / rate.
    controller = asr(step_size=0.5)
    start = 0
    for speed in (0.2, 0.1, 0.3):
        for _ in range(60):
            observe_window(controller, start, [min(1.0, speed / controller.rate)] * 10)
            start += 10
        assert controller.rate == pytest.approx(speed / 0.4, rel=0.05)


@pytest.mark.parametrize(('bad', 'named'), [
    (dict(phi_target=1.5), 'phi_target'), (dict(phi_target=float('nan')), 'phi_target'),
    (dict(step_size=-1), 'step_size'), (dict(rate_min=0), 'rate_min'),
    (dict(rate_min=0.5, rate_max=0.2), 'rate_max'), (dict(initial_rate=2.0), 'initial_rate'),
    (dict(interval=0), 'interval')])
def test_asr_config_refuses_bad_values(bad, named):
    with pytest.raises(ValueError, match=named):
        AsrConfig(**bad)


def atr(**overrides):
    settings = dict(enabled=True, period_min=10.0, period_max=40.0, growth=1.5, phi_low=0.2,
                    phi_high=0.4, patience=2)
    settings.update(overrides)
    return AdaptiveTrainingRate(AtrConfig(**settings))


def test_atr_lengthens_while_calm_up_to_the_maximum():
    controller = atr()
    periods = [controller.update(0.05) for _ in range(10)]
    assert periods == pytest.approx([10, 15, 15, 22.5, 22.5, 33.75, 33.75, 40, 40, 40])


def test_atr_snaps_back_when_the_scene_changes():
    controller = atr()
    for _ in range(4):
        controller.update(0.05)
    assert controller.update_period == 22.5
    assert controller.update(0.5) == 10.0


def test_atr_holds_between_thresholds_and_restarts_the_calm_count():
    controller = atr()
    for _ in range(2):
        controller.update(0.05)
    assert controller.update(0.3) == 15.0  # between thresholds: hold
    assert controller.update(0.05) == 15.0  # one calm window is not enough after the break
    assert controller.update(0.05) == 22.5


def test_atr_disabled_keeps_the_minimum_period():
    controller = AdaptiveTrainingRate(AtrConfig())
    assert not controller.config.enabled
    assert [controller.update(0.0) for _ in range(10)] == [10.0] * 10


@pytest.mark.parametrize('bad', [dict(period_min=0), dict(period_min=20, period_max=10),
                                 dict(growth=0.5), dict(phi_low=-0.1),
                                 dict(phi_low=0.5, phi_high=0.3), dict(patience=0)])
def test_atr_config_refuses_bad_values(bad):
    with pytest.raises(ValueError):
        AtrConfig(**bad)
