"""SSOD unified MSP: the largest known-class probability of the (M+1)-way posterior (Eq. 7).

    score(x) = max_{i <= M} P(w_i | x) = max_i softmax(logits(x))_i * P(ID | x)

"Image Background Serves as Good Proxy for Out-of-distribution Data", ICLR 2024.
Computed by ``timm_ssod.core.unified_posterior``; the (M+1)-th column, "unknown",
is left out. Needs an SSOD model.
"""
from ..core import unified_posterior
from .base import Detector, ModelOutputs
from .ssod import require_ood_logits


class SSODMSP(Detector):
    """Max over the M known classes of the unified posterior; no fit."""
    needs_ood_head = True
    name = 'ssod_msp'

    def _score(self, outputs: ModelOutputs):
        posterior = unified_posterior(outputs.logits, require_ood_logits(outputs, self.name))
        return posterior[:, :-1].amax(dim=-1)
