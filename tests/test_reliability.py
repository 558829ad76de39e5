"""The rows of the bad-input / fault / security battery (docs/reliability.md) that no other
test file covers. Each row of the table names its test; most live beside the code they test
(test_model, test_loss, test_sampler, test_data, test_metrics, test_hub, test_train,
test_evaluate). Tiny models (timm's test_resnet), a few tiny images, one thread."""
import argparse
import json
import logging
import os
import sys
from pathlib import Path

import pytest
import timm
import torch
from PIL import Image

import timm_ssod
from timm_ssod import SSODLoss
from timm_ssod.train import _main as train_mod
from timm_ssod.checkpoints import load_training_state, resolve_resume
from timm_ssod.checkpoints import read_checkpoint
from timm_ssod.cli._eval import main as eval_main
from timm_ssod.hub import CheckpointError
from timm_ssod.hub import model_from_checkpoint
from timm_ssod.train import parse_args
from timm_ssod.train import NonFiniteLossError, SSODTask, train_one_epoch

from hub_server import HubServer, patch_hub_env

MODEL, IMG = 'test_resnet', 64  # timm's tiny ResNet: a 2x2 feature map at 64 px


def tiny(num_classes=3, seed=0):
    torch.manual_seed(seed)
    return timm_ssod.create_model(MODEL, num_classes=num_classes).eval()


def truncate(path: Path) -> Path:
    data = path.read_bytes()
    path.write_bytes(data[:len(data) // 2])
    return path


# ------------------------------------------------------------------------------------ settings
@pytest.mark.parametrize('kwargs, message', [
    (dict(gamma=1.2), 'gamma must be in the open interval (0.5, 1), got 1.2'),
    (dict(gamma=0.5), 'gamma must be in the open interval (0.5, 1), got 0.5'),
    (dict(lam=-1), 'lam (lambda, the OOD-term weight) must be >= 0, got -1'),
    (dict(balance='focal'), "unknown balance scheme 'focal'; choose one of ('lwb', 'lw', 'dr')"),
])
def test_bad_settings_messages_name_the_value_and_what_is_allowed(kwargs, message):
    """test_loss / test_sampler check that these are refused; here: the message says why."""
    with pytest.raises(ValueError) as e:
        SSODLoss(**kwargs)
    assert message in str(e.value)


def test_target_outside_the_classifier_is_named_by_the_loss():
    out = timm_ssod.SSODOutput(torch.zeros(1, 2), torch.zeros(1, 4, 2), torch.zeros(1, 4, 2), torch.zeros(1, 2),
                               (2, 2))
    with pytest.raises(IndexError, match='Target 2 is out of bounds'):
        SSODLoss()(out, torch.tensor([2]))


# ---------------------------------------------------------------------------------- NaN / Inf
def test_inf_in_a_batch_stops_training_before_the_weights_change():
    """test_train covers NaN through the CLI (no NaN checkpoint); this is Inf, at the API."""
    args, _ = parse_args(['--model', MODEL])
    args.prefetcher, args.distributed, args.rank, args.world_size, args.local_rank = False, False, 0, 1, 0
    model = tiny()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    x, y = torch.randn(2, 3, IMG, IMG), torch.tensor([0, 1])
    bad = x.clone()
    bad[1, 2, 3, 4] = float('inf')
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    with pytest.raises(NonFiniteLossError, match=r'NaN/Inf in the input batch at epoch 0, step 0 .*before updating'):
        train_one_epoch(0, SSODTask(model, SSODLoss()), [(bad, y), (x, y)], optimizer, args, torch.device('cpu'))
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())


# -------------------------------------------------------------------------------- image folders
def _image(path: Path, mode: str):
    path.parent.mkdir(parents=True, exist_ok=True)
    colour = {'L': 100, 'LA': (100, 200), 'RGBA': (10, 20, 30, 60), 'CMYK': (1, 2, 3, 4), 'RGB': (9, 8, 7)}[mode]
    Image.new(mode, (24, 24), colour).save(path)


def test_id_folder_with_grayscale_rgba_and_corrupt_images_evaluates_with_warnings(tmp_path, capsys, caplog):
    """The ID side is timm's ImageDataset (test_data covers our OOD folders): grayscale and RGBA
    are converted to RGB, a corrupt file is skipped with a logged warning naming it; an OOD
    folder's corrupt file is skipped with a UserWarning. Neither is counted nor replaced by a
    neighbour image (issue 24: the counts are of the images read)."""
    for cls in ('a', 'b'):
        folder = tmp_path / 'id' / 'val' / cls
        _image(folder / 'gray.png', 'L')
        _image(folder / 'rgba.png', 'RGBA')
        _image(folder / 'rgb.jpg', 'RGB')
        (folder / 'bad.png').write_bytes(b'not a png at all')
    _image(tmp_path / 'ood' / 'la.png', 'LA')
    _image(tmp_path / 'ood' / 'cmyk.jpg', 'CMYK')
    (tmp_path / 'ood' / 'broken.jpg').write_bytes(b'\xff\xd8 truncated jpeg')
    (tmp_path / 'ood' / 'notes.txt').write_text('not an image: ignored by extension')
    torch.save({'state_dict': tiny(num_classes=2).state_dict(), 'arch': MODEL}, tmp_path / 'm.pth.tar')
    argv = ['--checkpoint', str(tmp_path / 'm.pth.tar'), '--data-dir', str(tmp_path / 'id'), '--img-size', str(IMG),
            '--workers', '0', '--quiet', '--no-plots', '--detectors', 'msp,ssod', '--output', str(tmp_path / 'out'),
            '--ood', f'o={tmp_path / "ood"}', '--use-all']
    with caplog.at_level(logging.WARNING), pytest.warns(UserWarning, match='skipping corrupt image file .*broken.jpg'):
        assert eval_main(argv) == 0, capsys.readouterr().err
    assert 'Skipped sample' in caplog.text and 'bad.png' in caplog.text
    result = json.loads((tmp_path / 'out' / 'results.json').read_text())
    assert result['num_used'] == {'o': {'id': 6, 'ood': 2}}  # the corrupt files are left out, not replaced


def test_folders_read_every_format_pil_decodes(tmp_path):
    """OOD folders took only .png/.jpg/.jpeg (timm's list): .bmp, .webp, .tif ... were silently
    left out, an all-WebP folder was "empty" (issue 15). ID image folders read them too."""
    from timm_ssod.data import ImageFolderOOD
    from timm_ssod.data import create_id_dataset
    formats = ('.bmp', '.webp', '.tif', '.tiff', '.gif', '.ppm', '.jpeg', '.JPG', '.png')
    for i, ext in enumerate(formats):
        _image(tmp_path / 'ood' / f'{i}{ext}', 'RGB')
        _image(tmp_path / 'id' / 'val' / ('a' if i % 2 else 'b') / f'{i}{ext}', 'RGB')
    (tmp_path / 'ood' / 'data.h5').write_bytes(b'not an image PIL can decode')  # PIL only has a stub for HDF5
    ood = ImageFolderOOD(str(tmp_path / 'ood'))
    assert sorted(os.path.splitext(f)[1] for f in ood.files) == sorted(formats)
    assert all(ood[i][0].mode == 'RGB' for i in range(len(ood)))
    id_set = create_id_dataset('', str(tmp_path / 'id'), 'validation')
    assert len(id_set) == len(formats) and id_set[0][0].mode == 'RGB'


def test_an_unreadable_id_image_is_skipped_with_a_warning_naming_the_file(tmp_path, caplog):
    """timm's warning named only the index ("Skipped sample (index 1). image file is truncated"),
    and a truncated image's error does not name the file (issue 15)."""
    from timm_ssod.data import create_id_dataset
    for name in ('a.png', 'b.png', 'c.png'):
        _image(tmp_path / 'id' / 'val' / 'x' / name, 'RGB')
    truncate(tmp_path / 'id' / 'val' / 'x' / 'b.png')
    dataset = create_id_dataset('', str(tmp_path / 'id'), 'validation')
    with caplog.at_level(logging.WARNING):
        image, label = dataset[1]
    assert image.size == (24, 24) and label == 0  # timm's behaviour: the next image in its place
    assert f"Skipped sample (index 1, file '{tmp_path / 'id' / 'val' / 'x' / 'b.png'}'). image file is truncated" \
        in caplog.text


def test_a_val_folder_with_some_of_the_classes_is_read_with_the_models_class_indices(tmp_path, capsys):
    """timm numbers the class folders it finds: a val folder without 'a' would label 'b' as 0. With
    the checkpoint's class names the folder is read through a class map; a class the model does
    not know is an error naming it."""
    model = tiny(num_classes=3)
    with torch.no_grad():  # always predicts 'c': 1 of the 2 val images right if 'c' keeps index 2, 0 if shifted
        model.fc.weight.zero_()
        model.fc.bias.copy_(torch.tensor([0.0, 0.0, 10.0]))
    torch.save({'state_dict': model.state_dict(), 'arch': MODEL, 'label_names': ['a', 'b', 'c']},
               tmp_path / 'm.pth.tar')
    for split, classes in (('train', 'abc'), ('val', 'bc'), ('odd', 'bz')):
        for cls in classes:
            _image(tmp_path / 'id' / split / cls / 'x.png', 'RGB')
    _image(tmp_path / 'ood' / 'o.png', 'RGB')
    argv = ['--checkpoint', str(tmp_path / 'm.pth.tar'), '--data-dir', str(tmp_path / 'id'), '--img-size', str(IMG),
            '--workers', '0', '--quiet', '--no-plots', '--detectors', 'msp', '--ood', f'o={tmp_path / "ood"}',
            '--use-all', '--output', str(tmp_path / 'out')]
    assert eval_main(argv) == 0, capsys.readouterr().err
    assert json.loads((tmp_path / 'out' / 'results.json').read_text())['id_accuracy'] == 0.5
    assert eval_main(argv[:-1] + [str(tmp_path / 'out2'), '--split', 'odd']) == 1
    assert "has classes the model was not trained on: z (the model knows a, b, c)" in capsys.readouterr().err


def test_ood_folder_where_nothing_decodes_is_an_error(tmp_path):
    from timm_ssod.data import ImageFolderOOD
    (tmp_path / 'a.png').write_bytes(b'x')
    (tmp_path / 'b.jpg').write_bytes(b'y')
    ds = ImageFolderOOD(str(tmp_path))
    with pytest.warns(UserWarning), pytest.raises(OSError, match='no image under .* could be decoded'):
        ds[0]


# ----------------------------------------------------------------------------- training inputs
def _train_argv(out, *extra):
    return ['--dataset', 'synthetic/id', '--dataset-kwargs', 'num_images=8', '--val-dataset-kwargs', 'num_images=4',
            '--model', MODEL, '--img-size', str(IMG), '-b', '4', '--epochs', '1', '--workers', '0',
            '--output', str(out), '--experiment', 'run', *map(str, extra)]


def _class_folders(root: Path, classes):
    for split in ('train', 'validation'):
        for cls in classes:
            _image(root / split / cls / 'x.png', 'RGB')
    return root


@pytest.mark.parametrize('case', ['num-classes', 'empty-ood-val'])
def test_training_data_errors_before_anything_is_written(tmp_path, capsys, case):
    if case == 'num-classes':
        data = _class_folders(tmp_path / 'data', ['a', 'b', 'c'])
        argv = ['--data-dir', str(data)] + _train_argv(tmp_path / 'out', '--num-classes', 2)[6:]
        expected = '--num-classes 2, but the training set has 3 classes'
    else:
        (tmp_path / 'empty' / 'sub').mkdir(parents=True)
        argv = _train_argv(tmp_path / 'out', '--ood-val', f'e={tmp_path / "empty"}')
        expected = f"--ood-val 'e={tmp_path / 'empty'}': no image files"
    assert train_mod.run(argv) == 1
    assert expected in capsys.readouterr().err
    assert not (tmp_path / 'out').exists()


def test_evaluation_labels_outside_the_model_classes_are_refused():
    from timm_ssod.evaluate import evaluate
    x = torch.rand(3, 3, IMG, IMG)
    with pytest.raises(ValueError, match=r'the ID set: labels must lie in \[0, 3\) for a 3-class model, got \[0, 7\]'):
        evaluate(tiny(), [(x, torch.tensor([0, 1, 7]))], {'o': [x]}, ('msp',), progress=False)


def test_initial_checkpoint_with_other_num_classes_names_the_tensor(tmp_path):
    torch.save({'state_dict': tiny(num_classes=5).state_dict()}, tmp_path / 'c5.pth.tar')
    with pytest.raises(RuntimeError, match=r"does not fit .*--num-classes.*size mismatch for fc\.weight"):
        train_mod.load_initial_checkpoint(tiny(num_classes=3), str(tmp_path / 'c5.pth.tar'))


# ------------------------------------------------------------------------- truncated checkpoints
def test_truncated_training_checkpoints(tmp_path, capsys, caplog):
    """--resume: a folder skips a truncated last.pth.tar for the newest loadable checkpoint-N
    (with a warning saying why); a truncated file named explicitly is a one-line error.
    --initial-checkpoint and eval --checkpoint (.pth.tar and .safetensors) name the file."""
    model = tiny()
    run = tmp_path / 'run'
    run.mkdir()
    torch.save({'state_dict': model.state_dict(), 'epoch': 1}, run / 'checkpoint-1.pth.tar')
    torch.save({'state_dict': model.state_dict(), 'epoch': 2}, run / 'last.pth.tar')
    truncate(run / 'last.pth.tar')
    with caplog.at_level(logging.WARNING):
        assert resolve_resume(str(run), str(tmp_path)) == str(run / 'checkpoint-1.pth.tar')
    assert 'last.pth.tar' in caplog.text and 'truncated or corrupt' in caplog.text
    with pytest.raises(CheckpointError, match=r"training checkpoint .*last\.pth\.tar' is truncated or corrupt"):
        load_training_state(str(run / 'last.pth.tar'))
    assert train_mod.run(_train_argv(tmp_path / 'out', '--resume', run / 'last.pth.tar')) == 1
    assert 'last.pth.tar' in capsys.readouterr().err
    with pytest.raises(CheckpointError, match=r"--initial-checkpoint .*last\.pth\.tar' is truncated or corrupt"):
        train_mod.load_initial_checkpoint(tiny(), str(run / 'last.pth.tar'))

    with pytest.raises(CheckpointError, match=r"checkpoint .*last\.pth\.tar' is truncated or corrupt"):
        read_checkpoint(str(run / 'last.pth.tar'))
    from safetensors.torch import save_file
    save_file(model.state_dict(), str(tmp_path / 'w.safetensors'))
    with pytest.raises(CheckpointError, match=r'w\.safetensors .*is truncated or corrupt'):
        read_checkpoint(str(truncate(tmp_path / 'w.safetensors')))


# ------------------------------------------------------------------------------------- security
class _Payload:
    """Unpickling this creates a file: proof that code from the checkpoint ran."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return open, (self.marker, 'w')


LOADERS = {
    'eval --checkpoint': lambda p: read_checkpoint(p),
    'train --resume': load_training_state,
    'train --initial-checkpoint': lambda p: train_mod.load_initial_checkpoint(tiny(), p),
    'timm-ssod push': model_from_checkpoint,
}


@pytest.mark.parametrize('loader', LOADERS)
def test_training_checkpoints_are_only_read_with_weights_only(tmp_path, monkeypatch, loader):
    """Every .pth.tar reader: torch.load(weights_only=True) and nothing else, so a checkpoint
    holding a pickled callable is refused (naming weights_only) and its code never runs.
    (Hub / local-dir pytorch_model.bin: test_hub::test_pickle_only_folder_needs_opt_in.)"""
    marker = tmp_path / 'pwned'
    state = tiny().state_dict()
    torch.save({'state_dict': state, 'epoch': 0, 'args': argparse.Namespace(model=MODEL), 'arch': MODEL},
               tmp_path / 'good.pth.tar')
    torch.save({'state_dict': state, 'epoch': 0, 'args': {'x': _Payload(marker)}}, tmp_path / 'evil.pth.tar')
    calls, real_load = [], torch.load

    def spy(*args, **kwargs):
        calls.append(kwargs.get('weights_only'))
        return real_load(*args, **kwargs)
    monkeypatch.setattr(torch, 'load', spy)
    LOADERS[loader](str(tmp_path / 'good.pth.tar'))  # timm's argparse.Namespace args are allowed
    with pytest.raises(CheckpointError, match='weights_only=True'):
        LOADERS[loader](str(tmp_path / 'evil.pth.tar'))
    assert not marker.exists()
    assert calls and all(w is True for w in calls), calls


def test_resume_folder_skips_a_checkpoint_holding_pickled_code(tmp_path):
    marker = tmp_path / 'pwned'
    torch.save({'state_dict': {}, 'epoch': 1}, tmp_path / 'checkpoint-1.pth.tar')
    torch.save({'state_dict': {}, 'epoch': 2, 'x': _Payload(marker)}, tmp_path / 'last.pth.tar')
    assert resolve_resume(str(tmp_path), str(tmp_path)) == str(tmp_path / 'checkpoint-1.pth.tar')
    assert not marker.exists()


EVIL_MODULE = '''
from pathlib import Path
Path({marker!r}).write_text('code from the repo ran')
class EvilModel:
    pass
'''


def test_hub_repo_with_python_code_and_auto_map_runs_nothing(tmp_path, monkeypatch):
    """A repo that carries a .py file and asks for it in every way transformers-style configs do
    (auto_map, custom_pipelines, trust_remote_code, an architecture naming the module): the model
    loads from its safetensors, or a config naming unknown code is a CheckpointError; the .py
    file is never even downloaded and nothing from it runs."""
    marker = tmp_path / 'pwned'
    model = tiny()
    folder = model.save_pretrained(tmp_path / 'saved')
    files = {p.name: p.read_bytes() for p in folder.iterdir()}
    files['modeling_evil.py'] = EVIL_MODULE.format(marker=str(marker)).encode()
    files['__init__.py'] = b'import modeling_evil\n'
    config = json.loads(files['config.json'])
    config.update(auto_map={'AutoModel': 'modeling_evil.EvilModel', 'AutoConfig': 'modeling_evil.EvilModel'},
                  custom_pipelines={'x': {'impl': 'modeling_evil.EvilModel'}}, trust_remote_code=True,
                  library_name='transformers')
    evil_arch = {k: v for k, v in config.items() if k != 'ssod'}  # code named as the architecture
    evil_arch['architecture'] = 'modeling_evil.EvilModel'
    x = torch.randn(1, 3, IMG, IMG)
    with HubServer() as server:
        server.add_files('org/evil', dict(files, **{'config.json': json.dumps(config).encode()}))
        server.add_files('org/evil-arch', dict(files, **{'config.json': json.dumps(evil_arch).encode()}))
        patch_hub_env(monkeypatch, tmp_path / 'hf', server.url)
        loaded = timm_ssod.create_model('hf-hub:org/evil', pretrained=True).eval()
        assert timm_ssod.is_ssod_model(loaded)
        assert torch.equal(loaded.predict(x).id_prob, model.predict(x).id_prob)
        assert torch.equal(timm.create_model('hf-hub:org/evil', pretrained=True).eval()(x), model(x))  # stock timm
        with pytest.raises(CheckpointError, match=r"architecture 'modeling_evil\.EvilModel', which timm .* not know"):
            timm_ssod.create_model('hf-hub:org/evil-arch', pretrained=True)
        requested = [r[2] for r in server.requests]
    assert not marker.exists() and 'modeling_evil' not in sys.modules
    assert {p.rsplit('/', 1)[-1] for p in requested if '/resolve/' in p} == {'config.json', 'model.safetensors',
                                                                             'ssod.safetensors'}
