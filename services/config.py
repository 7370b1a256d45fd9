"""All configuration, read from environment variables with the VSEARCH_ prefix, in one place.

Every process (gateway, worker, model server, CLI) builds a `Settings` with `Settings.from_env()`.
The README lists the variables; docker-compose and the Kubernetes manifests use the same names.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field, fields, replace
from pathlib import Path

from services.precision import AUTO, PRECISIONS

PREFIX = "VSEARCH_"


def _split_paths(value: str) -> tuple[Path, ...]:
    return tuple(Path(p).expanduser().resolve() for p in value.split(os.pathsep) if p)


@dataclass(frozen=True)
class Settings:
    # Redis: the system of record. Keys are namespaced by `redis_prefix`. `redis+cluster://host:port`
    # (any node of a Redis Cluster) connects to a cluster (services/store/connection.py).
    redis_url: str = "redis://127.0.0.1:6379/0"
    redis_prefix: str = "vsearch:"
    # The Celery broker (services/broker.py): unset, the records' Redis; `amqp://...` for RabbitMQ.
    broker_url: str | None = None
    # Where the gateway answers (used by the CLI's client commands).
    gateway_url: str = "http://127.0.0.1:8000"
    # Model server (TF Serving or `vsearch model-server`), gRPC host:port.
    model_server: str = "127.0.0.1:8500"
    model_name: str = "effnet_lite0"
    # fp32, bf16 or auto: bf16 when the model server serves the bf16 variant (services/precision.py).
    model_precision: str = "auto"
    model_base: Path = Path("var/models")
    model_timeout_s: float = 30.0
    model_batch_size: int = 32
    # Originals, thumbnails and index files.
    data_dir: Path = Path("var/data")
    # Bulk directory jobs may only read below these roots (os.pathsep separated).
    allowed_roots: tuple[Path, ...] = field(default_factory=tuple)
    # Bearer tokens: `api_token` for writes and reads, `read_token` for reads only. With either set,
    # every /api/v1 route but health needs one; with none, the gateway answers only requests whose
    # Host is loopback or listed in `allowed_hosts` (no DNS rebinding) and whose Origin, if any, is
    # that same host (no cross-site POSTs from a web page).
    api_token: str | None = None
    read_token: str | None = None
    allowed_hosts: tuple[str, ...] = ()
    # Gateway limits: query images decode to at most this many pixels; requests at once per process
    # (more get 503 + Retry-After); a request body must arrive within this time.
    max_query_pixels: int = 40_000_000
    max_concurrent_requests: int = 16
    request_body_timeout_s: float = 30.0
    max_upload_mb: int = 64
    max_image_pixels: int = 80_000_000
    # Annoy: trees per index, and how many candidates a query inspects (search_k = trees * k * this):
    # recall against query time, measured in docs/benchmarks.md.
    index_trees: int = 32
    search_k_factor: int = 4
    # Annoy: project the vectors to this many dimensions in the index file (PCA fitted at each build,
    # services/index/compact.py; 0: the model's own vectors). Quality and memory: docs/benchmarks.md.
    index_pca: int = 0
    # Where vectors are indexed: "annoy" (files on this host, built by the index builder) or
    # "milvus" (a Milvus server at milvus_uri: inserts and deletes at once, no builds).
    index_backend: str = "annoy"
    milvus_uri: str = "http://127.0.0.1:19530"
    # The index builder's lock expires this long after its holder stopped refreshing it (it died):
    # only then can another builder take over.
    index_lock_ttl_s: float = 60.0
    # URL ingest: private/loopback targets are refused unless this is set (on-prem sources, tests).
    allow_private_urls: bool = False
    url_timeout_s: float = 15.0
    url_ports: tuple[int, ...] = ()  # when set, the only ports URL fetches may use
    max_urls_per_job: int = 10_000
    max_archive_members: int = 50_000
    max_archive_mb: int = 4096
    archive_timeout_s: float = 600.0  # wall clock to list and extract one archive
    # Celery: a task unacknowledged this long (its worker died) is delivered again; above the longest task.
    task_visibility_timeout_s: int = 600
    task_time_limit_s: int = 300
    # A worker serves Prometheus metrics on this port (0: off; give each worker on a host its own).
    worker_metrics_port: int = 0
    # Images per ingest task: one model batch, so the model server sees full batches.
    ingest_chunk: int = 32

    @classmethod
    def from_env(cls, environ: os._Environ | dict | None = None, **overrides) -> "Settings":
        env = os.environ if environ is None else environ
        values = {}
        for f in fields(cls):
            raw = env.get(PREFIX + f.name.upper())
            if raw is None or raw == "":
                continue
            values[f.name] = _parse(f.name, f.type, raw)
        return replace(cls(**values), **overrides)

    def __post_init__(self):
        if self.index_backend not in ("annoy", "milvus"):
            raise ValueError(f"{PREFIX}INDEX_BACKEND must be annoy or milvus, not {self.index_backend!r}")
        if self.model_precision not in (AUTO, *PRECISIONS):
            raise ValueError(f"{PREFIX}MODEL_PRECISION={self.model_precision!r}: use {AUTO}, {' or '.join(PRECISIONS)}")
        # Absolute paths: the gateway serves files and children inherit these (cwd-independent).
        for name in ("model_base", "data_dir"):
            object.__setattr__(self, name, Path(getattr(self, name)).expanduser().resolve())

    @property
    def broker(self) -> str:
        url = self.broker_url or self.redis_url
        if "+cluster://" in url:
            raise ValueError(f"{PREFIX}BROKER_URL must be set when the records are on a Redis Cluster "
                             "(Celery cannot use one as its broker): amqp://... or a plain redis://...")
        return url

    @property
    def index_dir(self) -> Path:
        return self.data_dir / "index"

    @property
    def vector_dir(self) -> Path:
        """The segment files of every image's vector, layouts and keypoints (services/store/segments.py)."""
        return self.data_dir / "vectors"


def _parse(name: str, type_name: str, raw: str):
    try:
        if "tuple[Path" in type_name:
            return _split_paths(raw)
        if "tuple[int" in type_name:
            return tuple(int(p) for p in raw.replace(",", " ").split())
        if "tuple[str" in type_name:
            return tuple(p for p in raw.replace(",", " ").split())
        if "Path" in type_name:
            return Path(raw).expanduser()
        if type_name.startswith("bool"):
            if raw.lower() not in ("1", "0", "true", "false", "yes", "no"):
                raise ValueError
            return raw.lower() in ("1", "true", "yes")
        if type_name.startswith("int"):
            return int(raw)
        if type_name.startswith("float"):
            return float(raw)
    except ValueError:
        raise ValueError(f"{PREFIX}{name.upper()}={raw!r} is not a valid {type_name}") from None
    return raw
