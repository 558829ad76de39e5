"""ASH-S and ASH-B: activation shaping of the penultimate features, then the energy score.

Per image, with x = f(x) the D penultimate activations, k = max(1, D - round(D * p / 100)) and
t = the k largest entries of x (the rest are set to 0):

    s1 = sum_i x_i,   s2 = sum_{i in t} x_i
    ASH-S:  x_i <- x_i * exp(s1 / s2) for i in t, 0 elsewhere            (p = 90)
    ASH-B:  x_i <- s1 / k for i in t, 0 elsewhere                          (p = 65)
    score(x) = logsumexp(classifier(shaped x))                             (energy, T = 1)

Djurisic, Bozanic, Ashok & Liu, "Extremely Simple Activation Shaping for
Out-of-Distribution Detection", ICLR 2023. Checked against the authors' ``ash.py``
(andrijazz/ash: ``ash_s`` / ``ash_b``, k and the rounding as here, numpy's round-half-even)
and their ImageNet ResNet-50 code, which shapes the pooled (B, 2048, 1, 1) activations just
before ``fc``, i.e. ``forward_head(pre_logits=True)`` here. Defaults: ASH-S@90 is the
authors' ImageNet config (``config/imagenet_config.yml``: ``ash_s@90``); ASH-B@65 is the
ASH-B setting of the paper's ImageNet table (65 is the first point of the authors' grid
65/80/90/95/99). OpenOOD's "ash" (``ash_net.py``) is ASH-B at p = 90. Published direction:
in the paper's Table 1 (ImageNet-1k, ResNet-50) ASH-S@90 lowers the average FPR95 of the
Energy score it shapes from 58.41% to 22.80% (AUROC 86.17% -> 95.12%); ASH-B improves
Energy there as well. No fit: every statistic is the image's own.

Where it applies: the method assumes non-negative activations (the paper: "a late layer"
after ReLU). s1 / s2 >= 1 only then, and "the k largest" means "the k strongest". That holds
for timm's ResNet, ResNeXt, DenseNet, RegNet, VGG and MobileNetV2 (ReLU / ReLU6 before the
pooling). It does not hold for ViT / DeiT / Swin / ConvNeXt (LayerNorm output), EfficientNet
(SiLU) or MobileNetV3 (hardswish): features with any negative value are refused with
``NotApplicableError`` naming the detector and the most negative value, rather than scored
with a meaningless s1 / s2. An all-zero feature vector keeps s1 / s2 := 0 (it stays zero).
The shaped features go through the model's own last layer (``outputs.classifier``, as in
ReAct), so any head that takes the pre-logits works.
"""
from typing import Callable, Optional

import numpy as np
import torch

from .base import Detector, ModelOutputs, NotApplicableError
from .energy import energy_score


def kept_count(num_features: int, percentile: float) -> int:
    """k = D - round(D * p / 100) (numpy rounding, as in the authors' code): how many
    activations survive the pruning; at least 1 (the authors' k is 0 when D (100 - p) / 100
    < 1/2, e.g. D = 4 at p = 90, and s1 / s2 is then 0 / 0)."""
    return max(num_features - int(np.round(num_features * percentile / 100.0)), 1)


def check_non_negative(features: torch.Tensor, name: str) -> None:
    """Raise ``NotApplicableError`` if any feature is negative (see the module docstring)."""
    low = features.min() if features.numel() else features.new_zeros(())
    if low < 0:
        raise NotApplicableError(
            f'{name} applies to non-negative (post-ReLU) penultimate features, as in ResNet / DenseNet / '
            f'RegNet; these have negative values (min {float(low):.4g}), as LayerNorm (ViT, Swin, ConvNeXt), '
            f'SiLU (EfficientNet) or hardswish (MobileNetV3) heads give. Activation shaping is not defined '
            'there; use energy, react, vim or knn instead.')


def shaping_stats(features: torch.Tensor, percentile: float, name: str):
    """(x float32, values (B, k), indices (B, k), s1 (B,), s1 / s2 (B,)) after the checks."""
    if features.ndim != 2:
        raise ValueError(f'{name}: expected (B, D) penultimate features, got shape {tuple(features.shape)}')
    check_non_negative(features, name)
    x = features.float()
    k = kept_count(x.shape[1], percentile)
    values, indices = x.topk(k, dim=1)
    s1, s2 = x.sum(dim=1), values.sum(dim=1)
    ratio = torch.where(s2 > 0, s1 / s2.clamp_min(torch.finfo(x.dtype).tiny), torch.zeros_like(s1))
    return x, values, indices, s1, ratio


def require_classifier(outputs: ModelOutputs, name: str) -> Callable:
    if outputs.classifier is None:
        raise ValueError(f'{name} needs outputs.classifier (the model last layer); use '
                         'compute_outputs(model, x) or score(model, x)')
    return outputs.classifier


def ash_s(features: torch.Tensor, percentile: float = 90.0, name: str = 'ash_s') -> torch.Tensor:
    """ASH-S shaped features (B, D), float32."""
    x, values, indices, _, ratio = shaping_stats(features, percentile, name)
    return torch.zeros_like(x).scatter_(1, indices, values * ratio.exp()[:, None])


def ash_b(features: torch.Tensor, percentile: float = 65.0, name: str = 'ash_b') -> torch.Tensor:
    """ASH-B shaped features (B, D), float32."""
    x, values, indices, s1, _ = shaping_stats(features, percentile, name)
    fill = (s1 / values.shape[1])[:, None].expand_as(values)
    return torch.zeros_like(x).scatter_(1, indices, fill)


class _ActivationShaping(Detector):
    shape = staticmethod(ash_s)
    default_percentile = 90.0

    def __init__(self, percentile: Optional[float] = None):
        super().__init__()
        percentile = self.default_percentile if percentile is None else float(percentile)
        if not 0.0 <= percentile < 100.0:
            raise ValueError(f'{self.name}: percentile must be in [0, 100), got {percentile}')
        self.percentile = percentile

    def _score(self, outputs: ModelOutputs):
        classifier = require_classifier(outputs, self.name)
        shaped = self.shape(outputs.features, self.percentile, self.name)
        return energy_score(classifier(shaped.to(outputs.features.dtype)))


class ASHS(_ActivationShaping):
    """ASH-S (see the module docstring): prune to the top (100 - p)%, scale by exp(s1 / s2)."""
    name = 'ash_s'
    shape = staticmethod(ash_s)
    default_percentile = 90.0


class ASHB(_ActivationShaping):
    """ASH-B (see the module docstring): prune to the top (100 - p)%, binarise to s1 / k."""
    name = 'ash_b'
    shape = staticmethod(ash_b)
    default_percentile = 65.0
