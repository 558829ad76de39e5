"""Issue 22's machinery: pseudo-OOD from ID data only (Eq. 12's background locations and their crops,
transformed images, left-out classes), each component's pseudo-AUROC, the opt-in evidence-weighted
``ssod_fused(select='evidence')``, its record through save / load and ``timm-ssod calibrate``, and
``benchmarks/evidence.py --quick`` end to end. Expectations by hand where possible."""
import importlib.util
import json
import math
import warnings
from pathlib import Path

import pytest
import torch

import timm_ssod
from timm_ssod.conformal import combine_pvalues
from timm_ssod.core import head_per_location, to_locations
from timm_ssod.detectors import ModelOutputs, SSODFused, create_detector
from timm_ssod.detectors.evidence import (EvidenceData, collect_evidence, rule_key, evidence_budget, evidence_table,
                                          heavy_blur, leave_classes_out, patch_shuffle, permute_pixels, pseudo_auroc,
                                          SOURCES, restrict_classes, select_components)
from timm_ssod.detectors.catalog import single_detector_class
from timm_ssod.detectors.ssod_fused import EVIDENCE_RULE
from timm_ssod.detectors.state import detector_state, load_detector
from timm_ssod.metrics import spearman

CLASSES, IMG = 3, 32
ROOT = Path(__file__).resolve().parents[1]


# ------------------------------------------------------------------------------- by hand
def test_spearman_by_hand_with_ties_and_undefined_cases():
    # ranks x = [1, 2.5, 2.5, 4], y = [1, 3, 2, 4]; centred: [-1.5, 0, 0, 1.5], [-1.5, .5, -.5, 1.5]
    # rho = 4.5 / sqrt(4.5 * 5) = 3 / sqrt(10)
    assert spearman([1, 2, 2, 3], [10, 30, 20, 40]) == pytest.approx(3 / math.sqrt(10))
    assert spearman([1, 2, 3], [3, 2, 1]) == pytest.approx(-1.0)
    assert spearman([1, None, 2, 3, float('nan')], [1, 5, 2, 3, 4]) == pytest.approx(1.0)  # None / NaN pairs left out
    assert spearman([1, 1, 1], [1, 2, 3]) is None and spearman([1], [2]) is None  # undefined: None, never NaN


def test_pseudo_auroc_by_hand():
    assert pseudo_auroc(torch.tensor([2., 3.]), torch.tensor([0., 1.])) == 1.0    # perfect: 1
    assert pseudo_auroc([0., 1.], [2., 3.]) == 0.0                                # reversed: 0
    assert pseudo_auroc([1., 2.], [1., 0.]) == pytest.approx(0.875)               # (1 + .5 + 1 + 1) / 4
    assert pseudo_auroc([1.], []) is None and pseudo_auroc([float('nan')], [1.]) is None


def test_tippett_and_weighted_fisher_by_hand():
    p = torch.tensor([[0.5, 0.1], [1.0, 0.25]], dtype=torch.float64)
    assert torch.allclose(combine_pvalues(p, 'tippett'), torch.log(torch.tensor([0.1, 0.25], dtype=torch.float64)))
    expected = 2 * math.log(0.5) + 0.5 * math.log(0.1)
    assert combine_pvalues(p, 'fisher', weights=[2, 0.5])[0].item() == pytest.approx(expected)
    assert torch.equal(combine_pvalues(p, 'fisher', weights=[1, 1]), combine_pvalues(p, 'fisher'))
    with pytest.raises(ValueError, match='takes no weights'):
        combine_pvalues(p, 'tippett', weights=[1, 1])
    with pytest.raises(ValueError, match='non-negative numbers, not all 0'):
        combine_pvalues(p, 'fisher', weights=[0, 0])


def test_select_components_by_hand():
    table = {'ssod': {'background': 0.9, 'blur': 0.7}, 'mahalanobis': {'background': 0.4, 'blur': 0.6},
             'energy': {'background': None, 'blur': None}, 'knn': {'background': None, 'blur': None},
             'vim': {'background': 0.55, 'blur': 0.75}}
    names = list(table)
    r = select_components(table, names, ['background', 'blur'], threshold=0.6, weighting='informedness',
                          a_priori=('ssod', 'mahalanobis', 'energy'))
    # evidence = mean over the sources with a value: ssod .8, mahalanobis .5, vim .65; energy / knn none
    assert r['evidence'] == pytest.approx({'ssod': 0.8, 'mahalanobis': 0.5, 'energy': None, 'knn': None, 'vim': 0.65})
    assert r['kept'] == ['ssod', 'energy', 'vim'] and r['fallback'] is None   # energy: no evidence, a-priori
    assert r['weights'] == pytest.approx([0.6, 1.0, 0.3])                     # 2 e - 1; 1 without evidence
    assert r['reasons']['mahalanobis'] == 'dropped: pseudo-AUROC 0.500 < 0.6'
    assert r['reasons']['knn'].startswith('dropped: no pseudo-AUROC')
    # nothing clears the bar: the a-priori components, said so
    low = select_components(table, names, ['background'], threshold=0.95, a_priori=('ssod', 'mahalanobis', 'energy'))
    assert low['kept'] == ['ssod', 'mahalanobis', 'energy'] and 'no component reached' in low['fallback']
    none = select_components({n: {} for n in names}, names, ['blur'], a_priori=('ssod', 'energy'))
    assert none['kept'] == ['ssod', 'energy'] and 'no source gave' in none['fallback']
    json.dumps(r, allow_nan=False)


def test_select_components_top_keeps_the_highest_evidence_with_ties_in_pool_order():
    table = {'ssod': {'blur': 0.7}, 'mahalanobis': {'blur': 0.9}, 'energy': {'blur': None},
             'knn': {'blur': 0.7}, 'vim': {'blur': 0.5}}
    names, prior = list(table), ('ssod', 'mahalanobis', 'energy')
    one = select_components(table, names, ['blur'], threshold=0.6, a_priori=prior, top=1)
    # mahalanobis .9 is the highest; energy has no evidence and keeps its a-priori place
    assert one['kept'] == ['mahalanobis', 'energy'] and one['rule']['top'] == 1
    assert one['reasons']['ssod'] == 'dropped: pseudo-AUROC 0.700, not among the 1 highest'
    two = select_components(table, names, ['blur'], threshold=0.6, a_priori=prior, top=2)
    assert two['kept'] == ['ssod', 'mahalanobis', 'energy']  # ssod and knn tie at .7: the pool's order decides
    assert 'not among the 2 highest' in two['reasons']['knn']
    assert select_components(table, names, ['blur'], a_priori=prior, top=9)['kept'] == \
        select_components(table, names, ['blur'], a_priori=prior)['kept']
    for bad in (0, -1, 1.5, True):
        with pytest.raises(ValueError, match='top must be'):
            select_components(table, names, ['blur'], top=bad)


# ------------------------------------------------------------------------ hand-made outputs
def hand_outputs(n, kind, gen):
    """ID: features near class means, an OOD head that says ID. 'far': features 100 away on the
    dimensions no class uses (Mahalanobis is perfect). 'background': the OOD head says OOD far more
    than for any ID image (SSOD is perfect)."""
    means = torch.eye(8)[:CLASSES] * 6
    y = torch.randint(0, CLASSES, (n,), generator=gen)
    f = means[y] + 0.5 * torch.randn(n, 8, generator=gen)
    if kind == 'far':
        f[:, CLASSES:] += 100
    logits = f[:, :CLASSES] + 0.1 * torch.randn(n, CLASSES, generator=gen)
    id_logit = torch.rand(n, generator=gen) + (-20.0 if kind == 'background' else 2.0)
    return ModelOutputs(f, logits, torch.stack([torch.zeros(n), id_logit], dim=1), lambda z: z[:, :CLASSES]), y


def test_a_perfect_component_gets_pseudo_auroc_one_and_leave_classes_out():
    gen = torch.Generator().manual_seed(0)
    fit, y = hand_outputs(150, 'id', gen)
    data = EvidenceData(fit, y, pseudo={'background': hand_outputs(30, 'background', gen)[0],
                                        'blur': hand_outputs(30, 'far', gen)[0]},
                        counts={'background': 30, 'blur': 30})
    fused = SSODFused(components=['ssod', 'mahalanobis']).fit_outputs([(fit, y)])
    comps = dict(zip(fused.component_names, fused.components))
    refs = dict(zip(fused.component_names, fused.references))
    factory = lambda n: single_detector_class(n)()  # noqa: E731
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter('always')
        table = evidence_table(comps, refs, data, ['background', 'blur', 'pixel_permutation', 'leave_classes_out'],
                               factory=factory)
    assert not caught  # a source never collected (pixel_permutation) is noted, not warned about
    assert table['notes']['pixel_permutation'].startswith('not collected')
    a = table['auroc']
    assert a['ssod']['background'] == 1.0 and a['mahalanobis']['blur'] == 1.0   # each perfect on its own kind
    assert a['ssod']['pixel_permutation'] is None and table['samples'] == {
        'background': 30, 'blur': 30, 'pixel_permutation': 0, 'leave_classes_out': 150}
    # classes 6 apart with noise .5: Mahalanobis fitted without a class finds it far from the others' means
    assert a['mahalanobis']['leave_classes_out'] > 0.99 and a['ssod']['leave_classes_out'] is None
    assert 'OOD head' in table['notes']['ssod on leave_classes_out']
    json.dumps(table, allow_nan=False)
    # leave-classes-out restricts the logits to the kept classes: energy on them sees the left-out class
    values, n, note, _ = leave_classes_out(['energy'], factory, fit, y, groups=3)
    assert note is None and n == 150 and values['energy'] > 0.9
    r = restrict_classes(fit, torch.tensor([0, 2]))
    assert r.logits.shape == (150, 2) and torch.equal(r.classifier(fit.features), fit.features[:, [0, 2]])
    assert leave_classes_out(['energy'], factory, fit, torch.zeros(150, dtype=torch.long))[2].startswith('1 class')


# ------------------------------------------------------------------------------- transforms
def test_transforms_keep_what_they_should():
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(2, 3, 16, 18, generator=gen)
    s = patch_shuffle(x, grid=4, generator=gen)
    assert s.shape == x.shape and not torch.equal(s, x)
    assert torch.equal(s[:, :, :, 16:], x[:, :, :, 16:])  # columns beyond 4 x 4 patches of 4 stay
    for b in range(2):  # the same pixels, moved as whole 4 x 4 patches
        patches = lambda t: sorted(t[b, :, i:i + 4, j:j + 4].flatten().tolist() for i in range(0, 16, 4)  # noqa: E731
                                   for j in range(0, 16, 4))
        assert patches(s) == patches(x)
    p = permute_pixels(x, generator=gen)
    colours = lambda t: sorted(map(tuple, t.flatten(2).transpose(1, 2).reshape(-1, 3).tolist()))  # noqa: E731
    assert colours(p) == colours(x) and not torch.equal(p, x)  # the colours of each pixel stay, not their place
    assert torch.allclose(heavy_blur(torch.full((1, 3, 16, 16), 0.7)), torch.full((1, 3, 16, 16), 0.7), atol=1e-6)
    assert heavy_blur(x).var() < 0.2 * x.var()


# ----------------------------------------------------------------------------- tiny models
def tiny(seed=0, size=IMG, **kwargs):
    torch.manual_seed(seed)
    return timm_ssod.create_model('test_resnet', num_classes=CLASSES, output_stride=16,
                                  pretrained_cfg_overlay=dict(input_size=(3, size, size)), **kwargs).eval()


def batches(n_batches, seed, size=IMG, batch=12):
    gen = torch.Generator().manual_seed(seed)
    return [(torch.randn(batch, 3, size, size, generator=gen), torch.randint(0, CLASSES, (batch,), generator=gen))
            for _ in range(n_batches)]


@pytest.mark.parametrize('name, size', [('test_resnet', 32), ('mobilenetv3_small_050', 96)])
def test_location_features_are_the_head_on_each_location(name, size):
    """pre_logits per location = forward_head(that location as a 1x1 map, pre_logits=True); for a
    ResNet their mean is the image's pooled feature. mobilenetv3: the conv-head fast path."""
    model = timm_ssod.create_model(name, num_classes=CLASSES, **({'output_stride': 16} if name == 'test_resnet'
                                                                  else {})).eval()
    x = torch.randn(2, 3, size, size)
    with torch.no_grad():
        feats = model.forward_features(x)
        locations, (h, w) = to_locations(model, feats, x.shape[-2:])
        pre = head_per_location(model, feats, locations, pre_logits=True)
        for i, j in [(0, 0), (h - 1, w - 1)]:
            one = model.forward_head(feats[:, :, i:i + 1, j:j + 1], pre_logits=True)
            assert torch.allclose(pre[:, i * w + j], one, rtol=1e-5, atol=1e-5)
        if name == 'test_resnet':
            assert torch.allclose(pre.mean(1), model.forward_head(feats, pre_logits=True), atol=1e-5)


def test_collect_evidence_on_a_model_whose_sampler_labels_background():
    model = tiny(seed=1)
    data = collect_evidence(model, batches(3, 2), max_images=20, per_image=2, gamma=0.6)  # 3 classes: OOD < 0.4
    assert data.outputs.logits.shape == (36, CLASSES) and data.images == 20 and data.targets.shape == (36,)
    assert 0 < data.counts['background'] <= 40 and data.counts['background_crop'] <= 20
    assert data.counts['patch_shuffle'] == data.counts['blur'] == data.counts['pixel_permutation'] == 20
    bg = data.pseudo['background']
    assert bg.features.shape[1] == data.outputs.features.shape[1] and bg.ood_logits.shape[1] == 2
    with pytest.raises(ValueError, match='unknown evidence source'):
        collect_evidence(model, batches(1, 2), sources=['mixup'])


@pytest.mark.parametrize('num_fit, expected', [(None, 500), (10, 10), (100, 40), (320, 40), (400, 50), (2000, 250),
                                               (4000, 500), (10 ** 6, 500)])
def test_evidence_budget_by_hand(num_fit, expected):
    """One in 8 fit images (four more passes each: half a pass over the fit set), 40 to 500, never more than
    there are; an unknown size gets the cap."""
    assert evidence_budget(num_fit) == expected


def test_collect_evidence_default_budget_reads_the_loader_size():
    from torch.utils.data import DataLoader, TensorDataset
    model = tiny(seed=1)
    x, y = torch.randn(400, 3, IMG, IMG), torch.randint(0, CLASSES, (400,))
    data = collect_evidence(model, DataLoader(TensorDataset(x, y), batch_size=64), gamma=0.6)
    assert data.images == 50 and data.outputs.logits.shape[0] == 400  # 400 // 8, every image still scored
    assert data.counts['patch_shuffle'] == 50
    unsized = (b for b in batches(10, 2))  # no len: the cap (500), so all 120 images
    assert collect_evidence(model, unsized, sources=['blur']).images == 120


def test_no_location_labelled_ood_warns_and_falls_back_without_nan():
    """An untrained 3-class model is never confident: at gamma 0.95 Eq. 12 labels nothing OOD. The
    background sources warn and give None; with only them, the a-priori components are kept."""
    model = tiny(seed=3)
    det = SSODFused(select='evidence', evidence_sources=['background', 'background_crop'], gamma=0.95,
                    component_kwargs={'knn': {'k': 5}}, evidence_images=24)
    with pytest.warns(UserWarning) as record:
        det.fit(model, batches(3, 4))
    messages = ' | '.join(str(w.message) for w in record)
    assert 'labelled no location OOD' in messages and 'untrained?' in messages
    assert 'no source gave any component a pseudo-AUROC' in messages
    assert det.component_names == ['ssod', 'mahalanobis', 'energy'] and det.evidence['fallback']
    assert all(v is None for per in det.evidence['auroc'].values() for v in per.values())
    scores = det.score_outputs(ModelOutputs.cat([o for o, _ in __import__('timm_ssod.detectors', fromlist=['x'])
                                                 .collect_outputs(model, batches(1, 5))]))
    assert torch.isfinite(scores).all()
    json.dumps(det.choices(), allow_nan=False)


def test_fit_outputs_measures_leave_classes_out_only_and_says_so():
    gen = torch.Generator().manual_seed(6)
    fit = [hand_outputs(80, 'id', gen) for _ in range(2)]
    det = SSODFused(select='evidence', components=['ssod', 'mahalanobis', 'energy', 'knn'],
                    component_kwargs={'knn': {'k': 5}}, evidence_sources=SOURCES)  # every source
    with pytest.warns(UserWarning, match='need fit\\(model, loader\\); only the others are measured'):
        det.fit_outputs(fit)
    assert det.evidence['samples']['leave_classes_out'] == 160
    assert det.evidence['auroc']['mahalanobis']['leave_classes_out'] > 0.9
    assert 'ssod' in det.component_names  # no evidence on that source, an a-priori component: kept
    with pytest.warns(UserWarning, match='only the others are measured'):
        again = det.fit_outputs(fit)  # a second fit starts from the whole pool
    assert again.evidence['candidates'] == ['ssod', 'mahalanobis', 'energy', 'knn']


def test_the_harness_and_the_decisions_fit_an_image_sourced_choice_on_the_images():
    """evaluate() and measure_decisions() cache the fit data's outputs for every other detector; a
    choice from image-made pseudo-OOD gets its own pass over the images (no 'need fit(model,
    loader)' warning, the blur evidence measured); one from outputs only keeps the cached path."""
    import warnings as w
    from timm_ssod.evaluate import evaluate
    from lib import measure_decisions
    model = tiny(seed=2)
    opts = dict(select='evidence', evidence_sources=['blur', 'leave_classes_out'], component_kwargs={'knn': {'k': 5}},
                evidence_images=24, min_samples=10)
    assert SSODFused(**opts).fits_on_images and not SSODFused().fits_on_images
    assert not SSODFused(**dict(opts, evidence_sources=['leave_classes_out'])).fits_on_images
    for run in (lambda det: evaluate(model, batches(2, 7), {'noise': batches(2, 8)}, [det], fit_loader=batches(4, 9),
                                     progress=False),
                lambda det: measure_decisions(model, batches(4, 9), batches(9, 10), batches(2, 7),
                                              {'noise': batches(2, 8)}, [det], alphas=(0.1,))):
        det = SSODFused(**opts)
        with w.catch_warnings(record=True) as caught:
            w.simplefilter('always')
            run(det)
        assert not [c for c in caught if 'need fit(model, loader)' in str(c.message)]
        assert det.evidence['samples']['blur'] == 24 and det.evidence['auroc']['energy']['blur'] is not None


@pytest.mark.parametrize('kwargs, match', [
    (dict(select='some'), 'unknown select'),
    (dict(select='evidence', evidence_sources=['mixup']), 'evidence_sources must name'),
    (dict(select='evidence', weighting='max'), 'unknown weighting'),
    (dict(method='tippett', weighting='informedness'), 'takes no weights')])
def test_evidence_option_refuses_bad_settings(kwargs, match):
    with pytest.raises(ValueError, match=match):
        create_detector('ssod_fused', **kwargs)


def test_choices_survive_save_pretrained_and_load(tmp_path):
    model = tiny(seed=7)
    det = SSODFused(select='evidence', gamma=0.6, weighting='informedness', component_kwargs={'knn': {'k': 5}},
                    min_samples=10, evidence_images=24, threshold=0.6, evidence_sources=SOURCES, top=3)
    with warnings.catch_warnings():
        warnings.simplefilter('ignore')  # tiny data: ViM / KNN warn about their sizes
        cal = model.calibrate(batches(2, 8), detector=det, alpha=0.1, fit_loader=batches(3, 9))
    choices = cal.choices()
    assert choices['kept'] == det.component_names and set(choices['candidates']) == {'ssod', 'mahalanobis', 'energy',
                                                                                     'knn', 'vim'}
    assert f"[{', '.join(choices['kept'])}]" in cal.summary()
    config, tensors = detector_state(det)
    again = load_detector(json.loads(json.dumps(config, allow_nan=False)), tensors)
    assert again.evidence == json.loads(json.dumps(det.evidence)) and again.weights == det.weights
    folder = model.save_pretrained(tmp_path / 'm', data_config={'input_size': (3, IMG, IMG)})
    block = json.loads((Path(folder) / 'config.json').read_text())['ssod']['calibration']
    assert block['choices']['kept'] == choices['kept'] and block['state']['attrs']['evidence']['rule']['threshold'] == 0.6
    card = (Path(folder) / 'README.md').read_text()
    assert '| components kept (ID-only evidence) |' in card and '| rule | mean pseudo-AUROC over background' in card
    assert '>= 0.6, the 3 highest; weighting informedness' in card
    loaded = timm_ssod.create_model(f'local-dir:{folder}', pretrained=True).eval()
    assert loaded.ssod_calibration.choices() == choices
    x = torch.randn(4, 3, IMG, IMG)
    assert torch.equal(loaded.predict(x).p_value, model.predict(x).p_value)


def test_calibrate_command_prints_the_components_kept_and_why(tmp_path, capsys):
    from timm_ssod.cli import main
    folder = tiny(seed=10).save_pretrained(tmp_path / 'model', data_config={'input_size': (3, IMG, IMG)})
    data = ['--dataset', 'synthetic/id', '--dataset-kwargs', 'num_images=24', f'img_size={IMG}', 'num_classes=3']
    assert main(['calibrate', f'local-dir:{folder}', *data, '--alpha', '0.1', '--select', 'all',
                 '--evidence-threshold', '0.7', '--save-dir', str(tmp_path / 'x')]) == 1
    assert 'options of --select evidence' in capsys.readouterr().err
    with warnings.catch_warnings():  # --select all: the earlier default, Fisher over ssod, mahalanobis, energy
        warnings.simplefilter('ignore')
        assert main(['calibrate', f'local-dir:{folder}', *data, '--alpha', '0.1', '--select', 'all', '--quiet',
                     '--save-dir', str(tmp_path / 'all')]) == 0
    out = capsys.readouterr().out
    assert 'ssod_fused score, 24 ID calibration images' in out and 'Components kept' not in out
    with warnings.catch_warnings():
        warnings.simplefilter('ignore')
        assert main(['calibrate', f'local-dir:{folder}', *data, '--alpha', '0.1', '--select', 'evidence',
                     '--evidence-sources', 'blur,pixel_permutation', '--quiet', '--save-dir', str(tmp_path / 'out')]) == 0
    out = capsys.readouterr().out
    assert 'Components kept from ID-only evidence:' in out and 'of ssod, mahalanobis, energy, knn, vim' in out
    rule = f">= {EVIDENCE_RULE['threshold']:g}, the {EVIDENCE_RULE['top']} highest; weighting {EVIDENCE_RULE['weighting']}"
    assert f'mean pseudo-AUROC over blur, pixel_permutation {rule}' in out  # the measured rule's settings
    assert json.loads((tmp_path / 'out' / 'config.json').read_text())['ssod']['calibration']['choices']['kept']


# ------------------------------------------------------------------------ the adoption criterion
def _record(oracle, fisher3, rules):
    """A minimal evidence record: FPR95 of the oracle, Fisher-3 and each rule {key: (fpr95, id ok)}."""
    return {'oracle': {'detector': 'knn', 'fpr95': oracle}, 'fisher3': {'average': {'fpr95': fisher3}},
            'rules': {k: {'average': {'fpr95': f}, 'id_rejection_within': ok, 'kept': ['knn']}
                      for k, (f, ok) in rules.items()}}


def test_adoption_criterion_by_hand():
    from lib.evidence import REGISTERED_RULE, adoption
    reg, old = rule_key(REGISTERED_RULE), 'all|t=0.5|top2|informedness|fisher'
    def records(reg_gaps, ok=True, held_out_gap=0.5):
        # design d1, d2; trained after t1; held out h1 (decides nothing): the design choice's gaps 0.01, 0.02, 0.10
        old_gaps = {'d1': 0.01, 'd2': 0.02, 't1': 0.10, 'h1': 0.0}
        reg_gaps = dict(reg_gaps, h1=held_out_gap)
        return {m: _record(0.2, 0.25, {old: (0.2 + old_gaps[m], True), reg: (0.2 + reg_gaps[m], ok or m != 't1')})
                for m in old_gaps}
    a = adoption(records({'d1': 0.03, 'd2': 0.0, 't1': 0.02}), ['d1', 'd2'], ['t1'], old)
    assert a['adopted'] == reg and a['judged'] == ['d1', 'd2', 't1']   # largest gaps: 3 points against 10
    stats = a['rules'][reg]
    assert math.isclose(stats['judged']['max_gap'], 0.03) and math.isclose(stats['judged']['mean_gap'], 0.05 / 3)
    assert stats['judged']['within_2'] == 2 and stats['judged']['worse_than_fisher3'] == 0
    assert math.isclose(stats['other_held_out']['max_gap'], 0.5) and stats['other_held_out']['worse_than_fisher3'] == 1
    assert math.isclose(a['rules'][old]['trained_after']['max_gap'], 0.10) and a['rules'][old]['design']['models'] == 2
    # the grid's ceiling over every model, the held-out one included: the design choice (largest gap 10 points)
    assert a['hindsight']['rule'] == old and math.isclose(a['hindsight']['all']['max_gap'], 0.10)
    # better by less than the margin (0.5 point): the design choice stays; a tie too
    assert adoption(records({'d1': 0.0, 'd2': 0.0, 't1': 0.097}), ['d1', 'd2'], ['t1'], old)['adopted'] == old
    assert adoption(records({'d1': 0.0, 'd2': 0.0, 't1': 0.10}), ['d1', 'd2'], ['t1'], old)['adopted'] == old
    # far better, but its ID rejection leaves the bound on a judged model: refused
    bad = adoption(records({'d1': 0.0, 'd2': 0.0, 't1': 0.0}, ok=False), ['d1', 'd2'], ['t1'], old)
    assert bad['adopted'] == old and bad['rules'][reg]['judged']['id_rejection_within'] is False
    # the registered rule is the design choice: one rule, adopted
    same = adoption(records({'d1': 0.0, 'd2': 0.0, 't1': 0.0}), ['d1', 'd2'], ['t1'], reg)
    assert list(same['rules']) == [reg] and same['adopted'] == reg
    # a model scored with a grid older than the registered rule: a clear error, not a KeyError
    older = records({'d1': 0.0, 'd2': 0.0, 't1': 0.0})
    del older['t1']['rules'][reg]
    with pytest.raises(ValueError, match="\\['t1'\\] were scored without the registered rule"):
        adoption(older, ['d1', 'd2'], ['t1'], old)


def test_the_deployed_rule_is_the_one_the_committed_evidence_adopted():
    summary = json.loads((ROOT / 'benchmarks' / 'evidence.json').read_text())['summary']
    assert rule_key(EVIDENCE_RULE) == summary['adoption']['adopted']


def test_summary_refuses_a_model_both_design_and_trained_after():
    from lib import summarize_evidence
    with pytest.raises(ValueError, match='both design and trained after'):
        summarize_evidence({'a': {}, 'b': {}}, ['a'], ['a'])
    with pytest.raises(ValueError, match="not measured: \\['c'\\]"):
        summarize_evidence({'a': {}}, ['a'], ['c'])


# ------------------------------------------------------------------------ the benchmark, quick
def _script():
    spec = importlib.util.spec_from_file_location('bench_evidence', ROOT / 'benchmarks' / 'evidence.py')
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_evidence_benchmark_quick_end_to_end(tmp_path, capsys):
    out, runs = tmp_path / 'evidence.json', tmp_path / 'runs'
    with warnings.catch_warnings():
        warnings.simplefilter('ignore')
        _script().main(['--quick', '--out', str(out), '--runs-dir', str(runs)])
    text = out.read_text()
    d = json.loads(text)
    def strings(v):
        if isinstance(v, dict):
            return [x for k, w in v.items() for x in [k] + strings(w)]
        return [x for w in v for x in strings(w)] if isinstance(v, list) else [v] if isinstance(v, str) else []
    assert not [v for v in strings(d) if v.startswith('/') or ' /' in v]  # no absolute path
    assert list(d['models']) == ['tiny_a', 'tiny_b']
    rec = d['models']['tiny_a']
    assert rec['pool'] == ['ssod', 'mahalanobis', 'energy', 'knn', 'vim'] and rec['gamma'] == 0.6
    assert set(rec['evidence']['auroc']['ssod']) == {'background', 'background_local', 'background_crop',
                                                     'patch_shuffle', 'blur', 'pixel_permutation', 'leave_classes_out'}
    assert set(rec['components']['energy']['auroc']) == {'backgrounds', 'novel_objects', 'noise', 'textures'}
    assert rec['oracle']['detector'] in rec['components'] and 'all|t=0.6|none|fisher' in rec['rules']
    assert set(rec['id_rejection']['fisher3']) == {'0.05', '0.1'}  # 20 calibration images: alpha 1% unreachable
    rule = rec['rules']['all|t=0.6|top1|none|fisher']  # every rule: its ID rejection too; top 1 keeps one with evidence
    assert set(rule['id_rejection']) == {'0.05', '0.1'} and isinstance(rule['id_rejection_within'], bool)
    with_evidence = [k for k in rule['kept'] if any(v is not None for v in rec['evidence']['auroc'][k].values())]
    assert len(with_evidence) <= 1 or rule['fallback']
    # the option itself, fitted end to end for the cost targets, keeps what the benchmark's default rule keeps
    assert rec['cost']['option_kept'] == rec['default_rule']['kept'] and rec['cost']['fit_seconds']['ratio'] > 0
    assert set(rec['cost']['predict_ratio']) == {'fisher3', 'evidence'}
    s = d['summary']
    assert s['design'] == ['tiny_a'] and s['held_out'] == ['tiny_b'] and s['chosen_rule'] in rec['rules']
    corr = s['correlations']['all']['pixel_permutation']['average']
    assert corr['pairs'] == 10 and (corr['pooled'] is None or -1 <= corr['pooled'] <= 1)
    assert set(s['held_out_report']['chosen_rule']) == {'tiny_b'}
    assert s['adoption'] is None  # no model trained after the registered rule
    # a rerun skips what is there; --summary re-splits without scoring
    capsys.readouterr()
    _script().main(['--quick', '--out', str(out), '--runs-dir', str(runs)])
    assert capsys.readouterr().out.count('skipped') == 2
    again = _script().main(['--summary', str(out), '--design', 'tiny_b', '--out', str(tmp_path / 'resplit.json')])
    assert again['summary']['held_out'] == ['tiny_a'] and again['models'] == d['models']
    # the registered rule (no_local) is in every record's grid: judged with a model trained after it
    judged = _script().main(['--summary', str(out), '--design', 'tiny_a', '--trained-after', 'tiny_b',
                             '--out', str(tmp_path / 'judged.json')])['summary']
    assert judged['trained_after'] == ['tiny_b'] and judged['adoption']['judged'] == ['tiny_a', 'tiny_b']
    assert 'no_local|t=0.5|top2|informedness|fisher' in judged['adoption']['rules']
    from bench_scripts import load_script
    tables = load_script('make_tables')
    table = tables.adoption_tables({'summary': judged})
    registered = 'no_local|t=0.5|top2|informedness|fisher'  # in a table cell its | are escaped
    assert 'Adopted by the criterion: `' in table and '`' + registered.replace('|', '\\|') + '`' in table
    assert 'tiny_b (trained after)' in tables.evidence_tables(dict(d, summary=judged))
    with pytest.raises(SystemExit, match='both design and trained after'):
        _script().main(['--summary', str(out), '--design', 'tiny_a', '--trained-after', 'tiny_a',
                        '--out', str(tmp_path / 'x.json')])
    # one file per core, merged: the models of both, one summary; a model in both files is refused
    for label in ('tiny_a', 'tiny_b'):
        (tmp_path / f'{label}.json').write_text(json.dumps(dict(d, models={label: d['models'][label]})))
    both = _script().main(['--summary', str(tmp_path / 'tiny_a.json'), str(tmp_path / 'tiny_b.json'),
                           '--design', 'tiny_a', '--out', str(tmp_path / 'merged.json')])
    assert list(both['models']) == ['tiny_a', 'tiny_b'] and both['summary']['chosen_rule'] == s['chosen_rule']
    with pytest.raises(SystemExit, match="measures \\['tiny_a'\\] again"):
        _script().main(['--summary', str(tmp_path / 'tiny_a.json'), str(out), '--out', str(tmp_path / 'x.json')])
    with pytest.raises(SystemExit, match='not among the checkpoints'):
        _script().main(['--quick', '--design', 'tiny_c', '--out', str(out), '--runs-dir', str(runs)])
    # the same models with fewer evidence images (another file: other sizes), compared rule by rule
    fewer = tmp_path / 'fewer.json'
    with pytest.raises(SystemExit, match='other sizes'):
        _script().main(['--quick', '--evidence-images', '12', '--out', str(out), '--runs-dir', str(runs)])
    with warnings.catch_warnings():
        warnings.simplefilter('ignore')
        _script().main(['--quick', '--evidence-images', '12', '--no-timing', '--out', str(fewer), '--runs-dir',
                        str(runs)])
    assert json.loads(fewer.read_text())['models']['tiny_a']['evidence']['samples']['patch_shuffle'] == 12
    cmp = _script().main(['--images-sensitivity', str(out), str(fewer), '--out', str(tmp_path / 'images.json')])
    assert list(cmp['files']) == ['20', '12'] and list(cmp['models']) == ['tiny_a', 'tiny_b']
    row = cmp['models']['tiny_a']['by_images']
    assert row['20'] == {k: rec['rules'][cmp['rule']][k] for k in ('kept', 'id_rejection_within')} | {
        'fpr95': rec['rules'][cmp['rule']]['average']['fpr95']}
    assert set(cmp['chosen_on_design']) == {'20', '12'} and cmp['design'] == ['tiny_a'] and cmp['left_out'] == []
    # a model measured at one size only is left out of the comparison, and named
    one = json.loads(fewer.read_text())
    (tmp_path / 'fewer_a.json').write_text(json.dumps(dict(one, models={'tiny_a': one['models']['tiny_a']})))
    part = _script().main(['--images-sensitivity', str(out), str(tmp_path / 'fewer_a.json'),
                           '--out', str(tmp_path / 'images_a.json')])
    assert list(part['models']) == ['tiny_a'] and part['left_out'] == ['tiny_b']
    with pytest.raises(SystemExit, match='both use 20 evidence images'):
        _script().main(['--images-sensitivity', str(out), str(out), '--out', str(tmp_path / 'x.json')])
