"""One place that opens onnxruntime sessions: CUDA provider when present, CPU otherwise, with
the threads this worker may use (`devices.session_threads`); and `SlicedSession`, which runs
a batch on the CPU as slices side by side, one thread each."""

from __future__ import annotations

import os
import threading
from pathlib import Path

import numpy as np
import onnxruntime as ort

from service.core.cpu_pool import cpu_map, pool_threads
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
    (default `session_threads()`) that sleep between calls, every graph optimisation on."""
    options = ort.SessionOptions()
    options.log_severity_level = 3  # onnxruntime warns about unused initialisers on every load
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.intra_op_num_threads = threads or session_threads()
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    # Denormal floats flushed to zero: far below any pixel's precision, and slow on x86
    # (the thesis generator: +3 % img/s on the CPU).
    options.add_session_config_entry("session.set_denormal_as_zero", "1")
    return ort.InferenceSession(str(Path(path)), sess_options=options, providers=providers())


# Images from which a batch spreads over the worker's whole CPU pool: a gan request's batches
# are 64 (`GeneratorSession`); 16 clients asking one image each make batches of at most 8 per
# worker with two workers.
WIDE_BATCH = 32


class SlicedSession:
    """An ONNX model whose batches run as slices side by side on the CPU.

    onnxruntime's ConvTranspose spreads its matrix product over the intra-op threads but
    scatters the product back into the image (col2im) on one thread, image after image, so
    a transposed-convolution stack keeps half of two threads idle. Slices of the batch, each
    on a one-thread session, run those scatters side by side too. Measured on the 2-core CPU,
    the thesis generator at batch 64: 85-93 img/s against 67-79 with two intra-op threads;
    the refiner and the labeller gain under 10 %, so they keep one session.

    A batch runs in as many slices as the worker's share of the CPUs
    (`devices.session_threads`), or, from `WIDE_BATCH` images, in one slice per thread of the
    worker's CPU pool, which has one per CPU (`cpu_pool`): a batch that large comes from a
    request for many images, which then takes the CPUs the other workers leave idle. Many
    clients asking a few images each make small batches, which keep to the worker's share:
    with two workers on 2 CPUs and 16 clients, gan served 59-60 img/s this way, against 56-57 with
    every batch spread over both CPUs. `threads` sets both counts. A batch smaller than its
    slice count, or any batch on a GPU provider, runs whole on the ordinary session
    (`open_session`); the one-thread session is opened on first use.
    """

    def __init__(self, path: str | os.PathLike[str], threads: int | None = None):
        self.path = Path(path)
        self.whole = open_session(path, threads)
        self.share = threads or session_threads()
        self.wide = threads or max(self.share, pool_threads())
        on_cpu = self.whole.get_providers()[0] == "CPUExecutionProvider"
        self.slicing = on_cpu and self.wide > 1
        self._sliced: ort.InferenceSession | None = None
        self._lock = threading.Lock()

    def get_inputs(self) -> list[ort.NodeArg]:
        return self.whole.get_inputs()

    def get_outputs(self) -> list[ort.NodeArg]:
        return self.whole.get_outputs()

    def run(self, output_names: list[str] | None, feeds: dict[str, np.ndarray]
            ) -> list[np.ndarray]:
        """As `InferenceSession.run`, every input batched along axis 0."""
        batch = len(next(iter(feeds.values())))
        count = self.wide if batch >= WIDE_BATCH else self.share
        if not self.slicing or count < 2 or batch < count:
            return self.whole.run(output_names, feeds)
        with self._lock:
            if self._sliced is None:
                self._sliced = open_session(self.path, threads=1)
        bounds = np.linspace(0, batch, count + 1).astype(int)
        slices = [{name: value[a:b] for name, value in feeds.items()}
                  for a, b in zip(bounds[:-1], bounds[1:], strict=True)]
        # onnxruntime releases the GIL while it runs: the slices run on every thread at once.
        parts = cpu_map(lambda f: self._sliced.run(output_names, f), slices)
        return [np.concatenate(outputs) for outputs in zip(*parts, strict=True)]
