"""ID calibration (issue 12): conformal p-values by hand, the ID rejection rate against alpha
within its binomial error, the fused detector on hand-made outputs, detector storage, the
model's decision and its errors, and the calibrate / predict commands."""
import csv
import json
import math
import re

import pytest
import torch

import timm_ssod
from timm_ssod.calibration import CalibrationError, NotCalibratedError, calibrate, id_rejection_rate
from timm_ssod.conformal import (check_calibration_size, combine_pvalues, conformal_pvalue, id_rejection_check,
                                 lower_tail_scale, min_calibration_size, score_threshold, tail_pvalue)
from timm_ssod.detectors import ModelOutputs, create_detector
from timm_ssod.detectors.evidence import SOURCE_SETS
from timm_ssod.detectors.ssod_fused import EVIDENCE_RULE
from timm_ssod.detectors.state import detector_state, load_detector
from timm_ssod.metrics import auroc

pytestmark = pytest.mark.tiny_fits  # detectors fitted on tens of images (tests/conftest.py)

MODEL, IMG, CLASSES = 'test_resnet', 64, 3


# ------------------------------------------------------------------------------ the equations
def test_conformal_pvalue_by_hand_with_ties():
    reference = torch.tensor([1.0, 2.0, 2.0, 3.0])  # sorted, n = 4
    scores = torch.tensor([0.0, 1.0, 2.0, 2.5, 3.0, 4.0])
    # (1 + #{r <= s}) / 5: ties count in the image's favour
    assert conformal_pvalue(reference, scores).tolist() == pytest.approx([0.2, 0.4, 0.8, 0.8, 1.0, 1.0])


@pytest.mark.parametrize('alpha, need', [(0.05, 19), (0.1, 9), (0.01, 99), (0.2, 4), (0.3, 3), (0.5, 1)])
def test_fewest_calibration_images_is_one_over_alpha_minus_one(alpha, need):
    assert min_calibration_size(alpha) == need
    check_calibration_size(need, alpha)
    if need > 1:
        with pytest.raises(CalibrationError, match=rf'{need - 1} ID calibration images .* n >= 1/alpha - 1 = {need}'):
            check_calibration_size(need - 1, alpha)
    assert conformal_pvalue(torch.arange(float(need)), torch.tensor([-1.0])).item() <= alpha  # reachable


def test_score_threshold_is_the_pvalue_decision():
    reference = torch.randn(50, generator=torch.Generator().manual_seed(0)).double().sort().values
    scores = torch.cat([reference, reference + 1e-9, torch.linspace(-3, 3, 101).double()])
    for alpha in (0.02, 0.1, 0.33):
        assert torch.equal(conformal_pvalue(reference, scores) <= alpha, scores < score_threshold(reference, alpha))


def test_tail_pvalue_continues_below_the_lowest_id_score():
    gen = torch.Generator().manual_seed(0)
    reference = (-torch.empty(4000).exponential_(generator=gen) * 2.0).double().sort().values  # lower tail, scale 2
    scale = lower_tail_scale(reference)
    assert scale == pytest.approx(2.0, rel=0.15)
    inside = torch.linspace(float(reference[0]), 1.0, 50).double()
    assert torch.equal(tail_pvalue(reference, inside, scale), conformal_pvalue(reference, inside))
    below = float(reference[0]) - torch.tensor([1e-9, 1.0, 10.0, 1e6], dtype=torch.float64)
    p = tail_pvalue(reference, below, scale)
    assert p[0].item() == pytest.approx(1 / 4001) and p[1].item() == pytest.approx(math.exp(-1 / scale) / 4001)
    assert (p.diff() < 0).all() and p[-1].item() > 0  # keeps decreasing, floored above 0
    assert lower_tail_scale(torch.zeros(10, dtype=torch.float64)) > 0  # all tied


def test_fisher_and_stouffer_by_hand():
    p = torch.tensor([[0.5, 0.25], [1.0, 1.0]], dtype=torch.float64)
    assert combine_pvalues(p, 'fisher').tolist() == pytest.approx([math.log(0.125), 0.0])
    assert combine_pvalues(torch.tensor([[0.5, 0.5]]), 'stouffer').item() == pytest.approx(0.0)
    mid = combine_pvalues(p, 'stouffer', n_reference=[3, 3])  # p = 1 -> mid-p 7/8, finite
    assert torch.isfinite(mid).all() and mid[1].item() == pytest.approx(math.sqrt(2) * 1.15034938, rel=1e-6)
    with pytest.raises(ValueError, match='unknown combination'):
        combine_pvalues(p, 'mean')  # (tippett, the smallest p-value, is known since issue 22: test_evidence.py)


# ------------------------------------------------- the guarantee: ID rejection rate vs alpha
@pytest.mark.parametrize('alpha', [0.01, 0.05, 0.1, 0.2])
def test_id_rejection_rate_within_binomial_error_of_alpha(alpha):
    """A hand-made continuous score on exchangeable ID data: the share of ID test images (never
    used for calibration) rejected is alpha within its binomial error, one calibration set and
    on average over many."""
    gen = torch.Generator().manual_seed(int(alpha * 1000))
    reference = torch.randn(999, generator=gen).double().sort().values
    check = id_rejection_check(conformal_pvalue(reference, torch.randn(20000, generator=gen)), alpha, 999)
    assert check['within'] and not check['conservative'], check
    assert check['expected'] <= alpha and abs(check['rate'] - alpha) < 4 * check['std']
    rates = []  # 400 calibration sets of 99, 500 test images each: the mean rate is E[k/(n+1)] <= alpha
    for _ in range(400):
        ref = torch.randn(99, generator=gen).double().sort().values
        if alpha * 100 >= 1:
            rates.append(float((conformal_pvalue(ref, torch.randn(500, generator=gen)) <= alpha).double().mean()))
    if rates:
        rates = torch.tensor(rates, dtype=torch.float64)
        expected = math.floor(alpha * 100) / 100
        assert abs(rates.mean().item() - expected) < 4 * rates.std().item() / math.sqrt(len(rates))


def test_tied_scores_are_conservative_never_above_alpha():
    gen = torch.Generator().manual_seed(1)
    reference = torch.randint(0, 5, (999,), generator=gen).double().sort().values  # 5 values: heavy ties
    check = id_rejection_check(conformal_pvalue(reference, torch.randint(0, 5, (20000,), generator=gen).double()),
                               0.1, 999)
    assert check['within'] and check['rate'] < 0.1


# --------------------------------------------------------------- the fused detector, by hand
def hand_outputs(n, kind, gen):
    """ID: features near class means, confident logits, an OOD head that says ID. 'far': features
    off the ID manifold (only Mahalanobis sees it). 'background': the OOD head says OOD (only
    SSOD sees it)."""
    means = torch.eye(8)[:CLASSES] * 6
    y = torch.randint(0, CLASSES, (n,), generator=gen)
    f = means[y] + torch.randn(n, 8, generator=gen)
    if kind == 'far':
        f = f + torch.cat([torch.zeros(n, CLASSES), 6 * torch.randn(n, 8 - CLASSES, generator=gen)], dim=1)
    logits = f[:, :CLASSES] + 0.5 * torch.randn(n, CLASSES, generator=gen)
    id_logit = torch.randn(n, generator=gen) + (-2.0 if kind == 'background' else 2.0)
    ood = torch.stack([torch.zeros(n), id_logit], dim=1)
    return ModelOutputs(f, logits, ood, lambda z: z[:, :CLASSES]), y


def test_ssod_fused_flags_what_either_component_flags():
    gen = torch.Generator().manual_seed(0)
    fit = [hand_outputs(100, 'id', gen) for _ in range(4)]
    test_id, _ = hand_outputs(300, 'id', gen)
    far, _ = hand_outputs(300, 'far', gen)
    background, _ = hand_outputs(300, 'background', gen)
    ssod, maha = create_detector('ssod'), create_detector('mahalanobis').fit_outputs(fit)
    assert auroc(ssod.score_outputs(test_id), ssod.score_outputs(far)) < 0.7          # SSOD misses 'far'
    assert auroc(maha.score_outputs(test_id), maha.score_outputs(background)) < 0.7   # Mahalanobis misses 'background'
    results = {}
    for method in ('fisher', 'stouffer'):
        fused = create_detector('ssod_fused', components='ssod,mahalanobis', method=method).fit_outputs(fit)
        assert [r.numel() for r in fused.references] == [400, 400]  # every fit image, out of fold
        results[method] = [auroc(fused.score_outputs(test_id), fused.score_outputs(ood)) for ood in (far, background)]
        p = fused.component_pvalues(test_id)
        assert p.shape == (300, 2) and ((p > 0) & (p <= 1)).all()
    # both catch both kinds; Fisher, led by the smallest p-value, more so when one component alone sees it
    assert min(results['fisher']) > 0.95 and min(results['stouffer']) > 0.85
    assert all(f >= s for f, s in zip(results['fisher'], results['stouffer']))


def test_ssod_fused_cross_fitted_references_are_out_of_sample():
    """Mahalanobis scores its own fit images better than new ones; the cross-fitted references
    must look like new ID images, not like the fit images."""
    gen = torch.Generator().manual_seed(2)
    fit = [hand_outputs(40, 'id', gen) for _ in range(2)]  # 80 images in 8 dimensions: visible overfit
    fused = create_detector('ssod_fused', components=['mahalanobis', 'energy'], folds=5).fit_outputs(fit)
    maha = fused.components[0]
    in_sample = maha.score_outputs(ModelOutputs.cat([o for o, _ in fit])).double().median()
    new = maha.score_outputs(hand_outputs(2000, 'id', gen)[0]).double().median()
    assert in_sample > new and abs(fused.references[0].median() - new) < abs(in_sample - new)


@pytest.mark.parametrize('kwargs, match', [
    (dict(components=['ssod']), 'two or more different components'),
    (dict(components=['ssod', 'ssod']), 'two or more different components'),
    (dict(components=['ssod', 'odin']), 'odin cannot be a component'),
    (dict(method='mean'), 'unknown combination'),
    (dict(folds=1), 'folds must be >= 2'),
    (dict(select='evidence', evidence_images=0), 'evidence_images must be >= 1')])
def test_ssod_fused_refuses_bad_settings(kwargs, match):
    with pytest.raises(ValueError, match=match):
        create_detector('ssod_fused', **kwargs)


@pytest.mark.parametrize('name', ['mahalanobis', 'knn', 'vim', 'react', 'klm', 'energy', 'ssod', 'ssod_fused'])
def test_fitted_detector_stored_as_json_and_tensors_scores_the_same(name):
    gen = torch.Generator().manual_seed(3)
    fit = [hand_outputs(60, 'id', gen) for _ in range(2)]
    det = create_detector(name, **({'k': 5} if name == 'knn' else {}))
    det.fit_outputs(fit)
    config, tensors = detector_state(det)
    again = load_detector(json.loads(json.dumps(config)), tensors)
    test, _ = hand_outputs(50, 'far', gen)
    assert type(again) is type(det) and torch.equal(again.score_outputs(test), det.score_outputs(test))
    det.generator = torch.Generator()
    with pytest.raises(ValueError, match="attribute 'generator' \\(Generator\\) cannot be stored"):
        detector_state(det)
    with pytest.raises(ValueError, match="invalid attribute name '__class__'"):
        load_detector(dict(config, attrs={'__class__': 1}), tensors)
    with pytest.raises(ValueError, match="unknown detector 'evil'"):
        load_detector(dict(config, detector='evil'), tensors)


# ------------------------------------------------------------------------- the model's decision
def tiny(num_classes=CLASSES, seed=0, size=IMG):
    torch.manual_seed(seed)
    return timm_ssod.create_model(MODEL, num_classes=num_classes, output_stride=16,
                                  pretrained_cfg_overlay=dict(input_size=(3, size, size))).eval()


def batches(n_batches, seed, size=IMG, batch=12):
    gen = torch.Generator().manual_seed(seed)
    return [(torch.randn(batch, 3, size, size, generator=gen), torch.randint(0, CLASSES, (batch,), generator=gen))
            for _ in range(n_batches)]


def test_predict_decision_and_its_errors():
    model = tiny()
    x = torch.randn(5, 3, IMG, IMG)
    pred = model.predict(x)
    assert pred.p_value is None and pred.is_ood is None  # uncalibrated: as before
    with pytest.raises(NotCalibratedError, match=r'alpha=0.05 needs an ID calibration .*at least 19'):
        model.predict(x, alpha=0.05)
    with pytest.raises(CalibrationError, match=r'12 ID calibration images .* n >= 1/alpha - 1 = 19'):
        model.calibrate(batches(1, 1), detector='ssod')
    with pytest.raises(CalibrationError, match='ssod_fused must first be fitted .* fit_loader'):
        model.calibrate(batches(2, 1))

    with pytest.warns(UserWarning, match=r"3x64x64 but the model's data config .* says 3x96x96"):
        tiny(size=96).calibrate(batches(2, 1), detector='ssod', alpha=0.1)
    cal = model.calibrate(batches(2, 1), detector='ssod', alpha=0.1)  # n = 24
    assert cal.n == 24 and model.ssod_calibration is cal and cal.input_size == (3, IMG, IMG)
    pred = model.predict(x)
    scores = pred.id_prob.double()
    assert torch.equal(pred.p_value, conformal_pvalue(cal.reference, scores))
    assert torch.equal(pred.is_ood, pred.p_value <= 0.1) and torch.equal(pred.is_ood, scores < cal.threshold())
    assert torch.equal(model.predict(x, alpha=0.5).is_ood, pred.p_value <= 0.5)
    with pytest.raises(CalibrationError, match='24 ID calibration images .* = 99'):
        model.predict(x, alpha=0.01)
    with pytest.raises(CalibrationError, match=r'made on 3x64x64 .* these are 3x96x96'):
        model.predict(torch.randn(1, 3, 96, 96))
    with pytest.raises(CalibrationError, match='made for a 3-class model, the model has 5 classes'):
        tiny(num_classes=5).set_calibration(cal)
    model.reset_classifier(5)
    with pytest.raises(CalibrationError, match='made for a 3-class model'):
        model.predict(x)


def test_fused_calibration_and_the_rejection_rate_helper():
    model = tiny(seed=1)
    cal = calibrate(model, batches(3, 2), fit_loader=batches(3, 3))  # ssod_fused, alpha 0.05
    assert cal.detector.name == 'ssod_fused' and cal.n == 36
    rates = id_rejection_rate(cal, model, batches(4, 4), alphas=(0.05, 0.1, 0.01))
    assert set(rates) == {'0.05', '0.1'}  # 0.01 needs 99 calibration images
    assert all(r['n_test'] == 48 and r['n_calibration'] == 36 and 0 <= r['rate'] <= 1 for r in rates.values())


def test_harness_scores_ssod_fused_and_skips_it_on_a_plain_model():
    from timm_ssod.evaluate import evaluate
    model = tiny(seed=2)
    ood = {'noise': [(3 * torch.randn(12, 3, IMG, IMG), torch.zeros(12))]}
    res = evaluate(model, batches(1, 5), ood, ('ssod', 'ssod_fused'), fit_loader=batches(2, 6), progress=False)
    assert set(res['results']) == {'ssod', 'ssod_fused'} and 0 <= res['results']['ssod_fused']['noise']['auroc'] <= 1
    plain = timm_ssod.create_model(MODEL, ssod=False, num_classes=CLASSES, output_stride=16).eval()
    res = evaluate(plain, batches(1, 5), ood, ('msp', 'ssod_fused'), fit_loader=batches(2, 6), progress=False)
    assert 'ssod_fused' in res['skipped']


# -------------------------------------------------------------------- calibrate / predict CLI
@pytest.fixture(scope='module')
def saved_tiny(tmp_path_factory):
    root = tmp_path_factory.mktemp('cli')
    folder = tiny(seed=4).save_pretrained(root / 'model', data_config={'input_size': (3, IMG, IMG)},
                                          label_names=['cross', 'disc', 'ring'])
    from timm_ssod.data import create_dataset, write_image_folder
    images = write_image_folder(create_dataset('synthetic/noise', split='test', num_images=5, img_size=IMG),
                                str(root / 'images'))
    return root, folder, images


def test_calibrate_then_predict_commands(saved_tiny, capsys):
    from timm_ssod.cli import main
    root, folder, images = saved_tiny
    data = ['--dataset', 'synthetic/id', '--dataset-kwargs', 'num_images=24', f'img_size={IMG}', 'num_classes=3']
    assert main(['predict', f'local-dir:{folder}', images]) == 0  # uncalibrated: classes and P(ID) only
    assert 'not calibrated' in capsys.readouterr().out
    assert main(['predict', f'local-dir:{folder}', images, '--alpha', '0.1']) == 1
    assert 'needs an ID calibration' in capsys.readouterr().err

    out = root / 'calibrated'
    assert main(['calibrate', f'local-dir:{folder}', *data, '--split', 'val', '--alpha', '0.1',
                 '--evidence-images', '21', '--save-dir', str(out)]) == 0
    printed = capsys.readouterr().out  # the default decision: components chosen from ID-only evidence, and why
    assert re.search(r'ssod_fused \[[a-z, ]+\] score, 24 ID calibration images, alpha=0\.1', printed)
    assert 'Components kept from ID-only evidence' in printed and 'pseudo-OOD samples: ' in printed
    assert 'patch_shuffle 21, blur 21, pixel_permutation 21' in printed  # made from 21 of the 24 fit images
    config = json.loads((out / 'config.json').read_text())
    rule = config['ssod']['calibration']['choices']['rule']  # the measured rule (EVIDENCE_RULE)
    assert rule['sources'] == list(SOURCE_SETS[EVIDENCE_RULE['sources']]) and rule['top'] == EVIDENCE_RULE['top']
    assert config['architecture'] == MODEL and config['ssod']['calibration']['n'] == 24
    assert config['label_names'] == ['cross', 'disc', 'ring']

    assert main(['predict', f'local-dir:{out}', images, str(root / 'images' / 'ood' / '00000.png'),
                 '--output', str(root / 'pred')]) == 0
    printed = capsys.readouterr().out
    assert '| file | class | P(ID) | p-value | decision |' in printed and 'OOD when p-value <= alpha = 0.1' in printed
    with open(root / 'pred' / 'predictions.csv', newline='') as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 6 and {r['decision'] for r in rows} <= {'ID', 'OOD'}
    assert all(r['class'] in ('cross', 'disc', 'ring') and 0 < float(r['p_value']) <= 1 for r in rows)
    saved = json.loads((root / 'pred' / 'predictions.json').read_text())
    assert saved['calibrated'] and saved['alpha'] == 0.1 and len(saved['predictions']) == 6
    card = (out / 'README.md').read_text()  # the card's usage snippet gives the decision as written
    code = re.search(r'```python\n(.*?)```', card, re.S).group(1).replace('hf-hub:your-org/calibrated', f'local-dir:{out}')
    exec(compile(code, 'README.md', 'exec'), {})
    assert 'p-value:' in capsys.readouterr().out and '| alpha (default target share of ID rejected) | 0.1 |' in card


def test_calibrate_command_errors(saved_tiny, capsys):
    from timm_ssod.cli import main
    root, folder, _ = saved_tiny
    few = ['--dataset', 'synthetic/id', '--dataset-kwargs', 'num_images=10', f'img_size={IMG}', 'num_classes=3']
    assert main(['calibrate', f'local-dir:{folder}', *few, '--save-dir', str(root / 'x')]) == 1
    assert 'n >= 1/alpha - 1 = 19' in capsys.readouterr().err
    assert main(['calibrate', f'local-dir:{folder}', *few, '--detector', 'ssod', '--alpha', '0.2',
                 '--components', 'ssod,knn', '--save-dir', str(root / 'x')]) == 1
    assert 'options of --detector ssod_fused' in capsys.readouterr().err
    assert main(['calibrate', f'local-dir:{folder}', *few, '--select', 'all', '--evidence-images', '100', '--alpha',
                 '0.2', '--save-dir', str(root / 'x')]) == 1
    assert 'options of --select evidence' in capsys.readouterr().err
    assert main(['calibrate', f'local-dir:{folder}', *few]) == 1
    assert '--save-dir DIR and/or --push-to-hub' in capsys.readouterr().err
    assert not (root / 'x').exists()


def test_measure_decisions_reports_rejection_and_catch_rates():
    from lib import format_decisions, measure_decisions
    from timm_ssod.detectors import SSODFused
    model = tiny(seed=5)
    ood = {'noise': [(3 * torch.randn(12, 3, IMG, IMG), torch.zeros(12))]}
    res = measure_decisions(model, batches(2, 7), batches(2, 8), batches(2, 9), ood,
                            detectors=('ssod', SSODFused(method='stouffer', name='fused_stouffer')), alphas=(0.05, 0.1))
    assert (res['n_fit'], res['n_calibration'], res['n_test'], res['n_ood']) == (24, 24, 24, {'noise': 12})
    for name in ('ssod', 'fused_stouffer'):
        d = res['detectors'][name]
        assert set(d['id_rejection']) == {'0.05', '0.1'} and d['id_rejection']['0.1']['n_test'] == 24
        assert 0 <= d['ood']['noise']['caught']['0.05'] <= d['ood']['noise']['caught']['0.1'] <= 1
    json.dumps(res)
    table = format_decisions(res, 0.1).splitlines()
    assert len(table) == 4 and table[2].startswith('| ssod |') and 'ID rejected @0.1' in table[0]


def test_calibrate_command_on_a_training_checkpoint(tmp_path, capsys):
    """MODEL as a training checkpoint path (slashes and all): the run's preprocessing is used for
    calibration and recorded in the saved folder, so predict's transform matches."""
    from timm_ssod.cli import main
    model = tiny(seed=6)
    args = dict(model=MODEL, num_classes=None, gp=None, in_chans=None, input_size=None, img_size=IMG,
                model_kwargs={'output_stride': 16}, ssod=True, gamma=0.9, ood_lambda=1.0, balance='lwb',
                dataset='synthetic/id', mean=None, std=None, crop_pct=None, interpolation='')
    run = tmp_path / 'run'
    run.mkdir()
    torch.save({'epoch': 1, 'arch': MODEL, 'state_dict': model.state_dict(), 'args': args}, run / 'model_best.pth.tar')
    data = ['--dataset', 'synthetic/id', '--dataset-kwargs', 'num_images=20', f'img_size={IMG}', 'num_classes=3']
    assert main(['calibrate', str(run / 'model_best.pth.tar'), *data, '--detector', 'ssod', '--alpha', '0.1',
                 '--save-dir', str(tmp_path / 'out')]) == 0
    assert 'inputs 3x64x64' in capsys.readouterr().out
    loaded = timm_ssod.create_model(f'local-dir:{tmp_path / "out"}', pretrained=True).eval()
    assert tuple(loaded.pretrained_cfg['input_size']) == (3, IMG, IMG) and loaded.ssod_cfg['gamma'] == 0.9
    assert loaded.ssod_calibration.n == 20 and loaded.predict(torch.randn(2, 3, IMG, IMG)).is_ood.shape == (2,)
