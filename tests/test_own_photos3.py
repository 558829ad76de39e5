"""A user's own photos, third pass (issue 31): what a timm user expects from the command line.
Each test failed before its fix."""
import csv
import json
import logging
import shlex
import shutil
import subprocess
import sys

import pytest
import torch

from timm_ssod.cli import main as cli_main
from timm_ssod.train import _main as train_mod
from timm_ssod.train import run as train_run

from test_own_photos import CLASSES, IMG, TRAIN, calibrate, calibrated, error_line, root  # noqa: F401 (fixtures)

pytestmark = pytest.mark.tiny_fits  # detectors fitted on tens of images (tests/conftest.py)


# ------------------------------------------------- item 15: an unknown flag gives the subcommand's usage
@pytest.mark.parametrize('command, flag', [('predict', '--no-such-flag'), ('eval', '--no-such-flag')])
def test_an_unknown_flag_prints_the_subcommands_usage_and_exits_2(capsys, command, flag):
    with pytest.raises(SystemExit) as e:
        cli_main([command, 'x', 'y', flag]) if command == 'predict' else cli_main([command, flag])
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith(f'usage: timm-ssod {command} '), err
    assert err.strip().splitlines()[-1] == f'timm-ssod {command}: error: unrecognized arguments: {flag}'


# ------------------------------------------------- item 13: visualize --ood is not silently ignored
def test_visualize_ood_without_hist_draws_the_histograms(root, capsys, tmp_path):
    pytest.importorskip('matplotlib')
    assert cli_main(['visualize', '--model', f'local-dir:{root / "model"}', '--data-dir', str(root / 'photos'),
                     '-n', '2', '--ood', f'other={root / "photos" / "test"}', '--hist-samples', '4',
                     '--output', str(tmp_path)]) == 0
    assert '--ood given: drawing the score histograms too (--hist)' in capsys.readouterr().out
    assert (tmp_path / 'hist_other.png').is_file()


# ------------------------------------------------- item 4: a second run never replaces the first's files
def test_rerunning_train_with_the_same_experiment_writes_a_new_numbered_folder(root, tmp_path):
    argv = ['--data-dir', str(root / 'photos'), *TRAIN, '--output', str(tmp_path), '--experiment', 'r']
    assert train_run(argv) == 0
    first = (tmp_path / 'r' / 'model_best.pth.tar').read_bytes()
    assert train_run(argv) == 0  # timm's get_outdir(output, experiment, inc=True)
    assert (tmp_path / 'r' / 'model_best.pth.tar').read_bytes() == first
    assert (tmp_path / 'r-1' / 'model_best.pth.tar').is_file()
    assert train_run(argv + ['--resume', 'auto', '--epochs', '2']) == 0  # resuming continues in its folder
    assert not (tmp_path / 'r-2').exists() and len(_summary(tmp_path / 'r')) == 2


def _summary(run_dir):
    with open(run_dir / 'summary.csv', newline='') as f:
        return list(csv.DictReader(f))


# ------------------------------------------------- item 5: Ctrl-C exits 130 and says how to resume
def test_ctrl_c_exits_130_names_the_epoch_and_the_resume_command(root, tmp_path, capsys, monkeypatch):
    real = train_mod._train_epoch

    def interrupted(epoch, *args, **kwargs):
        if epoch == 1:
            raise KeyboardInterrupt
        return real(epoch, *args, **kwargs)
    monkeypatch.setattr(train_mod, '_train_epoch', interrupted)
    argv = ['--data-dir', str(root / 'photos'), *TRAIN, '--epochs', '3', '--output', str(tmp_path),
            '--experiment', 'c']
    assert train_run(argv) == 130
    err = capsys.readouterr().err
    assert 'Best metric' not in err
    assert 'timm-ssod train: interrupted during epoch 1 of 3 (epoch 0 saved in' in err
    resume = err.strip().splitlines()[-1]
    assert resume.startswith('To continue: timm-ssod train ') and resume.endswith(f'--resume {tmp_path / "c"}')
    monkeypatch.setattr(train_mod, '_train_epoch', real)
    assert train_run(shlex.split(resume[len('To continue: timm-ssod train '):])) == 0
    assert [r['epoch'] for r in _summary(tmp_path / 'c')] == ['0', '1', '2'] and not (tmp_path / 'c-1').exists()


# ------------------------------------------------- item 1: eval scores the decision calibrate deploys
def test_eval_of_a_calibrated_model_scores_the_deployed_detector_itself(root, tmp_path, capsys):
    import timm_ssod
    from timm.data import create_transform, resolve_model_data_config

    from timm_ssod.data import load_rgb
    from timm_ssod.detectors import compute_outputs
    from timm_ssod.metrics import ood_metrics
    cal_dir = tmp_path / 'cal'
    assert calibrate(root, '--data-dir', root / 'photos', '--detector', 'knn', '--save-dir', cal_dir, '--quiet') == 0
    out = tmp_path / 'eval'
    assert cli_main(['eval', '--model', f'local-dir:{cal_dir}', '--data-dir', str(root / 'photos'), '--ood',
                     f'other={root / "photos" / "test"}', '--detectors', 'knn', 'msp', '--fit-samples', '3',
                     '--use-all', '--no-plots', '--quiet', '--output', str(out)]) == 0
    table = capsys.readouterr().out
    assert '| knn (deployed) |' in table and 'knn (deployed): the decision this calibrated model makes' in table
    result = json.loads((out / 'results.json').read_text())
    assert list(result['results']) == ['knn', 'msp', 'knn (deployed)']
    # expected: the saved detector's own scores (its KNN bank of the calibration's fit), never refitted
    model = timm_ssod.create_model(f'local-dir:{cal_dir}', pretrained=True).eval()
    transform = create_transform(**resolve_model_data_config(model), is_training=False)

    def scores(folder):
        x = torch.stack([transform(load_rgb(str(f))) for f in sorted(folder.rglob('*.png'))])
        with torch.no_grad():
            return model.ssod_calibration.detector.score_outputs(compute_outputs(model, x)).numpy()
    expected = ood_metrics(scores(root / 'photos' / 'val'), scores(root / 'photos' / 'test'))
    assert result['results']['knn (deployed)']['other'] == pytest.approx(expected)
    assert result['results']['knn']['other'] != pytest.approx(expected)  # refitted on 3 images: another detector


# ------------------------------------------------- item 11: eval says it cut the OOD sets, counts what it read
def test_eval_says_it_cut_an_ood_set_and_counts_only_the_images_read(root, tmp_path, capsys):
    assert cli_main(['eval', '--model', f'local-dir:{root / "model"}', '--data-dir', str(root / 'broken'),
                     '--ood', f'other={root / "photos" / "train"}', '--detectors', 'msp', '--quiet', '--no-plots',
                     '--workers', '0', '--output', str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert ("- OOD set 'other': 9 of its 12 files used, a random subset as large as the ID set (seed 0; "
            "--use-all keeps every image)") in out
    assert '- ID set: 1 of its 10 files could not be read as an image: not counted (9 ID images)' in out


# ------------------------------------------------- item 8: a folder of class folders gets advice that works
def test_a_folder_of_class_folders_gets_one_piece_of_advice_that_works(root, capsys, tmp_path):
    flat = tmp_path / 'flat'
    shutil.copytree(root / 'photos' / 'train', flat)
    argv = ['--data-dir', str(flat), *TRAIN, '--output', str(tmp_path / 'runs'), '--experiment', 'f']
    assert train_run(argv) == 1
    line = error_line(capsys, 'timm-ssod train')
    assert (f'Move its class folders ({", ".join(CLASSES)}) into {flat / "train"} and put evaluation images in '
            f'{flat / "val"} (the same class sub-folders), then run the same command again.') in line
    (flat / 'train').mkdir()  # follow the advice
    for c in CLASSES:
        shutil.move(str(flat / c), str(flat / 'train' / c))
    shutil.copytree(root / 'photos' / 'val', flat / 'val')
    assert train_run(argv) == 0


# ------------------------------------------------- item 3 (predict): which score decides when P(ID) disagrees
def test_predict_says_which_score_decides_when_p_id_disagrees_with_the_decision():
    from timm_ssod.cli._predict import decision_footnote
    rows = [{'file': 'a.jpg', 'p_id': 0.87, 'decision': 'OOD'}, {'file': 'b.jpg', 'p_id': 0.2, 'decision': 'OOD'},
            {'file': 'c.jpg', 'p_id': 0.3, 'decision': 'ID'}, {'file': 'd.jpg', 'p_id': None, 'decision': 'unreadable'}]
    assert decision_footnote(rows, 'ssod_fused') == (
        'Which score decides: the p-value of the ssod_fused score, not P(ID) (the OOD head alone). They disagree on '
        '2 of 3 images (P(ID) >= 0.5 but OOD, or below 0.5 but ID).')
    assert decision_footnote(rows[1:2], 'ssod_fused') is None


# ------------------------------------------------- item 3 (train): too few OOD samples for the head is said
def test_train_warns_once_when_ood_samples_are_too_scarce_for_the_head(root, tmp_path, caplog, monkeypatch):
    from timm_ssod.train import _loop
    real = _loop.train_one_epoch

    def scarce(*args, **kwargs):  # the shares a converged classifier gives: almost no location below 1 - gamma
        return dict(real(*args, **kwargs), id_frac=0.7, ood_frac=0.02, ignored_frac=0.28)
    monkeypatch.setattr(train_mod, 'train_one_epoch', scarce)
    with caplog.at_level(logging.INFO):
        assert train_run(['--data-dir', str(root / 'photos'), *TRAIN, '--epochs', '2', '--output', str(tmp_path),
                          '--experiment', 's']) == 0
    warnings = [r.getMessage() for r in caplog.records
                if r.levelno == logging.WARNING and 'too few OOD' in r.getMessage()]
    assert warnings == [
        "too few OOD samples for SSOD's OOD head: 2.0% of the locations in epoch 0 (70.0% ID, 28.0% ignored); the "
        'head cannot learn what OOD looks like from so few. Try a lower --gamma (now 0.95; OOD is a confidence below '
        '1 - gamma), or larger inputs (--resize-up 224: more background locations per image).']
    assert any(r.getMessage() == 'Sampler shares of the last epoch: 70.0% ID, 2.0% OOD, 28.0% ignored '
               '(too few OOD samples: see the warning above)' for r in caplog.records)


# ------------------------------------------------- item 7: calibrate --push-to-hub saves first, always
def test_calibrate_push_to_an_unreachable_hub_keeps_the_calibration(root, tmp_path, capsys, monkeypatch):
    import timm_ssod.hub as hub

    def offline(*args, **kwargs):
        raise hub.HubError("pushing to Hub repo 'org/cal' at http://127.0.0.1:9 failed: ConnectError: refused")
    monkeypatch.setattr(hub, 'push_to_hub', offline)
    monkeypatch.chdir(tmp_path)
    assert calibrate(root, '--data-dir', root / 'photos', '--push-to-hub', 'org/cal', '--quiet') == 1
    out, err = capsys.readouterr()
    saved = 'output/calibrated/cal'
    assert (tmp_path / saved / 'ssod.safetensors').is_file() and f'Saved to {saved}' in out
    assert err.strip().splitlines()[-1] == (
        "timm-ssod calibrate: error: pushing to Hub repo 'org/cal' at http://127.0.0.1:9 failed: ConnectError: "
        f"refused. The calibrated model is saved in {saved} (calibrate --save-dir); upload that folder once the Hub "
        f"can be reached: hf upload org/cal {saved}")


# ------------------------------------------------- item 6: train --push-to-hub checks the Hub before training
def test_train_push_to_hub_checks_endpoint_and_token_before_training(root, tmp_path, capsys, monkeypatch):
    import timm_ssod.hub as hub
    from hub_server import HubServer, patch_hub_env
    pushed = []
    monkeypatch.setattr(hub, 'push_training_run', lambda out, repo: pushed.append((out, repo)))
    argv = ['--data-dir', str(root / 'photos'), *TRAIN, '--output', str(tmp_path / 'runs'), '--experiment', 'p',
            '--push-to-hub', 'org/p']
    patch_hub_env(monkeypatch, tmp_path / 'hf', 'http://127.0.0.1:9')  # nothing listens there
    monkeypatch.delenv('HF_TOKEN', raising=False)
    assert train_run(argv) == 1
    line = error_line(capsys, 'timm-ssod train')
    assert line.startswith("timm-ssod train: error: --push-to-hub org/p: http://127.0.0.1:9 cannot be reached")
    assert line.endswith('nothing was trained. Fix that, or train without --push-to-hub and push the run '
                         f'afterwards: timm-ssod push {tmp_path / "runs" / "p"} org/p')
    assert not (tmp_path / 'runs' / 'p').exists()
    with HubServer() as server:
        patch_hub_env(monkeypatch, tmp_path / 'hf', server.url)
        assert train_run(argv) == 1  # no token
        assert 'no Hugging Face token' in error_line(capsys, 'timm-ssod train')
        monkeypatch.setenv('HF_TOKEN', 'hf_wrong')
        assert train_run(argv) == 1
        assert f'the Hub at {server.url} does not accept the token' in error_line(capsys, 'timm-ssod train')
        monkeypatch.setenv('HF_TOKEN', server.TOKEN)
        assert train_run(argv) == 0 and pushed == [(str(tmp_path / 'runs' / 'p'), 'org/p')]


# ------------------------------------------------- item 18: train's ETA, total time and where the outputs are
def test_train_logs_an_eta_the_total_time_and_where_the_outputs_are(root, tmp_path, caplog):
    import re
    with caplog.at_level(logging.INFO):
        assert train_run(['--data-dir', str(root / 'photos'), *TRAIN, '--epochs', '2', '--output', str(tmp_path),
                          '--experiment', 'e']) == 0
    text = '\n'.join(r.getMessage() for r in caplog.records)
    assert re.search(r'^Epoch 0 of 2 took \d+s; ETA \d+s \(1 epoch left\)$', text, re.M), text
    assert re.search(r'^Epoch 1 of 2 took \d+s; done$', text, re.M), text
    assert re.search(rf'^Trained 2 epochs in \d+s\. Outputs in {re.escape(str(tmp_path / "e"))}: model_best.pth.tar, '
                     r'model_best_timm.safetensors, last.pth.tar, summary.csv, args.yaml$', text, re.M), text


# ------------------------------------------------- item 16: predict's flags as timm's inference.py
@pytest.mark.filterwarnings('ignore:SSODResNet. the feature map is 1x1')  # --img-size 32, on purpose
def test_predict_topk_results_format_class_map_img_size_and_no_table(root, tmp_path, capsys):
    (tmp_path / 'map.txt').write_text('A\nB\nC\n')
    folder = root / 'photos' / 'test'
    assert cli_main(['predict', f'local-dir:{root / "model"}', str(folder), '--topk', '2', '--results-format', 'json',
                     '--class-map', str(tmp_path / 'map.txt'), '--img-size', '32', '--amp', '--no-table', '--quiet',
                     '--output', str(tmp_path / 'out')]) == 0
    out = capsys.readouterr().out
    assert '| file |' not in out and 'This model is not calibrated' in out
    assert sorted(p.name for p in (tmp_path / 'out').iterdir()) == ['predictions.json']
    saved = json.loads((tmp_path / 'out' / 'predictions.json').read_text())
    rows = saved['predictions']
    assert len(rows) == 9 and all(r['class'] in 'ABC' and len(r['topk']) == 2 for r in rows)
    assert all(r['topk'][0] == {'class': r['class'], 'prob': r['class_prob']} and
               r['topk'][0]['prob'] >= r['topk'][1]['prob'] for r in rows)
    assert saved['input_size'] == [3, 32, 32]


# ------------------------------------------------- item 17: eval's flags as timm's validate.py
def test_eval_amp_channels_last_results_file_and_top5(root, tmp_path, capsys):
    import timm_ssod
    model = timm_ssod.create_model('test_resnet', num_classes=6)
    model.save_pretrained(tmp_path / 'six', data_config={'input_size': (3, IMG, IMG)})
    from timm_ssod.data import SyntheticDataset, write_image_folder
    for split, n in (('train', 12), ('val', 12)):
        write_image_folder(SyntheticDataset('id', split, num_images=n, img_size=IMG, num_classes=6),
                           tmp_path / 'six_photos' / split)
    assert cli_main(['eval', '--model', f'local-dir:{tmp_path / "six"}', '--data-dir', str(tmp_path / 'six_photos'),
                     '--ood', f'other={root / "photos" / "test"}', '--detectors', 'msp', '--amp', '--channels-last',
                     '--results-file', str(tmp_path / 'r.json'), '--no-plots', '--quiet', '--workers', '0',
                     '--output', str(tmp_path / 'out')]) == 0
    out = capsys.readouterr().out
    result = json.loads((tmp_path / 'r.json').read_text())
    assert result == json.loads((tmp_path / 'out' / 'results.json').read_text())
    top1, top5 = result['id_accuracy'], result['id_accuracy_top5']
    assert 0 <= top1 <= top5 <= 1 and f'top-5: {100 * top5:.2f}%' in out
    # 3 classes: no top-5
    assert cli_main(['eval', '--model', f'local-dir:{root / "model"}', '--data-dir', str(root / 'photos'), '--ood',
                     f'other={root / "photos" / "test"}', '--detectors', 'msp', '--no-plots', '--quiet',
                     '--workers', '0', '--output', str(tmp_path / 'out3')]) == 0
    assert 'top-5' not in capsys.readouterr().out
    assert json.loads((tmp_path / 'out3' / 'results.json').read_text())['id_accuracy_top5'] is None


# ------------------------------------------------- item 3 (calibrate): SSOD's head separating nothing is said
def test_calibrate_and_the_card_say_when_ssods_head_separates_nothing_on_the_evidence():
    from timm_ssod.detectors.evidence import ssod_head_note
    from timm_ssod.hub._card import _choices_rows
    choices = {'rule': {'sources': ['background'], 'threshold': 0.5, 'top': 2, 'weighting': 'informedness'},
               'candidates': ['ssod', 'knn'], 'kept': ['knn'], 'evidence': {'ssod': 0.52, 'knn': 0.9}, 'reasons': {}}
    note = ("SSOD's OOD head separates nothing on the ID-only evidence (pseudo-AUROC 0.52; 0.50 is chance): its P(ID) "
            'says little about new images; the decision rests on the other components (knn)')
    assert ssod_head_note(choices) == note
    assert f'| SSOD head | {note} |' in _choices_rows(choices)
    backwards = dict(choices, evidence={'ssod': 0.2, 'knn': 0.9})
    assert ssod_head_note(backwards).startswith("SSOD's OOD head ranks the ID-only pseudo-OOD above the ID images "
                                                '(pseudo-AUROC 0.20): it learned OOD backwards')
    assert ssod_head_note(dict(choices, evidence={'ssod': 0.8, 'knn': 0.9})) is None
    assert ssod_head_note(dict(choices, evidence={'ssod': None, 'knn': 0.9})) is None


# ------------------------------------------------- item 10: a degenerate ViM fit is warned once, never deployed
def test_calibrate_warns_once_about_a_degenerate_vim_and_does_not_deploy_it(root, tmp_path):
    import warnings
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter('always')
        assert calibrate(root, '--data-dir', root / 'photos', '--detector', 'ssod_fused', '--evidence-top', '5',
                         '--evidence-threshold', '0', '--save-dir', tmp_path / 'cal', '--quiet') == 0
    vim = [str(w.message) for w in caught if str(w.message).startswith('vim: fitted on')]
    assert len(vim) == 1, vim
    # the selection: a component whose fit flagged itself degenerate is not deployed (by hand)
    from types import SimpleNamespace

    from timm_ssod.detectors.ssod_fused import _drop_degenerate
    why = 'fitted on 12 images, not more than its principal dimension 48'
    comps = {'ssod': SimpleNamespace(), 'vim': SimpleNamespace(degenerate=why)}
    record = {'kept': ['ssod', 'vim'], 'weights': [0.4, 0.9], 'reasons': {'ssod': 'kept: a', 'vim': 'kept: b'}}
    _drop_degenerate(record, comps)
    assert record == {'kept': ['ssod'], 'weights': [0.4],
                      'reasons': {'ssod': 'kept: a', 'vim': f'dropped: its fit is degenerate ({why})'}}
    record = {'kept': ['vim'], 'weights': None, 'reasons': {'vim': 'kept (fallback): b'}}
    _drop_degenerate(record, comps)
    assert record['kept'] == ['vim'] and record['reasons']['vim'] == (
        f'kept (fallback): b; kept although its fit is degenerate ({why}): no other component was kept')
