"""Energy score (negative free energy).

score(x) = T * logsumexp_k(logits(x)_k / T),   T = 1 by default

Liu et al., "Energy-based Out-of-distribution Detection", NeurIPS 2020.
"""
import torch

from .base import Detector, ModelOutputs


def energy_score(logits: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """T * logsumexp(logits / T) over the last dim, in float32 (higher = more ID)."""
    if temperature == 1.0:  # the default: no division (a pass over the logits saved), same values
        return torch.logsumexp(logits.float(), dim=-1)
    return temperature * torch.logsumexp(logits.float() / temperature, dim=-1)


class Energy(Detector):
    """Energy: ``T * logsumexp(logits / T)``; no fit."""
    name = 'energy'

    def __init__(self, temperature: float = 1.0):
        super().__init__()
        if temperature <= 0:
            raise ValueError(f'temperature must be > 0, got {temperature}')
        self.temperature = float(temperature)

    def _score(self, outputs: ModelOutputs):
        return energy_score(outputs.logits, self.temperature)
