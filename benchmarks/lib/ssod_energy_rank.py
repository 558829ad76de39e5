"""Rank (OR) combination of SSOD and Energy: OOD when either score is unusually low for ID data.

    score(x) = min( F_ssod(P(ID | x)), F_energy(energy(x)) )

with F_s the empirical CDF of score s over ID data seen at fit time (the fraction of fit
images scoring <= s(x)). Each score is put on the same scale, its ID quantile, so neither
dominates by its units; the minimum flags an image that either score finds atypical, keeping
SSOD's strength on background-like OOD and Energy's on novel objects (at the price of
spending the 5% ID budget on two tails). No weight to tune. Needs an SSOD model and a fit
on ID images (``fit(model, loader)``), as KNN or Mahalanobis do.
"""
import torch

from timm_ssod.core import id_probability
from timm_ssod.detectors.base import Detector, ModelOutputs
from timm_ssod.detectors.energy import energy_score
from timm_ssod.detectors.ssod import require_ood_logits


def empirical_cdf(sorted_ref: torch.Tensor, values: torch.Tensor) -> torch.Tensor:
    """Fraction of ``sorted_ref`` (ascending, 1-D) that is <= each of ``values``."""
    ref = sorted_ref.to(values.device)
    return torch.searchsorted(ref, values.contiguous(), right=True).float() / ref.numel()


class SSODEnergyRank(Detector):
    """``min(F_ssod, F_energy)`` (module docstring); fit on ID data."""
    needs_ood_head = True
    name = 'ssod_energy_rank'
    needs_fit = True

    def _pair(self, outputs: ModelOutputs):
        return id_probability(require_ood_logits(outputs, self.name)), energy_score(outputs.logits)

    def _reset(self):
        self._parts = ([], [])

    def _update(self, outputs, targets, pass_index):
        for part, s in zip(self._parts, self._pair(outputs)):
            part.append(s.detach().float().cpu())

    def _finish(self, pass_index):
        self.ref_ssod, self.ref_energy = (torch.cat(p).sort().values for p in self._parts)
        del self._parts

    def _score(self, outputs: ModelOutputs):
        ssod, energy = self._pair(outputs)
        return torch.minimum(empirical_cdf(self.ref_ssod, ssod), empirical_cdf(self.ref_energy, energy))
