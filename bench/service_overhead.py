"""Service overhead: images per second through HTTP /generate vs the same ONNX models called
directly (generator sample + labeller), side by side in one run.

    python bench/service_overhead.py [--models DIR --sku SKU] [--n 32] [--requests 8]
                                     [--workers 1] [--concurrency 4]

Without --models it builds the tiny test repository (a 32² generator, a one-epoch labeller).
Prints images/s for: direct calls; sequential HTTP requests of n images; `--concurrency`
parallel clients asking for one image each (the case cross-request batching would help), and
the HTTP/direct ratios. Both sides produce the same images (select=none, JSON with PNGs).
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from service.core.gan_session import GeneratorSession  # noqa: E402
from service.core.labeller_session import LabellerSession  # noqa: E402
from service.core.repository import ModelRepository  # noqa: E402
from service.responses import png_bytes  # noqa: E402
from tests.service.server import DEMO_SKU, BoxgenServer  # noqa: E402


def median_rate(fn, images: int, repeats: int) -> float:
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        fn()
        times.append(time.perf_counter() - started)
    return images / statistics.median(times)


def direct_rate(models: Path, sku: str, n: int, repeats: int) -> float:
    generator = GeneratorSession(ModelRepository(models).resolve(sku).file("generator.onnx"))
    labeller = LabellerSession.from_repository(models)

    def run() -> None:
        images = generator.sample(n, seed=0)
        labeller.label(images)
        for image in images:  # the service encodes each image; count that as model-side work
            png_bytes(image)

    return median_rate(run, n, repeats)


def http_rates(server: BoxgenServer, sku: str, n: int, repeats: int, concurrency: int):
    body = {"sku": sku, "n": n, "seed": 0, "select": "none"}
    with server.client() as client:
        def sequential() -> None:
            client.post("/generate", json=body).raise_for_status()

        sequential_rate = median_rate(sequential, n, repeats)

    clients = [server.client() for _ in range(concurrency)]
    single = {**body, "n": 1}

    def one(i: int) -> None:
        clients[i % concurrency].post("/generate", json=single).raise_for_status()

    def parallel() -> None:
        with ThreadPoolExecutor(concurrency) as pool:
            list(pool.map(one, range(concurrency * 4)))

    parallel_rate = median_rate(parallel, concurrency * 4, repeats)
    for c in clients:
        c.close()
    return sequential_rate, parallel_rate


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", type=Path, help="Model repository (default: tiny test one).")
    parser.add_argument("--sku", default=DEMO_SKU)
    parser.add_argument("--n", type=int, default=32, help="Images per request.")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--concurrency", type=int, default=4)
    args = parser.parse_args()

    models = args.models
    if models is None:
        # In a child process: training the tiny labeller leaves torch's thread pool behind,
        # which would slow the direct onnxruntime calls measured here.
        models = Path(tempfile.mkdtemp(prefix="boxgen-bench-")) / "models"
        subprocess.run([sys.executable, "-c", "import sys; from pathlib import Path; "
                        "from tests.service.server import tiny_repository; "
                        "tiny_repository(Path(sys.argv[1]))", str(models)],
                       check=True, cwd=ROOT)
    direct = direct_rate(models, args.sku, args.n, args.repeats)
    direct_single = direct_rate(models, args.sku, 1, args.repeats * 4)
    with BoxgenServer(models, workers=args.workers) as server:
        sequential, parallel = http_rates(server, args.sku, args.n, args.repeats,
                                          args.concurrency)
    print(f"direct ONNX (generator + labeller + PNG), n={args.n}: {direct:8.1f} images/s")
    print(f"direct ONNX, n=1 per call:                       {direct_single:8.1f} images/s")
    print(f"HTTP /generate sequential, n={args.n}:              {sequential:8.1f} images/s "
          f"(ratio HTTP/direct {sequential / direct:.2f})")
    print(f"HTTP /generate {args.concurrency} clients, n=1 each:            "
          f"{parallel:8.1f} images/s (ratio HTTP/direct {parallel / direct:.2f})")


if __name__ == "__main__":
    main()
