"""Reference forwards in PyTorch (torch.nn.functional only), written independently of model_export.

They take the same weights as the exporter and uint8 NHWC RGB images, and return numpy arrays, so the
tests can check the exported TensorFlow graphs layer against layer.
"""
from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F

# EfficientNet-Lite stages: first stride, expand ratio; the blocks of each stage per variant (Lite0,
# Lite1, Lite2: the published depth multipliers 1.0, 1.1, 1.2 applied to the middle stages).
LITE_STAGES = [(1, 1), (2, 6), (2, 6), (2, 6), (1, 6), (2, 6), (1, 6)]
LITE_REPEATS = {0: [1, 2, 2, 3, 3, 4, 1], 1: [1, 3, 3, 4, 4, 5, 1], 2: [1, 3, 3, 4, 4, 5, 1]}


def _pad_like_tf_same(x: torch.Tensor, kernel: int, stride: int) -> torch.Tensor:
    """TF `SAME`: output ceil(size / stride); any odd padding pixel goes after, not before."""
    pads = []
    for size in (x.shape[3], x.shape[2]):  # F.pad wants the last dimension first
        total = max((math.ceil(size / stride) - 1) * stride + kernel - size, 0)
        pads += [total // 2, total - total // 2]
    return F.pad(x, pads)


def _conv_bn(x, sd, conv: str, bn: str, stride: int = 1, groups: int = 1) -> torch.Tensor:
    weight = sd[f"{conv}.weight"]
    x = F.conv2d(_pad_like_tf_same(x, weight.shape[-1], stride), weight, stride=stride, groups=groups)
    return F.batch_norm(x, sd[f"{bn}.running_mean"], sd[f"{bn}.running_var"], sd[f"{bn}.weight"],
                        sd[f"{bn}.bias"], training=False, eps=1e-3)


@torch.no_grad()
def effnet_lite(state_dict: dict[str, torch.Tensor], images: np.ndarray,
                variant: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Pooled 1280-d features and 1000-way logits of EfficientNet-Lite<variant> for uint8 images
    [N, S, S, 3]; kernel sizes and widths are the state_dict's own."""
    sd = state_dict
    x = (torch.from_numpy(images).permute(0, 3, 1, 2).float() - 127.0) / 128.0
    x = F.relu6(_conv_bn(x, sd, "_conv_stem", "_bn0", stride=2))
    index = 0
    for (first_stride, expand), repeats in zip(LITE_STAGES, LITE_REPEATS[variant]):
        for repeat in range(repeats):
            p, stride, block_in = f"_blocks.{index}", (first_stride if repeat == 0 else 1), x
            if expand != 1:
                x = F.relu6(_conv_bn(x, sd, f"{p}._expand_conv", f"{p}._bn0"))
            x = F.relu6(_conv_bn(x, sd, f"{p}._depthwise_conv", f"{p}._bn1", stride, groups=x.shape[1]))
            x = _conv_bn(x, sd, f"{p}._project_conv", f"{p}._bn2")
            if stride == 1 and block_in.shape[1] == x.shape[1]:
                x = x + block_in
            index += 1
    x = F.relu6(_conv_bn(x, sd, "_conv_head", "_bn1"))
    features = x.mean(dim=(2, 3))
    logits = F.linear(features, sd["_fc.weight"], sd["_fc.bias"])
    return features.numpy(), logits.numpy()


def _tf_style_lrn(x: torch.Tensor, radius=2, alpha=2e-5, beta=0.75, bias=1.0) -> torch.Tensor:
    """x / (bias + alpha * sum of squares over channels c-radius..c+radius) ** beta (alpha not averaged)."""
    squares = F.pad(x * x, (0, 0, 0, 0, radius, radius))
    window = sum(squares[:, i:i + x.shape[1]] for i in range(2 * radius + 1))
    return x / (bias + alpha * window) ** beta


@torch.no_grad()
def alexnet(weights: dict[str, tuple[np.ndarray, np.ndarray]], images: np.ndarray) -> dict[str, np.ndarray]:
    """fc6, fc7 (post-ReLU), fc8 logits and softmax probabilities for uint8 RGB images [N, 227, 227, 3]."""
    w = {name: (torch.as_tensor(k), torch.as_tensor(b)) for name, (k, b) in weights.items()}

    def conv(x, name, stride=1, padding=0, groups=1):
        kernel, bias = w[name]
        x = F.conv2d(x, kernel.permute(3, 2, 0, 1), bias, stride=stride, padding=padding, groups=groups)
        return F.relu(x)

    bgr = torch.from_numpy(images).float().flip(-1) - torch.tensor([104.0, 117.0, 123.0])
    x = bgr.permute(0, 3, 1, 2)
    x = F.max_pool2d(_tf_style_lrn(conv(x, "conv1", stride=4)), 3, 2)
    x = F.max_pool2d(_tf_style_lrn(conv(x, "conv2", padding=2, groups=2)), 3, 2)
    x = conv(x, "conv3", padding=1)
    x = conv(x, "conv4", padding=1, groups=2)
    x = F.max_pool2d(conv(x, "conv5", padding=1, groups=2), 3, 2)
    flat = x.permute(0, 2, 3, 1).reshape(x.shape[0], -1)  # the npy's fc6 rows are in HWC order
    fc6 = F.relu(flat @ w["fc6"][0] + w["fc6"][1])
    fc7 = F.relu(fc6 @ w["fc7"][0] + w["fc7"][1])
    fc8 = fc7 @ w["fc8"][0] + w["fc8"][1]
    out = {"fc6": fc6, "fc7": fc7, "fc8": fc8, "probabilities": F.softmax(fc8, dim=1)}
    return {name: value.numpy() for name, value in out.items()}
