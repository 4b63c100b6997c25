"""Generator throughput: torch eager vs onnxruntime at batch 64, side by side in one run.

    python bench/generator_throughput.py [--profiles demo thesis] [--batch 64] [--repeats 5]

Prints images per second for each backend and the onnxruntime/torch ratio. Uses CUDA for both
(torch CUDA, onnxruntime's CUDA provider) when present, the CPU otherwise.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import torch

from service.core.gan_session import GeneratorSession, latents
from service.core.onnx_session import providers
from training.config import profile
from training.export import export_onnx
from training.loop import build_networks


def median_seconds(fn, repeats: int) -> float:
    fn()  # warm-up: allocator, cuDNN autotune, onnxruntime arena
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        fn()
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def bench_profile(name: str, batch: int, repeats: int) -> dict[str, float]:
    cfg = profile(name)
    generator, _ = build_networks(cfg)
    generator.eval()
    z = latents(batch, cfg.z_dim, seed=0)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "generator.onnx"
        export_onnx(generator, path)
        session = GeneratorSession(path, batch_size=batch)
        device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
        model = generator.to(device)
        z_torch = torch.from_numpy(z).to(device)

        def run_torch() -> None:
            with torch.no_grad():
                model(z_torch).cpu()  # to host, like onnxruntime's output

        torch_s = median_seconds(run_torch, repeats)
        ort_s = median_seconds(lambda: session.run(z), repeats)
    return {"torch_img_s": batch / torch_s, "ort_img_s": batch / ort_s, "ratio": torch_s / ort_s}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--profiles", nargs="+", default=["demo", "thesis"])
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    device = torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu"
    print(f"device: {device}; onnxruntime providers: {providers()}; batch {args.batch}")
    print(f"{'profile':<8} {'torch img/s':>12} {'onnxrt img/s':>13} {'onnxrt/torch':>13}")
    for name in args.profiles:
        r = bench_profile(name, args.batch, args.repeats)
        print(f"{name:<8} {r['torch_img_s']:>12.1f} {r['ort_img_s']:>13.1f} {r['ratio']:>12.2f}x")


if __name__ == "__main__":
    main()
