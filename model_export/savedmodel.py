"""Writes a network as a servable SavedModel version: `<base>/<name>/<version>/`.

The `serving_default` signature takes `images` (uint8 [N, H, W, 3] RGB at the network's input size) and
returns `embedding` (float32 [N, D], L2-normalised) and `probabilities` (float32 [N, 1000]). The version
is written under a hidden temporary name beside the target (TF Serving only loads numeric folder names)
and renamed into place, so a model server never sees a half-written version.
"""
from __future__ import annotations

import errno
import os
import shutil
import tempfile
from pathlib import Path

import numpy as np
import tensorflow as tf
from tensorflow_serving.apis import predict_pb2, prediction_log_pb2

from services.model_contract import EMBEDDING, INPUT, PROBABILITIES, SIGNATURE

from .errors import VersionExistsError

WARMUP_PATH = Path("assets.extra") / "tf_serving_warmup_requests"


class _Servable(tf.Module):
    """The network plus the serving contract: normalised embedding and softmax probabilities."""

    def __init__(self, network: tf.Module):
        super().__init__()
        self.network = network
        size = network.input_size
        spec = tf.TensorSpec((None, size, size, 3), tf.uint8, name=INPUT)
        self.serve = tf.function(self._serve, input_signature=[spec])

    def _serve(self, images: tf.Tensor) -> dict[str, tf.Tensor]:
        features, logits = self.network(images)
        return {EMBEDDING: tf.math.l2_normalize(features, axis=1), PROBABILITIES: tf.nn.softmax(logits)}


def version_dir(base: Path, name: str, version: int, overwrite: bool = False) -> Path:
    """The target folder; raises VersionExistsError if it exists and overwrite is False."""
    target = Path(base) / name / str(version)
    if target.exists() and not overwrite:
        raise VersionExistsError(f"{target} exists; pass overwrite=True (--overwrite) to replace it")
    return target


def write_savedmodel(network: tf.Module, base: Path, name: str, version: int, overwrite=False) -> Path:
    """Saves `network` and returns the version folder.

    `network` has an `input_size` and maps uint8 images to (features, logits) when called.
    """
    target = version_dir(base, name, version, overwrite)
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{version}.partial-", dir=target.parent))
    try:
        servable = _Servable(network)
        tf.saved_model.save(servable, str(staging), signatures={SIGNATURE: servable.serve})
        write_warmup(staging / WARMUP_PATH, name, network.input_size)
        # mkdtemp makes the folder owner-only; a model server may run as another user.
        os.chmod(staging, 0o755)
        _publish(staging, target, overwrite)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return target


def _publish(staging: Path, target: Path, overwrite: bool) -> None:
    if not target.exists():
        try:
            os.rename(staging, target)
        except OSError as exc:
            if exc.errno not in (errno.EEXIST, errno.ENOTEMPTY):
                raise
            # another export created it meanwhile
            raise VersionExistsError(f"{target} appeared during the export: {exc}") from exc
        return
    if not overwrite:
        raise VersionExistsError(f"{target} appeared during the export; pass overwrite=True to replace it")
    # A folder cannot be renamed over a non-empty one: move the old version aside first. A server
    # polling in between sees the version briefly missing, never half-written.
    retired = staging.with_name(staging.name.replace(".partial-", ".retired-"))
    os.rename(target, retired)
    try:
        os.rename(staging, target)
    except OSError:
        os.rename(retired, target)
        raise
    shutil.rmtree(retired, ignore_errors=True)


def write_warmup(path: Path, name: str, size: int) -> None:
    """One batch-1 Predict request that TF Serving replays when it loads the version."""
    request = predict_pb2.PredictRequest()
    request.model_spec.name = name
    request.model_spec.signature_name = SIGNATURE
    request.inputs[INPUT].CopyFrom(tf.make_tensor_proto(np.full((1, size, size, 3), 128, np.uint8)))
    log = prediction_log_pb2.PredictionLog(predict_log=prediction_log_pb2.PredictLog(request=request))
    path.parent.mkdir(parents=True, exist_ok=True)
    with tf.io.TFRecordWriter(str(path)) as writer:
        writer.write(log.SerializeToString())
