"""Feature layouts: every timm backbone's last features as one (B, H*W, C) set of locations,
and the model's own head applied to each location.

timm models return their last features in one of three layouts:

* NCHW maps (ResNet, DenseNet, RegNet, MobileNetV3, EfficientNet, ConvNeXt ...),
* NHWC maps (Swin, and other models that set ``model.output_fmt = 'NHWC'``),
* NLC token sequences with ``model.num_prefix_tokens`` leading class / distillation /
  register tokens (ViT, DeiT, EVA ...).

This module is the only place that knows about them. Everything else in timm_ssod sees
``locations`` of shape (B, L, C) with L = H * W, plus the grid (H, W).
"""
import math
from contextlib import contextmanager
from typing import Tuple

import torch
import torch.nn as nn
from timm.models.mobilenetv3 import MobileNetV3


class UnsupportedBackboneError(ValueError):
    """The backbone's features cannot be cut into spatial locations."""


def _layout(model, feats: torch.Tensor) -> str:
    if feats.ndim == 3:
        return 'NLC'
    if feats.ndim == 4:
        fmt = getattr(model, 'output_fmt', 'NCHW')
        fmt = getattr(fmt, 'value', fmt)  # timm.layers.Format is a str Enum
        if fmt not in ('NCHW', 'NHWC'):
            raise UnsupportedBackboneError(
                f'{type(model).__name__}: forward_features() output format {fmt!r} is not supported '
                '(SSOD handles NCHW, NHWC and NLC token features).')
        return fmt
    raise UnsupportedBackboneError(
        f'{type(model).__name__}: forward_features() returned a tensor of shape {tuple(feats.shape)}; '
        'SSOD needs a spatial feature map (B, C, H, W) / (B, H, W, C) or a token sequence (B, L, C). '
        'Models that pool inside forward_features cannot be used.')


def _token_grid(model, num_tokens: int, img_size: Tuple[int, int]) -> Tuple[int, int]:
    patch_embed = getattr(model, 'patch_embed', None)
    if patch_embed is not None and hasattr(patch_embed, 'dynamic_feat_size') and img_size is not None:
        grid = tuple(patch_embed.dynamic_feat_size(tuple(img_size)))
        if grid[0] * grid[1] == num_tokens:
            return grid
    side = math.isqrt(num_tokens)
    if side * side != num_tokens:
        raise UnsupportedBackboneError(
            f'{type(model).__name__}: {num_tokens} patch tokens do not form a square grid and the '
            'grid could not be read from model.patch_embed.')
    return side, side


def to_locations(model, feats: torch.Tensor, img_size=None) -> Tuple[torch.Tensor, Tuple[int, int]]:
    """forward_features() output -> (locations (B, H*W, C), grid (H, W)).

    Prefix tokens of NLC models are dropped; the rest is row-major over the grid.
    """
    layout = _layout(model, feats)
    if layout == 'NLC':
        tokens = feats[:, getattr(model, 'num_prefix_tokens', 0):]
        return tokens, _token_grid(model, tokens.shape[1], img_size)
    if layout == 'NHWC':
        b, h, w, c = feats.shape
        return feats.reshape(b, h * w, c), (h, w)
    b, c, h, w = feats.shape
    return feats.flatten(2).transpose(1, 2), (h, w)


def pool_locations(locations: torch.Tensor) -> torch.Tensor:
    """GAP over the spatial locations (Eq. 11 / 15): (B, L, C) -> (B, C)."""
    return locations.mean(dim=1)


def head_per_location(model, feats: torch.Tensor, locations: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
    """Apply the model's own ``forward_head`` to every location on its own.

    Each location is given to the head in the backbone's layout as a 1x1 map (NCHW/NHWC) or
    as a single-token sequence in which the token also fills every prefix slot (NLC), so any
    pooling the head does (avg, max, class token, distillation tokens) returns that location.
    Convolutional heads (MobileNetV3's conv_head), norms (ConvNeXt, ViT fc_norm) and
    distilled heads are thereby respected. Returns (B, L, M); with ``pre_logits=True``,
    ``forward_head(..., pre_logits=True)`` instead: each location's penultimate features (B, L, D),
    what an image whose whole map were that location would give the feature-space detectors.

    The head runs as at inference, whatever mode the model is in: no dropout, and a norm layer in
    the head (MobileNetV4's BatchNorm, RepViT's, LeViT's) uses its running statistics and does not
    update them from single locations. Call it without gradient (it only feeds the sampler).
    """
    with _eval_mode(model):
        if _has_pointwise_conv_head(model, feats):
            return _conv_head_per_location(model, feats, pre_logits)
        return _head_per_location(model, feats, locations, pre_logits)


@contextmanager
def _eval_mode(model):
    """model.eval() for the duration, then every module's own training flag back."""
    modes = [(m, m.training) for m in model.modules()]
    model.eval()
    try:
        yield
    finally:
        for m, training in modes:
            m.training = training


def _head_per_location(model, feats: torch.Tensor, locations: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
    b, n, c = locations.shape
    flat = locations.reshape(b * n, c)
    layout = _layout(model, feats)
    if layout == 'NCHW':
        single = flat[:, :, None, None]
    elif layout == 'NHWC':
        single = flat[:, None, None, :]
    else:
        slots = getattr(model, 'num_prefix_tokens', 0) + 1
        single = flat[:, None, :].expand(b * n, slots, c)
    if pre_logits:
        return model.forward_head(single, pre_logits=True).reshape(b, n, -1)
    return merge_heads(model.forward_head(single)).reshape(b, n, -1)


def _has_pointwise_conv_head(model, feats: torch.Tensor) -> bool:
    """MobileNetV3-family heads (also MobileNetV4, LCNet): a global pool, then a 1x1 conv_head, norm,
    activation and classifier. Every layer after the pool acts on each location alone, so the
    head can run on the whole map at once: the same numbers as 1x1 maps, but one conv over
    (B, C, H, W) instead of B*H*W convs over 1x1 inputs, which oneDNN ran several times slower
    when profiled for benchmarks/overhead.py's MobileNetV3 row (CPU). Only for this exact
    forward_head, read from timm's source."""
    if type(model).forward_head is not MobileNetV3.forward_head or _layout(model, feats) != 'NCHW':
        return False
    conv, pool = getattr(model, 'conv_head', None), str(getattr(model.global_pool, 'pool_type', '')).lower()
    # avg, max and avgmax pools return a 1x1 map unchanged; catavgmax doubles it, '' does not pool
    return isinstance(conv, nn.Conv2d) and conv.kernel_size == (1, 1) and bool(pool) and not pool.endswith('catavgmax')


def _conv_head_per_location(model, feats: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
    """MobileNetV3.forward_head without its pool, on every location of the map: (B, L, M), or
    (B, L, D) before the classifier with ``pre_logits``."""
    x = model.act2(model.norm_head(model.conv_head(feats))).flatten(2).transpose(1, 2)
    return x if pre_logits else model.classifier(x)  # (B, L, M); dropout is off at inference


def merge_heads(logits):
    """Distilled timm models in distillation-training mode return (cls, dist) logits; their
    mean is what the model predicts at eval. Other models' logits pass through."""
    return (logits[0] + logits[1]) / 2 if isinstance(logits, (tuple, list)) else logits

