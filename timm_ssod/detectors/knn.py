"""Deep k-nearest neighbours on L2-normalised penultimate features.

    z = f(x) / ||f(x)||,   bank = { z_i : ID training samples }
    score(x) = -|| z - z_(k) ||,   z_(k) = the k-th nearest bank feature,   k = 50

Sun et al., "Out-of-Distribution Detection with Deep Nearest Neighbors", ICML 2022. (Their
faiss code ranks by the squared distance; the order, hence every metric, is the same.)

The bank is the method: every ID feature is kept (float32, on the features' device).
Distances are computed in chunks of queries x bank rows, never an N x N matrix; for unit
vectors ||a - b||^2 = 2 - 2 a.b. If the bank has fewer than k points, k = bank size (with a
warning).
"""

import torch
import torch.nn.functional as F

from .base import Detector, ModelOutputs, top_similarities
from .._util import warn


class KNN(Detector):
    """KNN (see the module docstring)."""
    name = 'knn'
    needs_fit = True

    def __init__(self, k: int = 50, query_chunk: int = 1024, bank_chunk: int = 16384):
        super().__init__()
        if k < 1:
            raise ValueError(f'k must be >= 1, got {k}')
        self.k, self.query_chunk, self.bank_chunk = int(k), int(query_chunk), int(bank_chunk)

    def _reset(self):
        self._parts = []

    def _update(self, outputs: ModelOutputs, targets, pass_index):
        self._parts.append(F.normalize(outputs.features.float(), dim=-1))

    def _finish(self, pass_index):
        self.bank = torch.cat(self._parts)
        del self._parts
        self.k_used = self.k
        if self.bank.shape[0] < self.k:
            self.k_used = self.bank.shape[0]
            warn(f'knn: the ID bank has {self.bank.shape[0]} features, fewer than k={self.k}; '
                 f'using k={self.k_used}')

    def kth_distance(self, features: torch.Tensor) -> torch.Tensor:
        """(B,) Euclidean distance of each normalised feature to its k-th nearest bank row."""
        sim_k = top_similarities(features, self.bank, self.k_used, self.query_chunk, self.bank_chunk)[:, -1]
        return (2 - 2 * sim_k).clamp_min(0).sqrt()

    def _score(self, outputs: ModelOutputs):
        return -self.kth_distance(outputs.features)
