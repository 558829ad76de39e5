"""A user's own photos, end to end through the command line (issue 15): an ImageFolder with
``train/`` and ``val/`` (class folders, .png / .jpg / .webp files), ``timm-ssod train`` ->
``eval`` -> ``visualize`` -> ``push``. The class names travel from the folder to the
checkpoint, config.json, the model card and ``predict``; a split that would read the training
images is refused; user errors are one line on stderr, fast, naming the flag and the way out.

Every command runs in a fresh process (``python -m timm_ssod.cli``), as a user runs it; one
short training run (timm's test_resnet, 24 images, 1 epoch) is shared by the module."""
import http.server
import json
import os
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import torch
from PIL import Image

import timm_ssod
from timm_ssod.data import SyntheticDataset, write_image_folder

REPO = Path(__file__).resolve().parents[1]
ENV = dict(os.environ, OMP_NUM_THREADS='1', PYTHONDONTWRITEBYTECODE='1', HF_HUB_DISABLE_TELEMETRY='1')
CLASSES = ['disc', 'square', 'triangle']  # the folder names: write_image_folder uses the generator's names
TRAIN = ['--model', 'test_resnet', '--img-size', '64', '-b', '8', '--epochs', '1', '--workers', '0', '--opt', 'adamw',
         '--lr', '1e-3', '--warmup-epochs', '0', '--log-interval', '1']


def cli(*argv, env=None, timeout=180):
    """``timm-ssod ARGV`` in a fresh process: (return code, stdout, stderr, seconds)."""
    start = time.time()
    proc = subprocess.run([sys.executable, '-m', 'timm_ssod.cli', *map(str, argv)], env=dict(ENV, **(env or {})),
                          cwd=REPO, capture_output=True, text=True, timeout=timeout)
    return proc.returncode, proc.stdout, proc.stderr, time.time() - start


def assert_one_line_error(rc, out, err, prog, *parts):
    """Exit code 1, and stderr ends with one ``prog: error: ...`` line holding ``parts``; no traceback."""
    assert rc == 1, (out, err)
    assert 'Traceback' not in err, err
    last = err.strip().splitlines()[-1]
    assert last.startswith(f'{prog}: error: '), err
    for part in parts:
        assert str(part) in last, (part, last)
    return last


def free_port() -> int:
    """A port nothing listens on (connections to it are refused)."""
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0))
        return s.getsockname()[1]


@pytest.fixture(scope='module')
def photos(tmp_path_factory):
    """3 classes, train/ (24 images) and val/ (12), in .png, .jpg and .webp, plus two OOD folders."""
    root = tmp_path_factory.mktemp('own')
    for split, n in (('train', 24), ('val', 12)):
        write_image_folder(SyntheticDataset('id', split, num_images=n, img_size=64, num_classes=3),
                           root / 'photos' / split)
    for i, path in enumerate(sorted((root / 'photos').rglob('*.png'))):  # photos come as JPEG and WebP too
        if i % 3:
            with Image.open(path) as im:
                im.convert('RGB').save(path.with_suffix('.jpg' if i % 3 == 1 else '.webp'))
            path.unlink()
    write_image_folder(SyntheticDataset('textures', 'val', num_images=8, img_size=64), root / 'ood_textures')
    assert sorted(p.name for p in (root / 'photos' / 'train').iterdir()) == CLASSES
    return root


@pytest.fixture(scope='module')
def run(photos):
    """``timm-ssod train --data-dir photos``: (run folder, stdout + stderr)."""
    rc, out, err, _ = cli('train', '--data-dir', photos / 'photos', *TRAIN, '--output', photos / 'runs',
                          '--experiment', 'run')
    assert rc == 0, err
    return photos / 'runs' / 'run', out + err


# ---------------------------------------------------------------------------------- class names
def test_training_names_its_split_folders_and_keeps_the_class_names(photos, run):
    folder, log = run
    data = photos / 'photos'
    assert f"Training data: split 'train' -> {data / 'train'} (24 images, 3 classes: disc, square, triangle)" in log
    assert f"Validation data: split 'validation' -> {data / 'val'} (12 images, 3 classes" in log
    ckpt = torch.load(folder / 'model_best.pth.tar', map_location='cpu', weights_only=True)
    assert ckpt['label_names'] == CLASSES


def test_a_training_checkpoint_loads_from_python_with_its_class_names(run):
    folder, _ = run
    ckpt = torch.load(folder / 'model_best.pth.tar', map_location='cpu', weights_only=True)
    model = timm_ssod.create_model('test_resnet', num_classes=3, checkpoint_path=str(folder / 'model_best.pth.tar'))
    assert timm_ssod.is_ssod_model(model)
    assert all(torch.equal(v, ckpt['state_dict'][k]) for k, v in model.state_dict().items())
    pred = model.eval().predict(torch.randn(2, 3, 64, 64))
    assert pred.label_names == tuple(CLASSES) and set(pred.labels) <= set(CLASSES)
    plain = timm_ssod.create_model('test_resnet', ssod=False, num_classes=3,
                                   checkpoint_path=str(folder / 'model_best.pth.tar'))  # ood_head.* ignored
    assert not timm_ssod.is_ssod_model(plain) and torch.equal(plain.fc.weight, model.fc.weight)


def test_stock_timm_without_the_plugin_loads_the_runs_model_best_timm_file(run):
    """Issue 24.14: beside model_best.pth.tar (which stock timm refuses: ood_head.* keys) the run writes
    model_best_timm.safetensors, which timm alone loads with checkpoint_path."""
    from safetensors.torch import load_file
    folder, _ = run
    script = ('import sys, timm\n'
              'm = timm.create_model("test_resnet", num_classes=3, checkpoint_path=sys.argv[1])\n'
              'assert "timm_ssod" not in sys.modules\n'
              'print(type(m).__name__, m.num_classes)\n')
    proc = subprocess.run([sys.executable, '-c', script, str(folder / 'model_best_timm.safetensors')], env=ENV,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0 and proc.stdout.split() == ['ResNet', '3'], proc.stderr
    best = torch.load(folder / 'model_best.pth.tar', map_location='cpu', weights_only=True)['state_dict']
    plain = load_file(str(folder / 'model_best_timm.safetensors'))
    assert set(plain) == {k for k in best if not k.startswith('ood_head.')}
    assert all(torch.equal(v, best[k]) for k, v in plain.items())


def test_push_save_dir_carries_the_class_names_to_config_card_and_predict(run, tmp_path):
    folder, _ = run
    rc, out, err, _ = cli('push', folder, 'me/photos', '--save-dir', tmp_path / 'saved')
    assert rc == 0, err
    config = json.loads((tmp_path / 'saved' / 'config.json').read_text())
    assert config['label_names'] == CLASSES and config['num_classes'] == 3
    card = (tmp_path / 'saved' / 'README.md').read_text()
    assert '- **Classes:** 3 (`disc`, `square`, `triangle`)' in card and 'pred.labels' in card
    assert '- **Training data:** the image folder `photos`' in card  # the run's --data-dir by name, not its path
    model = timm_ssod.create_model(f'local-dir:{tmp_path / "saved"}', pretrained=True).eval()
    pred = model.predict(torch.randn(3, 3, 64, 64))
    assert pred.label_names == tuple(CLASSES) and len(pred.labels) == 3 and set(pred.labels) <= set(CLASSES)


def test_eval_names_the_split_folders_and_the_classes(photos, run, tmp_path):
    folder, _ = run
    rc, out, err, _ = cli('eval', '--checkpoint', folder / 'model_best.pth.tar', '--data-dir', photos / 'photos',
                          '--ood', f'textures={photos / "ood_textures"}', '--detectors', 'msp,mahalanobis,ssod',
                          '--quiet', '--no-plots', '--workers', '0', '--output', tmp_path / 'eval')
    assert rc == 0, err
    assert f"ID data: split 'validation' -> {photos / 'photos' / 'val'} (12 images, 3 classes" in out
    assert f"Fit data: split 'train' -> {photos / 'photos' / 'train'} (24 images" in out
    assert 'Classes (3): disc, square, triangle' in out
    result = json.loads((tmp_path / 'eval' / 'results.json').read_text())
    assert result['label_names'] == CLASSES and result['config']['split_folder'] == str(photos / 'photos' / 'val')


# ---------------------------------------------------------------- splits holding training images
def test_eval_split_without_its_folder_refuses_the_training_images(photos, run, tmp_path):
    folder, _ = run
    rc, out, err, _ = cli('eval', '--checkpoint', folder / 'model_best.pth.tar', '--data-dir', photos / 'photos',
                          '--split', 'test', '--ood', f'textures={photos / "ood_textures"}', '--detectors', 'msp',
                          '--quiet', '--output', tmp_path / 'eval')
    assert_one_line_error(rc, out, err, 'timm-ssod eval', "--split 'test'", str(photos / 'photos' / 'train'),
                          'Give --split val')
    assert not (tmp_path / 'eval' / 'results.json').exists()


def test_training_on_a_train_folder_alone_refuses_to_validate_on_it(photos, tmp_path):
    rc, out, err, _ = cli('train', '--data-dir', photos / 'photos' / 'train', *TRAIN, '--output', tmp_path / 'runs')
    assert_one_line_error(rc, out, err, 'timm-ssod train', "--val-split 'validation'",
                          'the training folder itself', f'--data-dir {photos / "photos"}')
    assert not (tmp_path / 'runs').exists()


def test_visualize_draws_the_data_dir_it_is_given(photos, run, tmp_path):
    folder, _ = run
    rc, out, err, _ = cli('visualize', '--checkpoint', folder / 'model_best.pth.tar', '--data-dir', photos / 'photos',
                          '--output', tmp_path / 'viz')
    assert rc == 0, err
    assert (f"Drawing 4 image(s) of the image folder {photos / 'photos' / 'val'} (split 'validation'); classes: "
            'disc, square, triangle') in out
    assert (tmp_path / 'viz' / 'sampler.png').is_file()
    rc, out, err, _ = cli('visualize', '--checkpoint', folder / 'model_best.pth.tar', '--data-dir', photos / 'photos',
                          '--split', 'test', '--output', tmp_path / 'viz2')  # timm would read train + val
    assert_one_line_error(rc, out, err, 'timm-ssod visualize', "--split 'test'", 'Give --split val')
    rc, out, err, _ = cli('visualize', '--checkpoint', folder / 'model_best.pth.tar', '--data-dir', photos / 'photos',
                          '--dataset', 'synthetic/id', '--output', tmp_path / 'viz3')
    assert_one_line_error(rc, out, err, 'timm-ssod visualize', "--data-dir", 'is not read with --dataset synthetic/id')


# ------------------------------------------------------------------------- one-line user errors
@pytest.mark.parametrize('case', ['missing-data-dir', 'model-typo', 'torch-not-downloaded', 'torch-download-offline',
                                  'torch-unknown', 'pretrained-path-missing', 'train-split-holds-val'])
def test_training_user_errors_are_one_line(tmp_path, case, photos):
    import shutil
    refused = f'http://127.0.0.1:{free_port()}'
    if case == 'train-split-holds-val':  # class folders beside val/: timm would train on val/ too
        shutil.copytree(photos / 'photos' / 'val', tmp_path / 'mixed' / 'val')
        shutil.copytree(photos / 'photos' / 'train' / 'disc', tmp_path / 'mixed' / 'disc')
    cifar = ['--dataset', 'torch/cifar10', '--data-dir', tmp_path / 'cifar']
    argv, env, parts = {
        'missing-data-dir': (['--data-dir', tmp_path / 'nope'], {},
                             [f"--data-dir '{tmp_path / 'nope'}': no such folder"]),
        'model-typo': (['--data-dir', photos / 'photos', '--model', 'resnet10'], {},
                       ["--model 'resnet10': Unknown model (resnet10); did you mean resnet10t"]),
        'torch-not-downloaded': (cifar, {}, ['torch/cifar10 was not found in', 'pass --dataset-download']),
        'torch-download-offline': (cifar + ['--dataset-download'], {'https_proxy': refused, 'HTTPS_PROXY': refused,
                                                                    'no_proxy': '', 'NO_PROXY': ''},
                                   ['downloading torch/cifar10 into', 'failed', 'without the download option']),
        'torch-unknown': (['--dataset', 'torch/svhn', '--data-dir', tmp_path], {},
                          ["unknown torchvision dataset 'torch/svhn': timm knows torch/cifar10"]),
        'pretrained-path-missing': (['--data-dir', photos / 'photos', '--pretrained-path', tmp_path / 'w.pth'], {},
                                    [f"--pretrained-path '{tmp_path / 'w.pth'}': no such file"]),
        'train-split-holds-val': (['--data-dir', tmp_path / 'mixed'], {},
                                  ["--train-split 'train'",
                                   f'which holds the validation images ({tmp_path / "mixed" / "val"})']),
    }[case]
    base = [a for a in TRAIN if a not in ('--model', 'test_resnet')] if case == 'model-typo' else TRAIN
    rc, out, err, seconds = cli('train', *base, *argv, '--output', tmp_path / 'runs', env=env)
    assert_one_line_error(rc, out, err, 'timm-ssod train', *parts)
    assert not (tmp_path / 'runs').exists()


def test_a_pretrained_path_alone_is_loaded_not_ignored(photos, tmp_path):
    import timm
    torch.save(timm.create_model('test_resnet', num_classes=3).state_dict(), tmp_path / 'weights.pth')
    rc, out, err, _ = cli('train', '--data-dir', photos / 'photos', *TRAIN, '--pretrained-path',
                          tmp_path / 'weights.pth', '--output', tmp_path / 'runs', '--experiment', 'p')
    assert rc == 0, err
    log = out + err
    assert 'implies --pretrained' in log and f'Loading pretrained weights from file ({tmp_path / "weights.pth"})' in log


def test_eval_blames_a_model_typo_on_the_flag_not_the_checkpoint(photos, run, tmp_path):
    folder, _ = run
    rc, out, err, _ = cli('eval', '--model', 'test_resnt', '--checkpoint', folder / 'model_best.pth.tar',
                          '--data-dir', photos / 'photos', '--ood', f't={photos / "ood_textures"}',
                          '--output', tmp_path / 'e')
    assert_one_line_error(rc, out, err, 'timm-ssod eval', "--model 'test_resnt': Unknown model", 'test_resnet',
                          "The checkpoint records 'test_resnet': leave --model out")


def test_help_only_names_datasets_timm_has_and_others_are_one_line_errors(photos, run, tmp_path):
    import re
    from timm_ssod import cli as cli_module
    from timm_ssod.data import TORCH_DATASETS
    from timm_ssod.train import build_parser
    rc, out, err, _ = cli('eval', '--help')  # the one that named torch/svhn; the others in this process
    assert rc == 0, err
    sub = cli_module.build_parser()._subparsers._group_actions[0].choices
    for command, text in (('eval', out), ('train', build_parser().format_help()),
                          ('visualize', sub['visualize'].format_help())):
        named = set(re.findall(r'torch/(\w+)', ' '.join(text.split())))
        assert named and named <= set(TORCH_DATASETS), (command, named)
    folder, _ = run
    rc, out, err, _ = cli('eval', '--checkpoint', folder / 'model_best.pth.tar', '--data-dir', photos / 'photos',
                          '--ood', 'svhn=torch/svhn', '--output', tmp_path / 'e')
    assert_one_line_error(rc, out, err, 'timm-ssod eval', "--ood 'svhn=torch/svhn'",
                          "unknown torchvision dataset 'torch/svhn'")


# ------------------------------------------------------------------------------------ the Hub
def test_push_to_an_endpoint_that_refuses_is_one_line_and_fast(run):
    folder, _ = run
    endpoint = f'http://127.0.0.1:{free_port()}'
    rc, out, err, seconds = cli('push', folder, 'me/photos', env={'HF_ENDPOINT': endpoint, 'HF_TOKEN': 'hf_fake'})
    assert_one_line_error(rc, out, err, 'timm-ssod push', "Hub repo 'me/photos'", endpoint, 'ConnectError',
                          'timm-ssod push --save-dir DIR')
    assert seconds < 60


class _Unauthorized(http.server.BaseHTTPRequestHandler):
    def do_POST(self):
        body = b'{"error": "Invalid credentials in Authorization header"}'
        self.send_response(401)
        self.send_header('Content-Type', 'application/json')
        self.send_header('Content-Length', str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


def test_push_with_a_refused_token_says_how_to_log_in(run):
    folder, _ = run
    server = http.server.ThreadingHTTPServer(('127.0.0.1', 0), _Unauthorized)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    endpoint = f'http://127.0.0.1:{server.server_address[1]}'
    try:
        rc, out, err, _ = cli('push', folder, 'me/photos', env={'HF_ENDPOINT': endpoint, 'HF_TOKEN': 'hf_bad'})
    finally:
        server.shutdown()
    assert_one_line_error(rc, out, err, 'timm-ssod push', endpoint, 'HTTP 401', '`hf auth login`', 'HF_TOKEN')


@pytest.mark.parametrize('offline', ['refused', 'HF_HUB_OFFLINE'])
def test_pretrained_weights_offline_fail_fast_naming_the_cli_way_out(photos, tmp_path, offline):
    """huggingface_hub retried each of timm's two weight files 5 times (1+2+4+8+8 s): ~54 s."""
    env = {'HF_HOME': str(tmp_path / 'hf'), 'HF_HUB_CACHE': str(tmp_path / 'hf' / 'hub')}
    env.update({'HF_ENDPOINT': f'http://127.0.0.1:{free_port()}'} if offline == 'refused' else {'HF_HUB_OFFLINE': '1'})
    rc, out, err, _ = cli('train', '--data-dir', photos / 'photos', *TRAIN, '--pretrained',
                          '--output', tmp_path / 'runs', env=env)
    assert_one_line_error(rc, out, err, 'timm-ssod train', "--pretrained: could not fetch timm's weights",
                          '--pretrained-path FILE')
    # the slowness was huggingface_hub's retry loop: none may run (a wall-time bound failed under
    # load on a busy 2-core machine, issue 14; this one finished in ~6 s here)
    assert 'Retrying' not in err


# ------------------------------------------------------------------------------------- --amp
def test_amp_on_cpu_trains_in_float32_and_says_why(photos, tmp_path):
    rc, out, err, _ = cli('train', '--data-dir', photos / 'photos', *TRAIN, '--amp', '--device', 'cpu',
                          '--output', tmp_path / 'runs', '--experiment', 'a')
    assert rc == 0, err
    log = out + err
    assert '--amp on CPU: training in float32 instead' in log and '--amp --amp-dtype bfloat16' in log
    assert 'Training in mixed precision' not in log
