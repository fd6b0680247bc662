"""Named AMS settings: the project's defaults and the paper's algorithm, side by side.

A profile fixes what makes one AMS differ from another: which parameters a phase selects and
how many, the step size, the training horizon, T_update and the patch format. Everything else
(K, batch size, ASR, the link, the student) is shared, so running two profiles on the same
flights measures exactly what the departures buy.

- ``paper``: Algorithms 1 and 2 as published: the top 5% of |u| (Adam's last update), alpha
  1e-3, T_horizon 240 s, T_update 10 s, and gzip'd bit-mask + float16 patches.
- ``ams`` (the default): the same loop with the departures the README's evidence supports.

The ground node takes a profile as a parameter overlay (config/profiles/NAME.yaml, the launch
files' ``profile`` argument); `ams eval` runs ``ams`` as AMS and ``paper`` as ``ams_paper``.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from ams_ros.drone.agent import DroneConfig
from ams_ros.ground.drone_session import GroundConfig
from ams_ros.ground.selection import GRADIENT_GUIDED, GRADIENT_MAGNITUDE
from ams_ros.wire.patch_codec import DEFAULT_FORMAT, PAPER_FORMAT, PatchFormat


@dataclass(frozen=True)
class AmsProfile:
    strategy: str
    fraction: float
    learning_rate: float
    class_balance: float
    horizon_s: float
    t_update: float
    patch_format: PatchFormat

    def ground(self, base: GroundConfig) -> GroundConfig:
        """Return `base` with this profile's training, T_update and patch format."""
        trainer = dataclasses.replace(base.trainer, strategy=self.strategy, fraction=self.fraction,
                                      learning_rate=self.learning_rate,
                                      class_balance=self.class_balance, horizon_s=self.horizon_s)
        atr = dataclasses.replace(base.atr, period_min=self.t_update,
                                  period_max=max(base.atr.period_max, self.t_update))
        return dataclasses.replace(base, trainer=trainer, atr=atr, patch_format=self.patch_format)

    def drone(self, base: DroneConfig) -> DroneConfig:
        """Return `base` sampling in batches of this profile's T_update until the ground says."""
        return dataclasses.replace(base, update_period=self.t_update)


PAPER = AmsProfile(strategy=GRADIENT_GUIDED, fraction=0.05, learning_rate=1e-3,
                   class_balance=0.0, horizon_s=240.0, t_update=10.0, patch_format=PAPER_FORMAT)
AMS = AmsProfile(strategy=GRADIENT_MAGNITUDE, fraction=0.05, learning_rate=3e-3,
                 class_balance=0.5, horizon_s=240.0, t_update=6.0,
                 patch_format=dataclasses.replace(DEFAULT_FORMAT, value_mode='q8-delta'))
PROFILES = {'ams': AMS, 'paper': PAPER}
DEFAULT_PROFILE = 'ams'
