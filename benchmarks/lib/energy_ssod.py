"""Energy plus the log-odds of SSOD's P(ID | x): one score for near and far OOD.

    score(x) = T * logsumexp_k(logits_k / T) + w * log(p / (1 - p)),   p = P(ID | x) (Eq. 15)

Energy (Liu et al., NeurIPS 2020) reads the classifier, which sees novel *objects* as
unfamiliar; SSOD's P(ID | x) (ICLR 2024) reads the OOD head, trained on background
locations, which flags background-, texture- and noise-like images. Adding the log-odds to
the energy (a log-density) gives, for w = 1, ``log`` of the energy's unnormalised density
times the odds of being ID. ``w`` trades the two; choose it on validation data, never on
the test sets (``benchmarks/quality.py`` does). Needs an SSOD model; no fit.

p is ``timm_ssod.core.id_probability`` (float32), clamped to [tiny, 1 - 2^-24] before
the log, so the log-odds are finite (they saturate near +16.6, far inside the ID side).
"""
import torch

from timm_ssod.core import id_probability
from timm_ssod.detectors.base import Detector, ModelOutputs
from timm_ssod.detectors.energy import energy_score
from timm_ssod.detectors.ssod import require_ood_logits

_P_MAX = 1.0 - 2.0 ** -24  # the largest float32 below 1


def log_odds(p: torch.Tensor) -> torch.Tensor:
    """log(p / (1 - p)), finite: p (float32) clamped to [float32 tiny, 1 - 2^-24]."""
    p = p.float().clamp(torch.finfo(torch.float32).tiny, _P_MAX)
    return torch.log(p) - torch.log1p(-p)


def id_log_odds(ood_logits: torch.Tensor) -> torch.Tensor:
    """The log-odds of P(ID | x) = ``id_probability(ood_logits)`` (Eq. 15)."""
    return log_odds(id_probability(ood_logits))


class EnergySSOD(Detector):
    """``energy + weight * log-odds(P(ID | x))`` (module docstring); no fit."""
    needs_ood_head = True
    name = 'energy_ssod'

    def __init__(self, weight: float = 1.0, temperature: float = 1.0):
        super().__init__()
        if weight < 0:
            raise ValueError(f'weight must be >= 0, got {weight}')
        if temperature <= 0:
            raise ValueError(f'temperature must be > 0, got {temperature}')
        self.weight, self.temperature = float(weight), float(temperature)

    def _score(self, outputs: ModelOutputs):
        log_odds = id_log_odds(require_ood_logits(outputs, self.name))
        return energy_score(outputs.logits, self.temperature) + self.weight * log_odds
