"""All configuration, read from environment variables with the VSEARCH_ prefix, in one place.

Every process (gateway, worker, model server, CLI) builds a `Settings` with `Settings.from_env()`.
The README lists the variables; docker-compose and the Kubernetes manifests use the same names.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field, fields, replace
from pathlib import Path

PREFIX = "VSEARCH_"


def _split_paths(value: str) -> tuple[Path, ...]:
    return tuple(Path(p).expanduser().resolve() for p in value.split(os.pathsep) if p)


@dataclass(frozen=True)
class Settings:
    # Redis: broker, result backend and system of record. Keys are namespaced by `redis_prefix`.
    redis_url: str = "redis://127.0.0.1:6379/0"
    redis_prefix: str = "vsearch:"
    # Where the gateway answers (used by the CLI's client commands).
    gateway_url: str = "http://127.0.0.1:8000"
    # Model server (TF Serving or `vsearch model-server`), gRPC host:port.
    model_server: str = "127.0.0.1:8500"
    model_name: str = "effnet_lite0"
    model_base: Path = Path("var/models")
    model_timeout_s: float = 30.0
    model_batch_size: int = 32
    # Originals, thumbnails and index files.
    data_dir: Path = Path("var/data")
    # Bulk directory jobs may only read below these roots (os.pathsep separated).
    allowed_roots: tuple[Path, ...] = field(default_factory=tuple)
    # Bearer token required on writes when set.
    api_token: str | None = None
    max_upload_mb: int = 64
    max_image_pixels: int = 80_000_000
    # Annoy: trees per index, and how many candidates a query inspects (search_k = trees * k * this):
    # recall against query time, measured in docs/benchmarks.md.
    index_trees: int = 32
    search_k_factor: int = 4
    # The index builder's lock expires this long after its holder stopped refreshing it (it died):
    # only then can another builder take over.
    index_lock_ttl_s: float = 60.0
    # URL ingest: private/loopback targets are refused unless this is set (on-prem sources, tests).
    allow_private_urls: bool = False
    url_timeout_s: float = 15.0
    max_urls_per_job: int = 10_000
    max_archive_members: int = 50_000
    max_archive_mb: int = 4096
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
        # Absolute paths: the gateway serves files and children inherit these (cwd-independent).
        for name in ("model_base", "data_dir"):
            object.__setattr__(self, name, Path(getattr(self, name)).expanduser().resolve())

    @property
    def index_dir(self) -> Path:
        return self.data_dir / "index"


def _parse(name: str, type_name: str, raw: str):
    try:
        if "tuple[Path" in type_name:
            return _split_paths(raw)
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
