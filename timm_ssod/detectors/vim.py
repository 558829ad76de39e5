"""ViM: virtual-logit matching.

With the last layer logits = W f + b (W: M x D):

    u = -pinv(W) b                       (the origin of the feature space, W u + b = 0)
    P = the top D_p eigenvectors of (1/N) sum_i (f_i - u)(f_i - u)^T on ID data
    r(x) = || (I - P P^T)(f(x) - u) ||    (norm of the residual off the principal space)
    alpha = sum_i max_k logits_ik / sum_i r(x_i)   (on the ID fit data)
    score(x) = -(alpha * r(x) - logsumexp(logits(x)))

Wang et al., "ViM: Out-Of-Distribution with Virtual-logit Matching", CVPR 2022; the
covariance is taken about u (``EmpiricalCovariance(assume_centered=True)`` on f - u in
their code).

D_p (``dim``): the paper uses 1000 for D = 2048 and 512 for D = 768 (their code: 1000 if
D >= 2048 else 512). Default here, ``principal_dim(D)``: 1000 if D >= 1536, 512 if
D >= 768, else D // 2 (so small test backbones keep half their dimensions).

Streaming fit in two passes over the data: pass 1 accumulates the scatter about u and the
max logits; pass 2, once P is known, the residual norms for alpha. ``fit(model, loader)``
runs the loader twice; ``fit_outputs`` needs a re-iterable. W and b are read from
``outputs.classifier`` by probing it (b = classifier(0), W = classifier(I) - b), so any
affine last layer works, including distilled DeiT's pair of heads.
"""
import functools
from typing import Optional

import torch
import torch.nn as nn

from .base import Detector, ModelOutputs, NotApplicableError, apply_classifier
from .._util import warn


def principal_dim(num_features: int) -> int:
    """Default D_p for a feature dimension D (see the module docstring)."""
    if num_features >= 1536:
        return 1000
    if num_features >= 768:
        return 512
    return max(num_features // 2, 1)


def affine_params(classifier, num_features: int, like: torch.Tensor, name: str = 'vim'):
    """(W (M, D), b (M,)) in float64 of an affine ``classifier``, read by probing it; raises
    ``NotApplicableError`` naming detector ``name`` if it is not affine."""
    if isinstance(classifier, functools.partial) and classifier.func is apply_classifier and not classifier.keywords \
            and len(classifier.args) == 1:
        classifier = classifier.args[0].get_classifier()  # the model's last layer itself
    if isinstance(classifier, nn.Linear) and classifier.in_features == num_features and classifier.bias is not None:
        return classifier.weight.detach().double(), classifier.bias.detach().double()  # affine: nothing to probe
    eye = torch.eye(num_features, dtype=like.dtype, device=like.device)
    with torch.no_grad():
        b = classifier(torch.zeros_like(eye[:1])).double()[0]
        w = (classifier(eye).double() - b).T
        probe = torch.randn(2, num_features, generator=torch.Generator().manual_seed(0)).to(like)
        expected = probe.double() @ w.T + b
        got = classifier(probe).double()
    if not torch.allclose(got, expected, rtol=1e-3, atol=1e-3 * (1 + expected.abs().max().item())):
        raise NotApplicableError(f'{name} needs an affine last layer (logits = W f + b); '
                                 'this classifier is not affine')
    return w, b


class ViM(Detector):
    """ViM (see the module docstring)."""
    name = 'vim'
    needs_fit = True
    fit_passes = 2

    def __init__(self, dim: Optional[int] = None):
        super().__init__()
        self.dim = dim

    def _reset(self):
        self._scatter = None

    def _update(self, outputs: ModelOutputs, targets, pass_index):
        f = outputs.features
        if pass_index == 0:
            if self._scatter is None:
                if outputs.classifier is None:
                    raise ValueError('vim needs outputs.classifier (the model last layer); use '
                                     'fit(model, loader) or outputs from compute_outputs')
                w, b = affine_params(outputs.classifier, f.shape[1], outputs.features)
                self.u = -(torch.linalg.pinv(w) @ b)
                self._scatter = f.new_zeros(f.shape[1], f.shape[1], dtype=torch.float64)
                self._n = 0
                self._max_logit_sum = 0.0
            # sum (f - u)(f - u)^T = sum (f - m)(f - m)^T + n (m - u)(m - u)^T, m the batch mean: the first term
            # in float32 (centred, so float32 keeps its precision), the rank-one term and the sum over batches in
            # float64 (u lies far from the features: in float32 that term would swamp the small eigenvalues)
            m = f.double().mean(dim=0)
            z = f.float() - m.float()
            self._scatter += (z.T @ z).double() + f.shape[0] * torch.outer(m - self.u, m - self.u)
            self._n += f.shape[0]
            self._max_logit_sum += outputs.logits.float().amax(dim=-1).double().sum().item()
        else:
            self._residual_sum += self.residual_norm(f).double().sum().item()

    def _finish(self, pass_index):
        if pass_index == 0:
            d = self._scatter.shape[0]
            dim = principal_dim(d) if self.dim is None else int(self.dim)
            if not 0 < dim < d:
                raise ValueError(f'vim: the principal dimension must be in (0, {d}), got {dim}')
            self.dim_used = dim
            self.degenerate = None
            if self._n <= dim:  # then the ID features span at most the principal space: no residual
                self.degenerate = f'fitted on {self._n} images, not more than its principal dimension {dim}'
                warn(
                    f'vim: fitted on {self._n} ID images, fewer than the {d} feature dimensions and not more than the '
                    f'principal dimension {dim}. The ID features then lie inside the principal space, so their '
                    f'residual off it is (nearly) zero and alpha explodes: scores become huge negative numbers (e.g. '
                    f'-1e11) that rank images by noise. Fit on at least {d} images (several times more is better): '
                    f'timm-ssod eval / calibrate fit on the --fit-split images, at most --fit-samples of them, so a '
                    f'small training split needs more images (raising --fit-samples helps only when the split holds '
                    f'more than that); in Python, ViM(dim=k) with k well below {self._n} also works. Or leave vim out.')
            # float64 where the numerics need it: the covariance about u has one eigenvalue n ||m - u||^2 far above
            # the others, and float32's error relative to it mixes the eigenvectors about the split at `dim`
            # (scores moved by 1e-2, Spearman 0.999 against float64 on ImageNet-sized features). It is the one
            # O(D^3) step: 2-4x float32's time on CPU (seconds at D = 2048), much more on a GPU without fast float64
            eigvals, eigvecs = torch.linalg.eigh(self._scatter / self._n)  # ascending
            self.null_space = eigvecs[:, : d - dim].contiguous()  # all but the top `dim` eigenvectors
            self._residual_sum = 0.0
            del self._scatter
        else:
            if self._residual_sum <= 0:
                raise ValueError('vim: the ID features have no residual off the principal space '
                                 '(use a smaller dim)')
            self.alpha = self._max_logit_sum / self._residual_sum

    def residual_norm(self, features: torch.Tensor) -> torch.Tensor:
        """(B,) ||(f - u) projected off the principal space||, float32."""
        z = features.float() - self.u.to(features.device, torch.float32)
        return (z @ self.null_space.to(features.device, torch.float32)).norm(dim=-1)

    def _score(self, outputs: ModelOutputs):
        energy = torch.logsumexp(outputs.logits.float(), dim=-1)
        return energy - self.alpha * self.residual_norm(outputs.features)
