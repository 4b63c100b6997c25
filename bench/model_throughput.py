"""Model throughput: the gan generator, the compose refiner and the labeller, images per second
per backend and batch size, side by side in one run.

    python bench/model_throughput.py [--out gpu-results/model_throughput.md] [--budget 240]
    python bench/model_throughput.py --dry-run      # tiny models, CPU, seconds (the suite's)
    python bench/model_throughput.py --batches 64 --rounds 5    # the CPU's ratio, with spread

Backends: torch fp32 and torch bf16 autocast on CUDA when present (else the CPU), and
onnxruntime with each GPU execution provider installed (TensorRT, CUDA; the CPU provider only
when there is no GPU, in the sessions the service opens: `service.core.onnx_session`'s
threads, and the generator's batches run as slices side by side; and OpenVINO's CPU plugin,
`ort-OpenVINO`, where `onnxruntime-openvino` replaces `onnxruntime`: the service does not
use it, see the README). Untrained networks of
the production shapes (`thesis` generator, the default refiner at 256 px, `yolov5x.yaml`
labeller at 256): speed does not depend on the weights. The labeller's network only (no
letterbox, no NMS), the same for every backend. Outputs are copied to the host, as serving
does. Cells past `--budget` seconds are skipped and say so, so a GPU session's time limit
holds.

With `--rounds R`, every backend of a model is timed in turn R times over at each batch, and
onnxruntime's speed-up over torch fp32 is taken per round, from two timings seconds apart:
this CPU's speed drifts ~10 % over minutes, more than one backend's whole column takes.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
import torch

from service.core.devices import session_threads
from service.core.onnx_session import SlicedSession, open_session

OPSET = 17
NETWORKS = ("gan", "compose", "labeller")  # each model name's first word


@dataclass(frozen=True)
class Settings:
    """Model shapes and sizes; `DRY_RUN` is the CPU smoke test's."""

    generator_profile: str = "thesis"  # training profile of the gan generator
    refiner_profile: str = "default"  # refiner network width and depth
    labeller_cfg: str = "yolov5x.yaml"  # production labeller
    size: int = 256  # refiner and labeller input side, px
    batches: tuple[int, ...] = (1, 4, 16, 64, 256)
    repeats: int = 5  # timed runs per cell, after one warm-up
    rounds: int = 1  # every backend in turn, this many times per batch (paired ratios)
    budget: float = 240.0  # seconds; later cells are skipped
    fp16_on_cpu: bool = False  # run the fp16 copy on the CPU provider too (few fp16 kernels)
    networks: tuple[str, ...] = NETWORKS  # which of the three to measure


DRY_RUN = Settings(generator_profile="tiny", refiner_profile="tiny", labeller_cfg="yolov5n.yaml",
                   size=32, batches=(1, 2), repeats=1, budget=60.0, fp16_on_cpu=True)


@dataclass
class Model:
    """A network, how to make its inputs for a batch, and its ONNX file."""

    name: str
    network: torch.nn.Module
    inputs: Callable[[int], dict[str, np.ndarray]]  # batch -> named float32 inputs
    onnx: Path
    sliced: bool = False  # the service runs it as a `SlicedSession` on the CPU


def export(network: torch.nn.Module, example: dict[str, np.ndarray], path: Path) -> Path:
    """`network` to ONNX with a dynamic batch axis on every input and the output."""
    axes = {name: {0: "batch"} for name in [*example, "output"]}
    torch.onnx.export(network.cpu().eval(), tuple(torch.from_numpy(v) for v in example.values()),
                      str(path), input_names=list(example), output_names=["output"],
                      dynamic_axes=axes, opset_version=OPSET, dynamo=False)
    return path


def build_models(s: Settings, work: Path) -> list[Model]:
    """The networks of `s.networks`, untrained, exported to `work`."""
    from training.config import profile
    from training.loop import build_networks
    from training.refiner import build_refiner, refiner_profile
    from training.ultralytics_setup import configure_offline

    rng = np.random.default_rng(0)
    generator, _ = build_networks(profile(s.generator_profile))
    z_dim, side = generator.z_dim, s.size

    def z(b: int) -> dict[str, np.ndarray]:
        return {"z": rng.standard_normal((b, z_dim), dtype=np.float32)}  # [B, z_dim]

    def composite(b: int) -> dict[str, np.ndarray]:
        return {"composite": rng.uniform(-1, 1, (b, 3, side, side)).astype(np.float32),
                "mask": (rng.uniform(0, 1, (b, 1, side, side)) > 0.5).astype(np.float32)}

    def images(b: int) -> dict[str, np.ndarray]:
        return {"images": rng.uniform(0, 1, (b, 3, side, side)).astype(np.float32)}

    refiner, _ = build_refiner(refiner_profile(s.refiner_profile))
    configure_offline(work / "ultralytics")  # before Ultralytics is imported
    from ultralytics.nn.tasks import DetectionModel

    labeller = DetectionModel(s.labeller_cfg, nc=4, verbose=False).eval()
    head = labeller.model[-1]  # the exporter's switches: one [N, 4 + nc, anchors] output
    head.export, head.format, head.dynamic = True, "onnx", True
    models = []
    for name, network, inputs in (("gan generator", generator, z),
                                  ("compose refiner", refiner, composite),
                                  (f"labeller {s.labeller_cfg}", labeller, images)):
        if name.split()[0] not in s.networks:
            continue
        path = export(network, inputs(2), work / f"{name.split()[0]}-{len(models)}.onnx")
        models.append(Model(name, network.eval(), inputs, path, network is generator))
    return models


def backends(device: torch.device, fp16_on_cpu: bool = False) -> tuple[list[str], str]:
    """The backend names to measure, and a line saying which onnxruntime providers exist.
    Each GPU provider also runs an fp16 copy of the model (`-fp16`; the CPU one only with
    `fp16_on_cpu`, the dry run's: the CPU has few fp16 kernels)."""
    available = ort.get_available_providers()
    gpu = [p for p in ("TensorrtExecutionProvider", "CUDAExecutionProvider") if p in available]
    names = ["torch-fp32", "torch-bf16"]
    for provider in gpu:
        short = provider.removesuffix("ExecutionProvider")
        names += [f"ort-{short}", f"ort-{short}-fp16"]
    if device.type == "cpu" and not gpu:
        names += ["ort-CPU", "ort-CPU-fp16"] if fp16_on_cpu else ["ort-CPU"]
        if "OpenVINOExecutionProvider" in available:  # onnxruntime-openvino, in its place
            names.append("ort-OpenVINO")
    note = f"onnxruntime {ort.__version__} providers installed: {available}"
    if device.type == "cuda" and not gpu:
        note += "; onnxruntime-gpu is not installed, so only the torch path is measured"
    return names, note


def fp16_copy(model: Model) -> Path:
    """The model with fp16 weights and activations, fp32 inputs and outputs (what a GPU
    serves fastest), written beside it."""
    import onnx
    from onnxruntime.transformers.float16 import convert_float_to_float16

    path = model.onnx.with_suffix(".fp16.onnx")
    if not path.is_file():
        onnx.save(convert_float_to_float16(onnx.load(str(model.onnx)), keep_io_types=True),
                  str(path))
    return path


def ort_session(model: Model, backend: str, max_batch: int, cache: Path
                ) -> ort.InferenceSession | SlicedSession:
    provider = f"{backend.removeprefix('ort-').removesuffix('-fp16')}ExecutionProvider"
    onnx_file = fp16_copy(model) if backend.endswith("-fp16") else model.onnx
    if provider == "CPUExecutionProvider":  # as the service runs it
        return SlicedSession(onnx_file) if model.sliced else open_session(onnx_file)
    options: dict[str, Any] = {}
    if provider == "OpenVINOExecutionProvider":  # whole batches: it serialises a session's runs
        options = {"device_type": "CPU", "num_of_threads": str(session_threads())}
    if provider == "TensorrtExecutionProvider":
        # One engine for every batch size: else TensorRT builds one per shape, minutes each.
        example = model.inputs(1)

        def shapes(b: int) -> str:
            return ",".join(f"{k}:{'x'.join(map(str, (b, *v.shape[1:])))}"
                            for k, v in example.items())

        options = {"trt_engine_cache_enable": True, "trt_engine_cache_path": str(cache),
                   "trt_profile_min_shapes": shapes(1), "trt_profile_max_shapes":
                   shapes(max_batch), "trt_profile_opt_shapes": shapes(min(64, max_batch))}
    session_options = ort.SessionOptions()
    session_options.log_severity_level = 3
    return ort.InferenceSession(str(onnx_file), sess_options=session_options,
                                providers=[(provider, options), "CPUExecutionProvider"])


def parity(model: Model, session: ort.InferenceSession | SlicedSession) -> float:
    """Max abs difference between `session` and the fp32 model on the CPU, on one batch of 2."""
    inputs = model.inputs(2)
    options = ort.SessionOptions()
    options.log_severity_level = 3
    reference = ort.InferenceSession(str(model.onnx), sess_options=options,
                                     providers=["CPUExecutionProvider"])
    return float(np.abs(session.run(None, inputs)[0] - reference.run(None, inputs)[0]).max())


def runner(model: Model, backend: str, batch: int, device: torch.device,
           session: ort.InferenceSession | SlicedSession | None) -> Callable[[], None]:
    """One forward pass of `batch` images on `backend`, output copied to the host."""
    inputs = model.inputs(batch)
    if session is not None:
        return lambda: session.run(None, inputs)
    network = model.network.to(device)
    tensors = [torch.from_numpy(v).to(device) for v in inputs.values()]
    autocast = backend == "torch-bf16"

    def run() -> None:
        with torch.no_grad(), torch.autocast(device.type, torch.bfloat16, enabled=autocast):
            out = network(*tensors)
        (out[0] if isinstance(out, tuple) else out).float().cpu()

    return run


def median_seconds(fn: Callable[[], None], repeats: int, device: torch.device) -> float:
    fn()  # warm-up: allocator, cuDNN autotune, onnxruntime arena, TensorRT engine
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def measure(s: Settings, work: Path) -> dict[str, Any]:
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    names, note = backends(device, s.fp16_on_cpu)
    print(f"device: {torch.cuda.get_device_name() if device.type == 'cuda' else 'cpu'}; {note}",
          flush=True)
    deadline = time.monotonic() + s.budget
    rows = []
    for model in build_models(s, work):
        sessions: dict[str, ort.InferenceSession | SlicedSession] = {}
        for batch in s.batches:
            cells = {b: {"model": model.name, "backend": b, "batch": batch} for b in names}
            rows += cells.values()
            runners: dict[str, Callable[[], None]] = {}
            for _ in range(s.rounds):  # every backend in turn, so each round's are seconds apart
                for backend, row in cells.items():
                    if "error" in row or "skipped" in row:
                        continue
                    if time.monotonic() > deadline:
                        row["skipped"] = "time budget"
                        continue
                    try:
                        if backend.startswith("ort-") and backend not in sessions:
                            sessions[backend] = ort_session(model, backend, max(s.batches),
                                                            work / "trt-cache")
                            if backend.endswith("-fp16"):
                                row["parity_vs_fp32"] = parity(model, sessions[backend])
                        session = sessions.get(backend)
                        if backend not in runners:
                            runners[backend] = runner(model, backend, batch, device, session)
                        seconds = median_seconds(runners[backend], s.repeats, device)
                        row.setdefault("rounds_img_s", []).append(batch / seconds)
                        row["img_s"] = statistics.median(row["rounds_img_s"])
                    except Exception as e:  # out of memory, an op a provider lacks: say, go on
                        row["error"] = f"{type(e).__name__}: {str(e).splitlines()[0][:200]}"
            for row in cells.values():
                print(json.dumps(row), flush=True)
            if device.type == "cuda":
                torch.cuda.empty_cache()
    return {"device": str(device), "providers": note, "settings": asdict(s), "rows": rows}


def speedups(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Each onnxruntime backend's img/s over torch fp32's, per model and batch, taken round by
    round (the two timed seconds apart), with the median, least and most over the rounds."""
    torch_rounds = {(r["model"], r["batch"]): r.get("rounds_img_s", [])
                    for r in rows if r["backend"] == "torch-fp32"}
    out = []
    for r in rows:
        reference = torch_rounds.get((r["model"], r["batch"]), [])
        if not r["backend"].startswith("ort-") or not r.get("rounds_img_s") or not reference:
            continue
        ratios = [o / t for o, t in zip(r["rounds_img_s"], reference, strict=False)]
        out.append({"model": r["model"], "backend": r["backend"], "batch": r["batch"],
                    "median": statistics.median(ratios), "min": min(ratios),
                    "max": max(ratios), "rounds": len(ratios)})
    return out


def report(record: dict[str, Any]) -> str:
    s = Settings(**{**record["settings"], "batches": tuple(record["settings"]["batches"])})
    lines = [f"Images per second by batch size, {record['device']}; {record['providers']}.", "",
             "| model | backend | " + " | ".join(f"batch {b}" for b in s.batches) + " |",
             "| --- | --- |" + " ---: |" * len(s.batches)]
    cells: dict[tuple[str, str], list[str]] = {}
    for row in record["rows"]:
        value = (f"{row['img_s']:,.1f}" if "img_s" in row else
                 "skipped" if "skipped" in row else "error")
        cells.setdefault((row["model"], row["backend"]), []).append(value)
    lines += [f"| {m} | {b} | " + " | ".join(v) + " |" for (m, b), v in cells.items()]
    lines += ["", f"onnxruntime over torch fp32, round by round: median (least-most of "
              f"{s.rounds} round{'s' * (s.rounds > 1)}).", "",
              "| model | backend | batch | speed-up |", "| --- | --- | ---: | ---: |",
              *(f"| {r['model']} | {r['backend']} | {r['batch']} | {r['median']:.2f}× "
                f"({r['min']:.2f}-{r['max']:.2f}) |" for r in speedups(record["rows"]))]
    lines += ["", *(f"- {r['model']} {r['backend']}: max abs difference to fp32 "
                    f"{r['parity_vs_fp32']:.2e}" for r in record["rows"] if "parity_vs_fp32" in r)]
    errors = [r for r in record["rows"] if "error" in r]
    lines += ["", *(f"- error, {r['model']} {r['backend']} batch {r['batch']}: {r['error']}"
                    for r in errors)]
    return "\n".join(lines).rstrip() + "\n"


def positive(text: str) -> int:
    """An argparse type: a whole number of at least 1."""
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dry-run", action="store_true", help="tiny models on the CPU")
    parser.add_argument("--out", type=Path, default=Path("gpu-results/model_throughput.md"))
    parser.add_argument("--budget", type=float, help="seconds before cells are skipped")
    parser.add_argument("--batches", type=int, nargs="+", help="batch sizes (default 1-256)")
    parser.add_argument("--networks", nargs="+", choices=NETWORKS, help="default: all three")
    parser.add_argument("--rounds", type=positive, help="times every backend is timed in turn")
    parser.add_argument("--repeats", type=positive, help="timed runs per backend and round")
    args = parser.parse_args(argv)
    s = DRY_RUN if args.dry_run else Settings()
    if args.budget is not None:
        s = replace(s, budget=args.budget)
    if args.batches:
        s = replace(s, batches=tuple(args.batches))
    if args.networks:
        s = replace(s, networks=tuple(args.networks))
    if args.rounds:
        s = replace(s, rounds=args.rounds)
    if args.repeats:
        s = replace(s, repeats=args.repeats)
    with tempfile.TemporaryDirectory(prefix="boxgen-models-") as tmp:
        record = measure(s, Path(tmp))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(report(record))
    args.out.with_suffix(".json").write_text(json.dumps(record, indent=1))
    print(args.out.read_text())


if __name__ == "__main__":
    main()
