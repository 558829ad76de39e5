"""ONNX export (issue 33): the exported file gives ``model.predict``'s outputs in ONNX Runtime on
ID and OOD images (probabilities within 1e-4, p-values within 1e-6, the same decisions away from
the threshold) for a ResNet, a MobileNetV3 and a ConvNeXt (its own ``forward_head``), with the
default decision and with KNN / ViM / Mahalanobis components; every exportable detector; the
refusals; the atomic write; the command and ``predict`` on the exported file."""
import csv
import json
import os
import sys

import numpy as np
import onnxruntime as ort
import pytest
import torch

import timm_ssod
from timm_ssod.data import SyntheticDataset
from timm_ssod.detectors import compute_outputs
from timm_ssod.export import EXPORTABLE_DETECTORS, ExportError, export_onnx, large_banks, sidecar_path

pytestmark = pytest.mark.tiny_fits  # detectors fitted on tens of images (tests/conftest.py)

IMG, CLASSES = 64, 3
PROB_TOL, P_TOL, SCORE_TOL = 1e-4, 1e-6, 1e-5


def images(kind, split, n, seed=0):
    """n generated images (rendered at 32 px, upsampled to IMG), normalised like timm's default."""
    ds = SyntheticDataset(kind, split=split, num_images=n, img_size=32, num_classes=CLASSES, seed=seed)
    x = torch.stack([torch.from_numpy(np.asarray(ds[i][0], dtype=np.float32) / 255).permute(2, 0, 1)
                     for i in range(n)])
    x = torch.nn.functional.interpolate(x, size=(IMG, IMG), mode='bilinear', align_corners=False)
    mean, std = torch.tensor([0.485, 0.456, 0.406])[:, None, None], torch.tensor([0.229, 0.224, 0.225])[:, None, None]
    return (x - mean) / std, torch.as_tensor([ds[i][1] for i in range(n)])


@pytest.fixture(scope='module')
def data():
    fit_x, fit_y = images('id', 'train', 32)  # the fit, its evidence made from 16 of them
    cal_x, _ = images('id', 'val', 40)
    test = torch.cat([images('id', 'test', 110)[0], images('noise', 'test', 50)[0], images('textures', 'test', 50)[0]])
    return ([(fit_x[i:i + 16], fit_y[i:i + 16]) for i in range(0, 32, 16)], [(cal_x[:20],), (cal_x[20:],)], test)


def tiny(name, seed=0, **kwargs):
    """An untrained model whose OOD head is spread out and classifier (the init gives P(ID) ~ 0.5 and
    near-uniform class probabilities everywhere: every score in a tie)."""
    torch.manual_seed(seed)
    model = timm_ssod.create_model(name, num_classes=CLASSES, pretrained_cfg_overlay=dict(input_size=(3, IMG, IMG)),
                                   **kwargs).eval()
    torch.nn.init.normal_(model.ood_head.net.weight, std=0.5)
    torch.nn.init.normal_(model.get_classifier().weight, std=0.5)  # and the classes: MSP, GEN, KLM not all ties
    return model


def run_onnx(path, x):
    session = ort.InferenceSession(str(path), providers=['CPUExecutionProvider'])
    names = [o.name for o in session.get_outputs()]
    return dict(zip(names, session.run(None, {session.get_inputs()[0].name: x.numpy()})))


def assert_parity(model, path, x):
    """ONNX Runtime's outputs against ``model.predict`` (tolerances of the issue)."""
    out = run_onnx(path, x)
    pred = model.predict(x)
    for name in ('class_probs', 'id_prob', 'posterior'):
        np.testing.assert_allclose(out[name], getattr(pred, name).numpy(), rtol=0, atol=PROB_TOL, err_msg=name)
    np.testing.assert_allclose(out['logits'], pred.logits.numpy(), rtol=1e-4, atol=1e-4)
    cal = model.ssod_calibration
    if cal is None:
        assert list(out) == ['logits', 'class_probs', 'id_prob', 'posterior']
        return out
    assert list(out) == ['logits', 'class_probs', 'id_prob', 'posterior', 'score', 'p_value', 'is_ood']
    score = cal.detector.score_outputs(compute_outputs(model, x)).double().numpy()
    np.testing.assert_allclose(out['score'], score, rtol=1e-4, atol=1e-4)
    ref, onnx_score = cal.reference.numpy(), out['score'].astype(np.float64)
    # the count differs only where a calibration score lies between the two scores, which float32 rounding of the
    # backbone can do only when they are within SCORE_TOL of it
    crossed = ((ref[None, :] <= score[:, None]) != (ref[None, :] <= onnx_score[:, None])).any(axis=1)
    assert np.all(np.abs(score - onnx_score)[crossed] <= SCORE_TOL * (1 + np.abs(score[crossed])))
    assert crossed.mean() < 0.05
    np.testing.assert_allclose(out['p_value'][~crossed], pred.p_value.numpy()[~crossed], rtol=0, atol=P_TOL)
    assert out['is_ood'].dtype == np.bool_
    thr = cal.threshold()
    borderline = np.abs(score - thr) <= SCORE_TOL * (1 + abs(thr))
    assert np.array_equal(out['is_ood'][~borderline], pred.is_ood.numpy()[~borderline])
    return out


# ------------------------------------------------------------------------ parity, three families
@pytest.mark.parametrize('name,kwargs', [('resnet10t', {}), ('mobilenetv3_small_050', {}), ('convnext_atto', {})])
def test_parity_with_predict_default_decision(name, kwargs, data, tmp_path):
    fit, cal_batches, test = data
    model = tiny(name, **kwargs)
    export_onnx(model, tmp_path / 'plain.onnx')  # not calibrated: the four outputs
    assert_parity(model, tmp_path / 'plain.onnx', test)
    model.calibrate(cal_batches, fit_loader=fit, alpha=0.1,
                    detector_kwargs={'evidence_images': 16, 'component_kwargs': {'vim': {'dim': 8}}})
    info = model.export_onnx(tmp_path / 'model.onnx')
    out = assert_parity(model, tmp_path / 'model.onnx', test)
    assert test.shape[0] >= 200 and out['is_ood'].shape == (210,)
    side = json.loads(open(sidecar_path(tmp_path / 'model.onnx')).read())
    assert side == json.loads(json.dumps(info))
    cal = model.ssod_calibration
    assert side['input_size'] == [3, IMG, IMG] and side['mean'] == [0.485, 0.456, 0.406]
    assert {'interpolation', 'crop_pct', 'crop_mode', 'std'} <= set(side)
    assert side['decision']['alpha'] == 0.1 and side['decision']['n'] == 40
    assert side['decision']['components'] == cal.detector.component_names
    assert side['decision']['threshold'] == cal.threshold()


def test_parity_knn_vim_mahalanobis_components(data, tmp_path):
    fit, cal_batches, test = data
    model = tiny('resnet10t', seed=1)
    model.calibrate(cal_batches, fit_loader=fit, alpha=0.1,
                    detector_kwargs={'select': 'all', 'components': ['ssod', 'knn', 'vim', 'mahalanobis'],
                                     'component_kwargs': {'knn': {'k': 5}, 'vim': {'dim': 8}}})
    info = export_onnx(model, tmp_path / 'model.onnx')
    assert info['decision']['components'] == ['ssod', 'knn', 'vim', 'mahalanobis']
    knn = model.ssod_calibration.detector.components[1]
    assert info['knn_bank_mb'] == round(knn.bank.numel() * 4 / 2 ** 20, 3)
    assert large_banks(info) is None and 'holds 80.0 MB of' in large_banks(dict(info, knn_bank_mb=80.0))
    assert_parity(model, tmp_path / 'model.onnx', test)
    # a batch of one: the batch axis is dynamic
    out = run_onnx(tmp_path / 'model.onnx', test[:1])
    assert out['p_value'].shape == (1,)


@pytest.mark.parametrize('detector', [d for d in EXPORTABLE_DETECTORS if d not in ('ssod_fused',)])
def test_every_exportable_detector_alone(detector, data, tmp_path):
    fit, cal_batches, test = data
    model = tiny('test_resnet', output_stride=16)
    kwargs = {'dim': 8} if detector == 'vim' else {'k': 5} if detector == 'knn' else {}
    model.calibrate(cal_batches, detector=detector, fit_loader=fit, alpha=0.1, detector_kwargs=kwargs)
    export_onnx(model, tmp_path / 'model.onnx')
    assert_parity(model, tmp_path / 'model.onnx', test[::3])


# ------------------------------------------------------------------------ refusals, atomic write
def test_refusals_name_the_component(data, tmp_path):
    fit, cal_batches, _ = data
    model = tiny('test_resnet', output_stride=16)
    model.calibrate(cal_batches, detector='react', fit_loader=fit, alpha=0.1)
    with pytest.raises(ExportError, match=r"detector react cannot be exported to ONNX \(exportable: ssod, "):
        export_onnx(model, tmp_path / 'model.onnx')
    model.calibrate(cal_batches, fit_loader=fit, alpha=0.1,
                    detector_kwargs={'select': 'all', 'method': 'stouffer'})
    with pytest.raises(ExportError, match='stouffer combination needs the normal quantile'):
        export_onnx(model, tmp_path / 'model.onnx')
    assert not os.listdir(tmp_path)


def test_missing_onnx_names_the_extra(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, 'onnx', None)
    with pytest.raises(ExportError, match=r'^ONNX export needs the onnx package: pip install timm-ssod\[onnx\]$'):
        export_onnx(tiny('test_resnet'), tmp_path / 'model.onnx')


def test_failed_export_leaves_the_old_file(monkeypatch, tmp_path):
    import onnx
    path = tmp_path / 'model.onnx'
    path.write_bytes(b'old')

    def broken(*args, **kwargs):
        raise OSError('disk full')
    monkeypatch.setattr(onnx.checker, 'check_model', lambda m: None)
    monkeypatch.setattr(torch.onnx, 'export', lambda module, args, f, **kw: f.write(b'half') and broken())
    with pytest.raises(ExportError, match='could not be exported to ONNX: disk full'):
        export_onnx(tiny('test_resnet'), path)
    assert path.read_bytes() == b'old' and sorted(os.listdir(tmp_path)) == ['model.onnx']


# ------------------------------------------------------------------------ the commands
@pytest.fixture(scope='module')
def saved(tmp_path_factory, data):
    fit, cal_batches, _ = data
    root = tmp_path_factory.mktemp('onnx_cli')
    model = tiny('test_resnet', output_stride=16)
    model.calibrate(cal_batches, detector_kwargs={'select': 'all', 'components': ['ssod', 'mahalanobis', 'knn'],
                                                  'component_kwargs': {'knn': {'k': 5}}}, fit_loader=fit, alpha=0.1)
    folder = model.save_pretrained(root / 'model', data_config={'input_size': (3, IMG, IMG)},
                                   label_names=['cross', 'disc', 'ring'])
    from timm_ssod.data import create_dataset, write_image_folder
    images = write_image_folder(create_dataset('synthetic/noise', split='test', num_images=4, img_size=IMG),
                                str(root / 'images'))
    write_image_folder(create_dataset('synthetic/id', split='test', num_images=4, img_size=IMG, num_classes=3),
                       str(root / 'images'))
    return root, folder, images


def read_rows(folder):
    with open(folder / 'predictions.csv', newline='') as f:
        return list(csv.DictReader(f))


def test_export_command_then_predict_on_the_file(saved, capsys):
    from timm_ssod.cli import main
    root, folder, images = saved
    onnx_path = root / 'deploy' / 'model.onnx'
    assert main(['export', f'local-dir:{folder}', '--output', str(onnx_path)]) == 0
    printed = capsys.readouterr().out
    assert f'to {onnx_path} (' in printed and f'{onnx_path}.json' in printed
    assert ('outputs: logits, class_probs, id_prob, posterior, score, p_value, is_ood; input: input (N x 3x64x64)'
            in printed)
    assert 'decision: ssod_fused [ssod, mahalanobis, knn] score, is_ood when p_value <= alpha = 0.1 (40 ID' in printed
    side = json.loads((root / 'deploy' / 'model.onnx.json').read_text())
    assert side['label_names'] == ['cross', 'disc', 'ring'] and side['input_size'] == [3, IMG, IMG]

    tables = {}
    for name, model in (('torch', f'local-dir:{folder}'), ('onnx', str(onnx_path))):
        assert main(['predict', model, str(root / 'images'), '--output', str(root / name), '--quiet']) == 0
        tables[name] = capsys.readouterr().out
    torch_rows, onnx_rows = read_rows(root / 'torch'), read_rows(root / 'onnx')
    assert len(onnx_rows) == 8 and [r['file'] for r in onnx_rows] == [r['file'] for r in torch_rows]
    for a, b in zip(torch_rows, onnx_rows):
        assert (a['class'], a['decision']) == (b['class'], b['decision']) and a['class'] in ('cross', 'disc', 'ring')
        assert abs(float(a['p_id']) - float(b['p_id'])) < PROB_TOL
        assert abs(float(a['p_value']) - float(b['p_value'])) < P_TOL
    assert tables['onnx'].splitlines()[:10] == tables['torch'].splitlines()[:10]  # the same table
    assert 'OOD when p-value <= alpha = 0.1 (ssod_fused score, 40 ID calibration images)' in tables['onnx']
    saved_json = json.loads((root / 'onnx' / 'predictions.json').read_text())
    assert saved_json['calibrated'] and saved_json['alpha'] == 0.1 and saved_json['model'] == str(onnx_path)
    # --alpha re-decides from the p-values the file gives; an unreachable alpha is refused as for the model
    assert main(['predict', str(onnx_path), str(root / 'images'), '--alpha', '0.5', '--quiet']) == 0
    assert 'alpha = 0.5' in capsys.readouterr().out
    assert main(['predict', str(onnx_path), images, '--alpha', '0.001']) == 1
    err = capsys.readouterr().err
    assert 'timm-ssod predict: error: 40 ID calibration images cannot give a decision at alpha=0.001' in err


def test_export_command_errors(saved, tmp_path, capsys):
    from timm_ssod.cli import main
    root, folder, images = saved
    assert main(['export', 'nowhere.pth', '--output', str(tmp_path / 'm.onnx')]) == 1
    assert 'timm-ssod export: error: MODEL ' in capsys.readouterr().err
    os.makedirs(tmp_path / 'alone')
    (tmp_path / 'alone' / 'model.onnx').write_bytes(b'')
    assert main(['predict', str(tmp_path / 'alone' / 'model.onnx'), images]) == 1
    assert 'model.onnx.json is missing' in capsys.readouterr().err


def test_save_pretrained_with_onnx_and_the_card_snippet(saved, tmp_path, capsys):
    import re
    root, folder, _ = saved
    model = timm_ssod.create_model(f'local-dir:{folder}', pretrained=True).eval()
    out = model.save_pretrained(tmp_path / 'with_onnx', onnx=True, repo_id='org/tiny')
    assert (out / 'model.onnx').is_file() and (out / 'model.onnx.json').is_file()
    card = (out / 'README.md').read_text()
    assert '## ONNX' in card and '`model.onnx` (' in card and '`p_value`, `is_ood`' in card
    code = re.search(r'## ONNX\n.*?```python\n(.*?)```', card, re.S).group(1)
    code = code.replace("snapshot_download('org/tiny', allow_patterns=['model.onnx*'])", repr(str(out)))
    exec(compile(code, 'README.md', 'exec'), {})
    assert re.search(r'class: \d P\(in-distribution\): [\d.e-]+\np-value: [\d.e-]+ OOD: (True|False)',
                     capsys.readouterr().out)
    model.save_pretrained(out)  # saved again without onnx: the old file would not match the weights
    assert not (out / 'model.onnx').exists() and not (out / 'model.onnx.json').exists()
    assert '## ONNX' not in (out / 'README.md').read_text()
