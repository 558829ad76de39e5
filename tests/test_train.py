"""``timm-ssod train``: outputs per layout family, config/CLI merging, exact resume (also after
SIGKILL, also during a checkpoint write), 2-process gloo DDP, NaN and unwritable-output errors,
and the example script's quick mode. Tiny models and generated data keep it to a few minutes
on 2 CPU cores (runs use one thread: oversubscribed OpenMP threads slow tiny ops 100x)."""
import csv
import json
import os
import random
import re
import signal
import subprocess
import sys
import time
import types
from pathlib import Path

import pytest
import torch
import yaml

from timm_ssod.train import _main as train_mod
from timm_ssod.checkpoints import (AtomicCheckpointSaver, NonFiniteWeightsError, OutputDirError, check_output_dir,
                                  resolve_resume)
from timm_ssod.train import parse_args
from timm_ssod.train import NonFiniteLossError

REPO = Path(__file__).resolve().parents[1]
ENV = dict(os.environ, OMP_NUM_THREADS='1', PYTHONDONTWRITEBYTECODE='1')
OUTPUT_FILES = {'args.yaml', 'summary.csv', 'last.pth.tar', 'model_best.pth.tar', 'model_best_timm.safetensors'}

FAMILIES = {  # layout family -> (model, --model-kwargs)
    'NCHW': ('test_resnet', []),
    'NHWC': ('swin_tiny_patch4_window7_224',
             ['img_size=64', 'window_size=2', 'depths=(1,1,1,1)', 'num_heads=(1,1,1,1)', 'embed_dim=16']),
    'NLC': ('test_vit', ['img_size=64']),
}


def base_argv(out, model='test_resnet', model_kwargs=(), epochs=1, workers=0, images=48):
    return ['--dataset', 'synthetic/id', '--dataset-kwargs', f'num_images={images}',
            '--val-dataset-kwargs', 'num_images=16', '--model', model, '--model-kwargs', *model_kwargs,
            '--img-size', '64', '-b', '16', '--epochs', str(epochs), '--opt', 'adamw', '--lr', '1e-3',
            '--warmup-epochs', '0', '--workers', str(workers), '--output', str(out), '--log-interval', '1',
            '--seed', '3']


def train(argv):
    return train_mod.main([str(a) for a in argv])


def cli(argv, **kwargs):
    """``python -m timm_ssod.train ARGV`` in a fresh process."""
    return subprocess.run([sys.executable, '-m', 'timm_ssod.train', *map(str, argv)], env=ENV, cwd=REPO,
                          capture_output=True, text=True, timeout=240, **kwargs)


def summary_rows(run_dir):
    with open(Path(run_dir) / 'summary.csv', newline='') as f:
        return list(csv.DictReader(f))


def load(path):
    return torch.load(path, map_location='cpu', weights_only=True)


def assert_same_weights(a, b):
    a, b = load(a), load(b)
    assert a['epoch'] == b['epoch']
    for key in ('state_dict', 'state_dict_ema'):
        assert (key in a) == (key in b)
        if key in a:
            differ = [k for k in a[key] if not torch.equal(a[key][k], b[key][k])]
            assert not differ, f'{key} differs in {len(differ)} tensors, e.g. {differ[:3]}'


# -- outputs of a run ------------------------------------------------------------------------
@pytest.mark.parametrize('family', FAMILIES)
def test_one_epoch_per_layout_family_writes_timm_outputs(tmp_path, family):
    model, kwargs = FAMILIES[family]
    result = train(base_argv(tmp_path, model, kwargs) + ['--ood-val', 'bg=synthetic/backgrounds',
                                                         'synthetic/novel_objects'])
    run = Path(result['output_dir'])
    assert run.parent == tmp_path and re.fullmatch(rf'\d{{8}}-\d{{6}}-{model}-64', run.name)  # timm's naming
    assert OUTPUT_FILES | {'checkpoint-0.pth.tar'} == {p.name for p in run.iterdir()}
    rows = summary_rows(run)
    assert len(rows) == 1
    expected = ['epoch', 'train_loss', 'train_cls_loss', 'train_ood_loss', 'train_id_frac', 'train_ood_frac',
                'train_ignored_frac', 'eval_loss', 'eval_top1', 'eval_top5', 'eval_bg_ssod_fpr95', 'eval_bg_ssod_auroc',
                'eval_novel_objects_ssod_fpr95', 'eval_novel_objects_ssod_auroc', 'eval_fpr95', 'eval_auroc', 'lr']
    assert list(rows[0]) == expected
    shares = sum(float(rows[0][f'train_{k}_frac']) for k in ('id', 'ood', 'ignored'))
    assert shares == pytest.approx(1.0)
    assert 0 <= float(rows[0]['eval_fpr95']) <= 100
    ckpt = load(run / 'last.pth.tar')  # weights_only=True: plain content only
    assert isinstance(ckpt['args'], dict) and ckpt['args']['model'] == model
    assert {'gamma': 0.95, 'lam': 1.0, 'balance': 'lwb'}.items() <= ckpt['ssod_cfg'].items()
    assert any(k.startswith('ood_head.') for k in ckpt['state_dict'])
    assert {'rng', 'scheduler', 'optimizer'} <= set(ckpt)


def test_vanilla_run_has_no_ood_head_and_reports_msp(tmp_path):
    train(base_argv(tmp_path) + ['--no-ssod', '--experiment', 'plain', '--ood-val', 'noise=synthetic/noise'])
    rows = summary_rows(tmp_path / 'plain')
    assert 'train_ood_loss' not in rows[0] and 'eval_noise_msp_fpr95' in rows[0]
    ckpt = load(tmp_path / 'plain' / 'last.pth.tar')
    assert not any(k.startswith('ood_head.') for k in ckpt['state_dict']) and 'ssod_cfg' not in ckpt


def test_best_checkpoint_by_fpr95_is_the_lowest(tmp_path):
    train(base_argv(tmp_path, epochs=3) + ['--experiment', 'x', '--checkpoint-metric', 'fpr95',
                                           '--ood-val', 'bg=synthetic/backgrounds'])
    fprs = [float(r['eval_fpr95']) for r in summary_rows(tmp_path / 'x')]
    best = load(tmp_path / 'x' / 'model_best.pth.tar')
    assert best['metric'] == pytest.approx(min(fprs))
    assert best['epoch'] == fprs.index(min(fprs))  # ties keep the earlier epoch


def test_amp_bf16_channels_last_accumulation_ema_compile_and_push(tmp_path, monkeypatch):
    pushed = []
    import timm_ssod.hub  # the Hub module is tested on its own
    monkeypatch.setattr(timm_ssod.hub, 'push_training_run', lambda out, repo: pushed.append((out, repo)))
    monkeypatch.setattr(timm_ssod.hub, 'check_push_access', lambda: 'tester')  # checked before training
    result = train(base_argv(tmp_path) + ['--experiment', 'x', '--amp', '--amp-dtype', 'bfloat16',
                                          '--channels-last', '--grad-accum-steps', '2', '--model-ema',
                                          '--model-ema-decay', '0.9', '--torchcompile', 'aot_eager',
                                          '--push-to-hub', 'org/name'])
    ckpt = load(tmp_path / 'x' / 'last.pth.tar')
    assert 'state_dict_ema' in ckpt
    assert all(torch.isfinite(v).all() for v in ckpt['state_dict'].values() if v.is_floating_point())
    assert not any(k.startswith(('module.', '_orig_mod.')) for k in ckpt['state_dict'])
    assert pushed == [(result['output_dir'], 'org/name')]


def test_amp_on_cpu_is_float32_unless_the_dtype_is_named(caplog):
    """CPU autocast ran 21 s (float16) / 16.5 s (bfloat16) per batch against ~1 s in float32
    (issue 15): --amp alone trains in float32 on CPU; a named --amp-dtype is honoured, warned.
    (test_own_data runs --amp through the CLI.)"""
    from contextlib import suppress
    cpu = torch.device('cpu')
    args = types.SimpleNamespace(amp=True, amp_dtype=None)
    with caplog.at_level('WARNING'):
        autocast, scaler = train_mod._amp(args, cpu)
    assert autocast is suppress and scaler is None and not args.amp
    assert '--amp on CPU: training in float32 instead' in caplog.text
    caplog.clear()
    args = types.SimpleNamespace(amp=True, amp_dtype='bfloat16')
    with caplog.at_level('WARNING'):
        autocast, scaler = train_mod._amp(args, cpu)
    with autocast():
        assert (torch.ones(2, 2) @ torch.ones(2, 2)).dtype == torch.bfloat16
    assert args.amp and 'much slower than float32' in caplog.text
    assert parse_args(['--amp'])[0].amp_dtype is None  # so "named" can be told from the default


def test_plain_timm_checkpoint_initialises_ssod_model_and_wrong_one_is_refused(tmp_path):
    import timm
    timm_ssod_model = train_mod.create_model('test_resnet', num_classes=6)
    plain = timm.create_model('test_resnet', num_classes=6)
    torch.save(plain.state_dict(), tmp_path / 'plain.pth')
    train_mod.load_initial_checkpoint(timm_ssod_model, str(tmp_path / 'plain.pth'))  # only ood_head.* missing
    assert torch.equal(timm_ssod_model.fc.weight, plain.fc.weight)
    torch.save(timm.create_model('test_vit', num_classes=6).state_dict(), tmp_path / 'vit.pth')
    with pytest.raises(RuntimeError, match='does not'):
        train_mod.load_initial_checkpoint(timm_ssod_model, str(tmp_path / 'vit.pth'))


# -- configuration ---------------------------------------------------------------------------
def test_config_file_and_cli_flags_agree(tmp_path):
    cfg = tmp_path / 'cfg.yaml'
    cfg.write_text('model: test_vit\nlr: 0.01\ngamma: 0.9\nbalance: lw\nood-lambda: 0.5\n'
                   'checkpoint_metric: fpr95\nood_val: {bg: synthetic/backgrounds}\n')
    args, text = parse_args(['--config', str(cfg), '--gamma', '0.8', '--balance', 'dr'])
    assert (args.model, args.lr, args.ood_lambda) == ('test_vit', 0.01, 0.5)    # from the file
    assert (args.gamma, args.balance) == (0.8, 'dr')                             # the command line wins
    assert args.eval_metric == 'fpr95' and args.ood_val == ['bg=synthetic/backgrounds']
    saved = yaml.safe_load(text)
    assert (saved['gamma'], saved['balance'], saved['lr']) == (0.8, 'dr', 0.01)
    (tmp_path / 'args.yaml').write_text(text)  # args.yaml reads back as a config: the same arguments
    again, _ = parse_args(['--config', str(tmp_path / 'args.yaml')])
    assert {k: v for k, v in vars(again).items() if k != 'config'} == \
        {k: v for k, v in vars(args).items() if k != 'config'}

    # a real run writes the merged arguments to args.yaml
    cfg.write_text(yaml.safe_dump({'gamma': 0.9, 'balance': 'lw', 'epochs': 5}))
    train(['--config', cfg] + base_argv(tmp_path) + ['--gamma', '0.7', '--experiment', 'run'])
    written = yaml.safe_load((tmp_path / 'run' / 'args.yaml').read_text())
    assert (written['gamma'], written['balance'], written['epochs']) == (0.7, 'lw', 1)
    assert load(tmp_path / 'run' / 'last.pth.tar')['ssod_cfg']['gamma'] == 0.7


def test_resize_up_is_the_papers_small_image_recipe_in_one_flag(tmp_path):
    """--resize-up N: CIFAR-sized images trained and evaluated at N px (Table 2 of the paper),
    the whole image at evaluation (crop_pct 1); an explicit --crop-pct wins; a conflicting size is refused."""
    args, _ = parse_args(['--resize-up', '224'])
    assert (args.img_size, args.crop_pct) == (224, 1.0)
    args, _ = parse_args(['--resize-up', '224', '--crop-pct', '0.9'])
    assert (args.img_size, args.crop_pct) == (224, 0.9)
    for bad in (['--resize-up', '224', '--img-size', '112'], ['--resize-up', '8']):
        with pytest.raises(SystemExit):
            parse_args(bad)
    # a real run on 16-px renders, upsampled to 64 (a 4x4 map at output stride 16)
    argv = base_argv(tmp_path) + ['--dataset-kwargs', 'num_images=32', 'img_size=16', '--experiment', 'up']
    argv[argv.index('--img-size'):argv.index('--img-size') + 2] = ['--resize-up', '64']
    train(argv + ['--model-kwargs', 'output_stride=16'])
    written = yaml.safe_load((tmp_path / 'up' / 'args.yaml').read_text())
    assert (written['img_size'], written['crop_pct'], written['resize_up']) == (64, 1.0, 64)
    assert summary_rows(tmp_path / 'up')


@pytest.mark.parametrize('flags, message', [
    (['--gamma', '0.5'], 'open interval'),
    (['--gamma', '1.0'], 'open interval'),
    (['--ood-lambda', '-0.1'], '>= 0'),
    (['--balance', 'xyz'], 'invalid choice'),
    (['--mixup', '0.2'], 'one integer'),
    (['--cutmix', '1.0'], 'one integer'),
    (['--eval-metric', 'fpr95'], 'needs OOD validation'),
    (['--run-epochs', '0'], '>= 1'),
    ('yaml:gamma: 1.5', 'open interval'),
    ('yaml:balance: xyz', 'unknown balance'),
    ('yaml:lamda: 1.0', 'unknown argument'),
    (['--train-crop-mode', 'xyz'], 'invalid choice'),
    ('yaml:train_crop_mode: xyz', '--train-crop-mode must be one of rrc, rkrc, rkrr'),
    (['--grayscale-prob', '1.5'], 'probability in [0, 1]'),
    (['--train-num-samples', '0'], '>= 1'),
])
def test_bad_arguments_are_argparse_errors(tmp_path, capsys, flags, message):
    if isinstance(flags, str):
        (tmp_path / 'c.yaml').write_text(flags[len('yaml:'):] + '\n')
        flags = ['--config', str(tmp_path / 'c.yaml')]
    with pytest.raises(SystemExit) as e:
        parse_args(flags)
    assert e.value.code == 2 and message in capsys.readouterr().err


class _Stop(Exception):
    """Raised by a patched step to end main() once what a test checks has been built."""


def test_timm_loader_and_compile_flags_reach_the_loader_and_torch_compile(tmp_path, monkeypatch, capsys):
    """Issue 24.18: timm train.py's --aug-repeats, --train-crop-mode, --color-jitter-prob, --grayscale-prob,
    --gaussian-blur-prob and --torchcompile-mode reach timm's create_loader / the task's compile."""
    loaders, compiled = [], []

    def create_loader(dataset, **kwargs):
        loader = real_create_loader(dataset, **kwargs)
        loaders.append((kwargs, repr(loader.dataset.transform)))
        return loader

    def compile(self, backend='inductor', mode=None, **kwargs):
        compiled.append((backend, mode))
        raise _Stop
    real_create_loader = train_mod.create_loader
    monkeypatch.setattr(train_mod, 'create_loader', create_loader)
    monkeypatch.setattr(train_mod.SSODTask, 'compile', compile)
    flags = ['--train-crop-mode', 'rkrc', '--color-jitter-prob', '0.5', '--grayscale-prob',
             '0.25', '--gaussian-blur-prob', '0.125', '--torchcompile', 'eager', '--torchcompile-mode', 'reduce-overhead']
    with pytest.raises(_Stop):
        train(base_argv(tmp_path) + flags)
    kwargs, transform = loaders[0]
    assert kwargs['is_training'] and (kwargs['num_aug_repeats'], kwargs['train_crop_mode']) == (0, 'rkrc')
    assert (kwargs['color_jitter_prob'], kwargs['grayscale_prob'], kwargs['gaussian_blur_prob']) == (0.5, 0.25, 0.125)
    assert 'RandomResizedCropAndInterpolation' not in transform and 'RandomGrayscale(p=0.25)' in transform
    assert 'GaussianBlur' in transform and 'p=0.5' in transform  # RandomApply of the color jitter
    assert compiled == [('eager', 'reduce-overhead')]

    # --aug-repeats: timm's RepeatAugSampler, a distributed sampler: there it reaches the loader, on one process
    # it is a one-line error (timm's create_loader asserts)
    args, _ = parse_args([str(a) for a in base_argv(tmp_path)] + ['--aug-repeats', '3'])
    args.distributed, args.prefetcher, loaders[:] = True, False, []
    monkeypatch.setattr(train_mod, 'create_loader', lambda dataset, **kwargs: loaders.append(kwargs))
    train_mod._loader(None, args, dict(input_size=(3, 64, 64), mean=(0.5,) * 3, std=(0.5,) * 3, interpolation='bilinear',
                                       crop_pct=1.0), torch.device('cpu'), is_training=True)
    assert loaders[0]['num_aug_repeats'] == 3
    assert train_mod.run([str(a) for a in base_argv(tmp_path / 'one')] + ['--aug-repeats', '3']) == 1
    assert 'error: --aug-repeats 3 needs distributed training' in capsys.readouterr().err
    assert not (tmp_path / 'one').exists()


def test_layer_decay_scale_flags_reach_timms_optimizer_kwargs():
    """Issue 24.18: timm's --layer-decay-min-scale / --layer-decay-no-opt-scale, read by optimizer_kwargs."""
    from timm.optim import optimizer_kwargs
    args, _ = parse_args(['--layer-decay', '0.75', '--layer-decay-min-scale', '0.1', '--layer-decay-no-opt-scale',
                          '0.01'])
    assert {'layer_decay': 0.75, 'layer_decay_min_scale': 0.1,
            'layer_decay_no_opt_scale': 0.01}.items() <= optimizer_kwargs(cfg=args).items()


def test_timm_dataset_flags_reach_create_dataset(tmp_path, monkeypatch):
    """Issue 24.18: --train-num-samples, --val-num-samples and --input-img-mode reach timm's create_dataset
    (and, without --input-img-mode, 1 input channel reads 'L' as timm's train.py does)."""
    import timm.data
    from timm_ssod.data import SyntheticDataset, write_image_folder
    for split, n in (('train', 4), ('val', 2)):
        write_image_folder(SyntheticDataset('id', split, num_images=n, img_size=32, num_classes=2), tmp_path / split)
    calls = []

    def create_dataset(name, root=None, split='validation', **kwargs):
        calls.append(dict(kwargs, split=split))
        if len(calls) == 2:
            raise _Stop
        return real_create_dataset(name, root=root, split=split, **kwargs)
    real_create_dataset = timm.data.create_dataset
    monkeypatch.setattr(timm.data, 'create_dataset', create_dataset)
    argv = ['--data-dir', tmp_path, '--model', 'test_resnet', '--output', tmp_path / 'out']
    with pytest.raises(_Stop):
        train(argv + ['--train-num-samples', '3', '--val-num-samples', '2', '--input-img-mode', 'RGBA'])
    assert [(c['split'], c['num_samples'], c['input_img_mode']) for c in calls] == [('train', 3, 'RGBA'),
                                                                                   ('validation', 2, 'RGBA')]
    calls.clear()
    with pytest.raises(_Stop):
        train(argv + ['--in-chans', '1'])
    assert [(c['num_samples'], c['input_img_mode']) for c in calls] == [(None, 'L'), (None, 'L')]


def test_unknown_eval_metric_is_an_error_before_training(tmp_path, capsys):
    code = train_mod.run([str(a) for a in base_argv(tmp_path)] + ['--eval-metric', 'top3'])
    assert code == 1 and 'choose one of loss, top1, top5' in capsys.readouterr().err
    assert not list(tmp_path.iterdir())


@pytest.mark.parametrize('detector', ['ssod', 'energy_ssod'])
def test_no_ssod_with_an_ood_head_detector_is_an_early_error_naming_it(tmp_path, capsys, detector):
    """Every detector that reads the OOD head (``needs_ood_head``), not only names starting with
    'ssod': energy_ssod used to pass the check and fail late with an uncaught ValueError."""
    code = train_mod.run([str(a) for a in base_argv(tmp_path)] + ['--no-ssod', '--ood-val', 'noise=synthetic/noise',
                                                                 '--ood-val-detectors', detector])
    err = capsys.readouterr().err
    assert code == 1 and f'--ood-val-detectors {detector} needs the OOD head' in err and '--no-ssod' in err
    assert not list(tmp_path.iterdir())


def test_mixup_is_allowed_for_the_vanilla_baseline():
    args, _ = parse_args(['--no-ssod', '--mixup', '0.2', '--smoothing', '0.1'])
    assert not args.ssod and args.mixup == 0.2


def test_cli_entry_point_lists_and_dispatches_train(capsys):
    from timm_ssod import cli
    assert cli.main([]) == 2 and 'train' in capsys.readouterr().out
    with pytest.raises(SystemExit) as e:
        cli.main(['train', '--help'])
    assert e.value.code == 0 and '--ood-lambda' in capsys.readouterr().out


# -- resume ----------------------------------------------------------------------------------
RESUME_FLAGS = ['--epochs', '3', '--balance', 'dr', '--drop-path', '0.1', '--model-ema', '--model-ema-decay', '0.9',
                '--gamma', '0.6', '--hflip', '0.5', '--color-jitter', '0.3', '--log-interval', '100']


@pytest.fixture(scope='module')
def reference_runs(tmp_path_factory):
    """Uninterrupted 3-epoch runs, by number of loader workers. Like the runs they are compared
    with, each is a fresh process: global torch state left by other tests in this process
    (thread pools, backend flags) must not decide whether the weights match bit for bit."""
    cache = {}

    def get(workers):
        if workers not in cache:
            out = tmp_path_factory.mktemp(f'reference{workers}')
            start = time.time()
            done = cli(base_argv(out, workers=workers) + RESUME_FLAGS + ['--experiment', 'full'])
            assert done.returncode == 0, done.stderr
            cache[workers] = (out / 'full', time.time() - start)
        return cache[workers]
    return get


@pytest.mark.parametrize('workers', [0, 2])
def test_stop_after_epoch_then_resume_in_new_process_is_bit_identical(tmp_path, reference_runs, workers):
    reference, _ = reference_runs(workers)
    argv = base_argv(tmp_path, workers=workers) + RESUME_FLAGS + ['--experiment', 'part']
    first = cli(argv + ['--run-epochs', '1'])
    assert first.returncode == 0, first.stderr
    assert len(summary_rows(tmp_path / 'part')) == 1
    second = cli(argv + ['--resume', tmp_path / 'part'])
    assert second.returncode == 0, second.stderr
    assert "Restoring optimizer state" in second.stderr
    assert_same_weights(reference / 'last.pth.tar', tmp_path / 'part' / 'last.pth.tar')
    assert (reference / 'summary.csv').read_text() == (tmp_path / 'part' / 'summary.csv').read_text()


def test_sigkill_at_a_random_moment_then_resume_auto_is_bit_identical(tmp_path, reference_runs):
    reference, duration = reference_runs(0)
    seed = random.randrange(10 ** 6)
    delay = random.Random(seed).uniform(0.0, 1.2 * duration)
    argv = base_argv(tmp_path) + RESUME_FLAGS + ['--experiment', 'run', '--resume', 'auto']
    proc = subprocess.Popen([sys.executable, '-m', 'timm_ssod.train', *map(str, argv)], env=ENV, cwd=REPO,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while not (tmp_path / 'run' / 'args.yaml').exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.02)  # training starts once the output folder is written
    time.sleep(delay)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    last = tmp_path / 'run' / 'last.pth.tar'
    killed_after = load(last)['epoch'] if last.exists() else None  # whatever is there must load
    info = f'killed {delay:.2f}s into training (random seed {seed}), last saved epoch: {killed_after}'
    print(info)
    done = cli(argv)  # the very same command line continues the run
    assert done.returncode == 0, f'{info}\n{done.stderr}'
    try:
        assert_same_weights(reference / 'last.pth.tar', last)
    except AssertionError as e:
        raise AssertionError(f'{info}: {e}') from None


KILL_DURING_SAVE = '''
import io, os, signal, sys
import torch
real_save, calls = torch.save, []

def dying_save(obj, f, *args, **kwargs):
    calls.append(1)
    if len(calls) < int(os.environ["KILL_AT_SAVE"]):
        return real_save(obj, f, *args, **kwargs)
    buf = io.BytesIO()
    real_save(obj, buf, *args, **kwargs)
    f.write(buf.getvalue()[: len(buf.getvalue()) // 2])  # half the checkpoint is on disk ...
    f.flush()
    os.kill(os.getpid(), signal.SIGKILL)                 # ... when the process dies

torch.save = dying_save
from timm_ssod.train import run
sys.exit(run(sys.argv[1:]))
'''


def test_sigkill_during_checkpoint_write_keeps_last_checkpoint_intact(tmp_path, reference_runs):
    reference, _ = reference_runs(0)
    script = tmp_path / 'die_while_saving.py'
    script.write_text(KILL_DURING_SAVE)
    argv = base_argv(tmp_path) + RESUME_FLAGS + ['--experiment', 'run', '--resume', 'auto']
    proc = subprocess.run([sys.executable, str(script), *map(str, argv)], env=dict(ENV, KILL_AT_SAVE='2'),
                          cwd=REPO, capture_output=True, timeout=240)
    assert proc.returncode == -signal.SIGKILL
    run = tmp_path / 'run'
    assert load(run / 'last.pth.tar')['epoch'] == 0  # epoch 1's write died half way: epoch 0 is intact
    assert load(run / 'model_best.pth.tar')['epoch'] == 0
    assert list(run.glob('*.partial'))  # the half-written temporary file, under another name
    done = cli(argv)
    assert done.returncode == 0, done.stderr
    assert not list(run.glob('*.partial'))
    assert_same_weights(reference / 'last.pth.tar', run / 'last.pth.tar')


def test_resume_auto_without_checkpoint_starts_fresh_and_missing_file_is_an_error(tmp_path):
    assert resolve_resume('auto', str(tmp_path), 'nothing-here') is None
    with pytest.raises(FileNotFoundError, match='no such checkpoint'):
        resolve_resume(str(tmp_path / 'missing.pth.tar'), str(tmp_path))


def test_saver_writes_atomically_and_refuses_nan_weights(tmp_path, monkeypatch):
    model = torch.nn.Linear(2, 2)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    saver = AtomicCheckpointSaver(model=model, optimizer=optimizer, checkpoint_dir=str(tmp_path), max_history=2)

    def no_unlink(path, *a, **k):  # timm's saver unlinks last.pth.tar before renaming: not atomic
        raise AssertionError(f'unlink of {path}')
    monkeypatch.setattr(os, 'unlink', no_unlink)
    for epoch, metric in enumerate([1.0, 2.0, 0.5]):
        saver.save_checkpoint(epoch, metric)
    assert load(tmp_path / 'last.pth.tar')['epoch'] == 2
    assert load(tmp_path / 'model_best.pth.tar')['epoch'] == 1
    with torch.no_grad():
        model.weight[0, 0] = float('nan')
    with pytest.raises(NonFiniteWeightsError, match='epoch 3'):
        saver.save_checkpoint(3, 3.0)
    assert load(tmp_path / 'last.pth.tar')['epoch'] == 2 and not list(tmp_path.glob('*.partial'))


def test_saver_writes_model_best_for_stock_timm_beside_model_best(tmp_path):
    """Issue 24.14: stock ``timm.create_model(arch, checkpoint_path=model_best.pth.tar)`` refuses the
    ``ood_head.*`` keys; ``model_best_timm.safetensors`` holds model_best's weights (EMA when kept, as
    timm's loader chooses) without them, rewritten with model_best only."""
    import timm
    from timm.utils import ModelEmaV3
    import timm_ssod
    torch.manual_seed(0)
    model = timm_ssod.create_model('test_resnet', num_classes=3)
    ema = ModelEmaV3(model, decay=0.5)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    saver = AtomicCheckpointSaver(model=model, optimizer=optimizer, model_ema=ema, checkpoint_dir=str(tmp_path))
    timm_file = tmp_path / 'model_best_timm.safetensors'
    for epoch, metric in enumerate([1.0, 2.0, 0.5]):  # higher is better: epoch 1 stays the best
        with torch.no_grad():
            for p in model.parameters():
                p.add_(0.1)
        ema.update(model)
        saver.save_checkpoint(epoch, metric)
        if epoch == 1:
            best_ema = {k: v.clone() for k, v in ema.module.state_dict().items()}
    assert load(tmp_path / 'model_best.pth.tar')['epoch'] == 1 and not list(tmp_path.glob('*.partial'))
    stock = timm.create_model('test_resnet', num_classes=3, checkpoint_path=str(timm_file))  # strict load
    assert not timm_ssod.is_ssod_model(stock)
    for k, v in stock.state_dict().items():
        assert torch.equal(v, best_ema[k]), k
    with pytest.raises(RuntimeError, match='Unexpected key.*ood_head'):
        timm.create_model('test_resnet', num_classes=3, checkpoint_path=str(tmp_path / 'model_best.pth.tar'))


# -- distributed -----------------------------------------------------------------------------
def test_torchrun_two_processes_gloo_writes_one_set_of_outputs(tmp_path):
    argv = base_argv(tmp_path, epochs=2, images=64) + ['--device', 'cpu', '-b', '8', '--val-dataset-kwargs',
                                                        'num_images=21', '--ood-val', 'bg=synthetic/backgrounds']
    proc = subprocess.run([sys.executable, '-m', 'torch.distributed.run', '--standalone', '--nproc_per_node', '2',
                           '-m', 'timm_ssod.train', *map(str, argv)], env=ENV, cwd=REPO, capture_output=True,
                          text=True, timeout=240)
    assert proc.returncode == 0, proc.stderr[-3000:]
    log = proc.stdout + proc.stderr
    assert 'Process 0, total 2, device cpu' in log
    assert '[21 images, all ranks]' in log  # exact count: the sampler's padding is dropped before reducing
    runs = list(tmp_path.iterdir())
    assert len(runs) == 1, runs
    assert {p.name for p in runs[0].iterdir()} == OUTPUT_FILES | {'checkpoint-0.pth.tar', 'checkpoint-1.pth.tar'}
    assert [r['epoch'] for r in summary_rows(runs[0])] == ['0', '1']
    assert log.count('Train: 1 [   3/4') == 1  # 64 images / 2 ranks / batch 8, logged by rank 0 only


# -- bad input and faults --------------------------------------------------------------------
class _NaNFromEpoch1(torch.utils.data.Dataset):
    """Wraps a dataset; every image from the second pass on is NaN (after the transform)."""

    def __init__(self, dataset):
        self.dataset, self.calls = dataset, 0

    @property
    def transform(self):
        return self.dataset.transform

    @transform.setter
    def transform(self, value):
        self.dataset.transform = value

    def __len__(self):
        return len(self.dataset)

    def __getitem__(self, index):
        self.calls += 1
        img, target = self.dataset[index]
        return (torch.full_like(img, float('nan')) if self.calls > len(self) else img), target


def test_nan_in_a_batch_stops_naming_epoch_and_step_without_nan_checkpoint(tmp_path, monkeypatch):
    build = train_mod.build_datasets
    monkeypatch.setattr(train_mod, 'build_datasets', lambda args: (_NaNFromEpoch1(build(args)[0]), build(args)[1]))
    with pytest.raises(NonFiniteLossError, match=r'NaN/Inf in the input batch at epoch 1, step 0'):
        train(base_argv(tmp_path, epochs=3) + ['--experiment', 'x', '--no-prefetcher'])
    run = tmp_path / 'x'
    assert load(run / 'last.pth.tar')['epoch'] == 0 and not (run / 'checkpoint-1.pth.tar').exists()
    for path in run.glob('*.pth.tar'):
        assert all(torch.isfinite(v).all() for v in load(path)['state_dict'].values() if v.is_floating_point())


def test_diverging_loss_stops_with_a_one_line_error_naming_the_step(tmp_path, capsys):
    code = train_mod.run([str(a) for a in base_argv(tmp_path, epochs=2)] + ['--experiment', 'x', '--opt', 'sgd',
                                                                             '--lr', '1e30'])
    err = capsys.readouterr().err
    assert code == 1 and re.search(r'error: non-finite training loss \(nan\) at epoch 0, step \d+', err)
    assert not list((tmp_path / 'x').glob('*.pth.tar'))


def _mount_tmpfs(path, options):
    """Mount a tmpfs (root only); False where this machine does not allow it."""
    if os.geteuid() != 0:
        return False
    return subprocess.run(['mount', '-t', 'tmpfs', '-o', options, 'tmpfs', str(path)],
                          capture_output=True).returncode == 0


def test_unwritable_output_dir_is_an_error_before_training(tmp_path, monkeypatch, capsys):
    def no_training(*args, **kwargs):
        raise AssertionError('training started')
    monkeypatch.setattr(train_mod, 'train_one_epoch', no_training)
    ro = tmp_path / 'ro'
    ro.mkdir()
    mounted = _mount_tmpfs(ro, 'ro,size=64k')  # root writes through permissions: a read-only file system
    if not mounted:
        if os.geteuid() == 0:
            pytest.skip('running as root without mount: cannot make a read-only folder')
        os.chmod(ro, 0o555)
    try:
        code = train_mod.run([str(a) for a in base_argv(tmp_path)] + ['--experiment', 'ro'])
        err = capsys.readouterr().err
        assert code == 1
        assert re.search(r'error: the output folder .*ro.* is not writable \((Read-only file system|Permission '
                         r'denied)\)', err), err
        assert not list(ro.iterdir())
    finally:
        if mounted:
            subprocess.run(['umount', str(ro)], check=False)
        os.chmod(ro, 0o755)
    (tmp_path / 'file').write_text('')
    with pytest.raises(OutputDirError, match='cannot create the output folder'):
        train(base_argv(tmp_path) + ['--output', tmp_path / 'file' / 'sub'])


def test_full_disk_is_an_error_before_training(tmp_path, monkeypatch):
    with pytest.raises(OutputDirError, match='MiB free'):  # the free-space check, on any file system
        check_output_dir(str(tmp_path / 'x'), min_free_bytes=1 << 62)
    small = tmp_path / 'small'
    small.mkdir()
    if not _mount_tmpfs(small, 'size=128k'):
        pytest.skip('cannot mount a small tmpfs here: only the free-space check ran')
    try:
        with pytest.raises(OutputDirError, match='No space left'):  # the probe write itself fails
            check_output_dir(str(small / 'tiny'), probe_bytes=1 << 20)
        monkeypatch.setattr(train_mod, 'train_one_epoch', None)  # never reached
        with pytest.raises(OutputDirError, match=r'MiB free .* two checkpoints'):
            train(base_argv(small))
        assert not list(small.rglob('*.pth.tar'))
    finally:
        subprocess.run(['umount', str(small)], check=False)


# -- the example -----------------------------------------------------------------------------
def test_example_finetune_and_evaluate_quick(tmp_path):
    proc = subprocess.run([sys.executable, str(REPO / 'examples' / 'finetune_and_evaluate.py'), '--quick',
                           '--output', str(tmp_path)], env=ENV, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert '## ssod_finetune' in proc.stdout and '| ssod |' in proc.stdout and '| energy |' in proc.stdout
    for stage in ('stage1_vanilla', 'stage2_ssod', 'stage2_vanilla'):
        assert (tmp_path / stage / 'model_best.pth.tar').is_file()
    results = json.loads((tmp_path / 'results.json').read_text())
    assert set(results['ssod_finetune']['results']) == {'ssod', 'msp', 'energy'}
    assert 'ssod' not in results['ce_finetune']['results']  # the vanilla model has no OOD head
    assert {'model.safetensors', 'config.json', 'README.md'} <= {p.name for p in (tmp_path / 'ssod_model').iterdir()}
