"""KL-Matching.

Fit: for each class k, the template d_k is the mean softmax over the ID samples the model
*predicts* as k (no labels needed). Score:

    score(x) = -min_k KL(p(x) || d_k),   p(x) = softmax(logits(x))

Hendrycks et al., "Scaling Out-of-Distribution Detection for Real-World Settings",
ICML 2022. The min over all templates follows the paper and ViM's reference code
(haoqiwang/vim, benchmark.py), which OpenOOD reuses; pytorch-ood instead compares p(x)
only with the template of its predicted class. Classes never predicted on the fit data have
no template and are left out of the min.
"""
import torch

from .base import Detector, ModelOutputs

_TINY = 1e-12  # floor for template probabilities that underflowed to 0


class KLMatching(Detector):
    """KL-Matching (see the module docstring). Streaming fit: per-class running sums."""
    name = 'klm'
    needs_fit = True

    def _reset(self):
        self._sums = None
        self._counts = None

    def _update(self, outputs: ModelOutputs, targets, pass_index):
        probs = outputs.logits.double().softmax(dim=-1)
        m = probs.shape[-1]
        if self._sums is None:
            self._sums = probs.new_zeros(m, m)
            self._counts = probs.new_zeros(m)
        pred = probs.argmax(dim=-1)
        self._sums.index_add_(0, pred, probs)
        self._counts += torch.bincount(pred, minlength=m).to(self._counts)

    def _finish(self, pass_index):
        seen = self._counts > 0
        templates = (self._sums[seen] / self._counts[seen, None]).float()
        self.log_templates = templates.clamp_min(_TINY).log()  # (K, M), K <= M classes seen
        self.template_classes = seen.nonzero().squeeze(1)
        del self._sums, self._counts

    def _score(self, outputs: ModelOutputs):
        p = outputs.logits.float().softmax(dim=-1)
        log_t = self.log_templates.to(p.device)
        # KL(p || d_k) = sum_j p_j log p_j - sum_j p_j log d_kj, for every k at once
        kl = torch.xlogy(p, p).sum(dim=-1, keepdim=True) - p @ log_t.T
        return -kl.amin(dim=-1)
