"""The evaluation harness: ``evaluate`` / ``summarize`` / the report on hand-made scores, and
``timm-ssod eval`` end to end on tiny generated PNG folders with a tiny resnet18 checkpoint,
its JSON checked against ``timm_ssod.metrics`` on scores computed here from the same images."""
import csv
import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from timm.data import create_dataset, create_transform, resolve_data_config

import timm_ssod
from timm_ssod.data import ImageFolderOOD, SyntheticDataset, write_image_folder
from timm_ssod.detectors import compute_outputs, create_detector
from timm_ssod.cli._eval import main
from timm_ssod.evaluate import AVERAGE, EvalScores, NonFiniteOutputError, evaluate, subsample_indices, summarize
from timm_ssod.metrics import accuracy, ood_metrics
from timm_ssod.hub._card import eval_table, load_eval_results
from timm_ssod.evaluate import format_table, result_rows, write_results

IMG = 64  # resnet18 -> 2x2 feature map
N_FIT, N_ID, N_A, N_B = 16, 12, 8, 16
pytestmark = [pytest.mark.filterwarnings('ignore:knn. the ID bank has'),  # k=50 > 16 fit images
              pytest.mark.filterwarnings('ignore:vim. fitted on')]  # 16 fit images < 512 dimensions
ALL = ('msp', 'maxlogit', 'energy', 'odin', 'klm', 'gen', 'mahalanobis', 'rmds', 'knn', 'react', 'vim', 'ssod',
       'ssod_msp', 'ssod_fused')


def _ssod_model(seed=0, num_classes=6):
    torch.manual_seed(seed)
    return timm_ssod.create_model('resnet18', num_classes=num_classes).eval()


@pytest.fixture(scope='module')
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp('eval')
    write_image_folder(SyntheticDataset('id', 'train', num_images=N_FIT, img_size=40), str(root / 'id' / 'train'))
    write_image_folder(SyntheticDataset('id', 'val', num_images=N_ID, img_size=40), str(root / 'id' / 'val'))
    write_image_folder(SyntheticDataset('noise', 'val', num_images=N_A, img_size=40),
                       str(root / 'ood_a' / 'deep' / 'er'))
    write_image_folder(SyntheticDataset('textures', 'val', num_images=N_B // 2, img_size=40), str(root / 'ood_b' / 'x'))
    write_image_folder(SyntheticDataset('textures', 'test', num_images=N_B // 2, img_size=40),
                       str(root / 'ood_b' / 'y' / 'z'))
    write_image_folder(SyntheticDataset('backgrounds', 'val', num_images=1, img_size=40), str(root / 'one' / 'sub'))
    (root / 'empty' / 'sub').mkdir(parents=True)
    (root / 'empty' / 'sub' / 'notes.txt').write_text('not an image')
    model = _ssod_model()
    torch.save({'state_dict': model.state_dict(), 'arch': 'resnet18'}, root / 'ssod.pth.tar')
    sd = {k: v for k, v in model.state_dict().items() if not k.startswith('ood_head.')}
    torch.save({'state_dict': sd, 'arch': 'resnet18'}, root / 'plain.pth.tar')
    bad = dict(model.state_dict())
    bad['fc.bias'] = torch.full_like(bad['fc.bias'], float('nan'))
    torch.save({'state_dict': bad, 'arch': 'resnet18'}, root / 'nan.pth.tar')
    return root


def _args(data, *extra, ckpt='ssod.pth.tar', ood=('a=ood_a', 'b=ood_b')):
    return ['--checkpoint', str(data / ckpt), '--data-dir', str(data / 'id'), '--img-size', str(IMG),
            '--workers', '0', '--quiet', '--ood', *[f'{s.split("=")[0]}={data / s.split("=")[1]}' for s in ood],
            *extra]


@pytest.fixture(scope='module')
def full_run(data):
    out = data / 'out_full'
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        assert main(_args(data, '--output', str(out))) == 0
    finally:
        torch.set_num_threads(n)
    with open(out / 'results.json') as f:
        return out, json.load(f)


# ---------------------------------------------------------------------------- the CLI end to end
def _batch(dataset):
    xs, ys = zip(*[dataset[i] for i in range(len(dataset))])
    return torch.stack(xs), torch.tensor(ys)


def test_json_equals_metrics_on_scores_computed_here(data, full_run):
    out, res = full_run
    model = _ssod_model()  # the checkpoint's weights
    cfg = resolve_data_config({'img_size': IMG}, model=model)
    tf = create_transform(**cfg, is_training=False)
    fit_x, fit_y = _batch(create_dataset('', root=str(data / 'id'), split='train', transform=tf))
    id_x, id_y = _batch(create_dataset('', root=str(data / 'id'), split='validation', transform=tf))
    ood_x = {'a': _batch(ImageFolderOOD(str(data / 'ood_a'), transform=tf))[0],
             'b': _batch(ImageFolderOOD(str(data / 'ood_b'), transform=tf))[0]}
    ood_x['b'] = ood_x['b'][torch.from_numpy(subsample_indices(N_B, N_ID, 0))]  # equal numbers: 16 -> 12
    with torch.no_grad():
        fit_out, id_out = compute_outputs(model, fit_x), compute_outputs(model, id_x)
        ood_out = {k: compute_outputs(model, x) for k, x in ood_x.items()}

    def by_formula(name, x, o):
        if name == 'msp':
            return o.logits.softmax(-1).amax(-1)
        if name == 'energy':
            return o.logits.logsumexp(-1)
        pred = model.predict(x)
        return pred.id_prob if name == 'ssod' else pred.posterior[:, :-1].amax(-1)

    assert res['id_accuracy'] == pytest.approx(accuracy(id_out.logits, id_y))
    assert res['num_id'] == N_ID and res['num_ood'] == {'a': N_A, 'b': N_ID}
    assert res['num_used'] == {'a': {'id': N_A, 'ood': N_A}, 'b': {'id': N_ID, 'ood': N_ID}}
    assert res['skipped'] == {} and res['detectors'] == list(ALL) == list(res['results'])
    for name in ALL:
        if name in ('msp', 'energy', 'ssod', 'ssod_msp'):
            score = lambda x, o: by_formula(name, x, o)  # noqa: E731
        else:
            det = create_detector(name, **({'std': cfg['std']} if name == 'odin' else {}))
            det.fit_outputs([(fit_out, fit_y)])
            score = lambda x, o: det.score(model, x) if det.needs_inputs else det.score_outputs(o)  # noqa: E731
        id_s = score(id_x, id_out).numpy()
        for s in ('a', 'b'):
            expected = ood_metrics(id_s[subsample_indices(N_ID, res['num_used'][s]['id'], 0)],
                                   score(ood_x[s], ood_out[s]).numpy())
            assert res['results'][name][s] == pytest.approx(expected, abs=1e-9), (name, s)
        avg = res[AVERAGE][name]
        for k in ('fpr95', 'auroc', 'aupr_in', 'aupr_out'):
            assert avg[k] == pytest.approx((res['results'][name]['a'][k] + res['results'][name]['b'][k]) / 2)


def test_table_csv_and_plots_written(full_run):
    out, res = full_run
    table = (out / 'results.md').read_text()
    assert '| Detector | a FPR95↓ | a AUROC↑ | b FPR95↓ | b AUROC↑ | average FPR95↓ | average AUROC↑ |' in table
    assert f"ID accuracy: {100 * res['id_accuracy']:.2f}% on {N_ID} ID images" in table
    row = next(line for line in table.splitlines() if line.startswith('| ssod |'))
    cells = [c.strip().strip('*') for c in row.strip('|').split('|')][1:]
    expected = [f"{100 * m[k]:.2f}" for m in (res['results']['ssod']['a'], res['results']['ssod']['b'],
                                              res[AVERAGE]['ssod']) for k in ('fpr95', 'auroc')]
    assert cells == expected
    with open(out / 'results.csv', newline='') as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == len(ALL) * 3
    for r in rows:
        m = (res[AVERAGE] if r['ood_set'] == AVERAGE else res['results'])[r['detector']]
        m = m if r['ood_set'] == AVERAGE else m[r['ood_set']]
        assert float(r['fpr95']) == m['fpr95'] and float(r['auroc']) == m['auroc']
        assert float(r['aupr_in']) == m['aupr_in'] and float(r['aupr_out']) == m['aupr_out']
    assert [r['num_ood'] for r in rows if r['detector'] == 'msp'] == [str(N_A), str(N_ID), '']
    assert sorted(p.name for p in out.glob('hist_*.png')) == ['hist_a.png', 'hist_b.png']
    card = eval_table(load_eval_results(str(out / 'results.json')))  # the Hub model card reads this JSON
    assert card.count('| ssod |') == 3 and '| ssod | **average** |' in card and '| ssod | average |' not in card
    assert not [p for p in out.iterdir() if p.name.startswith('.')]  # no temporary file left


def test_plain_model_one_image_set_in_a_subprocess(data):
    """python -m timm_ssod.evaluate: a checkpoint without OOD head skips the SSOD detectors;
    an OOD set of one image works (metrics on 1 ID vs 1 OOD image, with a note)."""
    out = data / 'out_plain'
    env = dict(os.environ, OMP_NUM_THREADS='1', MKL_NUM_THREADS='1')
    proc = subprocess.run([sys.executable, '-m', 'timm_ssod.evaluate', *_args(data, '--output', str(out),
                           '--detectors', 'msp', 'energy,knn', '--no-plots', ckpt='plain.pth.tar', ood=('one=one',))],
                          capture_output=True, text=True, env=env, timeout=120)
    assert proc.returncode == 0, proc.stderr
    res = json.loads((out / 'results.json').read_text())
    assert res['detectors'] == ['msp', 'energy', 'knn']
    assert res['num_used'] == {'one': {'id': 1, 'ood': 1}} and res['num_id'] == N_ID
    assert any('1 ID and 1 OOD image' in n for n in res['notes'])
    assert any('no OOD head' in n for n in res['notes'])
    assert "'one': metrics from 1 ID and 1 OOD image(s)" in proc.stdout
    assert not list(out.glob('*.png'))


def test_plain_model_default_detectors_skip_ssod(data, capsys, monkeypatch):
    """--no-ssod with the default detectors: ssod and ssod_msp skipped with a note;
    --use-all keeps every image; without matplotlib one line says the plots were skipped."""
    monkeypatch.setitem(sys.modules, 'matplotlib', None)
    out = data / 'out_all'
    # a shorter default list keeps this run cheap; the real one holds ssod and ssod_msp too
    monkeypatch.setattr('timm_ssod.evaluate.DEFAULT_DETECTORS', ('msp', 'energy', 'ssod', 'ssod_msp'))
    assert main(_args(data, '--output', str(out), '--no-ssod', '--use-all')) == 0
    res = json.loads((out / 'results.json').read_text())
    assert list(res['results']) == ['msp', 'energy'] and set(res['skipped']) == {'ssod', 'ssod_msp'}
    assert res['num_used'] == {'a': {'id': N_ID, 'ood': N_A}, 'b': {'id': N_ID, 'ood': N_B}}
    printed = capsys.readouterr().out
    assert printed.count('matplotlib is not installed: score histograms skipped') == 1
    assert '- skipped ssod: plain model' in printed


# ---------------------------------------------------------------------------- bad input
def _fails(capsys, argv, *needles):
    assert main(argv) == 1
    err = capsys.readouterr().err
    for needle in needles:
        assert needle in err, err
    return err


def test_empty_ood_folder(data, capsys):
    _fails(capsys, _args(data, '--detectors', 'msp', '--output', str(data / 'o1'), ood=('void=empty',)),
           "OOD set 'void'", 'no image files')


def test_unknown_detector(data, capsys):
    _fails(capsys, _args(data, '--detectors', 'msp,mahalanobis2'), 'unknown detector(s) mahalanobis2', 'ssod_msp')


def test_wrong_num_classes(data, capsys):
    _fails(capsys, _args(data, '--num-classes', '5'), 'has 6 classes', '--num-classes 5')


def test_nan_outputs_refused(data, capsys):
    _fails(capsys, _args(data, '--detectors', 'msp', '--output', str(data / 'o2'), ckpt='nan.pth.tar'),
           'NaN/Inf logits', 'the ID set', 'refusing')
    assert not (data / 'o2' / 'results.json').exists()


def test_nan_in_an_ood_set_names_it():
    model = _ssod_model()
    x = torch.rand(3, 3, IMG, IMG)
    bad = x.clone()
    bad[1, 0, 5, 5] = float('nan')
    with pytest.raises(NonFiniteOutputError, match="OOD set 'broken'"):
        evaluate(model, [(x, torch.tensor([0, 1, 2]))], {'fine': [x], 'broken': [bad]}, ('msp', 'ssod'), progress=False)


NEW_BASELINES = ('rmds', 'gen', 'fdbd', 'scale', 'ash_s', 'ash_b', 'nnguide', 'she', 'dice')


@pytest.mark.filterwarnings('ignore:she. no correctly classified', 'ignore:nnguide. the ID bank has')
def test_new_baselines_run_by_name_not_by_default():
    """The issue-12 baselines are in the registry, so the harness and `--detectors` take them by
    name; the default set is an explicit list: of them only RMDS and GEN (single pass, any backbone)."""
    from timm_ssod.cli._eval import _detector_names
    from timm_ssod.evaluate import DEFAULT_DETECTORS
    assert DEFAULT_DETECTORS == ALL and set(NEW_BASELINES) & set(DEFAULT_DETECTORS) == {'rmds', 'gen'}
    assert _detector_names(['rmds,gen', 'dice']) == ['rmds', 'gen', 'dice']
    model = _ssod_model(num_classes=3)
    g = torch.Generator().manual_seed(0)
    fit = [(torch.rand(6, 3, IMG, IMG, generator=g), torch.tensor([0, 1, 2, 0, 1, 2]))]
    ids = [(torch.rand(4, 3, IMG, IMG, generator=g), torch.tensor([0, 1, 2, 0]))]
    res = evaluate(model, ids, {'noise': [torch.randn(4, 3, IMG, IMG, generator=g)]}, NEW_BASELINES,
                   fit_loader=fit, progress=False)
    assert res['detectors'] == list(NEW_BASELINES) and res['skipped'] == {}
    for name in NEW_BASELINES:
        assert 0.0 <= res['results'][name]['noise']['auroc'] <= 1.0, name


def test_ssod_detector_requested_on_plain_model(data, capsys):
    _fails(capsys, _args(data, '--detectors', 'ssod', ckpt='plain.pth.tar'), 'need an SSOD model', 'no OOD head')


# ---------------------------------------------------------------------------- API on hand-made scores
def _scores():
    rng = np.random.default_rng(0)
    return EvalScores(id_scores={'msp': rng.normal(1, 1, 10), 'ssod': rng.normal(2, 1, 10)},
                      ood_scores={'x': {'msp': rng.normal(0, 1, 4), 'ssod': rng.normal(0, 1, 4)},
                                  'y': {'msp': rng.normal(0, 1, 15), 'ssod': rng.normal(0, 1, 15)}},
                      id_accuracy=0.75, num_id=10, model='m', num_classes=3, skipped={'knn': 'why'})


def test_summarize_equal_counts_and_all():
    s = _scores()
    res = summarize(s, equal_counts=True, seed=3)
    assert res['num_used'] == {'x': {'id': 4, 'ood': 4}, 'y': {'id': 10, 'ood': 10}}
    for det in ('msp', 'ssod'):
        assert res['results'][det]['x'] == ood_metrics(s.id_scores[det][subsample_indices(10, 4, 3)],
                                                       s.ood_scores['x'][det])
        assert res['results'][det]['y'] == ood_metrics(s.id_scores[det],
                                                       s.ood_scores['y'][det][subsample_indices(15, 10, 3)])
    everything = summarize(s, equal_counts=False)
    assert everything['results']['msp']['y'] == ood_metrics(s.id_scores['msp'], s.ood_scores['y']['msp'])
    json.dumps(res, allow_nan=False)  # serialisable
    idx = subsample_indices(15, 10, 3)
    assert list(idx) == sorted(set(idx)) and len(idx) == 10 and (idx == subsample_indices(15, 10, 3)).all()


def test_format_table_and_rows_by_hand():
    m = lambda f, a: {'fpr95': f, 'auroc': a, 'aupr_in': 0.5, 'aupr_out': 0.5}  # noqa: E731
    res = {'model': 'r18', 'id_accuracy': 0.9417, 'num_id': 100, 'num_used': {'s': {'id': 50, 'ood': 50}},
           'results': {'msp': {'s': m(0.5, 0.9)}, 'ssod': {'s': m(0.0519, 0.98944)}},
           AVERAGE: {'msp': m(0.5, 0.9), 'ssod': m(0.0519, 0.98944)},
           'skipped': {'vim': 'because'}, 'notes': ['a note']}
    table = format_table(res)
    assert 'Model: r18, ID accuracy: 94.17% on 100 ID images' in table
    assert '| msp | 50.00 | 90.00 | 50.00 | 90.00 |' in table
    assert '| ssod | **5.19** | **98.94** | **5.19** | **98.94** |' in table
    assert '- skipped vim: because' in table and '- a note' in table
    rows = result_rows(res)
    assert [(r['detector'], r['ood_set'], r['num_id']) for r in rows] == [
        ('msp', 's', 50), ('msp', AVERAGE, None), ('ssod', 's', 50), ('ssod', AVERAGE, None)]


def test_write_results_is_atomic_and_complete(tmp_path):
    res = summarize(_scores())
    paths = write_results(res, str(tmp_path / 'o'))
    assert json.loads(open(paths['json']).read()) == json.loads(json.dumps(res))
    assert sorted(os.listdir(tmp_path / 'o')) == ['results.csv', 'results.json', 'results.md']


def test_unknown_detector_and_reserved_name_in_api(capsys):
    model = _ssod_model()
    x = torch.rand(2, 3, IMG, IMG)
    with pytest.raises(ValueError, match='unknown detector'):
        evaluate(model, [x], {'o': [x]}, ('nope',), progress=False)
    with pytest.raises(ValueError, match='average'):
        evaluate(model, [x], {AVERAGE: [x]}, ('msp',), progress=False)
    res = evaluate(model, [x], {'o': [x]}, ('msp', 'knn'), progress=True)  # no fit_loader: knn skipped
    assert 'knn' in res['skipped'] and res['id_accuracy'] is None
    assert "OOD set 'o': batch 1/1, 2 images" in capsys.readouterr().err  # progress lines


def test_saved_folders(data, full_run, tmp_path):
    """local-dir: an SSOD folder (save_pretrained) keeps its OOD head and weights; a plain timm
    folder is evaluated as a plain model."""
    import timm
    from timm.models import save_for_hf
    _ssod_model().save_pretrained(str(tmp_path / 'ssod'))
    torch.manual_seed(0)  # the same backbone weights as _ssod_model()
    save_for_hf(timm.create_model('resnet18', num_classes=6), str(tmp_path / 'plain'), safe_serialization=True)
    for name, detectors in (('ssod', ['msp', 'ssod']), ('plain', ['msp'])):
        argv = _args(data, '--output', str(tmp_path / f'o_{name}'), '--no-plots', '--detectors', *detectors,
                     ood=('a=ood_a',))
        argv[:2] = ['--model', f'local-dir:{tmp_path / name}']
        assert main(argv) == 0
        res = json.loads((tmp_path / f'o_{name}' / 'results.json').read_text())
        assert list(res['results']) == detectors and res['id_accuracy'] == full_run[1]['id_accuracy']
        assert any('plain timm model' in n for n in res['notes']) == (name == 'plain')
        if name == 'ssod':
            assert res['results']['ssod']['a'] == full_run[1]['results']['ssod']['a']


def test_eval_and_hub_rebuild_a_checkpoint_with_its_recorded_bn_eps(tmp_path):
    """``timm-ssod eval`` and ``timm_ssod.hub.model_from_checkpoint`` rebuild a training
    checkpoint through one function (``hub.rebuild_model``): both honour the run's --bn-eps
    (eval used to leave it out and evaluate with timm's default eps)."""
    from timm_ssod.evaluate import load_eval_model
    from timm_ssod.hub import model_from_checkpoint
    model = timm_ssod.create_model('test_efficientnet', num_classes=3, bn_eps=1e-3)  # (ResNet takes no bn_eps)
    path = tmp_path / 'run.pth.tar'
    torch.save({'state_dict': model.state_dict(), 'arch': 'test_efficientnet',
                'args': dict(model='test_efficientnet', bn_eps=1e-3, num_classes=3, ssod=True)}, path)
    for rebuilt in (load_eval_model(checkpoint=str(path))[0], model_from_checkpoint(path)[0]):
        assert {m.eps for m in rebuilt.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)} == {1e-3}
        assert rebuilt.num_classes == 3


def test_format_table_marks_an_inverted_auroc():
    """Issue 31: an AUROC below 50 on a set (the score ranks the OOD images above the ID ones) is
    marked in the table, with a footnote saying what it means."""
    m = lambda f, a: {'fpr95': f, 'auroc': a, 'aupr_in': 0.5, 'aupr_out': 0.5}  # noqa: E731
    res = {'model': 'r18', 'id_accuracy': 0.9, 'num_id': 100,
           'results': {'msp': {'s': m(0.5, 0.9)}, 'ssod': {'s': m(0.99, 0.037)}},
           AVERAGE: {'msp': m(0.5, 0.9), 'ssod': m(0.99, 0.037)}, 'skipped': {}, 'notes': []}
    table = format_table(res)
    assert '| ssod | 99.00 | 3.70 ⁱ | 99.00 | 3.70 ⁱ |' in table
    assert '| msp | **50.00** | **90.00** | **50.00** | **90.00** |' in table
    assert ('- ⁱ inverted: AUROC below 50, this score ranks these OOD images as more in-distribution than the ID '
            'images (ssod on s)') in table
