"""Conformal p-values from ID data only: the equations, each in one function.

For a score s (higher = more in-distribution) and n held-out ID calibration scores
s_1..s_n, the p-value of an input x is

    p(x) = (1 + #{i : s_i <= s(x)}) / (n + 1)                       (``conformal_pvalue``)

If x is an ID image exchangeable with the calibration images, P(p(x) <= alpha) <= alpha for
every alpha, whatever the score (Vovk et al. 2005; Bates et al., "Testing for outliers with
conformal p-values", Ann. Stat. 2023). Ties count in x's favour, so ties only make the test
more conservative. Rejecting x as OOD when p(x) <= alpha therefore rejects at most a share
alpha of ID images, in expectation over calibration and test draws. No OOD data is used.

The smallest p-value is 1 / (n + 1): rejecting anything at level alpha needs
n >= 1 / alpha - 1 calibration images (``min_calibration_size``). With
k = floor(alpha (n + 1)), p(x) <= alpha exactly when s(x) < s_(k), the k-th smallest
calibration score (``score_threshold``), and the expected ID rejection rate is
k / (n + 1) <= alpha.

Several scores: each is turned into its p-value p_j, then combined into one statistic,
written here as a score (higher = more ID):

    Fisher:   sum_j log p_j            (= -T / 2 with Fisher's T = -2 sum_j log p_j)
    Stouffer: sum_j Phi^-1(p_j) / sqrt(k)
    Tippett:  min_j log p_j            (the smallest p-value alone)

(``combine_pvalues``; Fisher and Stouffer also with weights w_j: sum_j w_j log p_j and
sum_j w_j Phi^-1(p_j) / sqrt(sum_j w_j^2)). The component scores are correlated, so neither statistic has its
textbook null distribution; it is calibrated once more as a score of its own, on ID data not
used for the p_j (Combine and Conquer, TMLR 2024). This file imports only torch.
"""
import math
from typing import Dict, Optional, Sequence

import torch

__all__ = ['CalibrationError', 'NotCalibratedError', 'COMBINE_METHODS', 'conformal_pvalue', 'tail_pvalue',
           'lower_tail_scale', 'min_calibration_size',
           'check_calibration_size', 'score_threshold', 'combine_pvalues', 'id_rejection_check']

COMBINE_METHODS = ('fisher', 'stouffer', 'tippett')


class CalibrationError(ValueError):
    """A calibration that cannot give the asked guarantee, or does not fit the model."""


class NotCalibratedError(CalibrationError):
    """An OOD decision (p-value, alpha) was asked of a model without an ID calibration."""


def conformal_pvalue(reference: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
    """``(1 + #{i : reference_i <= s}) / (n + 1)`` for each s of ``scores`` (float64).

    reference: (n,) ID calibration scores, sorted ascending (``torch.sort``). Higher score =
    more ID; a low p-value means unusually low for ID data."""
    ref = reference.to(device=scores.device, dtype=torch.float64)
    below = torch.searchsorted(ref, scores.to(torch.float64).contiguous(), right=True)
    return (below + 1).to(torch.float64) / (ref.numel() + 1)


def lower_tail_scale(reference: torch.Tensor, share: float = 0.05) -> float:
    """Scale of the lower tail of sorted ID scores, for ``tail_pvalue``: the mean distance of
    the lowest k scores to the k-th (k = max(2, ceil(share n))), the maximum-likelihood scale
    of an exponential tail; a small positive number when they are tied."""
    ref = reference.to(torch.float64)
    k = min(ref.numel(), max(2, math.ceil(share * ref.numel())))
    scale = float((ref[k - 1] - ref[:k - 1]).mean()) if k > 1 else 0.0
    spread = float(ref[-1] - ref[0]) if ref.numel() > 1 else 0.0
    return max(scale, 1e-6 * spread, 1e-12)


def tail_pvalue(reference: torch.Tensor, scores: torch.Tensor, scale: float) -> torch.Tensor:
    """``conformal_pvalue``, continued below the lowest reference score s_(1) by an exponential
    tail: p = exp(-(s_(1) - s) / scale) / (n + 1), so that a score far below every ID score
    gets a p-value far below 1 / (n + 1) instead of stopping there (floored at the smallest
    positive float64). Monotone in the score, but not a valid p-value below s_(1): for
    combining scores (``SSODFused``), whose result is then calibrated as a score of its own."""
    p = conformal_pvalue(reference, scores)
    low = reference[0].to(device=scores.device, dtype=torch.float64)
    s = scores.to(torch.float64)
    tail = torch.exp(-(low - s) / scale) / (reference.numel() + 1)
    return torch.where(s < low, tail, p).clamp_min(torch.finfo(torch.float64).tiny)


def min_calibration_size(alpha: float) -> int:
    """The fewest calibration scores with which p(x) <= alpha is possible: n >= 1/alpha - 1."""
    if not 0.0 < alpha < 1.0:
        raise CalibrationError(f'alpha must be in (0, 1), got {alpha}')
    return max(1, math.ceil(1.0 / alpha - 1.0 - 1e-9))


def check_calibration_size(n: int, alpha: float, what: str = 'ID calibration images') -> None:
    """A ``CalibrationError`` saying how many are needed when ``n`` cannot reach ``alpha``."""
    need = min_calibration_size(alpha)
    if n < need:
        raise CalibrationError(
            f'{n} {what} cannot give a decision at alpha={alpha:g}: the smallest p-value is 1/(n+1), so n >= '
            f'1/alpha - 1 = {need} are needed (a few hundred or more give a stable threshold). Use more held-out ID '
            'images, or a larger alpha.')


def score_threshold(reference: torch.Tensor, alpha: float) -> float:
    """The score below which p(x) <= alpha: s_(k), k = floor(alpha (n + 1)) (sorted reference)."""
    n = reference.numel()
    check_calibration_size(n, alpha)
    k = math.floor(alpha * (n + 1) + 1e-9)
    return float(reference[k - 1])


def combine_pvalues(pvalues: torch.Tensor, method: str = 'fisher', n_reference: Optional[Sequence[int]] = None,
                    weights: Optional[Sequence[float]] = None) -> torch.Tensor:
    """(B, k) p-values -> (B,) combined statistic, higher = more ID (see the module docstring).

    Conformal p-values reach 1, where Phi^-1 is infinite: with ``n_reference`` (the n_j of
    each column), Stouffer reads p_j = 1 as 1 - 1 / (2 (n_j + 1)), the mid-point of the last
    step, which keeps the order of each column. Fisher needs no such care (log 1 = 0).
    ``weights`` (k non-negative numbers, not all 0): weighted Fisher / Stouffer; Tippett takes none."""
    if method not in COMBINE_METHODS:
        raise ValueError(f'unknown combination {method!r}; available: {", ".join(COMBINE_METHODS)}')
    p = pvalues.to(torch.float64)
    w = None
    if weights is not None:
        if method == 'tippett':
            raise ValueError('tippett (the smallest p-value) takes no weights')
        w = torch.as_tensor(weights, dtype=torch.float64, device=p.device).reshape(-1)
        if w.numel() != p.shape[-1] or bool((w < 0).any()) or not bool((w > 0).any()):
            raise ValueError(f'weights must be {p.shape[-1]} non-negative numbers, not all 0; got {list(weights)}')
    if method == 'fisher':
        return torch.log(p).sum(dim=-1) if w is None else torch.log(p) @ w
    if method == 'tippett':
        return torch.log(p).amin(dim=-1)
    if n_reference is not None:
        top = 1 - 0.5 / (torch.as_tensor(n_reference, dtype=torch.float64, device=p.device) + 1)
        p = torch.minimum(p, top)
    z = torch.special.ndtri(p)
    return z.sum(dim=-1) / math.sqrt(p.shape[-1]) if w is None else (z @ w) / float(w.norm())


def id_rejection_check(pvalues: torch.Tensor, alpha: float, n_calibration: int, z: float = 3.0) -> Dict:
    """Does the share of *ID* test images rejected (p <= alpha) agree with the guarantee?

    pvalues: conformal p-values of m ID test images never used for calibration. Given a
    calibration set, the rejection probability is Beta(k, n + 1 - k)-distributed
    (k = floor(alpha (n + 1))), mean k / (n + 1) <= alpha; the test count adds binomial noise.
    ``std`` is the combined standard error, sqrt(a (1 - a) (1 / m + 1 / (n + 2))) with
    a = k / (n + 1). ``within`` is True when the observed rate is at most ``expected + z std``
    (the guarantee holds) and ``conservative`` when it is below ``expected - z std`` (valid,
    but the score ties or the calibration data differ from the test data)."""
    p = torch.as_tensor(pvalues, dtype=torch.float64).reshape(-1)
    m = p.numel()
    if m == 0:
        raise ValueError('id_rejection_check needs at least one p-value')
    k = math.floor(alpha * (n_calibration + 1) + 1e-9)
    expected = k / (n_calibration + 1)
    rate = float((p <= alpha).double().mean())
    std = math.sqrt(max(expected * (1 - expected), 1e-12) * (1.0 / m + 1.0 / (n_calibration + 2)))
    return {'alpha': float(alpha), 'n_calibration': int(n_calibration), 'n_test': m, 'rejected': int((p <= alpha).sum()),
            'rate': rate, 'expected': expected, 'std': std, 'z': (rate - expected) / std,
            'within': rate <= expected + z * std, 'conservative': rate < expected - z * std}

