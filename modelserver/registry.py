"""Finds and loads SavedModels laid out as TF Serving expects: `<base>/<name>/<version>/`.

Every version found is loaded (so clients can pin the version their index was built with); a
request without a version gets the newest. `refresh()` picks up versions exported later.

Each version runs in a session of its own, loaded as TF Serving loads it, so session options apply
per model: a bf16 variant (`<name>_bf16`, services/precision.py) gets oneDNN's bf16 auto-mixed
precision rewrite, the option TF Serving's `--mixed_precision=bfloat16` sets for a whole server. It is
served only on a CPU with bf16 instructions: elsewhere TensorFlow would skip the rewrite silently and
answer fp32 vectors under the bf16 name.
"""
from __future__ import annotations

import logging
import threading
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import tensorflow as tf
from tensorflow.core.protobuf import config_pb2, meta_graph_pb2, rewriter_config_pb2

from modelserver.batcher import Batcher, RunFn
from services.model_contract import SIGNATURE
from services.precision import BF16, cpu_has_bf16, precision_of

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
    session: tf.compat.v1.Session

    def predict(self, images: np.ndarray) -> dict[str, np.ndarray]:
        return self.batcher.submit(images)

    def close(self) -> None:
        self.batcher.close()
        self.session.close()


def session_config(name: str) -> config_pb2.ConfigProto:
    """The session options of a served name: bf16 variants get the bf16 auto-mixed precision rewrite."""
    config = config_pb2.ConfigProto()
    if precision_of(name) == BF16:
        config.graph_options.rewrite_options.auto_mixed_precision_onednn_bfloat16 = rewriter_config_pb2.RewriterConfig.ON
    return config


def load_signature(name: str, version_dir: Path) -> tuple[meta_graph_pb2.SignatureDef, RunFn, tf.compat.v1.Session]:
    """Loads a version as TF Serving does (a session with the name's options): its serving
    signature, a function running it on one input batch, and the session that must stay open."""
    graph = tf.Graph()
    session = tf.compat.v1.Session(graph=graph, config=session_config(name))
    with graph.as_default():
        meta_graph = tf.compat.v1.saved_model.loader.load(session, [tf.saved_model.SERVING], str(version_dir))
    signature = meta_graph.signature_def[SIGNATURE]
    (input_info,) = signature.inputs.values()
    output_names = list(signature.outputs)
    run_session = session.make_callable([signature.outputs[k].name for k in output_names],
                                        feed_list=[input_info.name])

    def run(images: np.ndarray) -> dict[str, np.ndarray]:
        return dict(zip(output_names, run_session(images)))

    return signature, run, session


def load_servable(name: str, version_dir: Path, max_batch: int, timeout_s: float) -> Servable:
    signature, run, session = load_signature(name, version_dir)
    (input_name, input_info), = signature.inputs.items()
    input_dtype = tf.as_dtype(input_info.dtype)
    servable = Servable(
        name=name, version=int(version_dir.name), path=version_dir, signature_def=signature,
        input_name=input_name, input_dtype=input_dtype,
        input_shape=tuple(None if d.size < 0 else d.size for d in input_info.tensor_shape.dim[1:]),
        batcher=Batcher(run, max_batch=max_batch, timeout_s=timeout_s, name=f"batch-{name}-{version_dir.name}"),
        session=session,
    )
    # Warm up: the first run optimises the graph and allocates; do it before clients see the model.
    servable.predict(np.zeros((1, *servable.input_shape), dtype=input_dtype.as_numpy_dtype))
    return servable


class ModelRegistry:
    def __init__(self, base: Path, max_batch: int = 32, batch_timeout_s: float = 0.0, bf16: bool | None = None):
        self.base = Path(base)
        self.bf16 = cpu_has_bf16() if bf16 is None else bf16  # serve bf16 variants
        self.max_batch = max_batch
        self.batch_timeout_s = batch_timeout_s
        self._servables: dict[str, dict[int, Servable]] = {}
        self._lock = threading.Lock()
        self._skipped: set[str] = set()

    def refresh(self) -> list[tuple[str, int]]:
        """Loads versions not loaded yet; returns what was added."""
        added = []
        for version_dir in sorted(self.base.glob("*/*/saved_model.pb")):
            version_dir = version_dir.parent
            name = version_dir.parent.name
            if not version_dir.name.isdigit() or int(version_dir.name) in self._servables.get(name, {}):
                continue
            if precision_of(name) == BF16 and not self.bf16:
                if name not in self._skipped:
                    log.error("not serving %s: it computes in bf16, and this CPU has no bf16 instructions "
                              "(or bf16 is turned off); clients fall back to the fp32 model", name)
                    self._skipped.add(name)
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
                    servable.close()
