"""Command line of ``timm-ssod train``: timm's ``train.py`` flags plus the SSOD ones.

Flag names, defaults and the two-stage ``--config`` parsing are timm's: a YAML file sets the
argparse defaults, flags given on the command line override it, and the merged result is
written to ``args.yaml`` in the output folder. Differences from timm, on purpose:

* ``--smoothing`` defaults to 0 (timm: 0.1): label smoothing caps the class confidence
  below SSOD's gamma = 0.95 for few classes, so the sampler would find no ID locations.
* ``--device`` defaults to ``cuda`` when available, else ``cpu``.
* Unknown keys in a ``--config`` file are an error (timm ignores them), so a typo in a
  recipe does not silently train something else.
* Flags timm has but this script does not implement are absent rather than ignored:

  - ``--amp-impl`` (apex), ``--torchscript``, ``--fuser``: apex is not supported, and the SSOD
    forward (``forward_ssod``) is compiled with ``--torchcompile``, not scripted.
  - ``--aug-splits``, ``--jsd-loss``, ``--split-bn``, ``--resplit``: augmentation splits feed
    several views of one image through the loss; SSODLoss takes one view per label.
  - ``--bce-loss``, ``--bce-sum``, ``--bce-target-thresh``, ``--bce-pos-weight``: SSOD's
    per-location sampler reads softmax class confidences (Eq. 12); a BCE classifier has none.
  - ``--model-dtype``: the sampler compares per-location confidences with gamma (0.95 and up)
    and the OOD metrics need float32 scores; low-precision weights are untested with them
    (use ``--amp --amp-dtype bfloat16`` for lower-precision compute).
  - ``--use-multi-epochs-loader``: workers live across epochs, but each epoch's augmentation
    seeds come from fresh workers (``seed_epoch``), which makes resumes bit-identical.
  - ``--recovery-interval``: checkpoints are written atomically per epoch; resume with
    ``--resume auto`` (``--run-epochs`` for time-limited jobs).
  - ``--log-wandb``, ``--wandb-project``, ``--wandb-tags``, ``--wandb-resume-id``: wandb is not
    a dependency; ``summary.csv`` holds the same per-epoch metrics.
  - ``--input-key``, ``--target-key``, ``--dataset-trust-remote-code``: pass them to timm's
    ``create_dataset`` through ``--dataset-kwargs input_key=... target_key=...
    trust_remote_code=True`` (for image folders ``input_key`` is set to every PIL format).
  - ``--naflex-loader`` and the other ``--naflex-*``: NaFlex batches mix sequence lengths and
    patch sizes; the SSOD head's per-location layout is checked on fixed-size inputs only.
  - ``--kd-model-name`` and the other knowledge-distillation flags (``--kd-*``,
    ``--distill-loss-weight``, ``--task-loss-weight``): timm's distillation task has its own
    loss, not combined with SSODLoss.
  - ``--val-interval``: every epoch is validated, since model_best (by ``--eval-metric``, often
    the OOD FPR95) and exact resumes are per epoch.
  - ``--fast-norm``, ``--head-init-scale``, ``--head-init-bias``, ``--save-images``, ``--tta``,
    ``--device-modules``, ``--drop-connect`` (deprecated in timm): not wired.

  timm's ``--aug-repeats`` is, as in timm, for distributed training only; on one process it
  is a one-line error (timm's loader asserts). ``--train-num-samples`` / ``--val-num-samples``
  size iterable datasets as in timm (and ``synthetic/id`` without ``num_images``).
"""
import argparse
import os
import sys
from typing import List, Optional, Tuple

import yaml
from timm.utils import ParseKwargs

from ..core import BALANCE, BALANCE_SCHEMES, GAMMA, LAMBDA, OOD_WEIGHT, check_gamma
from ..core._sampler import DEFAULT_SAMPLER, SAMPLERS
from ..data import HELD_OUT_SPLIT, TRAIN_SPLIT

OOD_METRICS = ('fpr95', 'auroc')
TRAIN_CROP_MODES = ('rrc', 'rkrc', 'rkrr')  # timm's create_transform


def is_decreasing(metric: str) -> bool:
    """Lower is better for --eval-metric ``loss`` and any FPR95 (``fpr95``, ``<set>_<det>_fpr95``)."""
    return metric == 'loss' or metric.endswith('fpr95')


def eval_metric_names(ood_sets, detectors) -> list:
    """Every name --eval-metric may take for these OOD sets and detector names."""
    names = ['loss', 'top1', 'top5']
    if ood_sets and detectors:
        names += list(OOD_METRICS) + [f'{s}_{d}_{m}' for s in ood_sets for d in detectors for m in OOD_METRICS]
    return names


def _config_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description='Training Config', add_help=False)
    parser.add_argument('-c', '--config', default='', type=str, metavar='FILE',
                        help='YAML config file specifying default arguments')
    return parser


def _add_data_args(parser: argparse.ArgumentParser) -> None:
    """'Dataset parameters': a folder or dataset name, splits, class map."""
    group = parser.add_argument_group('Dataset parameters')
    parser.add_argument('data', nargs='?', metavar='DIR', const=None,
                        help='path to dataset (positional is *deprecated*, use --data-dir)')
    group.add_argument('--data-dir', metavar='DIR', help='path to dataset (root dir)')
    group.add_argument('--dataset', metavar='NAME', default='',
                       help='dataset type + name ("<type>/<name>"): "" for an ImageFolder, torch/cifar10, '
                            'hfds/..., or the built-in benchmark synthetic/id')
    group.add_argument('--dataset-kwargs', nargs='*', default={}, action=ParseKwargs, metavar='KEY=VALUE',
                       help='extra dataset arguments, e.g. num_images=3000 img_size=64 seed=0 for synthetic/id')
    group.add_argument('--val-dataset-kwargs', nargs='*', default={}, action=ParseKwargs, metavar='KEY=VALUE',
                       help='overrides of --dataset-kwargs for the validation split and synthetic OOD sets')
    group.add_argument('--train-split', metavar='NAME', default=TRAIN_SPLIT, help='dataset train split')
    group.add_argument('--val-split', metavar='NAME', default=HELD_OUT_SPLIT,
                       help=f"dataset validation split (default {HELD_OUT_SPLIT}: an image folder's val/)")
    group.add_argument('--train-num-samples', default=None, type=int, metavar='N',
                       help='Manually specify num samples in train split, for IterableDatasets (hfids/, tfds/, wds/; '
                            'synthetic/id: the image count unless --dataset-kwargs num_images is given; image folders '
                            'and torch/ datasets ignore it, as in timm)')
    group.add_argument('--val-num-samples', default=None, type=int, metavar='N',
                       help='Manually specify num samples in validation split, for IterableDatasets (as above)')
    group.add_argument('--dataset-download', action='store_true', default=False,
                       help='Allow download of dataset for torch/ and tfds/ datasets that support it.')
    group.add_argument('--class-map', default='', type=str, metavar='FILENAME',
                       help='path to class to idx mapping file')
    group.add_argument('--input-img-mode', default=None, type=str, metavar='MODE',
                       help="Dataset image conversion mode for input images, e.g. RGB, L (default: as timm, 'L' for "
                            "1 input channel (--in-chans / --input-size), else 'RGB'; generated data ignores it)")


def _add_model_args(parser: argparse.ArgumentParser) -> None:
    """'Model parameters': architecture, weights to start from or resume, input size and batch."""
    group = parser.add_argument_group('Model parameters')
    group.add_argument('--model', default='resnet50', type=str, metavar='MODEL', help='Name of model to train')
    group.add_argument('--pretrained', action='store_true', default=False,
                       help='Start with pretrained version of specified network (if avail)')
    group.add_argument('--pretrained-path', default=None, type=str, metavar='PATH',
                       help='Load these pretrained weights (a local file) instead of downloading them (implies '
                            '--pretrained)')
    group.add_argument('--initial-checkpoint', default='', type=str, metavar='PATH',
                       help='Initialize model from this checkpoint; a plain timm checkpoint loads into an SSOD '
                            'model with only ood_head.* missing')
    group.add_argument('--resume', default='', type=str, metavar='PATH',
                       help='Resume model, optimizer, scheduler, loss scaler, EMA and RNG state: a checkpoint, '
                            'a run folder (its last.pth.tar), or "auto" (the newest run under --output, if any)')
    group.add_argument('--no-resume-opt', action='store_true', default=False,
                       help='prevent resume of optimizer state when resuming model')
    group.add_argument('--num-classes', type=int, default=None, metavar='N',
                       help='number of label classes (default: read from the dataset, else the model default)')
    group.add_argument('--gp', default=None, type=str, metavar='POOL',
                       help='Global pool type, one of (fast, avg, max, avgmax, avgmaxc). Model default if None.')
    group.add_argument('--img-size', type=int, default=None, metavar='N',
                       help='Image size (default: None => model default)')
    group.add_argument('--resize-up', type=int, default=None, metavar='N',
                       help="the paper's recipe for small images (its Table 2 trains CIFAR resized to 224): "
                            'train and evaluate at N px, upsampling every image, so the last feature map has '
                            'cells that each see a part of the image (224 -> 7x7 at stride 32); sets --img-size N '
                            'and --crop-pct 1.0 (evaluation sees the whole image) unless they are given')
    group.add_argument('--in-chans', type=int, default=None, metavar='N',
                       help='Image input channels (default: None => 3)')
    group.add_argument('--input-size', default=None, nargs=3, type=int, metavar=('C', 'H', 'W'),
                       help='Input all image dimensions (d h w, e.g. --input-size 3 224 224)')
    group.add_argument('--crop-pct', default=None, type=float, metavar='N',
                       help='Input image center crop percent (for validation only)')
    group.add_argument('--mean', type=float, nargs='+', default=None, metavar='MEAN',
                       help='Override mean pixel value of dataset')
    group.add_argument('--std', type=float, nargs='+', default=None, metavar='STD',
                       help='Override std deviation of dataset')
    group.add_argument('--interpolation', default='', type=str, metavar='NAME',
                       help='Image resize interpolation type (overrides model)')
    group.add_argument('-b', '--batch-size', type=int, default=128, metavar='N',
                       help='Input batch size for training')
    group.add_argument('-vb', '--validation-batch-size', type=int, default=None, metavar='N',
                       help='Validation batch size override')
    group.add_argument('--channels-last', action='store_true', default=False,
                       help='Use channels_last memory layout')
    group.add_argument('--grad-accum-steps', type=int, default=1, metavar='N',
                       help='The number of steps to accumulate gradients')
    group.add_argument('--grad-checkpointing', action='store_true', default=False,
                       help='Enable gradient checkpointing through model blocks/stages')
    group.add_argument('--model-kwargs', nargs='*', default={}, action=ParseKwargs, metavar='KEY=VALUE',
                       help='extra timm.create_model arguments, e.g. img_size=32 depth=2')
    group.add_argument('--torchcompile', nargs='?', type=str, default=None, const='inductor',
                       help='Enable compilation w/ specified backend (default: inductor).')
    group.add_argument('--torchcompile-mode', type=str, default=None,
                       help='torch.compile mode (default: None), with --torchcompile')


def _add_ssod_args(parser: argparse.ArgumentParser) -> None:
    """'SSOD parameters': the objective (Eq. 12 + 14) and OOD validation."""
    group = parser.add_argument_group('SSOD parameters')
    group.add_argument('--ssod', action=argparse.BooleanOptionalAction, default=True,
                       help='train with the SSOD objective (--no-ssod: plain cross-entropy, no OOD head)')
    group.add_argument('--gamma', type=float, default=GAMMA,
                       help='sampler threshold (Eq. 12), in the open interval (0.5, 1)')
    group.add_argument('--ood-lambda', type=float, default=LAMBDA, help='weight of the OOD term (Eq. 14), >= 0')
    group.add_argument('--ood-warmup-epochs', type=float, default=0.0,
                       help='ramp lambda linearly from 0 over this many epochs (training from scratch; '
                            '0: full lambda from the start, the paper\'s fine-tuning)')
    group.add_argument('--balance', type=str, default=BALANCE, choices=BALANCE_SCHEMES,
                       help='balance of the OOD term (Table 5)')
    group.add_argument('--sampler', type=str, default=DEFAULT_SAMPLER, choices=SAMPLERS,
                       help='how locations become ID / OOD samples: paper (Eq. 12, the default) or a candidate '
                            'under study (docs/study/sampler.md)')
    group.add_argument('--ood-weight', type=float, default=OOD_WEIGHT,
                       help='OOD-location weight of --balance lw')
    group.add_argument('--ood-hidden', type=int, default=0,
                       help='hidden width of the OOD head (0: a single linear layer, as in the paper)')
    group.add_argument('--ood-val', nargs='*', default=[], metavar='NAME=SPEC',
                       help='OOD validation sets: an image folder (any layout) or synthetic/<set>[?key=value&...], '
                            'e.g. bg=synthetic/backgrounds textures=/data/dtd/images')
    group.add_argument('--ood-val-detectors', nargs='+', default=None, metavar='NAME',
                       help='post-hoc scores evaluated on --ood-val (default: ssod, or msp with --no-ssod); '
                            'the first one gives eval_fpr95 / eval_auroc')


def _add_optimizer_args(parser: argparse.ArgumentParser) -> None:
    """'Optimizer parameters': the optimizer and gradient clipping."""
    group = parser.add_argument_group('Optimizer parameters')
    group.add_argument('--opt', default='sgd', type=str, metavar='OPTIMIZER', help='Optimizer')
    group.add_argument('--opt-eps', default=None, type=float, metavar='EPSILON',
                       help='Optimizer Epsilon (default: None, use opt default)')
    group.add_argument('--opt-betas', default=None, type=float, nargs='+', metavar='BETA',
                       help='Optimizer Betas (default: None, use opt default)')
    group.add_argument('--momentum', type=float, default=0.9, metavar='M', help='Optimizer momentum')
    group.add_argument('--weight-decay', type=float, default=2e-5, help='weight decay')
    group.add_argument('--clip-grad', type=float, default=None, metavar='NORM',
                       help='Clip gradient norm (default: None, no clipping)')
    group.add_argument('--clip-mode', type=str, default='norm',
                       help='Gradient clipping mode. One of ("norm", "value", "agc")')
    group.add_argument('--layer-decay', type=float, default=None, help='layer-wise learning rate decay')
    group.add_argument('--layer-decay-min-scale', type=float, default=0,
                       help='layer-wise lr decay minimum scale clamp')
    group.add_argument('--layer-decay-no-opt-scale', type=float, default=None,
                       help='layer-wise lr decay no optimization scale')
    group.add_argument('--opt-kwargs', nargs='*', default={}, action=ParseKwargs, metavar='KEY=VALUE')


def _add_schedule_args(parser: argparse.ArgumentParser) -> None:
    """'Learning rate schedule parameters': the learning-rate schedule and the epochs."""
    group = parser.add_argument_group('Learning rate schedule parameters')
    group.add_argument('--sched', type=str, default='cosine', metavar='SCHEDULER', help='LR scheduler')
    group.add_argument('--sched-on-updates', action='store_true', default=False,
                       help='Apply LR scheduler step on update instead of epoch end.')
    group.add_argument('--lr', type=float, default=None, metavar='LR',
                       help='learning rate, overrides lr-base if set')
    group.add_argument('--lr-base', type=float, default=0.1, metavar='LR',
                       help='base learning rate: lr = lr_base * global_batch_size / base_size')
    group.add_argument('--lr-base-size', type=int, default=256, metavar='DIV',
                       help='base learning rate batch size (divisor)')
    group.add_argument('--lr-base-scale', type=str, default='', metavar='SCALE',
                       help='base learning rate vs batch_size scaling ("linear", "sqrt", based on opt if empty)')
    group.add_argument('--lr-noise', type=float, nargs='+', default=None, metavar='pct, pct',
                       help='learning rate noise on/off epoch percentages')
    group.add_argument('--lr-noise-pct', type=float, default=0.67, metavar='PERCENT',
                       help='learning rate noise limit percent')
    group.add_argument('--lr-noise-std', type=float, default=1.0, metavar='STDDEV', help='learning rate noise std-dev')
    group.add_argument('--lr-cycle-mul', type=float, default=1.0, metavar='MULT',
                       help='learning rate cycle len multiplier')
    group.add_argument('--lr-cycle-decay', type=float, default=0.5, metavar='MULT',
                       help='amount to decay each learning rate cycle')
    group.add_argument('--lr-cycle-limit', type=int, default=1, metavar='N',
                       help='learning rate cycle limit, cycles enabled if > 1')
    group.add_argument('--lr-k-decay', type=float, default=1.0, help='learning rate k-decay for cosine/poly')
    group.add_argument('--warmup-lr', type=float, default=1e-5, metavar='LR', help='warmup learning rate')
    group.add_argument('--min-lr', type=float, default=0, metavar='LR',
                       help='lower lr bound for cyclic schedulers that hit 0')
    group.add_argument('--epochs', type=int, default=300, metavar='N', help='number of epochs to train')
    group.add_argument('--epoch-repeats', type=float, default=0., metavar='N',
                       help='epoch repeat multiplier (number of times to repeat dataset epoch per train epoch).')
    group.add_argument('--start-epoch', default=None, type=int, metavar='N',
                       help='manual epoch number (useful on restarts)')
    group.add_argument('--run-epochs', default=None, type=int, metavar='N',
                       help='train at most N epochs in this invocation, then stop (the schedule still spans '
                            '--epochs); continue later with --resume. For time-limited / preemptible jobs.')
    group.add_argument('--decay-milestones', default=[90, 180, 270], type=int, nargs='+', metavar='MILESTONES',
                       help='list of decay epoch indices for multistep lr. must be increasing')
    group.add_argument('--decay-epochs', type=float, default=90, metavar='N', help='epoch interval to decay LR')
    group.add_argument('--warmup-epochs', type=int, default=5, metavar='N',
                       help='epochs to warmup LR, if scheduler supports')
    group.add_argument('--warmup-prefix', action='store_true', default=False,
                       help='Exclude warmup period from decay schedule.')
    group.add_argument('--cooldown-epochs', type=int, default=0, metavar='N',
                       help='epochs to cooldown LR at min_lr, after cyclic schedule ends')
    group.add_argument('--patience-epochs', type=int, default=10, metavar='N',
                       help='patience epochs for Plateau LR scheduler')
    group.add_argument('--decay-rate', '--dr', type=float, default=0.1, metavar='RATE', help='LR decay rate')


def _add_augmentation_args(parser: argparse.ArgumentParser) -> None:
    """'Augmentation and regularization parameters': augmentation, mixup, label smoothing, dropout."""
    group = parser.add_argument_group('Augmentation and regularization parameters')
    group.add_argument('--no-aug', action='store_true', default=False,
                       help='Disable all training augmentation, override other train aug args')
    group.add_argument('--train-crop-mode', type=str, default=None, choices=TRAIN_CROP_MODES,
                       help='Crop-mode in train (default: rrc, RandomResizedCrop)')
    group.add_argument('--scale', type=float, nargs='+', default=[0.08, 1.0], metavar='PCT',
                       help='Random resize scale')
    group.add_argument('--ratio', type=float, nargs='+', default=[3. / 4., 4. / 3.], metavar='RATIO',
                       help='Random resize aspect ratio')
    group.add_argument('--hflip', type=float, default=0.5, help='Horizontal flip training aug probability')
    group.add_argument('--vflip', type=float, default=0., help='Vertical flip training aug probability')
    group.add_argument('--color-jitter', type=float, default=0.4, metavar='PCT', help='Color jitter factor')
    group.add_argument('--color-jitter-prob', type=float, default=None, metavar='PCT',
                       help='Probability of applying any color jitter (default: always)')
    group.add_argument('--grayscale-prob', type=float, default=None, metavar='PCT',
                       help='Probability of applying random grayscale conversion')
    group.add_argument('--gaussian-blur-prob', type=float, default=None, metavar='PCT',
                       help='Probability of applying gaussian blur')
    group.add_argument('--aa', type=str, default=None, metavar='NAME',
                       help='Use AutoAugment policy. "v0" or "original".')
    group.add_argument('--aug-repeats', type=float, default=0,
                       help='Number of augmentation repetitions (distributed training only) (default: 0)')
    group.add_argument('--reprob', type=float, default=0., metavar='PCT', help='Random erase prob')
    group.add_argument('--remode', type=str, default='pixel', help='Random erase mode')
    group.add_argument('--recount', type=int, default=1, help='Random erase count')
    group.add_argument('--mixup', type=float, default=0.0,
                       help='mixup alpha, mixup enabled if > 0 (only with --no-ssod)')
    group.add_argument('--cutmix', type=float, default=0.0,
                       help='cutmix alpha, cutmix enabled if > 0 (only with --no-ssod)')
    group.add_argument('--cutmix-minmax', type=float, nargs='+', default=None,
                       help='cutmix min/max ratio, overrides alpha and enables cutmix if set')
    group.add_argument('--mixup-prob', type=float, default=1.0,
                       help='Probability of performing mixup or cutmix when either/both is enabled')
    group.add_argument('--mixup-switch-prob', type=float, default=0.5,
                       help='Probability of switching to cutmix when both mixup and cutmix enabled')
    group.add_argument('--mixup-mode', type=str, default='batch',
                       help='How to apply mixup/cutmix params. Per "batch", "pair", or "elem"')
    group.add_argument('--mixup-off-epoch', default=0, type=int, metavar='N',
                       help='Turn off mixup after this epoch, disabled if 0')
    group.add_argument('--smoothing', type=float, default=0.0,
                       help='Label smoothing of the classification term (timm default 0.1; 0 here, see docs)')
    group.add_argument('--train-interpolation', type=str, default='random',
                       help='Training interpolation (random, bilinear, bicubic)')
    group.add_argument('--drop', type=float, default=0.0, metavar='PCT', help='Dropout rate')
    group.add_argument('--drop-path', type=float, default=None, metavar='PCT', help='Drop path rate')
    group.add_argument('--drop-block', type=float, default=None, metavar='PCT', help='Drop block rate')


def _add_batch_norm_args(parser: argparse.ArgumentParser) -> None:
    """'Batch norm parameters': BatchNorm overrides and their synchronisation."""
    group = parser.add_argument_group('Batch norm parameters')
    group.add_argument('--bn-momentum', type=float, default=None, help='BatchNorm momentum override (if not None)')
    group.add_argument('--bn-eps', type=float, default=None, help='BatchNorm epsilon override (if not None)')
    group.add_argument('--sync-bn', action='store_true', help='Enable synchronized BatchNorm.')
    group.add_argument('--dist-bn', type=str, default='reduce',
                       help='Distribute BatchNorm stats between nodes after each epoch ("broadcast", "reduce", or "")')


def _add_ema_args(parser: argparse.ArgumentParser) -> None:
    """'Model exponential moving average parameters': the model's exponential moving average."""
    group = parser.add_argument_group('Model exponential moving average parameters')
    group.add_argument('--model-ema', action='store_true', default=False,
                       help='Enable tracking moving average of model weights (timm ModelEmaV3)')
    group.add_argument('--model-ema-force-cpu', action='store_true', default=False,
                       help='Force ema to be tracked on CPU, rank=0 node only. Disables EMA validation.')
    group.add_argument('--model-ema-decay', type=float, default=0.9998,
                       help='Decay factor for model weights moving average')
    group.add_argument('--model-ema-warmup', action='store_true', help='Enable warmup for model EMA decay.')


def _add_misc_args(parser: argparse.ArgumentParser) -> None:
    """'Miscellaneous parameters': seed, logging, workers, AMP, device, output folder, checkpoint metric, Hub."""
    group = parser.add_argument_group('Miscellaneous parameters')
    group.add_argument('--seed', type=int, default=42, metavar='S', help='random seed')
    group.add_argument('--worker-seeding', type=str, default='all', help='worker seed mode')
    group.add_argument('--log-interval', type=int, default=50, metavar='N',
                       help='how many batches to wait before logging training status')
    group.add_argument('--checkpoint-hist', type=int, default=10, metavar='N', help='number of checkpoints to keep')
    group.add_argument('-j', '--workers', type=int, default=min(4, os.cpu_count() or 1), metavar='N',
                       help="how many data loading processes to use (default: timm's 4, at most the CPU count, as "
                            'in eval: more only warn and slow a small machine)')
    group.add_argument('--amp', action='store_true', default=False, help='use native torch AMP (autocast)')
    group.add_argument('--amp-dtype', default=None, type=str, choices=('float16', 'bfloat16'),
                       help='lower precision AMP dtype (default float16; on CPU --amp trains in float32 unless this '
                            'is given, since CPU autocast is much slower)')
    group.add_argument('--device', default=None, type=str, help='device (default: cuda if available, else cpu)')
    group.add_argument('--dist-backend', default=None, type=str,
                       help='torch.distributed backend (default: nccl on cuda, gloo on cpu)')
    group.add_argument('--dist-url', default=None, type=str, help='torch.distributed init url (default: env://)')
    group.add_argument('--no-ddp-bb', action='store_true', default=False,
                       help='Force broadcast buffers for native DDP to off.')
    group.add_argument('--synchronize-step', action='store_true', default=False,
                       help='torch.cuda.synchronize() end of each step')
    group.add_argument('--deterministic', action='store_true', default=False,
                       help='torch.use_deterministic_algorithms(True) and no cudnn.benchmark, for bit-exact resumes '
                            'on GPU (CUDA also needs CUBLAS_WORKSPACE_CONFIG=:4096:8); CPU runs are exact without it')
    group.add_argument('--pin-mem', action='store_true', default=False,
                       help='Pin CPU memory in DataLoader for more efficient (sometimes) transfer to GPU.')
    group.add_argument('--no-prefetcher', action='store_true', default=False, help='disable fast prefetcher')
    group.add_argument('--output', default='', type=str, metavar='PATH',
                       help='path to output folder (default: ./output/train)')
    group.add_argument('--experiment', default='', type=str, metavar='NAME',
                       help='name of train experiment, name of sub-folder for output')
    group.add_argument('--eval-metric', '--checkpoint-metric', dest='eval_metric', default='top1', type=str,
                       metavar='EVAL_METRIC',
                       help='metric that selects model_best: top1 (higher is better), fpr95 (mean over the '
                            '--ood-val sets, lower is better, the paper), auroc, loss, top5, or <set>_<detector>_fpr95')
    group.add_argument('--local_rank', '--local-rank', default=0, type=int, help=argparse.SUPPRESS)
    group.add_argument('--push-to-hub', default=None, type=str, metavar='ORG/NAME',
                       help='push the finished run to this Hugging Face Hub repo (timm_ssod.hub)')


def build_parser(prog: Optional[str] = None) -> argparse.ArgumentParser:
    """The full argument parser (timm's groups and names, plus 'SSOD parameters'), one function per group."""
    parser = argparse.ArgumentParser(
        prog=prog, description='Train a timm model with the SSOD objective (or as a plain classifier with --no-ssod)',
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument('-c', '--config', default='', type=str, metavar='FILE',
                        help='YAML config file specifying default arguments (command line flags override it)')
    for add_group in (_add_data_args, _add_model_args, _add_ssod_args, _add_optimizer_args, _add_schedule_args,
                      _add_augmentation_args, _add_batch_norm_args, _add_ema_args, _add_misc_args):
        add_group(parser)
    return parser


def _load_config(path: str, parser: argparse.ArgumentParser) -> dict:
    try:
        with open(path, 'r') as f:
            cfg = yaml.safe_load(f) or {}
    except OSError as e:
        parser.error(f'cannot read --config {path!r}: {e}')
    except yaml.YAMLError as e:
        parser.error(f'--config {path!r} is not valid YAML: {e}')
    if not isinstance(cfg, dict):
        parser.error(f'--config {path!r} must hold a mapping of argument names to values')
    cfg = {str(k).replace('-', '_'): v for k, v in cfg.items()}
    if 'checkpoint_metric' in cfg:
        cfg.setdefault('eval_metric', cfg.pop('checkpoint_metric'))
    if isinstance(cfg.get('ood_val'), dict):  # YAML may give the OOD sets as a mapping
        cfg['ood_val'] = [f'{k}={v}' for k, v in cfg['ood_val'].items()]
    known = {a.dest for a in parser._actions}
    unknown = sorted(set(cfg) - known)
    if unknown:
        parser.error(f'--config {path!r}: unknown argument(s) {", ".join(unknown)}')
    return cfg


def check_args(args: argparse.Namespace, parser: argparse.ArgumentParser) -> None:
    """Checks argparse cannot make on values that may come from a YAML file (set_defaults
    bypasses ``type`` and ``choices``). Calls ``parser.error`` (exit code 2) on bad values."""
    try:
        check_gamma(args.gamma)
    except ValueError:
        parser.error(f'--gamma must be in the open interval (0.5, 1), got {args.gamma!r}')
    if not (isinstance(args.ood_lambda, (int, float)) and args.ood_lambda >= 0):
        parser.error(f'--ood-lambda must be >= 0, got {args.ood_lambda!r}')
    if not (isinstance(args.ood_warmup_epochs, (int, float)) and args.ood_warmup_epochs >= 0):
        parser.error(f'--ood-warmup-epochs must be >= 0, got {args.ood_warmup_epochs!r}')
    if args.balance not in BALANCE_SCHEMES:
        parser.error(f'--balance: unknown balance scheme {args.balance!r}; choose one of {", ".join(BALANCE_SCHEMES)}')
    if not args.ood_weight > 0:
        parser.error(f'--ood-weight must be > 0, got {args.ood_weight!r}')
    if args.amp_dtype not in (None, 'float16', 'bfloat16'):
        parser.error(f'--amp-dtype must be float16 or bfloat16, got {args.amp_dtype!r}')
    mixup_active = args.mixup > 0 or args.cutmix > 0 or args.cutmix_minmax is not None
    if args.ssod and mixup_active:
        parser.error('--mixup / --cutmix cannot be used with --ssod: the SSOD sampler (Eq. 12) needs one integer '
                     'class label per image to read the per-location confidence, and mixed images have soft '
                     'labels. Train without them, or train the vanilla baseline with --no-ssod.')
    if args.train_crop_mode not in (None,) + TRAIN_CROP_MODES:
        parser.error(f'--train-crop-mode must be one of {", ".join(TRAIN_CROP_MODES)}, got {args.train_crop_mode!r}')
    for flag in ('color_jitter_prob', 'grayscale_prob', 'gaussian_blur_prob'):
        value = getattr(args, flag)
        if value is not None and not (isinstance(value, (int, float)) and 0 <= value <= 1):
            parser.error(f'--{flag.replace("_", "-")} is a probability in [0, 1], got {value!r}')
    if not (isinstance(args.aug_repeats, (int, float)) and args.aug_repeats >= 0):
        parser.error(f'--aug-repeats must be >= 0, got {args.aug_repeats!r}')
    for flag in ('train_num_samples', 'val_num_samples'):
        value = getattr(args, flag)
        if value is not None and not (isinstance(value, int) and value >= 1):
            parser.error(f'--{flag.replace("_", "-")} must be an integer >= 1, got {value!r}')
    if args.grad_accum_steps < 1:
        parser.error(f'--grad-accum-steps must be >= 1, got {args.grad_accum_steps}')
    if args.run_epochs is not None and args.run_epochs < 1:
        parser.error(f'--run-epochs must be >= 1, got {args.run_epochs}')
    if args.log_interval < 1:
        parser.error(f'--log-interval must be >= 1, got {args.log_interval}')
    if args.checkpoint_hist < 1:
        parser.error(f'--checkpoint-hist must be >= 1, got {args.checkpoint_hist}')
    if args.eval_metric in OOD_METRICS and not args.ood_val:
        parser.error(f'--eval-metric {args.eval_metric} needs OOD validation data: give --ood-val NAME=SPEC')
    for spec in args.ood_val:
        name = spec.partition('=')[0] if '=' in spec else spec
        if '=' in spec and not name:
            parser.error(f'--ood-val {spec!r}: empty NAME before "="')
    if args.resize_up is not None:
        apply_resize_up(args, parser)


def apply_resize_up(args: argparse.Namespace, parser: argparse.ArgumentParser) -> None:
    """``--resize-up N``: ``--img-size N`` and, unless given, ``--crop-pct 1.0``."""
    n = args.resize_up
    if not (isinstance(n, int) and n >= 32):
        parser.error(f'--resize-up must be an image size >= 32, got {n!r}')
    if (args.img_size not in (None, n)) or (args.input_size and tuple(args.input_size[1:]) != (n, n)):
        parser.error(f'--resize-up {n} sets the input size: drop --img-size / --input-size, or give the same size')
    args.img_size = n
    if args.crop_pct is None:
        args.crop_pct = 1.0


def parse_args(argv: Optional[List[str]] = None, prog: Optional[str] = None) -> Tuple[argparse.Namespace, str]:
    """timm's two-stage parse: ``--config`` YAML -> defaults, then the command line.
    Returns ``(args, args_text)``, the latter the YAML of the merged arguments."""
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser(prog)
    args_config, remaining = _config_parser().parse_known_args(argv)
    if args_config.config:
        parser.set_defaults(**_load_config(args_config.config, parser))
    args = parser.parse_args(remaining)
    args.config = args_config.config
    check_args(args, parser)
    args_text = yaml.safe_dump(args.__dict__, default_flow_style=False)
    return args, args_text
