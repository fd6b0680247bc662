"""`ams doctor`: check that this machine can run the drone and ground nodes."""

from __future__ import annotations

import importlib
import platform


def _check(label: str, probe) -> bool:
    try:
        detail = probe()
    except Exception as exc:  # noqa: BLE001 - any failure is a finding to report
        print(f'  [FAIL] {label}: {type(exc).__name__}: {exc}')
        return False
    print(f'  [ ok ] {label}: {detail}')
    return True


def _rclpy():
    import rclpy
    from rclpy.utilities import get_rmw_implementation_identifier

    rclpy.init()
    try:
        return get_rmw_implementation_identifier()
    finally:
        rclpy.shutdown()


def _messages():
    from rclpy.serialization import deserialize_message, serialize_message

    import ams_msgs.msg as msgs

    patch = msgs.ModelPatch(version=2, value_data=b'\x01\x02')
    assert deserialize_message(serialize_message(patch), msgs.ModelPatch) == patch
    return 'ams_msgs serialises'


def _onnxruntime():
    import onnxruntime

    return f'{onnxruntime.__version__}, providers {onnxruntime.get_available_providers()}'


def _torch():
    import torch

    return f'{torch.__version__}, CUDA {"available" if torch.cuda.is_available() else "absent"}'


def _h264():
    import av

    av.CodecContext.create('libx264', 'w')
    return f'PyAV {av.__version__} with libx264'


def build_parser(parser=None):
    import argparse

    return parser or argparse.ArgumentParser(prog='ams doctor')


def run(_args) -> int:
    """Check that this machine can run the drone and ground nodes."""
    print(f'Python {platform.python_version()} on {platform.machine()}')
    results = [
        _check('rclpy', _rclpy),
        _check('ams_msgs', _messages),
        _check('onnxruntime (drone)', _onnxruntime),
        _check('H.264 encoder (drone)', _h264),
        _check('torch (ground)', _torch),
        _check('numpy', lambda: importlib.import_module('numpy').__version__),
    ]
    return 0 if all(results) else 1
