"""SSOD: the OOD head's probability that x is in-distribution (Eq. 15).

    score(x) = P(ID | x) = sigmoid(l_id - l_ood),   (l_ood, l_id) = f_ood(GAP(h(x)))

"Image Background Serves as Good Proxy for Out-of-distribution Data", ICLR 2024.
Computed by ``timm_ssod.core.id_probability``. Needs an SSOD model (one with
``forward_ood_head``).
"""
import torch

from ..core import id_probability
from .base import Detector, ModelOutputs


def require_ood_logits(outputs: ModelOutputs, name: str) -> torch.Tensor:
    if outputs.ood_logits is None:
        raise ValueError(f'{name} needs an SSOD model (one with forward_ood_head, e.g. '
                         'timm_ssod.create_model(..., ssod=True)); these outputs have no ood_logits')
    return outputs.ood_logits


class SSOD(Detector):
    """P(ID | x) from the SSOD OOD head; no fit."""
    needs_ood_head = True
    name = 'ssod'

    def _score(self, outputs: ModelOutputs):
        return id_probability(require_ood_logits(outputs, self.name))
