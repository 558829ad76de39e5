"""ReAct: rectified activations, then the energy score.

    c = p-th percentile of all penultimate activation values on ID data (p = 90)
    score(x) = T * logsumexp(classifier(min(f(x), c)) / T),   T = 1

Sun, Guo & Li, "ReAct: Out-of-distribution Detection With Rectified Activations",
NeurIPS 2021.

Percentile estimate, streaming: a uniform random sample without replacement of at most
``reservoir_size`` activation values (2**20 by default) is kept, by giving every value a
random key and keeping the smallest keys (a mergeable bottom-k reservoir, on the CPU).
While the fit data has at most ``reservoir_size`` values in all, the sample is every value
and c is exact, whatever the batching. The percentile is numpy's default (linear
interpolation), as in the ReAct code. ``threshold=`` sets c directly and skips the fit.
"""
from typing import Optional

import torch

from .base import Detector, ModelOutputs
from .energy import energy_score


def _percentile(values: torch.Tensor, p: float) -> float:
    """numpy.percentile(values, p) with linear interpolation, without torch.quantile's size cap."""
    v = values.double().sort().values
    pos = (p / 100.0) * (v.numel() - 1)
    lo = int(pos)
    hi = min(lo + 1, v.numel() - 1)
    return float(v[lo] + (pos - lo) * (v[hi] - v[lo]))


class ReAct(Detector):
    """ReAct (see the module docstring)."""
    name = 'react'
    needs_fit = True  # unless a threshold is given

    def __init__(self, percentile: float = 90.0, threshold: Optional[float] = None,
                 temperature: float = 1.0, reservoir_size: int = 2 ** 20, seed: int = 2024):
        super().__init__()
        if not 0.0 <= percentile <= 100.0:
            raise ValueError(f'percentile must be in [0, 100], got {percentile}')
        self.percentile, self.temperature = float(percentile), float(temperature)
        self.reservoir_size, self.seed = int(reservoir_size), int(seed)
        self.threshold = None if threshold is None else float(threshold)
        self.needs_fit = threshold is None

    def _reset(self):
        self._values = torch.empty(0)
        self._keys = torch.empty(0)
        self._gen = torch.Generator().manual_seed(self.seed)

    def _update(self, outputs: ModelOutputs, targets, pass_index):
        values = outputs.features.detach().float().reshape(-1).cpu()
        keys = torch.rand(values.numel(), generator=self._gen)
        self._values = torch.cat([self._values, values])
        self._keys = torch.cat([self._keys, keys])
        if self._values.numel() > self.reservoir_size:
            keep = self._keys.topk(self.reservoir_size, largest=False).indices
            self._values, self._keys = self._values[keep], self._keys[keep]

    def _finish(self, pass_index):
        self.threshold = _percentile(self._values, self.percentile)
        del self._values, self._keys, self._gen

    def _score(self, outputs: ModelOutputs):
        if outputs.classifier is None:
            raise ValueError('react needs outputs.classifier (the model last layer); use '
                             'compute_outputs(model, x) or score(model, x)')
        clipped = outputs.features.clamp(max=self.threshold)
        return energy_score(outputs.classifier(clipped), self.temperature)
