"""The stand-ins for pretrained weights (``weights/``): the recipe runs end to end in a quick mode
(train with ``timm-ssod train -c weights/<backbone>.yaml``, resume, export, load back the way a
user does offline), a shipped file loads whole, and every fault of a weights file is one line
naming the file."""
import json
import os
import shutil
from pathlib import Path

import pytest
import timm
import torch
from safetensors.torch import save_file

import timm_ssod
from timm_ssod._util import sha256_of
from timm_ssod.cli import main as cli_main
from lib import export_standin, settings, train_standin
from lib import SHIPPED
from timm_ssod.hub import WeightsFileError

REPO = Path(__file__).resolve().parents[1]
# the recipe's own arguments, shrunk: 16 images rendered at 32 px, trained at 32 px, one epoch
QUICK = ['--epochs', '1', '--warmup-epochs', '0', '-b', '8', '--img-size', '32', '--log-interval', '1',
         '--dataset-kwargs', 'num_images=16', 'img_size=32', 'background=natural',
         '--val-dataset-kwargs', 'num_images=8']


@pytest.mark.slow
@pytest.mark.parametrize('backbone', SHIPPED)
def test_recipe_trains_resumes_exports_and_loads_back(backbone, tmp_path):
    """The shipped recipe, as it is, through every step in seconds: a second invocation resumes
    (nothing retrained, the record counts two invocations), the export's JSON says what the
    file is, and both user paths load it with its classifier."""
    out, weights = tmp_path / 'runs', tmp_path / 'weights'
    weights.mkdir()
    shutil.copy(REPO / 'weights' / f'{backbone}.yaml', weights / f'{backbone}.yaml')
    run = train_standin(backbone, output=str(out), extra_args=QUICK, weights_dir=str(weights))
    assert run['finished'] and run['epochs_done'] == 1
    again = train_standin(backbone, output=str(out), extra_args=QUICK, weights_dir=str(weights))
    assert again['epochs_done'] == 1
    record = json.loads((out / backbone / 'standin_run.json').read_text())
    assert record['invocations'] == 2 and record['command'].startswith(f'timm-ssod train -c weights/{backbone}.yaml')
    with pytest.raises(SystemExit, match='was started with'):  # another recipe into the same run folder
        train_standin(backbone, output=str(out), extra_args=QUICK[:-2], weights_dir=str(weights))

    info = export_standin(run['run_dir'], str(weights), num_test=16)
    file = weights / f'{backbone}.safetensors'
    assert json.loads((weights / f'{backbone}.json').read_text()) == info
    assert info['sha256'] == sha256_of(file) and info['dtype'] == 'float16' and info['model'] == backbone
    assert info['images'] == 16 and info['epochs'] == 1 and len(info['learning_curve']) == 1
    assert 0.0 <= info['id_test_accuracy'] <= 1.0 and info['label_names'] == sorted(info['label_names'])
    assert not os.path.isabs(info['command'].split()[3])
    assert info['recipe'] == f'weights/{backbone}.yaml'  # the recipe the command ran; the file where it was written
    assert f"pretrained_cfg_overlay=dict(file='{file}')" in info['load']['python'] and str(file) in info['load']['cli']

    shipped = {k: v.float() for k, v in timm.models.load_state_dict(str(file)).items()}
    model = timm_ssod.create_model(backbone, pretrained=True, pretrained_cfg_overlay=dict(file=str(file)),
                                   **info['model_kwargs'])
    assert model.num_classes == 6  # the file's classifier, kept
    for k, v in model.state_dict().items():
        if not k.startswith('ood_head.'):
            assert torch.equal(v.float(), shipped[k]), k

    # timm-ssod train --pretrained-path: the fine-tune starts from the file (its first step's loss is the file's)
    argv = ['train', '--dataset', 'synthetic/id', '--dataset-kwargs', 'num_images=8', 'img_size=32',
            '--val-split', 'val', '--val-dataset-kwargs', 'num_images=8', '--model', backbone, '--num-classes', '6',
            '--img-size', '64', '--epochs', '1', '--warmup-epochs', '0', '-b', '8', '--workers', '0',
            '--pretrained-path', str(file), '--output', str(tmp_path / 'ft'), '--experiment', 'ft']
    if info['model_kwargs']:
        argv += ['--model-kwargs', *[f'{k}={v}' for k, v in info['model_kwargs'].items()]]
    assert cli_main(argv) == 0


def _file(tmp_path, arch='resnet18', classes=6, sidecar=True):
    model = timm.create_model(arch, num_classes=classes)
    path = tmp_path / f'{arch}.safetensors'
    save_file({k: v.half() for k, v in model.state_dict().items()}, str(path))
    if sidecar:
        (tmp_path / f'{arch}.json').write_text(json.dumps({'sha256': sha256_of(path)}))
    return model, path


def test_local_file_keeps_a_classifier_that_fits_and_replaces_one_that_does_not(tmp_path):
    """timm alone drops a 6-class file's classifier (6 != its config's 1000 classes)."""
    source, path = _file(tmp_path)
    for kwargs in ({}, {'num_classes': 6}):
        model = timm_ssod.create_model('resnet18', pretrained=True, pretrained_cfg_overlay=dict(file=str(path)),
                                       **kwargs)
        assert model.num_classes == 6 and torch.equal(model.fc.weight, source.fc.weight.half().float())
    three = timm_ssod.create_model('resnet18', pretrained=True, num_classes=3,
                                   pretrained_cfg_overlay=dict(file=str(path)))
    assert three.num_classes == 3  # a new head, the backbone from the file
    assert torch.equal(three.conv1.weight, source.conv1.weight.half().float())


def _one_line_error(path, arch='resnet18', match=''):
    with pytest.raises(WeightsFileError) as info:
        timm_ssod.create_model(arch, pretrained=True, pretrained_cfg_overlay=dict(file=str(path)))
    message = str(info.value)
    assert '\n' not in message and str(path) in message and match in message, message
    return message


def test_truncated_corrupted_changed_or_missing_file_is_one_line_naming_it(tmp_path):
    _, path = _file(tmp_path)
    truncated = tmp_path / 'truncated.safetensors'
    truncated.write_bytes(path.read_bytes()[:100_000])
    _one_line_error(truncated, match='truncated or corrupted')
    garbage = tmp_path / 'garbage.safetensors'
    garbage.write_bytes(os.urandom(4096))
    _one_line_error(garbage, match='truncated or corrupted')
    changed = bytearray(path.read_bytes())
    changed[-10] ^= 0xFF  # one weight's bits: still a valid file, no longer the one the JSON describes
    path.write_bytes(bytes(changed))
    _one_line_error(path, match='sha256')
    _one_line_error(tmp_path / 'absent.safetensors', match='no such weights file')


def test_weights_of_another_architecture_name_the_keys(tmp_path):
    _, path = _file(tmp_path, sidecar=False)
    message = _one_line_error(path, arch='mobilenetv3_small_100', match='another architecture')
    assert 'missing key(s)' in message and 'unexpected key(s): conv1.weight' in message
    message = _one_line_error(path, arch='resnet34', match='missing key(s): layer1.2')


def test_train_pretrained_path_fault_is_one_line(tmp_path, capsys):
    bad = tmp_path / 'bad.safetensors'
    bad.write_bytes(b'not weights at all')
    code = cli_main(['train', '--dataset', 'synthetic/id', '--dataset-kwargs', 'num_images=8', 'img_size=32',
                     '--val-split', 'val', '--model', 'resnet18', '--num-classes', '6', '--img-size', '32',
                     '--epochs', '1', '--pretrained-path', str(bad), '--output', str(tmp_path / 'o')])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 1 and len(err) == 1 and str(bad) in err[0] and 'truncated or corrupted' in err[0], err


def test_demo_uses_the_shipped_weights_and_says_what_it_does_without_them(tmp_path, monkeypatch):
    import argparse
    args = argparse.Namespace(quick=False, backbone=None, model_kwargs=None, seed=0, output='o', workers=0)
    weights = tmp_path / 'weights'  # the demo looks in weights/ of the working folder (a checkout's root)
    weights.mkdir()
    _, path = _file(weights)
    info = json.loads((weights / 'resnet18.json').read_text())
    (weights / 'resnet18.json').write_text(json.dumps(dict(info, input_size=112, render_size=64,
                                                           model_kwargs={'output_stride': 16})))
    _file(weights, arch='mobilenetv3_small_075')
    info = json.loads((weights / 'mobilenetv3_small_075.json').read_text())
    (weights / 'mobilenetv3_small_075.json').write_text(json.dumps(dict(info, input_size=224, render_size=64,
                                                                        model_kwargs={})))
    monkeypatch.chdir(tmp_path)
    kwargs = settings(args)
    assert kwargs['backbone'] == 'resnet18' and kwargs['pretrained_path'].endswith('resnet18.safetensors')
    assert 'stage1_epochs' not in kwargs and 'why_scratch' not in kwargs
    assert (kwargs['img_size'], kwargs['model_kwargs']) == (112, {'output_stride': 16})
    # another shipped backbone fine-tunes at the size its weights were trained at (MobileNetV3: 224 px, no kwargs)
    kwargs = settings(argparse.Namespace(**dict(vars(args), backbone='mobilenetv3_small_075')))
    assert (kwargs['img_size'], kwargs['render_size'], kwargs['model_kwargs']) == (224, 64, {})
    path.unlink()
    kwargs = settings(args)
    assert 'pretrained_path' not in kwargs and kwargs['stage1_epochs'] > 0
    assert 'weights/resnet18.safetensors is not in the working folder' in kwargs['why_scratch']
