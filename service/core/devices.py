"""Where models run: CUDA when present, unless `BOXGEN_DEVICE=cpu` asks for the CPU.

One switch for both runtimes: onnxruntime's providers (`onnx_session`) and torch's device
(`training.devices`) read it here.
"""

from __future__ import annotations

import os

DEVICE_ENV = "BOXGEN_DEVICE"


def cpu_forced() -> bool:
    """Whether `BOXGEN_DEVICE=cpu` keeps everything on the CPU."""
    return os.environ.get(DEVICE_ENV, "").lower() == "cpu"

