"""Mahalanobis distance to the closest class mean, with a shared (tied) covariance.

    mu_c = mean of the penultimate features f of ID class c (ground-truth labels)
    Sigma = (1/N) sum_c sum_{i in c} (f_i - mu_c)(f_i - mu_c)^T
    score(x) = -min_c (f(x) - mu_c)^T Sigma^+ (f(x) - mu_c)

Lee et al., "A Simple Unified Framework for Detecting Out-of-Distribution Samples and
Adversarial Attacks", NeurIPS 2018 -- penultimate layer only, without their input
preprocessing and feature ensemble. As in the paper (and pytorch-ood, OpenOOD) the distance
is the squared form. Sigma^+ is the pseudo-inverse (``torch.linalg.pinv``, hermitian), plus
an optional ridge ``ridge * mean(diag Sigma) * I``, so D > N or collinear features work
(computed through Cholesky when Sigma is well-conditioned: ``precision_of``).

Streaming fit: per-class feature sums and counts plus one running scatter matrix, all in
float64 and shifted by the first batch's mean to avoid cancellation; no feature is kept.
"""
import torch

from .base import Detector, ModelOutputs, labelled_features


def precision_of(cov: torch.Tensor) -> torch.Tensor:
    """``torch.linalg.pinv(cov, hermitian=True)`` of a float64 covariance, through a Cholesky
    factorisation when ``cov`` is well-conditioned (several times faster than pinv's eigh).

    float64 because the precision is what the distances hinge on: a float32 inverse loses
    cond * 6e-8 relative, past 1e-2 for the condition numbers penultimate features have; float64
    costs little on CPU (2x float32 at most), more on a GPU without fast float64. pinv cuts
    eigenvalues below about 1e-13 of the largest (``rtol`` = eps * D): when ``||cov||_F
    ||inverse||_F`` (an upper bound of the condition number) stays below 1e9 nothing is cut, and
    the two inverses agree to ~1e-7 relative (rounding: cond * eps); otherwise pinv is used.
    """
    chol, info = torch.linalg.cholesky_ex(cov)
    if info.item() == 0:
        inverse = torch.cholesky_inverse(chol)
        if bool(torch.isfinite(inverse).all()) and (cov.norm() * inverse.norm()).item() < 1e9:
            return inverse
    return torch.linalg.pinv(cov, hermitian=True)


class Mahalanobis(Detector):
    """Mahalanobis (see the module docstring). Needs class labels in the fit data."""
    name = 'mahalanobis'
    needs_fit = True

    def __init__(self, ridge: float = 0.0):
        super().__init__()
        self.ridge = float(ridge)

    def _reset(self):
        self._shift = None

    def _update(self, outputs: ModelOutputs, targets, pass_index):
        f, y = labelled_features(self.name, outputs, targets)
        m = outputs.logits.shape[-1]
        if self._shift is None:
            d = f.shape[1]
            self._shift = f.mean(dim=0)
            self._sums = f.new_zeros(m, d)
            self._counts = f.new_zeros(m)
            self._scatter = f.new_zeros(d, d)
        z = f - self._shift
        self._sums.index_add_(0, y, z)
        self._counts += torch.bincount(y, minlength=m).to(self._counts)
        self._scatter += z.T @ z

    def _finish(self, pass_index):
        seen = self._counts > 0
        n = self._counts.sum()
        means = self._sums[seen] / self._counts[seen, None]  # shifted class means
        within = self._scatter - (means.T * self._counts[seen]) @ means
        cov = within / n
        if self.ridge:
            cov = cov + self.ridge * cov.diagonal().mean() * torch.eye(cov.shape[0], dtype=cov.dtype, device=cov.device)
        self.precision = precision_of(cov)
        self.shift = self._shift
        self.class_means = means  # relative to self.shift
        self.class_ids = seen.nonzero().squeeze(1)
        self._mu_p_mu = ((means @ self.precision) * means).sum(dim=-1)
        del self._sums, self._counts, self._scatter, self._shift

    def distances(self, features: torch.Tensor) -> torch.Tensor:
        """(B, C) squared Mahalanobis distances to the fitted class means (classes seen)."""
        prec = self.precision.to(features.device)
        z = features.double() - self.shift.to(features.device)
        zp = z @ prec
        d = (zp * z).sum(dim=-1, keepdim=True) - 2 * zp @ self.class_means.to(z.device).T \
            + self._mu_p_mu.to(z.device)
        return d.clamp_min(0)

    def _score(self, outputs: ModelOutputs):
        return -self.distances(outputs.features).amin(dim=-1).float()
