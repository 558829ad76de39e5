"""Eq. 14 with each balance scheme on hand-computed cases, and empty-side batches."""
import math

import pytest
import torch
import torch.nn.functional as F

from timm_ssod import SSODLoss, SSODOutput
from timm_ssod.core._loss import _dr_mask, ood_term

LN2, LN3, LN4 = math.log(2), math.log(3), math.log(4)
SURE_0, SURE_1, UNSURE = [20., -20.], [-20., 20.], [0., 0.]   # 2-class patch logits


def make_output(patch_cls, patch_ood, logits=None):
    patch_logits = torch.tensor(patch_cls)
    patch_ood_logits = torch.tensor(patch_ood, requires_grad=True)
    if logits is None:
        logits = torch.zeros(patch_logits.shape[0], patch_logits.shape[-1])
    return SSODOutput(logits, patch_logits, patch_ood_logits, patch_ood_logits.mean(1), (1, 4))


# One image of class 0, 4 locations: ID, OOD, OOD, ignored.
# OOD logits [ood, id] = [0, ln 3] give P(ID) = 3/4: CE(label ID) = ln(4/3), CE(label OOD) = ln 4;
# [0, 0] gives CE = ln 2 for either label.
CASE = make_output([[SURE_0, SURE_1, SURE_1, UNSURE]],
                   [[[0., LN3], [0., LN3], [0., 0.], [5., -5.]]])
TARGET = torch.tensor([0])


def test_lwb_is_mean_of_the_two_side_means():
    loss, stats = SSODLoss(balance='lwb', lam=1.0)(CASE, TARGET)
    id_mean, ood_mean = math.log(4 / 3), (LN4 + LN2) / 2
    assert stats['ood_loss'].item() == pytest.approx((id_mean + ood_mean) / 2, rel=1e-5)
    assert (stats['num_id'].item(), stats['num_ood'].item(), stats['num_ignored'].item()) == (1, 2, 1)
    assert stats['cls_loss'].item() == pytest.approx(LN2)  # zero logits, 2 classes
    assert loss.item() == pytest.approx(LN2 + (id_mean + ood_mean) / 2, rel=1e-5)


def test_lw_weights_ood_locations():
    _, stats = SSODLoss(balance='lw', ood_weight=0.2)(CASE, TARGET)
    expected = (math.log(4 / 3) + 0.2 * (LN4 + LN2)) / (1 + 0.2 * 2)
    assert stats['ood_loss'].item() == pytest.approx(expected, rel=1e-5)


def test_dr_draws_equal_numbers_per_image():
    # both OOD locations have the same CE so the random draw does not change the value
    out = make_output([[SURE_0, SURE_1, SURE_1, UNSURE]], [[[0., LN3], [0., LN3], [0., LN3], [0., 0.]]])
    _, stats = SSODLoss(balance='dr')(out, TARGET)
    assert stats['ood_loss'].item() == pytest.approx((math.log(4 / 3) + LN4) / 2, rel=1e-5)


def test_dr_mask_counts_on_an_imbalanced_batch():
    labels = torch.tensor([[1, 0, 0, 0, -1],    # 1 ID, 3 OOD -> keep 1 + 1
                           [0, 0, -1, -1, -1],  # no ID -> keep nothing
                           [1, 1, 1, 0, 0]])    # 3 ID, 2 OOD -> keep 2 + 2
    for _ in range(5):
        keep = _dr_mask(labels)
        assert keep.sum(1).tolist() == [2, 0, 4]
        assert ((labels[keep] == 1).sum().item(), (labels[keep] == 0).sum().item()) == (3, 3)


def test_lambda_scales_only_the_ood_term():
    l1, s1 = SSODLoss(lam=1.0)(CASE, TARGET)
    l2, s2 = SSODLoss(lam=0.5)(CASE, TARGET)
    assert (l1 - l2).item() == pytest.approx(0.5 * s1['ood_loss'].item(), rel=1e-5)


@pytest.mark.parametrize('balance', ['lwb', 'lw', 'dr'])
@pytest.mark.parametrize('patch_cls', [[[SURE_1, SURE_1, UNSURE]],    # only OOD (training from scratch)
                                       [[SURE_0, SURE_0, UNSURE]],    # only ID
                                       [[UNSURE, UNSURE, UNSURE]]])   # nothing sampled
def test_one_sided_or_empty_batch_gives_zero_ood_term_and_no_nan(balance, patch_cls):
    out = make_output(patch_cls, [[[1., 2.], [3., -1.], [0., 0.]]])
    loss, stats = SSODLoss(balance=balance)(out, TARGET)
    assert stats['ood_loss'].item() == 0.0
    assert torch.isfinite(loss)
    loss.backward()
    assert out.patch_ood_logits.grad is not None  # the OOD head stays in the graph (DDP)
    assert torch.count_nonzero(out.patch_ood_logits.grad) == 0


@pytest.mark.parametrize('balance', ['lwb', 'lw', 'dr'])
def test_empty_ood_term_prints_as_zero_not_minus_zero(balance):
    """The zero term is 0 * sum(logits): a negative sum made it -0.0, and ``print(stats)``
    showed ``'ood_loss': tensor(-0.)`` (issue 15)."""
    out = make_output([[UNSURE, UNSURE, UNSURE]], [[[-1., -2.], [-3., -1.], [0., 0.]]])  # sum < 0
    _, stats = SSODLoss(balance=balance)(out, TARGET)
    assert not torch.signbit(stats['ood_loss'])
    assert repr(stats['ood_loss']) == 'tensor(0.)'


def test_gradient_flows_only_through_sampled_locations():
    out = make_output([[SURE_0, SURE_1, SURE_1, UNSURE]], [[[0., LN3], [0., LN3], [0., 0.], [5., -5.]]])
    loss, _ = SSODLoss()(out, TARGET)
    loss.backward()
    grad = out.patch_ood_logits.grad[0]
    assert torch.count_nonzero(grad[:3]) == 6 and torch.count_nonzero(grad[3]) == 0


def test_custom_classification_criterion():
    crit = torch.nn.CrossEntropyLoss(label_smoothing=0.1)
    logits = torch.tensor([[2.0, -1.0]])
    out = CASE._replace(logits=logits)
    _, stats = SSODLoss(cls_loss=crit)(out, TARGET)
    assert stats['cls_loss'].item() == pytest.approx(F.cross_entropy(logits, TARGET, label_smoothing=0.1).item())


@pytest.mark.parametrize('kwargs, match', [(dict(gamma=0.5), 'gamma'), (dict(gamma=1.0), 'gamma'),
                                           (dict(lam=-0.1), 'lam'), (dict(lam=float('nan')), 'lam'),
                                           (dict(balance='focal'), 'balance'),
                                           (dict(balance='lw', ood_weight=0), 'ood_weight')])
def test_bad_settings_are_refused(kwargs, match):
    with pytest.raises(ValueError, match=match):
        SSODLoss(**kwargs)


def test_ood_term_unknown_scheme():
    with pytest.raises(ValueError, match='balance'):
        ood_term(torch.zeros(1, 2, 2), torch.tensor([[1, 0]]), balance='xx')


def test_ood_warmup_scale_is_a_linear_ramp():
    from timm_ssod import ood_warmup_scale
    assert [ood_warmup_scale(u, 4) for u in (0, 1, 2, 4, 9)] == [0.0, 0.25, 0.5, 1.0, 1.0]
    assert ood_warmup_scale(0, 0) == 1.0  # no warm-up: full lambda from the first step


def test_lam_scale_multiplies_only_the_ood_term():
    full, stats = SSODLoss(lam=1.0)(CASE, TARGET)
    half, _ = SSODLoss(lam=1.0)(CASE, TARGET, lam_scale=0.5)
    off, _ = SSODLoss(lam=1.0)(CASE, TARGET, lam_scale=0.0)
    assert off.item() == pytest.approx(stats['cls_loss'].item())
    assert (full - half).item() == pytest.approx(0.5 * stats['ood_loss'].item(), rel=1e-5)
