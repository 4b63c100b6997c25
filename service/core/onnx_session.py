"""One place that opens onnxruntime sessions: CUDA provider when present, CPU otherwise, with
the threads this worker may use (`devices.session_threads`)."""

from __future__ import annotations

import os
from pathlib import Path

import onnxruntime as ort

from service.core.devices import cpu_forced, session_threads


def providers() -> list[str]:
    """Execution providers in preference order; `BOXGEN_DEVICE=cpu` forces the CPU."""
    available = ort.get_available_providers()
    wanted = ["CUDAExecutionProvider", "CPUExecutionProvider"]
    if cpu_forced():
        wanted = ["CPUExecutionProvider"]
    return [p for p in wanted if p in available]


def open_session(path: str | os.PathLike[str], threads: int | None = None) -> ort.InferenceSession:
    """An inference session for the ONNX file at `path`, with `threads` intra-op threads
    (default `session_threads()`), every graph optimisation on."""
    options = ort.SessionOptions()
    options.log_severity_level = 3  # onnxruntime warns about unused initialisers on every load
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.intra_op_num_threads = threads or session_threads()
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return ort.InferenceSession(str(Path(path)), sess_options=options, providers=providers())
