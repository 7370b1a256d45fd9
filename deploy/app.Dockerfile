# syntax=docker/dockerfile:1
# The gateway, the ingest workers and the index builder (target `app`, the default) and the optional
# Flower dashboard (target `flower`): the project's base dependencies only, no TensorFlow, no torch.
# Build from the repository root:  docker build -f deploy/app.Dockerfile -t vsearch-app:0.1.0 .
ARG PYTHON_IMAGE=python:3.11-slim

# ---- build: compilers live here only (annoy is compiled from its sdist) ----
FROM ${PYTHON_IMAGE} AS build
RUN apt-get update \
    && apt-get install -y --no-install-recommends build-essential \
    && rm -rf /var/lib/apt/lists/*
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 PATH=/opt/venv/bin:$PATH
RUN python -m venv /opt/venv
WORKDIR /src
COPY pyproject.toml README.md ./
COPY services services
COPY worker worker
COPY cli cli
COPY modelserver modelserver
COPY evaluation evaluation
COPY gateway gateway
COPY model_export model_export
# Base dependencies only: the `model` and `export` extras (TensorFlow, torch) are not installed.
RUN --mount=type=cache,target=/root/.cache/pip pip install .

FROM build AS build-flower
RUN --mount=type=cache,target=/root/.cache/pip pip install "flower>=2.0,<3"

# ---- runtime: no compilers, a non-root user, the venv copied in ----
FROM ${PYTHON_IMAGE} AS runtime
RUN groupadd --system --gid 10001 vsearch \
    && useradd --system --uid 10001 --gid vsearch --create-home --home-dir /home/vsearch vsearch \
    && mkdir -p /data /imports \
    && chown vsearch:vsearch /data
# /data is the data volume (originals, thumbnails, index); a new named volume takes its owner.
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    VSEARCH_DATA_DIR=/data
WORKDIR /home/vsearch

FROM runtime AS flower
COPY --from=build-flower /opt/venv /opt/venv
USER 10001:10001
EXPOSE 5555
CMD ["celery", "-A", "worker.app", "flower", "--port=5555"]

FROM runtime AS app
COPY --from=build /opt/venv /opt/venv
USER 10001:10001
EXPOSE 8000
CMD ["gunicorn", "--bind", "0.0.0.0:8000", "--workers", "2", "--threads", "8", "gateway:create_app()"]
