"""A user's own photos, second pass (issue 24): a 3-class ImageFolder with train/, val/ and
test/, as ``timm-ssod`` reads it. The one rule of held-out splits holds in ``calibrate`` too;
``train`` refuses a val/ with other classes and a --num-classes that is not the data's;
``--resume`` with another ``--epochs`` follows the new schedule; an unreadable file is
skipped and not counted by every command; ``calibrate`` and ``predict`` show progress; a
warm-up as long as the run is warned about; every command defaults to the validation split.

In-process commands on tiny images (64 px, timm's test_resnet) keep it to seconds."""
import csv
import json
import logging
import shutil

import pytest
import torch

import timm_ssod
from timm_ssod.cli import main as cli_main
from timm_ssod.data import HELD_OUT_SPLIT, TRAIN_SPLIT, SyntheticDataset, write_image_folder
from timm_ssod.train import _main as train_mod
from timm_ssod.train import build_datasets, parse_args
from timm_ssod.train import run as train_run

CLASSES = ['disc', 'square', 'triangle']
IMG = 64
TRAIN = ['--model', 'test_resnet', '--img-size', str(IMG), '-b', '4', '--epochs', '1', '--workers', '0', '--opt',
         'adamw', '--lr', '1e-3', '--warmup-epochs', '0', '--log-interval', '100']


@pytest.fixture(scope='module')
def root(tmp_path_factory):
    """``photos/`` (train 12, val 9, test 9 images), ``no_val/`` (train + test), ``broken/``
    (photos whose val/ and test/ hold one more file that is no image), a saved 3-class model."""
    root = tmp_path_factory.mktemp('photos2')
    for split, n in (('train', 12), ('val', 9), ('test', 9)):
        write_image_folder(SyntheticDataset('id', split, num_images=n, img_size=IMG, num_classes=3),
                           root / 'photos' / split)
    assert sorted(p.name for p in (root / 'photos' / 'train').iterdir()) == CLASSES
    for split in ('train', 'test'):
        shutil.copytree(root / 'photos' / split, root / 'no_val' / split)
    shutil.copytree(root / 'photos', root / 'broken')
    for split in ('val', 'test'):
        (root / 'broken' / split / 'disc' / 'broken.png').write_bytes(b'not an image')
    torch.manual_seed(0)
    model = timm_ssod.create_model('test_resnet', num_classes=3)
    model.save_pretrained(root / 'model', data_config={'input_size': (3, IMG, IMG)}, label_names=CLASSES)
    return root


def error_line(capsys, prog):
    """The one ``prog: error: ...`` line a failed command printed last on stderr (no traceback)."""
    err = capsys.readouterr().err
    assert 'Traceback' not in err, err
    last = err.strip().splitlines()[-1]
    assert last.startswith(f'{prog}: error: '), err
    return last


def calibrate(root, *argv):
    return cli_main(['calibrate', f'local-dir:{root / "model"}', '--detector', 'ssod', '--alpha', '0.2', *map(str, argv)])


# ------------------------------------------------------------------- item 1: calibrate's split
@pytest.mark.parametrize('split', [None, 'val', 'nonexistent'])
def test_calibrate_refuses_a_split_that_would_read_the_training_images(root, capsys, split):
    argv = ['--data-dir', root / 'no_val', '--save-dir', root / f'out-{split}'] + (['--split', split] if split else [])
    assert calibrate(root, *argv) == 1
    line = error_line(capsys, 'timm-ssod calibrate')
    assert f"--split {split or HELD_OUT_SPLIT!r}: {root / 'no_val'} has no" in line
    assert str(root / 'no_val' / 'train') in line and 'Give --split test' in line
    assert not (root / f'out-{split}').exists()


def test_calibrate_names_its_folders_and_refuses_calibrating_on_training_images(root, capsys):
    assert calibrate(root, '--data-dir', root / 'photos', '--save-dir', root / 'cal', '--quiet') == 0
    out = capsys.readouterr().out
    assert f"Calibration data: split 'validation' -> {root / 'photos' / 'val'} (9 images, 3 classes" in out
    assert 'ssod score, 9 ID calibration images' in out
    assert calibrate(root, '--data-dir', root / 'photos', '--split', 'train', '--save-dir', root / 'x') == 1
    assert "--split 'train' reads the training images" in error_line(capsys, 'timm-ssod calibrate')


# ------------------------------------------------- item 10: only what was read is counted
def test_calibrate_and_eval_count_only_the_images_read(root, capsys, caplog):
    broken = root / 'broken' / 'val' / 'disc' / 'broken.png'
    with caplog.at_level(logging.WARNING):
        assert calibrate(root, '--data-dir', root / 'broken', '--save-dir', root / 'cal-broken', '--quiet') == 0
    assert 'ssod score, 9 ID calibration images' in capsys.readouterr().out  # 10 files, 9 images
    assert str(broken) in caplog.text
    assert json.loads((root / 'cal-broken' / 'config.json').read_text())['ssod']['calibration']['n'] == 9

    with pytest.warns(UserWarning, match='skipping corrupt image file .*broken.png'):
        rc = cli_main(['eval', '--model', f'local-dir:{root / "model"}', '--data-dir', str(root / 'broken'),
                       '--ood', f'test={root / "broken" / "test"}', '--detectors', 'msp', '--use-all', '--quiet',
                       '--no-plots', '--workers', '0', '--output', str(root / 'eval-broken')])
    assert rc == 0, capsys.readouterr().err
    result = json.loads((root / 'eval-broken' / 'results.json').read_text())
    assert result['num_id'] == 9 and result['num_ood'] == {'test': 9}


def test_training_validates_on_the_images_read(root, caplog):
    with caplog.at_level(logging.INFO):
        train_mod.main(['--data-dir', str(root / 'broken'), *TRAIN, '--output', str(root / 'runs'),
                        '--experiment', 'broken'])
    assert 'Test: [9 images, all ranks]' in caplog.text


# --------------------------------------------------- items 5, 10, 15: predict on a folder
@pytest.fixture(scope='module')
def calibrated(root):
    assert calibrate(root, '--data-dir', root / 'photos', '--save-dir', root / 'calibrated', '--quiet') == 0
    return root / 'calibrated'


def test_predict_skips_an_unreadable_file_lists_it_and_counts_the_rest(root, calibrated, capsys):
    folder, broken = root / 'broken' / 'test', root / 'broken' / 'test' / 'disc' / 'broken.png'
    assert cli_main(['predict', f'local-dir:{calibrated}', str(folder), '--output', str(root / 'pred'),
                     '--quiet']) == 0
    out, err = capsys.readouterr()
    assert f'warning: skipping {broken}: it cannot be read as an image' in err and 'Traceback' not in err
    assert '1 of 10 file(s) could not be read as images' in out and 'of 9 images.' in out
    with open(root / 'pred' / 'predictions.csv', newline='') as f:
        rows = {r['file']: r for r in csv.DictReader(f)}
    assert len(rows) == 10 and rows[str(broken)]['decision'] == 'unreadable' and rows[str(broken)]['error']
    assert all(r['decision'] in ('ID', 'OOD') and not r['error'] for f, r in rows.items() if f != str(broken))
    saved = json.loads((root / 'pred' / 'predictions.json').read_text())
    assert saved['unreadable'] == [str(broken)] and len(saved['predictions']) == 10
    assert cli_main(['predict', f'local-dir:{calibrated}', str(broken)]) == 1
    assert 'none of the 1 file(s) could be read as an image' in error_line(capsys, 'timm-ssod predict')


def test_calibrate_and_predict_show_the_progress_eval_shows(root, calibrated, capsys):
    assert calibrate(root, '--data-dir', root / 'photos', '--save-dir', root / 'cal-progress', '-b', '4') == 0
    err = capsys.readouterr().err
    assert 'ID calibration data: batch 3/3, 9 images' in err
    assert cli_main(['predict', f'local-dir:{calibrated}', str(root / 'photos' / 'test'), '-b', '4']) == 0
    assert 'predicting: batch 3/3, 9 images' in capsys.readouterr().err


# ------------------------------------------------------------------ items 2, 3, 12: train
def _train_error(capsys, *argv):
    assert train_run([*map(str, argv), *TRAIN]) == 1
    return error_line(capsys, 'timm-ssod train')


def test_train_refuses_a_val_folder_with_other_classes(root, capsys, tmp_path):
    shutil.copytree(root / 'photos' / 'train', tmp_path / 'missing' / 'train')
    shutil.copytree(root / 'photos' / 'val', tmp_path / 'missing' / 'val')
    shutil.rmtree(tmp_path / 'missing' / 'val' / 'disc')
    line = _train_error(capsys, '--data-dir', tmp_path / 'missing', '--output', tmp_path / 'runs')
    assert "--val-split 'validation'" in line and 'no images of the training classes disc' in line
    (tmp_path / 'classes.txt').write_text('\n'.join(CLASSES))  # the way out it names: both splits, one map
    _, val = build_datasets(parse_args(['--data-dir', str(tmp_path / 'missing'), '--class-map',
                                        str(tmp_path / 'classes.txt')])[0])
    assert sorted({label for _, label in val}) == [1, 2]  # square and triangle keep their training indices
    shutil.copytree(root / 'photos', tmp_path / 'extra')
    shutil.copytree(root / 'photos' / 'val' / 'disc', tmp_path / 'extra' / 'val' / 'star')
    line = _train_error(capsys, '--data-dir', tmp_path / 'extra', '--output', tmp_path / 'runs')
    assert 'has classes the model was not trained on: star' in line
    assert not (tmp_path / 'runs').exists()


def test_train_refuses_num_classes_other_than_the_data(root, capsys, tmp_path):
    line = _train_error(capsys, '--data-dir', root / 'photos', '--num-classes', '5', '--output', tmp_path / 'runs')
    assert '--num-classes 5, but the training set has 3 classes' in line and 'Leave --num-classes out' in line
    assert not (tmp_path / 'runs').exists()


def test_a_train_folder_as_data_dir_points_to_the_parent_for_the_split_train_reads(root, capsys, tmp_path):
    line = _train_error(capsys, '--data-dir', root / 'photos' / 'train', '--output', tmp_path / 'runs')
    assert (f"Pass the parent folder, --data-dir {root / 'photos'}: --val-split 'validation' reads "
            f"{root / 'photos' / 'val'} there") in line


# --------------------------------------------------------------- items 4, 16: the LR schedule
def _lrs(run_dir):
    with open(run_dir / 'summary.csv', newline='') as f:
        return [float(r['lr']) for r in csv.DictReader(f)]


def test_resume_with_more_epochs_follows_the_new_schedule_and_fewer_is_refused(root, capsys, tmp_path):
    argv = ['--data-dir', root / 'photos', '--output', tmp_path, '--experiment', 'r']
    assert train_run([*map(str, argv), *TRAIN]) == 0
    assert train_run([*map(str, argv), *TRAIN, '--epochs', '3', '--resume', str(tmp_path / 'r')]) == 0
    lrs = _lrs(tmp_path / 'r')
    assert lrs[0] == pytest.approx(1e-3) and lrs[1:] == pytest.approx([7.5e-4, 2.5e-4])  # a 3-epoch cosine
    capsys.readouterr()
    assert train_run([*map(str, argv), *TRAIN, '--epochs', '2', '--resume', str(tmp_path / 'r')]) == 1
    line = error_line(capsys, 'timm-ssod train')
    assert '--epochs 2: the checkpoint (--resume) is already at epoch 3' in line and '--epochs larger than 3' in line
    assert len(_lrs(tmp_path / 'r')) == 3 and "epochs: 3" in (tmp_path / 'r' / 'args.yaml').read_text()


def test_a_warmup_as_long_as_the_run_is_warned_about(root, caplog, tmp_path):
    argv = ['--data-dir', str(root / 'photos'), *TRAIN[:-4], '--output', str(tmp_path)]  # timm's 5 warm-up epochs
    with caplog.at_level(logging.WARNING):
        train_mod.main(argv)
    assert '--warmup-epochs 5 (the default is 5) >= --epochs 1' in caplog.text
    assert 'Pass --warmup-epochs 0' in caplog.text
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        train_mod.main(argv + ['--warmup-epochs', '0'])
    assert '--warmup-epochs' not in caplog.text


# -------------------------------------------------------------- item 9: one default split
def test_every_command_defaults_to_the_validation_split():
    from timm_ssod.cli import build_parser
    from timm_ssod.train import build_parser as train_parser
    train = train_parser().parse_args([])
    assert (train.train_split, train.val_split) == (TRAIN_SPLIT, HELD_OUT_SPLIT) == ('train', 'validation')
    sub = build_parser()._subparsers._group_actions[0].choices
    for command in ('eval', 'calibrate', 'visualize'):
        assert sub[command].get_default('split') == HELD_OUT_SPLIT, command
    assert sub['eval'].get_default('fit_split') == sub['calibrate'].get_default('fit_split') == TRAIN_SPLIT


def test_visualize_skips_an_unreadable_image_file(root, capsys, tmp_path):
    pytest.importorskip('matplotlib')
    folder = root / 'broken' / 'test' / 'disc'
    assert cli_main(['visualize', '--model', f'local-dir:{root / "model"}', '--images', str(folder),
                     '--output', str(tmp_path)]) == 0
    assert f'warning: skipping {folder / "broken.png"}: it cannot be read as an image' in capsys.readouterr().err
    assert (tmp_path / 'sampler.png').is_file()


def test_visualize_draws_val_not_test_by_default(root, capsys, tmp_path):
    pytest.importorskip('matplotlib')
    assert cli_main(['visualize', '--model', f'local-dir:{root / "model"}', '--data-dir', str(root / 'photos'),
                     '-n', '2', '--output', str(tmp_path)]) == 0
    assert f"Drawing 2 image(s) of the image folder {root / 'photos' / 'val'} (split 'validation')" in \
        capsys.readouterr().out
