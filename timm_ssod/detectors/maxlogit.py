"""Maximum logit.

score(x) = max_k logits(x)_k

Hendrycks et al., "Scaling Out-of-Distribution Detection for Real-World Settings",
ICML 2022.
"""
from .base import Detector, ModelOutputs


class MaxLogit(Detector):
    """MaxLogit: the largest class logit; no fit."""
    name = 'maxlogit'

    def _score(self, outputs: ModelOutputs):
        return outputs.logits.float().amax(dim=-1)
