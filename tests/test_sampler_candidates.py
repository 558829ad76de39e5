"""The candidate samplers of issue 30 (``minmax``, ``quantile``) on hand-made maps, ties and
imbalanced maps included; ``paper`` is Eq. 12 unchanged."""
import pytest
import torch

from timm_ssod.core._sampler import (SAMPLERS, label_logit, minmax_labels, quantile_labels, sample_patches,
                                     select_locations, target_confidence)


def test_minmax_bands_are_inclusive_and_relative_to_the_image():
    ev = torch.tensor([[0.0, 1.0, 2.0, 10.0, 8.0, 7.9],    # scaled 0, .1, .2, 1, .8, .79
                       [-3.0, -2.0, -1.0, 0.0, 1.0, 2.0]])  # scaled 0, .2, .4, .6, .8, 1
    assert minmax_labels(ev).tolist() == [[0, 0, 0, 1, 1, -1], [0, 0, -1, -1, 1, 1]]


def test_minmax_ignores_shift_and_positive_scale_but_a_flat_map_gives_nothing():
    ev = torch.tensor([[0.3, 2.0, 5.0, 1.1]])
    assert torch.equal(minmax_labels(ev), minmax_labels(7.0 * ev - 40.0))
    assert minmax_labels(torch.full((1, 4), 2.5)).tolist() == [[-1, -1, -1, -1]]


def test_quantile_counts_ties_and_index_order():
    # L = 5: ceil(0.2 * 5) = 1 ID cell, floor(0.3 * 5) = 1 OOD cell
    conf = torch.tensor([[0.9, 0.1, 0.5, 0.1, 0.99]])
    tie = torch.tensor([[0.0, 2.0, 0.0, 1.0, 0.0]])  # the two 0.1 cells: index 3 has the lower logit
    assert quantile_labels(conf, tie).tolist() == [[-1, -1, -1, 0, 1]]
    flat = torch.full((1, 5), 0.5)  # everything tied: the lowest index is OOD, the highest ID
    assert quantile_labels(flat, flat).tolist() == [[0, -1, -1, -1, 1]]


def test_quantile_on_an_imbalanced_map():
    # L = 10: 2 ID, 3 OOD, whatever the values (Eq. 12 would give no OOD cell here: all >= 0.05)
    conf = torch.tensor([[0.99, 0.98, 0.97, 0.96, 0.95, 0.94, 0.93, 0.92, 0.91, 0.90]])
    assert quantile_labels(conf, conf).tolist() == [[1, 1, -1, -1, -1, -1, -1, 0, 0, 0]]
    one = torch.tensor([[0.2]])  # L = 1: ceil(0.2) = 1 ID, floor(0.3) = 0 OOD
    assert quantile_labels(one, one).tolist() == [[1]]


def test_select_locations_by_name():
    logits = torch.log(torch.tensor([[[0.97, 0.03], [0.5, 0.5], [0.02, 0.98], [0.6, 0.4]]]))
    y = torch.tensor([0])
    assert torch.equal(select_locations(logits, y, 'paper'), sample_patches(target_confidence(logits, y)))
    assert select_locations(logits, y, 'paper').tolist() == [[1, -1, 0, -1]]
    z = label_logit(logits, y)  # log .97, log .5, log .02, log .6: scaled 1, .82, 0, .87
    assert torch.allclose(z, torch.log(torch.tensor([[0.97, 0.5, 0.02, 0.6]])))
    assert select_locations(logits, y, 'minmax').tolist() == [[1, 1, 0, 1]]
    assert select_locations(logits, y, 'quantile').tolist() == [[1, -1, 0, -1]]  # L = 4: 1 ID, 1 OOD
    assert set(SAMPLERS) == {'paper', 'minmax', 'quantile'}


def test_unknown_sampler_and_soft_targets_are_refused():
    with pytest.raises(ValueError, match="unknown sampler 'cam'; valid: paper, minmax, quantile"):
        select_locations(torch.zeros(1, 2, 3), torch.tensor([0]), 'cam')
    with pytest.raises(ValueError, match='integer class label'):
        select_locations(torch.zeros(1, 2, 3), torch.tensor([0.5]), 'minmax')


def test_ssod_loss_trains_on_the_chosen_sampler_and_defaults_to_eq_12():
    import timm_ssod
    # one image, 4 locations, 2 classes, label 0: the label's logit -4, 0, 3, 5 (min-max 0, .44, .78, 1)
    patch = torch.tensor([[[-4.0, 0.0], [0.0, 0.0], [3.0, 0.0], [5.0, 0.0]]])
    out = timm_ssod.SSODOutput(logits=torch.zeros(1, 2), patch_logits=patch, patch_ood_logits=torch.zeros(1, 4, 2),
                               ood_logits=torch.zeros(1, 2), grid=(2, 2))
    target = torch.tensor([0])
    _, paper = timm_ssod.SSODLoss()(out, target)  # Eq. 12: softmax on the label .018, .5, .95, .993 -> OOD, -, ID, ID
    _, minmax = timm_ssod.SSODLoss(sampler='minmax')(out, target)  # OOD <= .2, ID >= .8: OOD, -, -, ID
    assert (paper['num_id'].item(), paper['num_ood'].item()) == (2, 1)
    assert (minmax['num_id'].item(), minmax['num_ood'].item()) == (1, 1)
    with pytest.raises(ValueError, match="unknown sampler 'cam'"):
        timm_ssod.SSODLoss(sampler='cam')


def test_train_records_the_sampler_and_an_older_run_keeps_eq_12(tmp_path):
    from timm_ssod.checkpoints import ssod_cfg_from_args
    from timm_ssod.train import parse_args
    args, _ = parse_args(['--sampler', 'quantile'])
    assert args.sampler == 'quantile' and ssod_cfg_from_args(vars(args))['sampler'] == 'quantile'
    assert parse_args([])[0].sampler == 'paper'  # the default stays the paper's Eq. 12
    assert 'sampler' not in ssod_cfg_from_args({'gamma': 0.9})  # a run from before the flag: nothing recorded
