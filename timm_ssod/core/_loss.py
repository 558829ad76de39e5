"""Eq. 14: L = CE(y_hat, y) + lambda * CE_ood, with the balance schemes of Table 5.

The OOD term is computed on the locations the sampler (Eq. 12) selected:

* ``lwb`` (loss-wise balance, the paper's default): mean CE over the ID locations and mean
  CE over the OOD locations, computed separately; the term is their average.
* ``lw`` (loss weighting): one weighted mean over all sampled locations, OOD locations
  weighted by ``ood_weight`` (default 0.2, our choice: the paper gives no value), ID by 1.
* ``dr`` (data resampling): in each image, as many OOD as ID locations (the smaller of the
  two counts) are drawn at random from each side; plain mean CE over what was drawn.

When a batch has no ID or no OOD location the OOD term is zero (it still touches the OOD
head, so DDP sees a gradient): early in training from scratch no location is >= gamma
confident, and a one-sided term would only teach the head "everything is OOD".

Training from scratch: ``ood_warmup_scale(epoch, warmup_epochs)`` ramps lambda linearly from 0
(``SSODLoss(...)(out, target, lam_scale)`` applies it), since the OOD term's gradient reaches the
backbone while the classifier's sampled labels are still few and noisy (measured in
docs/guide.md). The paper fine-tunes trained classifiers, which need no warm-up (the default).

Defaults (one home each): ``GAMMA`` (``_sampler``, the paper's 0.95), ``LAMBDA`` = 1.0 (the
paper's), ``BALANCE`` = ``'lwb'`` (the paper's), ``OOD_WEIGHT`` = 0.2 (``lw`` only; ours).
"""
from typing import Callable, Dict, Optional, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F

from ._posterior import ID_INDEX, OOD_INDEX
from ._sampler import DEFAULT_SAMPLER, GAMMA, SAMPLERS, check_gamma, select_locations

BALANCE_SCHEMES = ('lwb', 'lw', 'dr')
LAMBDA, BALANCE, OOD_WEIGHT = 1.0, 'lwb', 0.2


def _dr_mask(labels: torch.Tensor) -> torch.Tensor:
    """Per image, keep k = min(#ID, #OOD) random locations of each side. labels (B, L)."""
    keep = torch.zeros_like(labels, dtype=torch.bool)
    rand = torch.rand(labels.shape, device=labels.device)
    k = torch.minimum((labels == ID_INDEX).sum(1), (labels == OOD_INDEX).sum(1))  # (B,)
    for side in (ID_INDEX, OOD_INDEX):
        is_side = labels == side
        # rank the side's locations in random order; keep the first k of them
        order = torch.where(is_side, rand, torch.full_like(rand, 2.0)).argsort(dim=1).argsort(dim=1)
        keep |= is_side & (order < k[:, None])
    return keep


def ood_term(patch_ood_logits: torch.Tensor, labels: torch.Tensor, balance: str = BALANCE,
             ood_weight: float = 0.2) -> torch.Tensor:
    """The OOD part of Eq. 14. patch_ood_logits (B, L, 2), labels (B, L) in {1, 0, -1}."""
    is_id, is_ood = labels == ID_INDEX, labels == OOD_INDEX
    # keeps the OOD head in the graph; "+ 0.0" turns the -0.0 of a negative sum into 0.0 (printed stats)
    zero = patch_ood_logits.sum() * 0.0 + 0.0
    if balance == 'dr':
        keep = _dr_mask(labels)
        if not keep.any():
            return zero
        return F.cross_entropy(patch_ood_logits[keep].float(), labels[keep])
    if not (is_id.any() and is_ood.any()):
        return zero
    ce = F.cross_entropy(patch_ood_logits.float().flatten(0, 1), labels.flatten().clamp(min=0),
                         reduction='none').view_as(labels)
    if balance == 'lwb':
        return (ce[is_id].mean() + ce[is_ood].mean()) / 2
    if balance == 'lw':
        weights = is_id.float() + ood_weight * is_ood.float()
        return (ce * weights).sum() / weights.sum()
    raise ValueError(f'unknown balance scheme {balance!r}; choose one of {BALANCE_SCHEMES}')


def ood_warmup_scale(update: int, warmup_updates: int) -> float:
    """The factor of lambda after ``update`` optimizer updates: a linear ramp from 0 to 1 over
    the first ``warmup_updates`` (1 from the start when ``warmup_updates`` is 0)."""
    if warmup_updates <= 0:
        return 1.0
    return min(1.0, max(0, update) / warmup_updates)


class SSODLoss(nn.Module):
    """Eq. 14 with the sampler of Eq. 12. Call with the output of ``model.forward_ssod(x)``
    and integer targets (B,); returns ``(loss, stats)``, where stats holds detached tensors:
    ``cls_loss``, ``ood_loss``, ``num_id``, ``num_ood``, ``num_ignored`` (location counts).
    ``lam_scale`` (default 1) multiplies lambda for this call, e.g. ``ood_warmup_scale(...)``.

    Args:
        gamma: sampler threshold, in (0.5, 1) (``sampler='paper'``).
        lam: weight of the OOD term (lambda), >= 0.
        balance: 'lwb' (default), 'lw' or 'dr'.
        ood_weight: the OOD-location weight of 'lw'.
        cls_loss: the classification criterion (default cross-entropy; e.g. timm's
            LabelSmoothingCrossEntropy).
        sampler: how locations become ID / OOD samples: ``'paper'`` (Eq. 12, the default) or a
            candidate under study (``_sampler.SAMPLERS``: ``'minmax'``, ``'quantile'``).
    """

    def __init__(self, gamma: float = GAMMA, lam: float = LAMBDA, balance: str = BALANCE,
                 ood_weight: float = OOD_WEIGHT, cls_loss: Optional[Callable] = None, sampler: str = DEFAULT_SAMPLER):
        super().__init__()
        self.gamma = check_gamma(gamma)
        if sampler not in SAMPLERS:
            raise ValueError(f'unknown sampler {sampler!r}; choose one of {SAMPLERS}')
        self.sampler = sampler
        if not lam >= 0:
            raise ValueError(f'lam (lambda, the OOD-term weight) must be >= 0, got {lam}')
        if balance not in BALANCE_SCHEMES:
            raise ValueError(f'unknown balance scheme {balance!r}; choose one of {BALANCE_SCHEMES}')
        if not ood_weight > 0:
            raise ValueError(f'ood_weight must be > 0, got {ood_weight}')
        self.lam, self.balance, self.ood_weight = float(lam), balance, float(ood_weight)
        self.cls_loss = cls_loss if cls_loss is not None else nn.CrossEntropyLoss()

    def forward(self, out, target: torch.Tensor, lam_scale: float = 1.0) -> Tuple[torch.Tensor, Dict[str, torch.Tensor]]:
        cls = self.cls_loss(out.logits, target)  # first: its error names an out-of-range target
        labels = select_locations(out.patch_logits, target, self.sampler, self.gamma)
        ood = ood_term(out.patch_ood_logits, labels, self.balance, self.ood_weight)
        stats = {
            'cls_loss': cls.detach(),
            'ood_loss': ood.detach(),
            'num_id': (labels == ID_INDEX).sum(),
            'num_ood': (labels == OOD_INDEX).sum(),
            'num_ignored': (labels < 0).sum(),
        }
        return cls + (self.lam * lam_scale) * ood, stats

    def extra_repr(self) -> str:
        return f'gamma={self.gamma}, lam={self.lam}, balance={self.balance!r}, sampler={self.sampler!r}'
