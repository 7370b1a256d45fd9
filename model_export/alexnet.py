"""BVLC AlexNet in plain TensorFlow ops, from `bvlc_alexnet.npy` (Guerzhoy's myalexnet_forward layout).

The .npy file is a pickled dict {layer: [weights, biases]} with HWIO conv kernels and (in, out) dense
weights. Loading it unpickles, which can run code: only export weights from a source you trust.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import tensorflow as tf

from .errors import ModelExportError
from .fetch import local_file

INPUT_SIZE = 227
FEATURE_DIM = 4096
LAYERS = ("fc6", "fc7")
# The BVLC weights were trained on BGR images minus the ImageNet channel means.
BGR_MEAN = (104.0, 117.0, 123.0)
SHAPES = {
    "conv1": (11, 11, 3, 96),
    "conv2": (5, 5, 48, 256),
    "conv3": (3, 3, 256, 384),
    "conv4": (3, 3, 192, 384),
    "conv5": (3, 3, 192, 256),
    "fc6": (9216, 4096),
    "fc7": (4096, 4096),
    "fc8": (4096, 1000),
}
# Layers split into two halves along channels (the original two-GPU layout).
GROUPED = ("conv2", "conv4", "conv5")


def load_weights(source: str | Path) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Reads and checks the weights from a local path or an http(s) URL."""
    with local_file(source, "AlexNet weights") as path:
        try:
            loaded = np.load(path, allow_pickle=True, encoding="latin1")
        except Exception as exc:  # numpy and pickle raise many types for a file that is not .npy
            raise ModelExportError(f"{source} is not a .npy file: {exc}") from exc
    if not (isinstance(loaded, np.ndarray) and loaded.dtype == object and loaded.shape == ()):
        if hasattr(loaded, "close"):  # an .npz archive keeps its file open
            loaded.close()
        raise ModelExportError(f"{source} does not hold a pickled dict of layers (bvlc_alexnet.npy layout)")
    layers = loaded.item()
    if not isinstance(layers, dict):
        raise ModelExportError(f"{source} holds a {type(layers).__name__}, not a dict of layers")
    return {name: _layer(layers, name, shape, source) for name, shape in SHAPES.items()}


def _layer(layers: dict, name: str, shape: tuple[int, ...], source) -> tuple[np.ndarray, np.ndarray]:
    entry = layers.get(name)
    if not isinstance(entry, (list, tuple)) or len(entry) != 2:
        raise ModelExportError(f"{source}: layer {name!r} missing or not a [weights, biases] pair")
    weights, biases = (np.asarray(part) for part in entry)
    for what, value, expected in (("weights", weights, shape), ("biases", biases, shape[-1:])):
        if value.shape != expected:
            raise ModelExportError(f"{source}: {name} {what} have shape {value.shape}, expected {expected}")
        if not np.issubdtype(value.dtype, np.floating):
            raise ModelExportError(f"{source}: {name} {what} are {value.dtype}, not floating point")
    return weights.astype(np.float32, copy=False), biases.astype(np.float32, copy=False)


class AlexNet(tf.Module):
    """Maps uint8 RGB images [N, 227, 227, 3] to (fc6 or fc7 post-ReLU [N, 4096], fc8 logits [N, 1000])."""

    input_size = INPUT_SIZE
    feature_dim = FEATURE_DIM

    def __init__(self, weights: dict[str, tuple[np.ndarray, np.ndarray]], layer: str = "fc6"):
        super().__init__(name="alexnet")
        if layer not in LAYERS:
            raise ModelExportError(f"unknown AlexNet layer {layer!r}; choose one of {', '.join(LAYERS)}")
        self.layer = layer
        self.kernels = {
            name: tf.Variable(w, trainable=False, name=f"{name}_w") for name, (w, _) in weights.items()
        }
        self.biases = {
            name: tf.Variable(b, trainable=False, name=f"{name}_b") for name, (_, b) in weights.items()
        }

    def _conv(self, x: tf.Tensor, name: str, stride: int = 1, padding: str = "SAME") -> tf.Tensor:
        kernel, strides = self.kernels[name], (1, stride, stride, 1)
        if name in GROUPED:
            halves = zip(tf.split(x, 2, axis=3), tf.split(kernel, 2, axis=3))
            x = tf.concat([tf.nn.conv2d(xs, ks, strides, padding) for xs, ks in halves], axis=3)
        else:
            x = tf.nn.conv2d(x, kernel, strides, padding)
        return tf.nn.relu(tf.nn.bias_add(x, self.biases[name]))

    def _dense(self, x: tf.Tensor, name: str) -> tf.Tensor:
        return tf.nn.bias_add(tf.matmul(x, self.kernels[name]), self.biases[name])

    def layers(self, images: tf.Tensor) -> dict[str, tf.Tensor]:
        """fc6 and fc7 (post-ReLU) and the fc8 logits."""
        x = tf.reverse(tf.cast(images, tf.float32), axis=[3]) - tf.constant(BGR_MEAN)
        for name, stride, padding in (("conv1", 4, "VALID"), ("conv2", 1, "SAME")):
            x = self._conv(x, name, stride, padding)
            x = tf.nn.local_response_normalization(x, depth_radius=2, bias=1.0, alpha=2e-5, beta=0.75)
            x = tf.nn.max_pool2d(x, 3, 2, "VALID")
        for name in ("conv3", "conv4", "conv5"):
            x = self._conv(x, name)
        x = tf.nn.max_pool2d(x, 3, 2, "VALID")
        fc6 = tf.nn.relu(self._dense(tf.reshape(x, (-1, SHAPES["fc6"][0])), "fc6"))
        fc7 = tf.nn.relu(self._dense(fc6, "fc7"))
        return {"fc6": fc6, "fc7": fc7, "fc8": self._dense(fc7, "fc8")}

    def __call__(self, images: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
        out = self.layers(images)
        return out[self.layer], out["fc8"]


def build(weights: str | Path, layer: str = "fc6") -> AlexNet:
    return AlexNet(load_weights(weights), layer)
