"""A small, untrained student for the evaluation tests: BatchNorm calibrated on noise."""

import torch

from ams_ros.model.student import InputSpec, build_student
from ams_ros.model.template import StudentTemplate
from ams_ros.world import CLASS_NAMES

ARCH = 'deeplabv3_mbv2_small'


def calibrated_template(spec: InputSpec) -> StudentTemplate:
    """Return a seeded fresh student whose BatchNorm statistics saw one batch of noise."""
    torch.manual_seed(0)
    model = build_student(ARCH, len(CLASS_NAMES))
    model.train()
    with torch.no_grad():  # calibrate BatchNorm a little, as an untrained student would be
        model(torch.randn(4, 3, spec.height, spec.width))
    return StudentTemplate.from_model(model.eval(), ARCH, CLASS_NAMES, spec)
