"""Declared ROS parameters with checks: one table per node, refused values explained.

Each node lists its parameters as ``Param`` entries: name, default, description, and the
values it accepts (choices, or a numeric range). ``declare_all`` declares them with
descriptors (so ``ros2 param describe`` shows the description, the range and whether the
value can change at run time) and raises ``ParameterError`` naming the parameter for any value
the table refuses, so a node given a bad value at start-up stops with a clear message instead
of running with it. ``check`` gives the same verdict for run-time changes (from an
``add_on_set_parameters_callback``).

An empty list cannot carry its type in ROS (rclpy infers ``[]`` as a byte array), so list
parameters are declared with their type and no value; ``read`` returns ``[]`` for them while
they are unset.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass

from rcl_interfaces.msg import FloatingPointRange, IntegerRange, ParameterDescriptor
from rclpy.exceptions import ParameterUninitializedException
from rclpy.parameter import Parameter


class ParameterError(ValueError):
    """A parameter value the node refuses."""


@dataclass(frozen=True)
class Param:
    """One parameter: its default (or, for lists, Parameter.Type) and the values it accepts."""

    name: str
    default: object
    description: str
    choices: tuple = ()
    low: float | None = None  # inclusive bounds for numbers (each element of a number list)
    high: float | None = None
    above: float | None = None  # exclusive lower bound (e.g. "positive")
    read_only: bool = True  # False: may change at run time

    def descriptor(self) -> ParameterDescriptor:
        descriptor = ParameterDescriptor(name=self.name, description=self.description,
                                         read_only=self.read_only)
        constraints = []
        if self.choices:
            constraints.append('one of ' + ', '.join(map(str, self.choices)))
        if self.above is not None:
            constraints.append(f'> {self.above}')
        if self.low is not None and self.high is not None and isinstance(self.default, int) \
                and not isinstance(self.default, bool):
            descriptor.integer_range = [IntegerRange(from_value=int(self.low),
                                                     to_value=int(self.high), step=1)]
        elif self.low is not None and self.high is not None and isinstance(self.default, float):
            descriptor.floating_point_range = [FloatingPointRange(
                from_value=float(self.low), to_value=float(self.high), step=0.0)]
        elif self.low is not None or self.high is not None:
            constraints.append(f'in [{self.low}, {self.high}]')
        descriptor.additional_constraints = '; '.join(constraints)
        return descriptor

    def check(self, value) -> str:
        """Return '' when the value is acceptable, else why not."""
        if value is None:
            return ''
        values = list(value) if isinstance(value, (list, tuple)) else [value]
        for v in values:
            if self.choices and v not in self.choices:
                return f"parameter '{self.name}' must be one of {list(self.choices)}, got {v!r}"
            if isinstance(v, (int, float)) and not isinstance(v, bool):
                if not math.isfinite(v):
                    return f"parameter '{self.name}' must be finite, got {v}"
                if self.above is not None and not v > self.above:
                    return f"parameter '{self.name}' must be > {self.above}, got {v}"
                if self.low is not None and v < self.low:
                    return f"parameter '{self.name}' must be >= {self.low}, got {v}"
                if self.high is not None and v > self.high:
                    return f"parameter '{self.name}' must be <= {self.high}, got {v}"
        return ''


def declare_all(node, params: Iterable[Param]) -> dict[str, Param]:
    """Declare every parameter on the node; raise ParameterError for a refused value."""
    table = {p.name: p for p in params}
    for p in table.values():
        try:
            node.declare_parameter(p.name, p.default, p.descriptor())
        except Exception as e:  # rclpy raises several types for wrong types and ranges
            raise ParameterError(f"parameter '{p.name}': {e}") from e
        reason = p.check(read(node, p.name))
        if reason:
            raise ParameterError(reason)
    return table


def read(node, name: str):
    """Return a parameter's value; [] for a list parameter that is still unset."""
    try:
        value = node.get_parameter(name).value
    except ParameterUninitializedException:
        return []
    return [] if value is None else (list(value) if isinstance(value, (list, tuple))
                                     or hasattr(value, 'tolist') else value)


def check(table: dict[str, Param], parameters: Iterable[Parameter]) -> str:
    """Return '' when every change is acceptable, else the first reason one is not."""
    for parameter in parameters:
        spec = table.get(parameter.name)
        if spec is not None:
            reason = spec.check(parameter.value)
            if reason:
                return reason
    return ''


def list_type(kind: str) -> Parameter.Type:
    """Return the Parameter.Type for a list parameter with no default ('string', 'integer'...)."""
    return {'string': Parameter.Type.STRING_ARRAY, 'integer': Parameter.Type.INTEGER_ARRAY,
            'double': Parameter.Type.DOUBLE_ARRAY, 'bool': Parameter.Type.BOOL_ARRAY}[kind]
