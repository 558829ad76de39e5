"""OOD-detection metrics and accuracy, in numpy (torch tensors are accepted and converted).

Conventions (as in the SSOD paper; OpenOOD and pytorch-ood take OOD as the positive class for FPR):

* a score is higher for in-distribution (ID) samples;
* ID is the positive class;
* FPR95 is the fraction of OOD scores ``>= t`` at the *largest* threshold ``t`` for which
  at least 95% of the ID scores are ``>= t`` (scores equal to ``t`` are accepted);
* AUROC: ID positive, ties between an ID and an OOD score count 1/2 (Mann-Whitney U);
* AUPR-In: ID positive, score as is; AUPR-Out: OOD positive, score negated. Both are
  average precision, ``sum_n (R_n - R_{n-1}) P_n`` over the distinct thresholds (tied
  scores form one threshold), the definition of sklearn's ``average_precision_score``.

All return fractions in [0, 1]; tables print percent.

Beware when comparing with other libraries: OpenOOD (since 2023) and pytorch-ood treat OOD
as the positive class for FPR (the FPR they report is the share of ID samples rejected at
95% OOD recall), which is not the paper's FPR95. Ours follows the paper.
"""
from typing import Dict, Optional

import numpy as np

__all__ = ['fpr_at_tpr', 'auroc', 'aupr_in', 'aupr_out', 'ood_metrics', 'accuracy', 'spearman']


def _as_scores(values, name: str) -> np.ndarray:
    if hasattr(values, 'detach'):  # torch.Tensor, without importing torch
        values = values.detach().float().cpu().numpy()
    arr = np.asarray(values, dtype=np.float64)
    if arr.ndim != 1:
        raise ValueError(f'{name} must be 1-D, got shape {arr.shape}')
    if arr.size == 0:
        raise ValueError(f'{name} is empty: OOD metrics need both ID and OOD scores')
    if not np.isfinite(arr).all():
        bad = int((~np.isfinite(arr)).sum())
        raise ValueError(f'{name} contains {bad} NaN/Inf value(s)')
    return arr


def _pair(id_scores, ood_scores):
    return _as_scores(id_scores, 'id_scores'), _as_scores(ood_scores, 'ood_scores')


def fpr_at_tpr(id_scores, ood_scores, tpr: float = 0.95) -> float:
    """Share of OOD scores ``>= t`` at the largest ``t`` with at least ``tpr`` of the ID
    scores ``>= t`` (FPR95 for ``tpr=0.95``; ID positive, as in the paper)."""
    if not 0.0 < tpr <= 1.0:
        raise ValueError(f'tpr must be in (0, 1], got {tpr}')
    id_s, ood_s = _pair(id_scores, ood_scores)
    n = id_s.size
    # smallest k with k / n >= tpr, evaluated in floating point like a ROC curve's tps / P
    k = min(max(int(np.ceil(tpr * n)), 1), n)
    while k > 1 and (k - 1) / n >= tpr:
        k -= 1
    while k < n and k / n < tpr:
        k += 1
    threshold = np.sort(id_s)[::-1][k - 1]  # k-th largest ID score
    return float(np.mean(ood_s >= threshold))


def _average_ranks(values: np.ndarray) -> np.ndarray:
    """1-based ranks, tied values sharing the mean of their ranks."""
    order = np.argsort(values, kind='mergesort')
    sorted_vals = values[order]
    starts = np.flatnonzero(np.r_[True, sorted_vals[1:] != sorted_vals[:-1]])
    ends = np.r_[starts[1:], sorted_vals.size]  # exclusive
    mean_rank = (starts + 1 + ends) / 2.0  # mean of ranks starts+1 .. ends
    ranks = np.empty(values.size, dtype=np.float64)
    ranks[order] = np.repeat(mean_rank, ends - starts)
    return ranks


def auroc(id_scores, ood_scores) -> float:
    """Area under the ROC curve, ID positive: P(s_id > s_ood) + P(s_id = s_ood) / 2."""
    id_s, ood_s = _pair(id_scores, ood_scores)
    ranks = _average_ranks(np.concatenate([id_s, ood_s]))
    n_pos, n_neg = id_s.size, ood_s.size
    u = ranks[:n_pos].sum() - n_pos * (n_pos + 1) / 2.0
    return float(u / (n_pos * n_neg))


def _average_precision(pos: np.ndarray, neg: np.ndarray) -> float:
    scores = np.concatenate([pos, neg])
    labels = np.r_[np.ones(pos.size), np.zeros(neg.size)]
    order = np.argsort(-scores, kind='mergesort')
    scores, labels = scores[order], labels[order]
    # last index of each run of equal scores: one threshold per distinct score
    last = np.r_[np.flatnonzero(scores[1:] != scores[:-1]), scores.size - 1]
    tp = np.cumsum(labels)[last]
    precision = tp / (last + 1)
    recall = tp / pos.size
    return float(np.sum(np.diff(np.r_[0.0, recall]) * precision))


def aupr_in(id_scores, ood_scores) -> float:
    """Average precision with ID as the positive class, score as is."""
    id_s, ood_s = _pair(id_scores, ood_scores)
    return _average_precision(id_s, ood_s)


def aupr_out(id_scores, ood_scores) -> float:
    """Average precision with OOD as the positive class, score negated."""
    id_s, ood_s = _pair(id_scores, ood_scores)
    return _average_precision(-ood_s, -id_s)


def ood_metrics(id_scores, ood_scores) -> Dict[str, float]:
    """``{'fpr95', 'auroc', 'aupr_in', 'aupr_out'}`` as fractions (see the module docstring)."""
    id_s, ood_s = _pair(id_scores, ood_scores)
    return dict(fpr95=fpr_at_tpr(id_s, ood_s, 0.95), auroc=auroc(id_s, ood_s),
                aupr_in=aupr_in(id_s, ood_s), aupr_out=aupr_out(id_s, ood_s))


def accuracy(logits_or_preds, targets) -> float:
    """Top-1 accuracy as a fraction. ``logits_or_preds``: (N, M) logits / probabilities
    (argmax is taken) or (N,) predicted labels; ``targets``: (N,) labels."""
    if hasattr(logits_or_preds, 'detach'):
        logits_or_preds = logits_or_preds.detach().cpu().numpy()
    if hasattr(targets, 'detach'):
        targets = targets.detach().cpu().numpy()
    preds, targets = np.asarray(logits_or_preds), np.asarray(targets)
    if preds.ndim == 2:
        if preds.shape[1] == 0:
            raise ValueError('logits have no class column')
        if np.issubdtype(preds.dtype, np.floating) and not np.isfinite(preds).all():
            raise ValueError('logits contain NaN/Inf value(s)')
        preds = preds.argmax(axis=1)
    if preds.ndim != 1 or targets.ndim != 1:
        raise ValueError(f'expected (N, M) logits or (N,) predictions and (N,) targets, got '
                         f'{preds.shape} and {targets.shape}')
    if preds.size == 0:
        raise ValueError('accuracy of an empty set is undefined')
    if preds.shape != targets.shape:
        raise ValueError(f'{preds.size} predictions but {targets.size} targets')
    return float(np.mean(preds == targets))


def spearman(x, y) -> Optional[float]:
    """Spearman's rank correlation of paired values: the Pearson correlation of their ranks, tied
    values sharing the mean of their ranks. Pairs with None or NaN on either side are left out;
    None (never NaN) when fewer than 2 pairs remain or either side is constant (undefined)."""
    pairs = [(float(a), float(b)) for a, b in zip(x, y)
             if a is not None and b is not None and np.isfinite(float(a)) and np.isfinite(float(b))]
    if len(pairs) < 2:
        return None
    rx = _average_ranks(np.array([p[0] for p in pairs]))
    ry = _average_ranks(np.array([p[1] for p in pairs]))
    rx, ry = rx - rx.mean(), ry - ry.mean()
    den = float(np.sqrt((rx ** 2).sum() * (ry ** 2).sum()))
    return None if den == 0 else float((rx * ry).sum() / den)
