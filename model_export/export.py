"""Public entry point: export a model as a servable SavedModel version (design.md, "Model contract").

Importing this module is cheap; TensorFlow (and torch, for the default model) load only on export.
"""
from __future__ import annotations

import logging
import time
from pathlib import Path

from .errors import ModelExportError

logger = logging.getLogger(__name__)

DEFAULT_MODEL = "effnet_lite0"
# Embedding layers per model; the first is the default.
LAYERS = {"effnet_lite0": ("pool",), "alexnet": ("fc6", "fc7")}
MODELS = tuple(LAYERS)


def export_model(
    model: str = DEFAULT_MODEL,
    *,
    out: str | Path,
    version: int = 1,
    weights: str | Path | None = None,
    layer: str | None = None,
    overwrite: bool = False,
) -> Path:
    """Writes `<out>/<model>/<version>/` and returns that folder.

    weights: effnet_lite0 takes a PyTorch state_dict path (None: the packaged pretrained one); alexnet
    needs a `bvlc_alexnet.npy` path or http(s) URL. layer: the embedding layer, None for the model's
    default (alexnet: fc6, post-ReLU). Raises ModelExportError on bad input, VersionExistsError (also a
    FileExistsError) if the version exists and overwrite is False.
    """
    if model not in LAYERS:
        raise ModelExportError(f"unknown model {model!r}; choose one of {', '.join(MODELS)}")
    layer = LAYERS[model][0] if layer is None else layer
    if layer not in LAYERS[model]:
        raise ModelExportError(f"{model} has no embedding layer {layer!r}; choose one of {', '.join(LAYERS[model])}")
    if isinstance(version, bool) or not isinstance(version, int) or version < 0:
        raise ModelExportError(f"version must be a non-negative integer, not {version!r}")
    if model == "alexnet" and weights is None:
        raise ModelExportError("alexnet needs weights: a path or URL of bvlc_alexnet.npy")

    from . import savedmodel

    savedmodel.version_dir(Path(out), model, version, overwrite)  # fail before loading any weights
    started = time.perf_counter()
    network = _build(model, weights, layer)
    target = savedmodel.write_savedmodel(network, Path(out), model, version, overwrite)
    logger.info("exported %s (layer %s) to %s in %.1f s", model, layer, target, time.perf_counter() - started)
    return target


def _build(model: str, weights: str | Path | None, layer: str):
    if model == "alexnet":
        from . import alexnet

        return alexnet.build(weights, layer)
    from . import effnet_lite0

    return effnet_lite0.build(weights)
