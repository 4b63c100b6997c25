# syntax=docker/dockerfile:1
# boxgen serving image: BentoML service on onnxruntime-gpu, plus CUDA torch for in-pod fine-tunes.
#
# Why CUDA 13 and a `base` image: torch 2.14.1 from PyPI is built for CUDA 13.0 with cuDNN 9
# (it depends on the nvidia-cu13 / nvidia-cudnn-cu13 wheels), and onnxruntime-gpu 1.31 on PyPI
# is built for CUDA 13.x with cuDNN 9 too. Both find those pip-installed libraries (see
# LD_LIBRARY_PATH below), so the image needs only the driver, which the NVIDIA container
# toolkit mounts in. A `cudnn-runtime` base would add ~3 GB of duplicate, possibly mismatched
# libraries. The node driver must support CUDA 13.0 (>= 580); NVIDIA_REQUIRE_CUDA from the
# base image makes the toolkit refuse to start the container on an older driver.
#
# Build:  docker build -t boxgen:0.1.0 .
# Run:    docker run --gpus all -p 3000:3000 -v "$PWD/models:/models" \
#           -e BOXGEN_API_KEY=change-me boxgen:0.1.0
ARG CUDA_IMAGE=nvidia/cuda:13.0.2-base-ubuntu24.04

# ---------------------------------------------------------------------------------------------
# Builder: a virtual environment with boxgen and its GPU stack, copied whole into the runtime.
FROM ${CUDA_IMAGE} AS builder

ARG ORT_GPU_VERSION=1.31.1
ENV DEBIAN_FRONTEND=noninteractive \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

# Ubuntu 24.04's Python is 3.12 (boxgen needs >= 3.11). Versions float with the base image,
# which is pinned above; pinning Ubuntu patch versions breaks every archive refresh.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends python3 python3-venv \
    && rm -rf /var/lib/apt/lists/*

RUN python3 -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH
WORKDIR /src

# Dependencies first, against empty package stubs, so editing boxgen's code reuses this layer.
# `onnxruntime` (CPU) and `onnxruntime-gpu` both ship the `onnxruntime` module and overwrite
# each other's files: remove both, then install only the GPU build. DL3013 asks for pinned
# pip versions: this installs the local project, whose pins live in pyproject.toml.
COPY pyproject.toml README.md ./
# hadolint ignore=DL3013
RUN mkdir -p service training \
    && touch service/__init__.py training/__init__.py \
    && pip install ".[gpu]" \
    && pip uninstall -y onnxruntime onnxruntime-gpu boxgen \
    && pip install --no-deps "onnxruntime-gpu==${ORT_GPU_VERSION}" \
    && python -c "import onnxruntime as o; assert 'CUDAExecutionProvider' in o.get_available_providers()"

COPY service/ service/
COPY training/ training/
RUN pip install --no-deps .

# ---------------------------------------------------------------------------------------------
# Runtime: same base, Python, the venv, a non-root user. Nothing is written outside /models,
# /tmp and /var/lib/boxgen, so Kubernetes can run it with a read-only root filesystem.
FROM ${CUDA_IMAGE} AS runtime

ENV DEBIAN_FRONTEND=noninteractive

# libgl1 and libglib2.0-0t64: OpenCV (pulled in by Ultralytics, used by fine-tunes) loads them.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends python3 libgl1 libglib2.0-0t64 \
    && rm -rf /var/lib/apt/lists/*

RUN groupadd --gid 10001 boxgen \
    && useradd --uid 10001 --gid 10001 --no-create-home --home-dir /var/lib/boxgen \
       --shell /usr/sbin/nologin boxgen \
    && mkdir -p /models /var/lib/boxgen/bentoml /var/lib/boxgen/ultralytics \
    && chown -R boxgen:boxgen /models /var/lib/boxgen

COPY --from=builder /opt/venv /opt/venv

# NVIDIA_* come from the base image. The nvidia/*/lib folders hold the CUDA 13 and cuDNN 9
# libraries that torch and onnxruntime-gpu load (torch finds them itself; onnxruntime does not).
ENV PATH=/opt/venv/bin:$PATH \
    LD_LIBRARY_PATH=/opt/venv/lib/python3.12/site-packages/nvidia/cu13/lib:/opt/venv/lib/python3.12/site-packages/nvidia/cudnn/lib \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    HOME=/var/lib/boxgen \
    BOXGEN_MODELS=/models \
    BENTOML_HOME=/var/lib/boxgen/bentoml \
    BENTOML_DO_NOT_TRACK=true \
    BOXGEN_ULTRALYTICS_HOME=/var/lib/boxgen/ultralytics \
    YOLO_CONFIG_DIR=/var/lib/boxgen/ultralytics \
    YOLO_OFFLINE=1 \
    YOLO_AUTOINSTALL=0 \
    MPLCONFIGDIR=/tmp/matplotlib

USER 10001:10001
WORKDIR /var/lib/boxgen
# The service and CLI import with the runtime's libraries (OpenCV needs libGL, ...), as the
# user that runs them, so nothing root-owned is left in its folders.
RUN python3 -c "import service.service, training.cli"

VOLUME ["/models"]
EXPOSE 3000

# /readyz answers 200 once the models are loaded and warmed up; the start period covers that.
HEALTHCHECK --interval=30s --timeout=5s --start-period=120s --retries=3 \
    CMD ["python3", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:3000/readyz', timeout=4)"]

ENTRYPOINT ["boxgen"]
CMD ["serve", "--models", "/models", "--port", "3000"]
