"""Eq. 12 on hand-made confidence maps, including values exactly at gamma and 1 - gamma."""
import pytest
import torch

from timm_ssod import sample_patches, target_confidence


def test_thresholds_exactly_at_gamma_and_one_minus_gamma():
    conf = torch.tensor([[0.95, 0.05, 0.5],
                         [0.9499, 0.0499, 1.0]])
    expected = torch.tensor([[1, -1, -1],     # c >= gamma is ID; c == 1 - gamma is NOT OOD (strict <)
                             [-1, 0, 1]])
    assert torch.equal(sample_patches(conf, gamma=0.95), expected)


def test_other_gamma_and_float64_map():
    conf = torch.tensor([0.0, 0.1, 0.1000001, 0.9, 0.8999999], dtype=torch.float64)
    assert sample_patches(conf, gamma=0.9).tolist() == [0, -1, -1, 1, -1]


@pytest.mark.parametrize('gamma', [0.5, 1.0, 0.3, 1.2, float('nan')])
def test_gamma_outside_open_interval_is_refused(gamma):
    with pytest.raises(ValueError, match='gamma'):
        sample_patches(torch.rand(2, 3), gamma)


def test_target_confidence_picks_the_labelled_class():
    # two images, two locations, three classes
    logits = torch.log(torch.tensor([[[0.7, 0.2, 0.1], [0.1, 0.1, 0.8]],
                                     [[0.3, 0.3, 0.4], [0.25, 0.5, 0.25]]]))
    conf = target_confidence(logits, torch.tensor([2, 1]))
    assert torch.allclose(conf, torch.tensor([[0.1, 0.8], [0.3, 0.5]]))
    assert not conf.requires_grad


def test_target_confidence_refuses_soft_targets():
    with pytest.raises(ValueError, match='integer class label'):
        target_confidence(torch.zeros(2, 4, 3), torch.full((2, 3), 1 / 3))
