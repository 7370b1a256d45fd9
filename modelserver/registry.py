"""Finds and loads SavedModels laid out as TF Serving expects: `<base>/<name>/<version>/`.

Every version found is loaded (so clients can pin the version their index was built with); a
request without a version gets the newest. `refresh()` picks up versions exported later.
"""
from __future__ import annotations

import logging
import threading
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import tensorflow as tf
from tensorflow.core.protobuf import meta_graph_pb2, saved_model_pb2

from modelserver.batcher import Batcher
from services.model_contract import SIGNATURE

log = logging.getLogger(__name__)


class ServableNotFound(LookupError):
    pass


@dataclass
class Servable:
    name: str
    version: int
    path: Path
    signature_def: meta_graph_pb2.SignatureDef
    input_name: str
    input_shape: tuple[int | None, ...]  # without the batch dimension
    input_dtype: tf.DType
    batcher: Batcher
    loaded: object  # the SavedModel object: its concrete function needs it alive

    def predict(self, images: np.ndarray) -> dict[str, np.ndarray]:
        return self.batcher.submit(images)


def _signature_def(version_dir: Path) -> meta_graph_pb2.SignatureDef:
    saved = saved_model_pb2.SavedModel()
    saved.ParseFromString((version_dir / "saved_model.pb").read_bytes())
    return saved.meta_graphs[0].signature_def[SIGNATURE]


def load_servable(name: str, version_dir: Path, max_batch: int, timeout_s: float) -> Servable:
    loaded = tf.saved_model.load(str(version_dir))
    fn = loaded.signatures[SIGNATURE]
    (input_name, spec), = fn.structured_input_signature[1].items()

    def run(images: np.ndarray) -> dict[str, np.ndarray]:
        outputs = fn(**{input_name: tf.constant(images)})
        return {k: v.numpy() for k, v in outputs.items()}

    servable = Servable(
        name=name, version=int(version_dir.name), path=version_dir,
        signature_def=_signature_def(version_dir), input_name=input_name,
        input_shape=tuple(spec.shape[1:]), input_dtype=spec.dtype,
        batcher=Batcher(run, max_batch=max_batch, timeout_s=timeout_s, name=f"batch-{name}-{version_dir.name}"),
        loaded=loaded,
    )
    # Warm up: the first call traces and allocates; do it before clients see the model.
    servable.predict(np.zeros((1, *servable.input_shape), dtype=spec.dtype.as_numpy_dtype))
    return servable


class ModelRegistry:
    def __init__(self, base: Path, max_batch: int = 32, batch_timeout_s: float = 0.0):
        self.base = Path(base)
        self.max_batch = max_batch
        self.batch_timeout_s = batch_timeout_s
        self._servables: dict[str, dict[int, Servable]] = {}
        self._lock = threading.Lock()

    def refresh(self) -> list[tuple[str, int]]:
        """Loads versions not loaded yet; returns what was added."""
        added = []
        for version_dir in sorted(self.base.glob("*/*/saved_model.pb")):
            version_dir = version_dir.parent
            name = version_dir.parent.name
            if not version_dir.name.isdigit() or int(version_dir.name) in self._servables.get(name, {}):
                continue
            try:
                servable = load_servable(name, version_dir, self.max_batch, self.batch_timeout_s)
            except Exception:
                log.exception("could not load %s", version_dir)
                continue
            with self._lock:
                self._servables.setdefault(name, {})[servable.version] = servable
            log.info("loaded model %s version %d from %s", name, servable.version, version_dir)
            added.append((name, servable.version))
        return added

    def get(self, name: str, version: int | None = None) -> Servable:
        with self._lock:
            versions = self._servables.get(name)
            if not versions:
                raise ServableNotFound(f"Servable not found for request: Latest({name})" if version is None
                                       else f"Servable not found for request: Specific({name}, {version})")
            if version is None:
                return versions[max(versions)]
            if version not in versions:
                raise ServableNotFound(f"Servable not found for request: Specific({name}, {version})")
            return versions[version]

    def versions(self, name: str) -> list[int]:
        with self._lock:
            return sorted(self._servables.get(name, {}))

    def names(self) -> list[str]:
        with self._lock:
            return sorted(self._servables)

    def close(self) -> None:
        with self._lock:
            for versions in self._servables.values():
                for servable in versions.values():
                    servable.batcher.close()
