"""Maximum softmax probability (MSP).

score(x) = max_k softmax(logits(x))_k

Hendrycks & Gimpel, "A Baseline for Detecting Misclassified and Out-of-Distribution
Examples in Neural Networks", ICLR 2017.
"""
from .base import Detector, ModelOutputs


class MSP(Detector):
    """MSP: the largest class probability; no fit."""
    name = 'msp'

    def _score(self, outputs: ModelOutputs):
        return outputs.logits.float().softmax(dim=-1).amax(dim=-1)
