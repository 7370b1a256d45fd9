# syntax=docker/dockerfile:1
# The model tools: `vsearch export-model` (the compose/Kubernetes one-shot that writes the SavedModel
# into the models volume) and `vsearch model-server`, the bundled alternative to TF Serving.
# TensorFlow (CPU), CPU-only torch and the packaged EfficientNet-Lite0 weights live in this image only.
# Build from the repository root:  docker build -f deploy/model.Dockerfile -t vsearch-model:0.1.0 .
ARG PYTHON_IMAGE=python:3.11-slim

FROM ${PYTHON_IMAGE} AS build
RUN apt-get update \
    && apt-get install -y --no-install-recommends build-essential \
    && rm -rf /var/lib/apt/lists/*
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 PATH=/opt/venv/bin:$PATH
RUN python -m venv /opt/venv
# torch first, from the CPU wheel index: from PyPI it would pull the CUDA build (several GB).
RUN --mount=type=cache,target=/root/.cache/pip \
    pip install --index-url https://download.pytorch.org/whl/cpu "torch==2.13.0"
WORKDIR /src
COPY pyproject.toml README.md ./
COPY services services
COPY worker worker
COPY cli cli
COPY modelserver modelserver
COPY evaluation evaluation
COPY gateway gateway
COPY model_export model_export
RUN --mount=type=cache,target=/root/.cache/pip \
    pip install ".[model,export]" \
    && pip install --no-deps "tensorflow-serving-api==2.21.0"
# (its declared dependency is the full CUDA `tensorflow`; tensorflow-cpu runs the same code)

FROM ${PYTHON_IMAGE} AS model
RUN groupadd --system --gid 10001 vsearch \
    && useradd --system --uid 10001 --gid vsearch --create-home --home-dir /home/vsearch vsearch \
    && mkdir -p /models \
    && chown vsearch:vsearch /models
# /models is the models volume; a new named volume takes its owner, so the export can write it.
COPY --from=build /opt/venv /opt/venv
COPY --chmod=755 deploy/export-once.sh /usr/local/bin/export-once
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    TF_CPP_MIN_LOG_LEVEL=2 \
    VSEARCH_MODEL_BASE=/models
WORKDIR /home/vsearch
USER 10001:10001
EXPOSE 8500
CMD ["vsearch", "model-server", "--model-base", "/models", "--port", "8500"]
