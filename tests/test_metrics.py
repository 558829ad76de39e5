"""Metrics on small hand-computed cases (imbalanced, with ID/OOD ties), then against
scikit-learn on random tied data. Convention: higher score = more ID, ID positive."""
from fractions import Fraction

import numpy as np
import pytest
import torch

from timm_ssod.metrics import accuracy, aupr_in, aupr_out, auroc, fpr_at_tpr, ood_metrics

# 3 ID vs 7 OOD, ties across ID/OOD at 8 and at 4.
ID = [9, 8, 4]
OOD = [8, 7, 6, 5, 4, 3, 2]


def test_auroc_hand_computed():
    # 21 (ID, OOD) pairs. ID 9 beats all 7 -> 7. ID 8 beats 7,6,5,4,3,2 and ties 8
    # -> 6.5. ID 4 beats 3,2 and ties 4 -> 2.5. AUROC = 16 / 21.
    assert auroc(ID, OOD) == pytest.approx(16 / 21, abs=1e-12)
    # a scorer with the classes swapped gets the complement
    assert auroc(OOD, ID) == pytest.approx(5 / 21, abs=1e-12)


def test_fpr95_hand_computed():
    # 95% of 3 ID scores = 2.85 -> all 3 must be accepted: t = 3rd largest ID score = 4.
    # OOD >= 4: 8, 7, 6, 5, 4 -> 5 / 7 (the tie at 4 is accepted).
    assert fpr_at_tpr(ID, OOD) == pytest.approx(5 / 7, abs=1e-12)
    # at 60% TPR, 2 of 3 ID suffice: t = 8, OOD >= 8: one -> 1 / 7
    assert fpr_at_tpr(ID, OOD, tpr=0.6) == pytest.approx(1 / 7, abs=1e-12)


def test_fpr95_boundary_is_at_least():
    # 20 ID scores 1..20: exactly 19 / 20 = 95% are >= 2, so t = 2 (the largest such t).
    # OOD >= 2: 2 and 3 -> 2 / 4. (Requiring more than 95% would give t = 1 and 3 / 4.)
    id_s = np.arange(1, 21)
    assert fpr_at_tpr(id_s, [2, 1.5, 3, 0]) == pytest.approx(0.5, abs=1e-12)


def test_aupr_in_hand_computed():
    # ID positive, thresholds from high to low, ties form one threshold:
    #   t=9: TP 1, FP 0 -> P 1,   R 1/3
    #   t=8: TP 2, FP 1 -> P 2/3, R 2/3
    #   t=7,6,5: recall unchanged, no contribution
    #   t=4: TP 3, FP 5 -> P 3/8, R 1
    # AP = 1/3 * (1 + 2/3 + 3/8) = 49 / 72
    expected = Fraction(1, 3) * (1 + Fraction(2, 3) + Fraction(3, 8))
    assert expected == Fraction(49, 72)
    assert aupr_in(ID, OOD) == pytest.approx(float(expected), abs=1e-12)


def test_aupr_out_hand_computed():
    # OOD positive, score negated, i.e. thresholds from low to high original score:
    #   t=2: TP 1, FP 0 -> P 1   | t=3: TP 2, FP 0 -> P 1   | t=4: TP 3, FP 1 -> P 3/4
    #   t=5: TP 4, FP 1 -> P 4/5 | t=6: TP 5, FP 1 -> P 5/6 | t=7: TP 6, FP 1 -> P 6/7
    #   t=8: TP 7, FP 2 -> P 7/9 | t=9: recall unchanged
    # each step adds 1/7 recall: AP = (1 + 1 + 3/4 + 4/5 + 5/6 + 6/7 + 7/9) / 7 = 7583 / 8820
    precisions = [1, 1, Fraction(3, 4), Fraction(4, 5), Fraction(5, 6), Fraction(6, 7), Fraction(7, 9)]
    expected = sum(precisions) / 7
    assert expected == Fraction(7583, 8820)
    assert aupr_out(ID, OOD) == pytest.approx(float(expected), abs=1e-12)
    # AUPR-Out is not AUPR-In with the roles swapped naively (the bug both libraries shipped)
    assert aupr_out(ID, OOD) != pytest.approx(aupr_in(ID, OOD))


def test_all_tied():
    # one threshold only: every sample accepted. AUROC 1/2, FPR95 = 1,
    # AUPR-In = P = 2/5 (2 ID of 5), AUPR-Out = 3/5.
    m = ood_metrics([1, 1], [1, 1, 1])
    assert m == pytest.approx(dict(fpr95=1.0, auroc=0.5, aupr_in=0.4, aupr_out=0.6), abs=1e-12)


def test_perfect_separation_and_dict_keys():
    m = ood_metrics([3.0, 4.0], [1.0, 2.0])
    assert set(m) == {'fpr95', 'auroc', 'aupr_in', 'aupr_out'}
    assert m == pytest.approx(dict(fpr95=0.0, auroc=1.0, aupr_in=1.0, aupr_out=1.0))


def test_torch_inputs():
    m = ood_metrics(torch.tensor(ID, dtype=torch.float32), torch.tensor(OOD, dtype=torch.float64))
    assert m == pytest.approx(dict(fpr95=5 / 7, auroc=16 / 21, aupr_in=49 / 72, aupr_out=7583 / 8820))


@pytest.mark.parametrize('seed', range(5))
def test_against_sklearn_on_imbalanced_tied_data(seed):
    metrics = pytest.importorskip('sklearn.metrics')
    rng = np.random.default_rng(seed)
    n_id, n_ood = rng.integers(5, 60), rng.integers(60, 300)
    # integer scores in a small range: many ties inside and across the two sets
    id_s = rng.integers(3, 15, n_id).astype(float)
    ood_s = rng.integers(0, 10, n_ood).astype(float)
    y = np.r_[np.ones(n_id), np.zeros(n_ood)]
    s = np.r_[id_s, ood_s]

    assert auroc(id_s, ood_s) == pytest.approx(metrics.roc_auc_score(y, s), abs=1e-12)
    assert aupr_in(id_s, ood_s) == pytest.approx(metrics.average_precision_score(y, s), abs=1e-12)
    assert aupr_out(id_s, ood_s) == pytest.approx(metrics.average_precision_score(1 - y, -s), abs=1e-12)
    fpr, tpr, _ = metrics.roc_curve(y, s, drop_intermediate=False)
    for level in (0.95, 0.9, 0.5, 1.0):
        # roc_curve's thresholds decrease: the first point reaching the TPR is the largest t
        expected = fpr[np.argmax(tpr >= level)]
        assert fpr_at_tpr(id_s, ood_s, level) == pytest.approx(expected, abs=1e-12)


def test_against_sklearn_continuous_scores():
    metrics = pytest.importorskip('sklearn.metrics')
    rng = np.random.default_rng(7)
    id_s, ood_s = rng.normal(1.0, 1.0, 3000), rng.normal(0.0, 1.0, 700)
    y, s = np.r_[np.ones(3000), np.zeros(700)], np.r_[id_s, ood_s]
    m = ood_metrics(id_s, ood_s)
    assert m['auroc'] == pytest.approx(metrics.roc_auc_score(y, s), abs=1e-12)
    assert m['aupr_in'] == pytest.approx(metrics.average_precision_score(y, s), abs=1e-12)
    assert m['aupr_out'] == pytest.approx(metrics.average_precision_score(1 - y, -s), abs=1e-12)
    fpr, tpr, _ = metrics.roc_curve(y, s, drop_intermediate=False)
    assert m['fpr95'] == pytest.approx(fpr[np.argmax(tpr >= 0.95)], abs=1e-12)


@pytest.mark.parametrize('fn', [fpr_at_tpr, auroc, aupr_in, aupr_out, ood_metrics])
def test_errors(fn):
    with pytest.raises(ValueError, match='id_scores is empty'):
        fn([], [1.0])
    with pytest.raises(ValueError, match='ood_scores is empty'):
        fn([1.0], [])
    with pytest.raises(ValueError, match='NaN/Inf'):
        fn([1.0, float('nan')], [0.0])
    with pytest.raises(ValueError, match='ood_scores contains 1 NaN/Inf'):
        fn([1.0], [0.0, float('inf')])
    with pytest.raises(ValueError, match='1-D'):
        fn([[1.0, 2.0]], [0.0])


def test_fpr_bad_tpr():
    with pytest.raises(ValueError, match='tpr'):
        fpr_at_tpr([1.0], [0.0], tpr=0.0)
    with pytest.raises(ValueError, match='tpr'):
        fpr_at_tpr([1.0], [0.0], tpr=1.5)


def test_accuracy():
    logits = torch.tensor([[2.0, 1.0, 0.0], [0.0, 3.0, 1.0], [0.0, 0.0, 1.0], [5.0, 0.0, 0.0]])
    targets = torch.tensor([0, 1, 1, 2])
    assert accuracy(logits, targets) == pytest.approx(0.5)
    assert accuracy(np.array([0, 1, 1]), [0, 1, 2]) == pytest.approx(2 / 3)
    with pytest.raises(ValueError, match='empty'):
        accuracy(np.zeros(0, dtype=int), np.zeros(0, dtype=int))
    with pytest.raises(ValueError, match='2 predictions but 3 targets'):
        accuracy([0, 1], [0, 1, 2])
    with pytest.raises(ValueError, match='NaN'):
        accuracy(torch.tensor([[float('nan'), 0.0]]), torch.tensor([0]))
