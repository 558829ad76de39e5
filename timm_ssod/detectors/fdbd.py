"""fDBD: feature distance to the decision boundaries, regularised by the distance to the mean.

With the last layer logits l = W f + b (W: C x D) and c = argmax_k l_k the predicted class,
the distance of f to the boundary {l_c = l_j} between classes c and j is
|l_c - l_j| / ||w_c - w_j||, exactly, because the last layer is affine. Then

    mu = mean of the penultimate features on ID data
    score(x) = (1 / (C - 1)) sum_{j != c} |l_c - l_j| / ||w_c - w_j||  /  ||f(x) - mu||

Liu & Qin, "Fast Decision Boundary based Out-of-Distribution Detector", ICML 2024 (their
code: litianliu/fDBD-OOD, ``run_imagenet.py``; OpenOOD ``fdbd_postprocessor.py`` with
``distance_as_normalizer: True``). The authors' code sums over j instead of averaging; the
factor 1/(C-1) is the same for every image, so every metric is the same. They propose the
regularisation by ||f - mu|| (the default here); OpenOOD's option ``distance_as_normalizer =
False`` divides by ||f|| instead (``center=False`` here). Hyper-parameter free. Published
direction: fDBD "matches or surpasses the effectiveness of state-of-the-art methods" while
adding negligible inference latency (abstract; the authors' scripts cover CIFAR-10 and
ImageNet ResNet-50).

Needs an affine last layer: W and b are read by probing ``outputs.classifier`` (as ViM
does), so any affine head works, distilled DeiT's pair of heads included; a head that is not
affine is refused with ``NotApplicableError``, as are two classes with identical weight rows
(no boundary between them). The logits are recomputed as W f + b from the features, so that
the distance is exact (for every single-head timm model they are the model's logits). Fit:
the running feature sum (float64); a feature exactly at mu is clamped to a distance of 1e-12.
Scoring is in float32 (see ``boundary_distance``).
"""
import torch

from .base import Detector, ModelOutputs, NotApplicableError
from .vim import affine_params


class FDBD(Detector):
    """fDBD (see the module docstring)."""
    name = 'fdbd'
    needs_fit = True

    def __init__(self, center: bool = True):
        super().__init__()
        self.center = bool(center)

    def _reset(self):
        self._sum = None

    def _update(self, outputs: ModelOutputs, targets, pass_index):
        f = outputs.features
        if self._sum is None:
            if outputs.classifier is None:
                raise ValueError('fdbd needs outputs.classifier (the model last layer); use '
                                 'fit(model, loader) or outputs from compute_outputs')
            w, b = affine_params(outputs.classifier, f.shape[1], outputs.features, name=self.name)
            if w.shape[0] < 2:
                raise NotApplicableError('fdbd needs at least 2 classes (decision boundaries between them)')
            rows, inverse = torch.unique(w, dim=0, return_inverse=True)
            if len(rows) < len(w):
                same = (inverse == torch.bincount(inverse).argmax()).nonzero().flatten()[:2].tolist()
                raise NotApplicableError(f'fdbd: classes {same[0]} and {same[1]} have identical weight rows, so '
                                         'there is no decision boundary between them (an untrained or '
                                         'zero-initialised head?)')
            self.weight, self.bias = w, b
            self._gaps = torch.cdist(w, w).fill_diagonal_(1.0)  # ||w_c - w_j||; the j = c term is 0 / 1
            self._sum = f.new_zeros(f.shape[1], dtype=torch.float64)
            self._n = 0
        self._sum += f.sum(dim=0, dtype=torch.float64)  # a float64 sum, without a float64 copy of the batch
        self._n += f.shape[0]

    def _finish(self, pass_index):
        # fitted in float64 (a D-vector and a C x C matrix: no cost), scored in float32
        self.mean = self._sum / self._n
        self.inv_gaps = 1.0 / self._gaps
        del self._sum, self._n, self._gaps

    def boundary_distance(self, features: torch.Tensor) -> torch.Tensor:
        """(B,) mean distance of f to the C - 1 boundaries of its predicted class (float32).

        float32, as the features are: the distances are differences of logits divided by fixed
        norms, with no cancellation that float64 would save (pytorch-ood computes them so too)."""
        f = features.float()
        weight, bias = self.weight.to(f.device, torch.float32), self.bias.to(f.device, torch.float32)
        logits = torch.addmm(bias, f, weight.T)
        top, pred = logits.max(dim=-1)
        dist = (top[:, None] - logits).mul_(self.inv_gaps.to(f.device, torch.float32)[pred])
        return dist.sum(dim=-1) / (logits.shape[-1] - 1)

    def _score(self, outputs: ModelOutputs):
        f = outputs.features.float()
        ref = f - self.mean.to(f.device, torch.float32) if self.center else f
        return self.boundary_distance(f) / ref.norm(dim=-1).clamp_min(1e-12)
