"""SSOD with max pooling over locations: the most ID-like location's P(ID).

    score(x) = max_i P(ID | X_i) = max_i sigmoid(l_id(X_i) - l_ood(X_i)),   X = h(x), i over H x W

The paper (Eq. 15) applies the OOD head to the pooled features; with its single linear
layer that is the head's logits *averaged* over locations, so an image is ID when its
locations look ID on average. This variant asks whether *any* location looks like an ID
object: an image of pure background (or noise, or texture) has none. Min pooling is not
offered: ID images contain background locations by construction (the OOD head is trained
to call them OOD), so their minimum is low too.

Needs an SSOD model; reads ``model.forward_ssod(x).patch_ood_logits``, so it scores images
(``score(model, x)``, one backbone pass of its own), not precomputed outputs. No fit.
"""
import torch

from timm_ssod.core import is_ssod_model
from timm_ssod.core import id_probability
from timm_ssod.detectors.base import Detector, ModelOutputs


def patch_max_score(patch_ood_logits: torch.Tensor) -> torch.Tensor:
    """(B, L, 2) per-location OOD logits -> (B,) max over locations of P(ID)."""
    return id_probability(patch_ood_logits).amax(dim=-1)


class SSODPatchMax(Detector):
    """Max over feature-map locations of P(ID | location); no fit."""
    needs_ood_head = True
    name = 'ssod_patch_max'
    needs_inputs = True

    def score(self, model, x: torch.Tensor) -> torch.Tensor:
        if not is_ssod_model(model):
            raise ValueError(f'{self.name} needs an SSOD model (one with forward_ssod, e.g. '
                             'timm_ssod.create_model(..., ssod=True))')
        with torch.no_grad():
            return patch_max_score(model.forward_ssod(x).patch_ood_logits)

    def score_outputs(self, outputs: ModelOutputs) -> torch.Tensor:
        raise NotImplementedError(f'{self.name} reads every location of the feature map: use score(model, x), '
                                  'precomputed outputs hold only the pooled OOD logits')
