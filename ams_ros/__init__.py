"""Adaptive Model Streaming for ROS 2: the engine (plain Python) and its ROS adapters."""

__version__ = '0.1.0'

# Pixels the teacher leaves out carry this label and are ignored by the loss and metrics.
IGNORE_LABEL = 255
