"""SCALE: scale the penultimate features by ASH-S's factor, without pruning; then energy.

Per image, with x = f(x) the D penultimate activations and k = max(1, D - round(D * p / 100)):

    s1 = sum_i x_i,   s2 = sum of the k largest x_i
    score(x) = logsumexp(classifier(x * exp(s1 / s2))),   p = 85,  T = 1

Xu, Chen, Franchi & Yao, "Scaling for Training Time and Post-hoc Out-of-distribution
Detection Enhancement", ICLR 2024. Checked against the authors' code (kai422/SCALE,
``openood/networks/scale_net.py``: the ASH-S factor applied to the unpruned input) and
OpenOOD's copy; p = 85 is the authors' and OpenOOD's default (``configs/postprocessors/
scale.yml``). The paper's point: ASH's pruning hurts and its scaling is what helps, so SCALE
keeps every activation (the ID accuracy is the model's own, up to the positive factor).
Published direction: SCALE is above ASH on the OpenOOD v1.5 ImageNet-1k benchmark
(ResNet-50) in near- and far-OOD AUROC; the authors' result file (``results/
imagenet_resnet50_tvsv1_base_default/ood/scale.csv``) gives near-OOD AUROC 81.36% and
far-OOD 96.53%. No fit.

Where it applies: as ASH (``timm_ssod.detectors.ash``), non-negative (post-ReLU)
penultimate features only; features with a negative value are refused with
``NotApplicableError`` naming the detector. The scaled features go through the model's own
last layer (``outputs.classifier``).
"""
from typing import Optional

from .ash import require_classifier, shaping_stats
from .base import Detector, ModelOutputs
from .energy import energy_score


def scale_features(features, percentile: float = 85.0, name: str = 'scale'):
    """SCALE's features (B, D), float32: x * exp(s1 / s2)."""
    x, _, _, _, ratio = shaping_stats(features, percentile, name)
    return x * ratio.exp()[:, None]


class SCALE(Detector):
    """SCALE (see the module docstring)."""
    name = 'scale'

    def __init__(self, percentile: Optional[float] = 85.0):
        super().__init__()
        percentile = 85.0 if percentile is None else float(percentile)
        if not 0.0 <= percentile < 100.0:
            raise ValueError(f'scale: percentile must be in [0, 100), got {percentile}')
        self.percentile = percentile

    def _score(self, outputs: ModelOutputs):
        classifier = require_classifier(outputs, self.name)
        shaped = scale_features(outputs.features, self.percentile, self.name)
        return energy_score(classifier(shaped.to(outputs.features.dtype)))
