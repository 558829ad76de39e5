"""The one checkpoint reader and the one model loader (``checkpoints.read_checkpoint``,
``hub.load_model``), through every command that takes a model: a training checkpoint, its run
folder and a saved folder give the same model, with the run's class names and SSOD settings;
a wrong ``--model`` names the architecture the checkpoint records; each unreadable file is one
error worded one way."""
import pytest
import torch

import timm_ssod
from timm_ssod.checkpoints import CheckpointError, read_checkpoint
from timm_ssod.cli import main as cli_main
from timm_ssod.data import SyntheticDataset, write_image_folder
from timm_ssod.hub import ModelLoadError, load_model
from timm_ssod.train import run as train_run

CLASSES = ['disc', 'square', 'triangle']
IMG = 64


@pytest.fixture(scope='module')
def run(tmp_path_factory):
    """A 1-epoch ``timm-ssod train`` run of test_resnet on 3 named classes, --gamma 0.9."""
    root = tmp_path_factory.mktemp('loading')
    for split, n in (('train', 12), ('val', 6)):
        write_image_folder(SyntheticDataset('id', split, num_images=n, img_size=IMG, num_classes=3),
                           root / 'photos' / split)
    argv = ['--data-dir', root / 'photos', '--model', 'test_resnet', '--img-size', IMG, '-b', '4', '--epochs', '1',
            '--workers', '0', '--opt', 'adamw', '--lr', '1e-3', '--warmup-epochs', '0', '--gamma', '0.9',
            '--output', root / 'out', '--experiment', 'run', '--log-interval', '100']
    assert train_run([str(a) for a in argv]) == 0
    return root


def test_checkpoint_run_folder_and_saved_folder_load_the_same_model(run):
    ckpt = run / 'out' / 'run' / 'model_best.pth.tar'
    by_file, info = load_model(str(ckpt))
    by_folder, _ = load_model(str(run / 'out' / 'run'))  # a run folder: its model_best.pth.tar
    assert info['ssod'] and info['checkpoint'] == str(ckpt) and info['train_args']['model'] == 'test_resnet'
    assert by_file.pretrained_cfg['label_names'] == CLASSES
    assert by_file.ssod_cfg['gamma'] == pytest.approx(0.9)  # the run's SSOD settings reach the model
    by_file.save_pretrained(run / 'saved')
    saved, _ = load_model(f'local-dir:{run / "saved"}')
    x = torch.randn(2, 3, IMG, IMG)
    for other in (by_folder, saved):
        torch.testing.assert_close(other(x), by_file(x))
    assert saved.ssod_cfg['gamma'] == pytest.approx(0.9) and saved.pretrained_cfg['label_names'] == CLASSES


def test_predict_on_a_training_checkpoint_prints_the_class_names(run, capsys):
    ckpt = run / 'out' / 'run' / 'model_best.pth.tar'
    assert cli_main(['predict', str(ckpt), str(run / 'photos' / 'val'), '--quiet']) == 0
    rows = [line for line in capsys.readouterr().out.splitlines() if line.startswith(f'| {run}')]
    assert len(rows) == 6
    assert all(line.split(' | ')[1] in CLASSES for line in rows), rows  # names, not class indices


def test_a_wrong_model_names_the_architecture_the_checkpoint_records(run, capsys):
    ckpt = run / 'out' / 'run' / 'model_best.pth.tar'
    with pytest.raises(ModelLoadError, match=r"was trained as 'test_resnet', not 'resnet10t'.*--model test_resnet"):
        load_model('resnet10t', str(ckpt))
    assert cli_main(['eval', '--model', 'resnet10t', '--checkpoint', str(ckpt), '--data-dir', str(run / 'photos')]) == 1
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert "was trained as 'test_resnet'" in err and len(err) < 300 and 'Missing key' not in err


def test_one_reader_one_wording(tmp_path):
    bad = tmp_path / 'bad.pth.tar'
    bad.write_bytes(b'not a checkpoint')
    for what in ('checkpoint', '--initial-checkpoint'):
        with pytest.raises(CheckpointError, match=f"{what} '.*bad.pth.tar' is truncated or corrupt"):
            read_checkpoint(str(bad), what=what)
    with pytest.raises(FileNotFoundError, match="checkpoint_path '.*nope.pth': no such file"):
        timm_ssod.create_model('test_resnet', checkpoint_path=str(tmp_path / 'nope.pth'))
    torch.save({'epoch': 1}, tmp_path / 'no_weights.pth.tar')
    with pytest.raises(CheckpointError, match='holds neither a state dict nor a dict with "state_dict"'):
        read_checkpoint(str(tmp_path / 'no_weights.pth.tar'))
