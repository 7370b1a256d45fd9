"""The seed's way of embedding: the network run in this process on images squashed to its input
size, raw pooled features. The evaluation's baseline (`vsearch eval`); the service never does this."""
from __future__ import annotations

from typing import Sequence

import numpy as np
from PIL import Image

from services import images


class SeedFeatures:
    """Raw (unnormalised) pooled EfficientNet-Lite0 features, in-process, for the seed baseline."""

    def __init__(self, weights: str | None = None):
        import tensorflow as tf
        from model_export import effnet_lite
        self._tf = tf
        self._net = effnet_lite.build(weights)
        spec = tf.TensorSpec((None, effnet_lite.INPUT_SIZE, effnet_lite.INPUT_SIZE, 3), tf.uint8)
        self._fn = tf.function(lambda x: self._net(x)[0], input_signature=[spec])
        self.size = effnet_lite.INPUT_SIZE

    def __call__(self, pictures: Sequence[Image.Image], batch: int = 32) -> np.ndarray:
        arrays = np.stack([np.asarray(images.resize_exact(p, self.size, self.size)) for p in pictures])
        return np.concatenate([self._fn(self._tf.constant(arrays[i:i + batch])).numpy()
                               for i in range(0, len(arrays), batch)])
