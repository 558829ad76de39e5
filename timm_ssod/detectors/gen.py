"""GEN: generalized entropy of the softmax, over the M most likely classes.

    p = softmax(logits(x)),   p_(1) >= p_(2) >= ... its sorted values
    score(x) = -sum_{j=1..min(M, C)} p_(j)^gamma * (1 - p_(j))^gamma,   gamma = 0.1, M = 100

Liu, Lochman & Zach, "GEN: Pushing the Limits of Softmax-Based Out-of-Distribution
Detection", CVPR 2023. gamma = 0.1 and M = 100 are the paper's ImageNet-1k setting and the
defaults of OpenOOD (``configs/postprocessors/gen.yml``, ``gen_postprocessor.py``, the
formula checked there); with fewer than M classes all C are used. Published direction: on the
ImageNet-1k benchmark GEN improves the average AUROC over "a number of state-of-the-art
post-hoc methods" for all six CNN and transformer classifiers, by at least 3.5 points
(abstract). No fit.

A confident image has p_(1) within float rounding of 1, where ``1 - p`` computed naively is
0 and every such image would tie. The terms are computed in log space instead:
log p_j = l_j - logsumexp(l), log(1 - p_(1)) = logsumexp(other logits) - logsumexp(l), and
log(1 - p_(j)) = log1p(-p_(j)) for j >= 2 (there p_(j) <= 1/2, so log1p is exact). In log
space float32 is enough (each term p^gamma (1 - p)^gamma = exp(gamma (log p + log(1 - p))) keeps
float32's relative precision, and the score is returned in float32 anyway); with M >= C (every
class counts) the sum needs no sort, only the top class.

pytorch-ood 0.4.0 (``pytorch_ood.detector.GEN``) averages the terms over all C classes instead of
summing the top M (and clamps p to [1e-7, 1 - 1e-7]): the paper's sum is kept here.
"""
import torch

from .base import Detector, ModelOutputs


def generalized_entropy(logits: torch.Tensor, gamma: float = 0.1, top: int = 100) -> torch.Tensor:
    """(B,) sum over the ``top`` largest softmax probabilities of p^gamma (1 - p)^gamma (float32)."""
    z = logits.float()
    c = z.shape[-1]
    lse = torch.logsumexp(z, dim=-1, keepdim=True)
    k = min(int(top), c)
    if k < c:
        best, idx = z.topk(k, dim=-1)                   # descending
        first = idx[:, :1]
    else:                                               # every class counts: the sum needs no order
        best, first = z, z.argmax(dim=-1, keepdim=True)
    log_p = best - lse
    log_q = torch.log1p(-log_p.exp())                   # log(1 - p), exact where p <= 1/2
    if c > 1:                                           # top class: logsumexp of the others
        rest = torch.logsumexp(z.scatter(-1, first, float('-inf')), dim=-1, keepdim=True) - lse
        if k < c:
            log_q[:, :1] = rest
        else:
            log_q.scatter_(-1, first, rest)
    return torch.exp(gamma * (log_p + log_q)).sum(dim=-1)


class GEN(Detector):
    """GEN (see the module docstring); no fit."""
    name = 'gen'

    def __init__(self, gamma: float = 0.1, top: int = 100):
        super().__init__()
        if not gamma > 0:
            raise ValueError(f'gen: gamma must be > 0, got {gamma}')
        if top < 1:
            raise ValueError(f'gen: top (M) must be >= 1, got {top}')
        self.gamma, self.top = float(gamma), int(top)

    def _score(self, outputs: ModelOutputs):
        return -generalized_entropy(outputs.logits, self.gamma, self.top)
