"""Training speed per profile: seconds per generator iteration, fp32 vs bf16 autocast, one run.

    python bench/train_speed.py [--profiles demo thesis] [--iterations 20]

Random images stand in for data (speed does not depend on content). Autocast only applies on
CUDA, so on a CPU both columns measure the same thing and the ratio is about 1.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch

from training.config import profile
from training.devices import pick_device
from training.loop import train


def seconds_per_iteration(name: str, iterations: int, amp: bool) -> float:
    cfg = profile(name).replace(
        iterations=iterations, amp=amp, sample_every=10**9, checkpoint_every=10**9
    )
    images = torch.rand(256, 3, cfg.resolution, cfg.resolution) * 2 - 1
    with tempfile.TemporaryDirectory() as tmp:
        warm = cfg.replace(iterations=2)
        train(warm, images, Path(tmp) / "warm")  # cuDNN autotune, allocator
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        started = time.perf_counter()
        train(cfg, images, Path(tmp) / "run")
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        return (time.perf_counter() - started) / iterations


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--profiles", nargs="+", default=["demo", "thesis"])
    parser.add_argument("--iterations", type=int, default=20)
    args = parser.parse_args()
    device = pick_device()
    name = torch.cuda.get_device_name() if device.type == "cuda" else "cpu"
    print(f"device: {name}")
    print(f"{'profile':<8} {'fp32 s/it':>10} {'bf16 s/it':>10} {'fp32/bf16':>10}")
    for name in args.profiles:
        fp32 = seconds_per_iteration(name, args.iterations, amp=False)
        bf16 = seconds_per_iteration(name, args.iterations, amp=True)
        print(f"{name:<8} {fp32:>10.3f} {bf16:>10.3f} {fp32 / bf16:>9.2f}x")


if __name__ == "__main__":
    main()
