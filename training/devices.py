"""The torch device training runs on (the switch itself: `service.core.devices`)."""

from __future__ import annotations

import torch

from service.core.devices import cpu_forced


def pick_device() -> torch.device:
    """CUDA when present, unless `BOXGEN_DEVICE=cpu` asks for the CPU."""
    if cpu_forced() or not torch.cuda.is_available():
        return torch.device("cpu")
    return torch.device("cuda")
