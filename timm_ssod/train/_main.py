#!/usr/bin/env python3
"""``timm-ssod train`` / ``python -m timm_ssod.train``: timm's ``train.py`` with the SSOD objective.

The script follows timm's ``train.py`` step by step (same flags, ``--config`` YAML, output
folder ``output/train/<timestamp>-<model>-<img>/`` with ``args.yaml``, ``summary.csv``,
``last.pth.tar``, ``model_best.pth.tar``, same log lines) and reuses timm's pieces. What
SSOD adds:

* the model is ``timm_ssod.create_model(..., ssod=True)`` (``--no-ssod``: the plain timm
  model and cross-entropy, the vanilla baseline); ``model.ssod_cfg`` records gamma / lambda /
  balance, and checkpoints carry it;
* the loss is ``SSODLoss`` (Eq. 12 + 14); each epoch logs and summarises its CE and OOD
  terms and the sampler's share of ID / OOD / ignored locations;
* ``--ood-val NAME=SPEC`` adds FPR95 / AUROC per epoch; ``--eval-metric fpr95`` keeps the
  checkpoint with the lowest mean FPR95 (the paper's choice);
* resume is exact: every epoch reseeds from (seed, epoch, rank), checkpoints hold the LR
  scheduler and RNG state, so a run killed after epoch k and resumed ends with the same
  weights as an uninterrupted run (bit-identical on CPU; on GPU with ``--deterministic``);
  resumed with other schedule flags (a larger ``--epochs`` ...) the LR schedule is rebuilt
  from them and stepped to the resume epoch, as timm does (``_schedule``);
* checkpoints are written atomically, never with NaN weights, and only after the output
  folder was proven writable.

Multi-GPU / multi-node: ``torchrun --nproc_per_node N -m timm_ssod.train ...`` (on CPU add
``--device cpu``; the backend defaults to gloo there). Only rank 0 writes files.
"""
import glob
import logging
import os
import sys
import time
from contextlib import suppress
from datetime import datetime
from functools import partial
from typing import Any, Dict, List, Optional

import torch
import torch.nn as nn
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel as NativeDDP

from timm import utils
from timm.data import FastCollateMixup, Mixup, create_loader, resolve_data_config
from timm.data.loader import fast_collate
from timm.layers import convert_sync_batchnorm
from timm.loss import LabelSmoothingCrossEntropy, SoftTargetCrossEntropy
from timm.models import load_checkpoint, resume_checkpoint, safe_model_name
from timm.optim import create_optimizer_v2, optimizer_kwargs
from timm.utils import ModelEmaV3, NativeScaler

from .._util import atomic_write_text
from ..checkpoints import (AtomicCheckpointSaver, CheckpointError, NonFiniteWeightsError, OutputDirError,
                         BEST, LAST, TIMM_BEST, check_output_dir, checkpoint_in_run, estimate_checkpoint_bytes,
                         load_training_state, read_checkpoint, remove_partial_files, resolve_resume, rng_state,
                         ssod_cfg_from_args, trim_summary)
from ..hub import PretrainedWeightsError, create_model, unknown_model_message
from ..data import class_names, drop_unreadable, leave_out_unreadable, readable_batches
from ..core import label_names, set_label_names
from ..core import SSODLoss
from ._args import eval_metric_names, is_decreasing, parse_args
from ..data import dataset_num_classes
from ._data import TrainConfigError, build_datasets, build_ood_sets
from ._loop import NonFiniteLossError, seed_epoch, train_one_epoch, validate
from ._schedule import build_schedule
from ._task import ClassifierTask, SSODTask

_logger = logging.getLogger('train')

# errors with a message meant for the user: the CLI prints them without a traceback
class PushError(OSError):
    """``--push-to-hub`` cannot push (checked before training, or the push at the end failed)."""


USER_ERRORS = (PushError, OutputDirError, NonFiniteLossError, NonFiniteWeightsError, FileNotFoundError,
               TrainConfigError, CheckpointError)


def _setup_logging(rank: int) -> None:
    """timm's log format, once per process (main() may run several times in one process)."""
    if not logging.root.handlers:
        utils.setup_default_logging(default_level=logging.INFO if rank == 0 else logging.WARNING)


# relative seconds per CPU training batch by autocast dtype (a 2-core x86 machine, torch 2.x): the warning's figures
CPU_AMP_SECONDS = {'float32': 1.0, 'float16': 21.0, 'bfloat16': 16.5}


def _amp(args, device):
    """(autocast context factory, loss scaler or None), as timm: a scaler for CUDA float16 only.

    On CPU, autocast is much slower than float32 (``CPU_AMP_SECONDS``): ``--amp`` alone trains in
    float32 there, with a warning; ``--amp --amp-dtype float16|bfloat16`` is honoured, warned."""
    if not args.amp:
        return suppress, None
    if device.type == 'cpu':
        if args.amp_dtype is None:
            _logger.warning(
                f'--amp on CPU: training in float32 instead. CPU autocast is far slower than float32 (on a 2-core '
                f"CPU a batch took {CPU_AMP_SECONDS['float16']:g} s in float16 and {CPU_AMP_SECONDS['bfloat16']:g} s "
                f"in bfloat16 against {CPU_AMP_SECONDS['float32']:g} s in float32). To use it anyway, name the type: "
                '--amp --amp-dtype bfloat16 (or float16).')
            args.amp = False
            return suppress, None
        _logger.warning(f'--amp --amp-dtype {args.amp_dtype} on CPU: expect it to be much slower than float32 (on a '
                        f'2-core CPU {CPU_AMP_SECONDS[args.amp_dtype]:g} s per batch against '
                        f"{CPU_AMP_SECONDS['float32']:g} s); leave --amp out on CPU")
    args.amp_dtype = args.amp_dtype or 'float16'
    dtype = torch.bfloat16 if args.amp_dtype == 'bfloat16' else torch.float16
    autocast = partial(torch.autocast, device_type=device.type, dtype=dtype)
    scaler = NativeScaler(device=device.type) if device.type == 'cuda' and dtype == torch.float16 else None
    if device.type != 'cuda' and dtype == torch.float16:
        _logger.warning('float16 autocast without a loss scaler on %s; bfloat16 is the safer choice', device.type)
    return autocast, scaler


def _check_model_args(args) -> None:
    """Model flags that cannot work, as one-line errors before any data is read: an unknown
    --model (with timm's closest names), a --pretrained-path that is not a file. A
    --pretrained-path implies --pretrained (timm ignores it without)."""
    message = unknown_model_message(args.model)
    if message:
        raise TrainConfigError(f'--model {args.model!r}: {message}')
    if args.pretrained_path:
        if not os.path.isfile(args.pretrained_path):
            raise TrainConfigError(f'--pretrained-path {args.pretrained_path!r}: no such file')
        if not args.pretrained:
            _logger.info(f'--pretrained-path {args.pretrained_path}: loading it as the pretrained weights '
                         '(implies --pretrained)')
            args.pretrained = True


def _create_model(args, num_classes: Optional[int]) -> nn.Module:
    in_chans = args.in_chans or (args.input_size[0] if args.input_size is not None else 3)
    factory_kwargs = {}
    if args.pretrained_path:
        factory_kwargs['pretrained_cfg_overlay'] = dict(file=args.pretrained_path)
    try:
        model = create_model(
            args.model,
            ssod=args.ssod,
            ood_hidden=args.ood_hidden,
            pretrained=args.pretrained,
            in_chans=in_chans,
            num_classes=num_classes,
            drop_rate=args.drop,
            drop_path_rate=args.drop_path,
            drop_block_rate=args.drop_block,
            global_pool=args.gp,
            bn_momentum=args.bn_momentum,
            bn_eps=args.bn_eps,
            **factory_kwargs,
            **args.model_kwargs,
        )
    except PretrainedWeightsError as e:
        raise TrainConfigError(f"--pretrained: could not fetch timm's weights for {args.model!r} ({e.reason}), and "
                               'they are not in the local Hub cache. Pass a local weights file with --pretrained-path '
                               'FILE (.safetensors or .pth), or start from a checkpoint with --initial-checkpoint '
                               'FILE.') from e
    if args.initial_checkpoint:
        load_initial_checkpoint(model, args.initial_checkpoint)
    if args.ssod:
        model.ssod_cfg.update(ssod_cfg_from_args(vars(args)))
    return model


def load_initial_checkpoint(model: nn.Module, path: str) -> None:
    """Load weights (timm's ``load_checkpoint``, ``weights_only=True``, EMA weights if present)
    with ``strict=False``, where only ``ood_head.*`` may be missing (a plain timm checkpoint
    into an SSOD model) or unexpected (an SSOD checkpoint into a plain model). A file that cannot
    be read is a ``CheckpointError`` (truncated / corrupt, or refused by ``weights_only``); weights
    that do not fit the model a ``RuntimeError`` naming the first mismatch."""
    if os.path.splitext(path)[-1].lower() in ('.npz', '.npy') and os.path.isfile(path):
        return load_checkpoint(model, path, strict=False)  # timm: the model's own numpy loader
    state_dict = read_checkpoint(path, use_ema=True, what='--initial-checkpoint')[0]
    try:
        result = model.load_state_dict(state_dict, strict=False)
    except RuntimeError as e:
        lines = [line.strip() for line in str(e).splitlines() if line.strip()]
        detail = next((line for line in lines if 'size mismatch' in line), lines[0] if lines else '')
        raise RuntimeError(f'--initial-checkpoint {path!r} does not fit {type(model).__name__} (different '
                           f'architecture or --num-classes?): {detail}') from e
    missing = [k for k in result.missing_keys if not k.startswith('ood_head.')]
    unexpected = [k for k in result.unexpected_keys if not k.startswith('ood_head.')]
    if missing or unexpected:
        raise RuntimeError(f'--initial-checkpoint {path!r} does not match the model: missing {missing[:5]}'
                           f'{"..." if len(missing) > 5 else ""}, unexpected {unexpected[:5]}'
                           f'{"..." if len(unexpected) > 5 else ""}')
    if any(k.startswith('ood_head.') for k in result.missing_keys):
        _logger.info(f'Loaded {path}: a plain checkpoint, the OOD head starts fresh')
    elif any(k.startswith('ood_head.') for k in result.unexpected_keys):
        _logger.info(f'Loaded {path}: its OOD head is ignored (--no-ssod)')


def _resolve_lr(args) -> None:
    if args.lr:
        return
    global_batch_size = args.batch_size * args.world_size * args.grad_accum_steps
    batch_ratio = global_batch_size / args.lr_base_size
    if not args.lr_base_scale:
        on = args.opt.lower()
        args.lr_base_scale = 'sqrt' if any(o in on for o in ('ada', 'lamb')) else 'linear'
    if args.lr_base_scale == 'sqrt':
        batch_ratio = batch_ratio ** 0.5
    args.lr = args.lr_base * batch_ratio
    if utils.is_primary(args):
        _logger.info(f'Learning rate ({args.lr}) calculated from base learning rate ({args.lr_base}) '
                     f'and effective global batch size ({global_batch_size}) with {args.lr_base_scale} scaling.')


def _output_dir(args, data_config, resume_path: Optional[str]) -> str:
    """timm's ``output/train/<timestamp>-<model>-<img>``; ``--experiment`` names the folder;
    a resumed run continues in its checkpoint's folder unless ``--experiment`` names another.
    A new run never writes into a folder holding another run's checkpoints: as timm's
    ``get_outdir(output, experiment, inc=True)``, it gets ``<experiment>-1``, ``-2`` ..."""
    root = args.output or './output/train'
    if args.experiment:
        folder = os.path.join(root, args.experiment)
        if resume_path and os.path.abspath(os.path.dirname(resume_path)) == os.path.abspath(folder):
            return folder
        if glob.glob(os.path.join(glob.escape(folder), '*.pth.tar')):
            new = utils.get_outdir(root, args.experiment, inc=True)
            _logger.warning(f'{folder} holds the checkpoints of another run: this run writes to {new} '
                            f'(to continue that run instead: --resume {folder})')
            return new
        return folder
    if resume_path:
        return os.path.dirname(os.path.abspath(resume_path))
    name = '-'.join([datetime.now().strftime('%Y%m%d-%H%M%S'), safe_model_name(args.model),
                     str(data_config['input_size'][-1])])
    return os.path.join(root, name)


def _ddp_buffer_kwargs(args) -> Dict[str, bool]:
    """--no-ddp-bb: no buffer sync in forward (torch >= 2.14 names it forward_sync_buffers)."""
    if not args.no_ddp_bb:
        return {}
    import inspect
    params = inspect.signature(NativeDDP.__init__).parameters
    return {'forward_sync_buffers' if 'forward_sync_buffers' in params else 'broadcast_buffers': False}


def _agree_on_error(args, message: Optional[str]) -> Optional[str]:
    """Rank 0's error message, on every rank (so all ranks stop, not only rank 0)."""
    if not args.distributed:
        return message
    box = [message]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def _loader(dataset, args, data_config, device, is_training: bool, collate_fn=None):
    common = dict(input_size=data_config['input_size'], use_prefetcher=args.prefetcher,
                  mean=data_config['mean'], std=data_config['std'], num_workers=args.workers,
                  distributed=args.distributed, pin_memory=args.pin_mem, device=device,
                  # fresh workers every epoch: their seeds then follow seed_epoch(), which makes resumes exact
                  persistent_workers=False)
    if not is_training:  # validation: an unreadable image is left out, not replaced (timm_ssod.data._unreadable)
        leave_out_unreadable(dataset)
        return readable_batches(create_loader(
            dataset, batch_size=args.validation_batch_size or args.batch_size, is_training=False,
            interpolation=data_config['interpolation'], crop_pct=data_config['crop_pct'],
            collate_fn=drop_unreadable(fast_collate if args.prefetcher else None), **common))
    interpolation = args.train_interpolation
    if args.no_aug or not interpolation:
        interpolation = data_config['interpolation']
    return create_loader(
        dataset, batch_size=args.batch_size, is_training=True, no_aug=args.no_aug, re_prob=args.reprob,
        re_mode=args.remode, re_count=args.recount, scale=args.scale, ratio=args.ratio, hflip=args.hflip,
        vflip=args.vflip, color_jitter=args.color_jitter, auto_augment=args.aa, interpolation=interpolation,
        collate_fn=collate_fn, worker_seeding=args.worker_seeding, train_crop_mode=args.train_crop_mode,
        color_jitter_prob=args.color_jitter_prob, grayscale_prob=args.grayscale_prob or 0.,
        gaussian_blur_prob=args.gaussian_blur_prob or 0., num_aug_repeats=args.aug_repeats, **common)


def _detectors(args) -> List:
    from ..detectors import create_detector
    names = args.ood_val_detectors or (['ssod'] if args.ssod else ['msp'])
    detectors = [create_detector(n) for n in names]
    for d in detectors:
        if d.needs_fit or d.needs_inputs:
            raise TrainConfigError(f'--ood-val-detectors {d.name}: only detectors without fit or input perturbation '
                             'can run during training; evaluate it afterwards with the evaluation harness')
        if d.needs_ood_head and not args.ssod:
            raise TrainConfigError(f'--ood-val-detectors {d.name} needs the OOD head: not available with --no-ssod')
    return detectors


def _check_push(args, output_dir: Optional[str]) -> None:
    """``--push-to-hub``: the endpoint answers and takes the token before anything is trained
    (huggingface_hub's ``whoami``); else one line with what to do, the push command included."""
    if not args.push_to_hub or output_dir is None:
        return
    from .. import hub
    try:
        hub.check_push_access()
    except hub.HubError as e:
        with suppress(OSError):
            os.rmdir(output_dir)  # the folder the check made, if nothing is in it
        raise PushError(f'--push-to-hub {args.push_to_hub}: {str(e).rstrip(".")}; nothing was trained. Fix that, or '
                        'train without --push-to-hub and push the run afterwards: '
                        f'timm-ssod push {output_dir} {args.push_to_hub}') from e


def _push_to_hub(output_dir: str, repo_id: str) -> None:
    """Upload the finished run (its model_best.pth.tar) with ``timm_ssod.hub``."""
    from .. import hub
    try:
        hub.push_training_run(output_dir, repo_id)
    except hub.HubError as e:
        raise PushError(f'the run is saved in {output_dir}, but pushing it failed: {str(e).split(". Check the")[0]}'
                        f'. Push it once that is fixed: timm-ssod push {output_dir} {repo_id}') from e


def _train_loss(args, mixup_active: bool) -> nn.Module:
    """SSODLoss (Eq. 12 + 14) around the classification criterion, or that criterion alone (--no-ssod)."""
    if mixup_active:
        cls_loss = SoftTargetCrossEntropy()
    elif args.smoothing:
        cls_loss = LabelSmoothingCrossEntropy(smoothing=args.smoothing)
    else:
        cls_loss = nn.CrossEntropyLoss()
    if not args.ssod:
        return cls_loss
    return SSODLoss(gamma=args.gamma, lam=args.ood_lambda, balance=args.balance, ood_weight=args.ood_weight,
                    cls_loss=cls_loss, sampler=args.sampler)


def _validate_epoch(model, model_ema, loader_eval, ood_loaders, detectors, args, device, amp_autocast):
    """timm's end-of-epoch validation: BN stats shared across ranks, then the model and, if
    kept on the device, its EMA, whose metrics then count (select the best checkpoint)."""
    distribute = args.distributed and args.dist_bn in ('broadcast', 'reduce')
    if distribute:
        if utils.is_primary(args):
            _logger.info('Distributing BatchNorm running means and vars')
        utils.distribute_bn(model, args.world_size, args.dist_bn == 'reduce')
    eval_metrics, _ = validate(model, loader_eval, args, device, amp_autocast, detectors, ood_loaders)
    if model_ema is not None and not args.model_ema_force_cpu:
        if distribute:
            utils.distribute_bn(model_ema, args.world_size, args.dist_bn == 'reduce')
        eval_metrics, _ = validate(model_ema.module, loader_eval, args, device, amp_autocast, detectors, ood_loaders,
                                   log_suffix=' (EMA)')
    return eval_metrics


def _setup(argv: Optional[List[str]], prog: Optional[str]):
    """Arguments, logging, device (and process group), determinism, AMP, seed, the model flags.
    Returns ``(args, args_text, device, amp_autocast, loss_scaler)``."""
    args, args_text = parse_args(argv, prog=prog)
    _setup_logging(int(os.environ.get('RANK', 0)))

    args.prefetcher = not args.no_prefetcher
    args.device = args.device or ('cuda' if torch.cuda.is_available() else 'cpu')
    device = utils.init_distributed_device(args)
    if args.distributed:
        _logger.info(f'Training in distributed mode with multiple processes, 1 device per process. '
                     f'Process {args.rank}, total {args.world_size}, device {args.device}.')
    else:
        _logger.info(f'Training with a single process on 1 device ({args.device}).')
    if args.deterministic:
        torch.use_deterministic_algorithms(True)
        torch.backends.cudnn.benchmark = False
    elif device.type == 'cuda':
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.benchmark = True
    if args.sync_bn and device.type != 'cuda':
        raise TrainConfigError('--sync-bn needs CUDA devices')
    if args.aug_repeats and not args.distributed:  # timm's RepeatAugSampler is a distributed sampler
        raise TrainConfigError(f'--aug-repeats {args.aug_repeats:g} needs distributed training (torchrun '
                               '--nproc_per_node N ...), as in timm; leave it out on one process')
    amp_autocast, loss_scaler = _amp(args, device)
    if args.amp and utils.is_primary(args):
        _logger.info(f'Using native Torch AMP ({args.amp_dtype}). Training in mixed precision.')
    utils.random_seed(args.seed, args.rank)
    _check_model_args(args)
    return args, args_text, device, amp_autocast, loss_scaler


def _build_data(args):
    """The datasets first: the number of classes is read from them when --num-classes is not
    given. Returns ``(dataset_train, dataset_eval, num_classes, ood_sets, detectors)``."""
    dataset_train, dataset_eval = build_datasets(args)
    data_classes = dataset_num_classes(dataset_train)
    if args.num_classes and data_classes and data_classes != args.num_classes:
        why = (f'its labels up to {data_classes - 1} do not fit the classifier' if data_classes > args.num_classes else
               f'{args.num_classes - data_classes} output(s) would never be trained and the class names would be '
               'lost')
        raise TrainConfigError(f'--num-classes {args.num_classes}, but the training set has {data_classes} classes: '
                               f'{why}. Leave --num-classes out (it is read from the data) or map the classes with '
                               '--class-map.')
    num_classes = args.num_classes or data_classes
    ood_sets = build_ood_sets(args, num_classes)
    detectors = _detectors(args) if ood_sets else []
    known_metrics = eval_metric_names(list(ood_sets), [d.name for d in detectors])
    if args.eval_metric not in known_metrics:
        raise TrainConfigError(f'--eval-metric {args.eval_metric!r} is not a validation metric of this run; '
                               f'choose one of {", ".join(known_metrics)}')
    return dataset_train, dataset_eval, num_classes, ood_sets, detectors


def _build_model(args, num_classes: Optional[int], dataset_train, device):
    """The model on its device, its class names from the data; returns ``(model, data_config)``."""
    model = _create_model(args, num_classes)
    args.num_classes = model.num_classes
    names = class_names(dataset_train)
    if names and len(names) == model.num_classes:  # carried to checkpoints, config.json and predict()
        set_label_names(model, names)
    if args.grad_checkpointing:
        model.set_grad_checkpointing(enable=True)
    if utils.is_primary(args):
        _logger.info(f'Model {safe_model_name(args.model)} created ({"SSOD" if args.ssod else "plain, --no-ssod"}, '
                     f'{args.num_classes} classes), param count:{sum(m.numel() for m in model.parameters())}')
        if label_names(model):
            _logger.info(f'Classes: {", ".join(label_names(model))}')
    data_config = resolve_data_config(vars(args), model=model, verbose=utils.is_primary(args))

    model.to(device=device)
    if args.channels_last:
        model.to(memory_format=torch.channels_last)
    if args.distributed and args.sync_bn:
        args.dist_bn = ''
        model = convert_sync_batchnorm(model)
    return model, data_config


def _resume(args, model, optimizer, loss_scaler):
    """Model, optimizer and loss scaler through timm; EMA, scheduler and RNG from the same file.
    Returns ``(resume_path, resume_epoch, resume_state, model_ema)``."""
    resume_path = resolve_resume(args.resume, args.output or './output/train', args.experiment)
    resume_epoch, resume_state = None, None
    if resume_path:
        resume_state = load_training_state(resume_path)
        resume_epoch = resume_checkpoint(model, resume_path, optimizer=None if args.no_resume_opt else optimizer,
                                         loss_scaler=None if args.no_resume_opt else loss_scaler,
                                         log_info=utils.is_primary(args))
    model_ema = None
    if args.model_ema:
        model_ema = ModelEmaV3(model, decay=args.model_ema_decay, use_warmup=args.model_ema_warmup,
                               device='cpu' if args.model_ema_force_cpu else None)
        if resume_path:
            load_checkpoint(model_ema.module, resume_path, use_ema=True)
    return resume_path, resume_epoch, resume_state, model_ema


def _check_output(args, data_config, resume_path, model, optimizer, model_ema) -> Optional[str]:
    """The output folder (rank 0; None elsewhere), checked writable with room for two
    checkpoints before anything is trained; every rank stops when it is not."""
    output_dir, error = None, None
    if utils.is_primary(args):
        output_dir = _output_dir(args, data_config, resume_path)
        try:
            check_output_dir(output_dir, 2 * estimate_checkpoint_bytes(model, optimizer, model_ema is not None))
        except OutputDirError as e:
            error = str(e)
    error = _agree_on_error(args, error)
    if error:
        raise OutputDirError(error)
    return output_dir


def _build_loaders(args, data_config, device, dataset_train, dataset_eval, ood_sets):
    """timm's loaders (and mixup). Returns ``(loader_train, loader_eval, ood_loaders, mixup_fn, mixup_active)``."""
    collate_fn = mixup_fn = None
    mixup_active = args.mixup > 0 or args.cutmix > 0. or args.cutmix_minmax is not None
    if mixup_active:
        mixup_args = dict(mixup_alpha=args.mixup, cutmix_alpha=args.cutmix, cutmix_minmax=args.cutmix_minmax,
                          prob=args.mixup_prob, switch_prob=args.mixup_switch_prob, mode=args.mixup_mode,
                          label_smoothing=args.smoothing, num_classes=args.num_classes)
        if args.prefetcher:
            collate_fn = FastCollateMixup(**mixup_args)
        else:
            mixup_fn = Mixup(**mixup_args)
    loader_train = _loader(dataset_train, args, data_config, device, True, collate_fn)
    loader_eval = _loader(dataset_eval, args, data_config, device, False)
    ood_loaders = {name: _loader(ds, args, data_config, device, False) for name, ds in ood_sets.items()}
    if len(loader_train) == 0:
        raise TrainConfigError(f'the training set ({len(dataset_train)} images) is smaller than one batch '
                         f'({args.batch_size}); the last incomplete batch is dropped, so there is nothing to train')
    return loader_train, loader_eval, ood_loaders, mixup_fn, mixup_active


def _build_task(args, model, device, mixup_active: bool) -> nn.Module:
    """The training forward and loss as a timm task (``_task``): the SSOD pass and SSODLoss, or
    (--no-ssod) the plain model and its criterion; wrapped by DDP, then compiled."""
    criterion = _train_loss(args, mixup_active).to(device=device)
    if args.ssod:
        task = SSODTask(model, criterion, ood_warmup_epochs=args.ood_warmup_epochs, device=device)
    else:
        task = ClassifierTask(model, criterion, device=device)
    if args.distributed:
        task.prepare_distributed(device_ids=[device] if device.type == 'cuda' else None,
                                 find_unused_parameters=False, **_ddp_buffer_kwargs(args))
    if args.torchcompile:
        task.compile(backend=args.torchcompile, mode=args.torchcompile_mode)
    return task


def _prepare_outputs(args, args_text, output_dir, model, optimizer, model_ema, loss_scaler, lr_scheduler,
                     resume_path, start_epoch):
    """Rank 0: the checkpoint saver (its extra state: RNG, scheduler, SSOD config, class names),
    ``args.yaml`` and ``summary.csv`` cut back to ``start_epoch``. Returns ``(saver, summary_path)``,
    both None on other ranks."""
    if output_dir is None:
        return None, None

    def extra_state():
        state = {'rng': rng_state()}
        if lr_scheduler is not None:
            state['scheduler'] = lr_scheduler.state_dict()
        if args.ssod:
            state['ssod_cfg'] = dict(model.ssod_cfg)
        if label_names(model):
            state['label_names'] = label_names(model)
        return state

    remove_partial_files(output_dir)
    saver = AtomicCheckpointSaver(model=model, optimizer=optimizer, args=args, model_ema=model_ema,
                                  amp_scaler=loss_scaler, checkpoint_dir=output_dir, recovery_dir=output_dir,
                                  decreasing=is_decreasing(args.eval_metric), max_history=args.checkpoint_hist,
                                  extra_state=extra_state)
    if (resume_path and os.path.dirname(os.path.abspath(resume_path)) == os.path.abspath(output_dir)
            and hasattr(saver, 'load_state_dict_from_checkpoint')):
        saver.load_state_dict_from_checkpoint(resume_path)
    atomic_write_text(os.path.join(output_dir, 'args.yaml'), args_text)
    summary_path = os.path.join(output_dir, 'summary.csv')
    trim_summary(summary_path, start_epoch)
    _logger.info(f'Output folder: {output_dir}')
    return saver, summary_path


def _log_schedule(args, lr_scheduler, start_epoch: int, num_epochs: int) -> None:
    if utils.is_primary(args):
        _logger.info(f'Scheduled epochs: {num_epochs}. LR stepped per '
                     f'{"epoch" if lr_scheduler is None or lr_scheduler.t_in_epochs else "update"}.')
    if start_epoch >= num_epochs and utils.is_primary(args):
        _logger.info(f'Nothing to train: the run already finished its {num_epochs} epochs')


def _train_epoch(epoch, args, device, task, model, model_ema, optimizer, lr_scheduler, loss_scaler, amp_autocast,
                 dataset_train, loader_train, mixup_fn, loader_eval, ood_loaders, detectors, saver, summary_path):
    """One epoch: reseed, train, validate, step the LR schedule, write summary.csv and the
    checkpoints. Returns ``(eval_metrics, (best_metric, best_epoch) or None)``."""
    seed_epoch(args.seed, epoch, args.rank)
    if hasattr(dataset_train, 'set_epoch'):
        dataset_train.set_epoch(epoch)
    elif args.distributed and hasattr(loader_train.sampler, 'set_epoch'):
        loader_train.sampler.set_epoch(epoch)

    train_metrics = train_one_epoch(
        epoch, task, loader_train, optimizer, args, device, lr_scheduler=lr_scheduler, amp_autocast=amp_autocast,
        loss_scaler=loss_scaler, model_ema=model_ema, ema_source=model, mixup_fn=mixup_fn)

    eval_metrics = _validate_epoch(model, model_ema, loader_eval, ood_loaders, detectors, args, device, amp_autocast)
    save_metric = eval_metrics[args.eval_metric]

    lrs = [param_group['lr'] for param_group in optimizer.param_groups]
    if lr_scheduler is not None:
        lr_scheduler.step(epoch + 1, save_metric)  # before saving: the checkpoint holds the next epoch's LR
    if summary_path is not None:
        utils.update_summary(epoch, train_metrics, eval_metrics, filename=summary_path,
                             lr=sum(lrs) / len(lrs), write_header=None)
    best = saver.save_checkpoint(epoch, metric=save_metric) if saver is not None else None
    return eval_metrics, best, train_metrics


SCARCE_OOD = 0.05  # below this share of OOD locations per epoch, SSOD's head has (almost) nothing to learn OOD from


def _shares(train_metrics) -> Optional[Dict[str, float]]:
    """The sampler's ``id_frac`` / ``ood_frac`` / ``ignored_frac`` of an epoch (None without SSOD)."""
    keys = ('id_frac', 'ood_frac', 'ignored_frac')
    return {k: float(train_metrics[k]) for k in keys} if all(k in (train_metrics or {}) for k in keys) else None


def _warn_scarce_ood(args, shares: Dict[str, float], epoch: int) -> None:
    _logger.warning(
        f"too few OOD samples for SSOD's OOD head: {100 * shares['ood_frac']:.1f}% of the locations in epoch {epoch} "
        f"({100 * shares['id_frac']:.1f}% ID, {100 * shares['ignored_frac']:.1f}% ignored); the head cannot learn what "
        f'OOD looks like from so few. Try a lower --gamma (now {args.gamma:g}; OOD is a confidence below 1 - gamma), '
        'or larger inputs (--resize-up 224: more background locations per image).')


def main(argv: Optional[List[str]] = None, prog: Optional[str] = None) -> Dict[str, Any]:
    """Run training. Returns ``dict(output_dir, best_metric, best_epoch, eval_metrics)``
    (``output_dir`` is None on ranks other than 0)."""
    args, args_text, device, amp_autocast, loss_scaler = _setup(argv, prog)
    dataset_train, dataset_eval, num_classes, ood_sets, detectors = _build_data(args)
    model, data_config = _build_model(args, num_classes, dataset_train, device)

    _resolve_lr(args)
    optimizer = create_optimizer_v2(model, **optimizer_kwargs(cfg=args), **args.opt_kwargs)
    resume_path, resume_epoch, resume_state, model_ema = _resume(args, model, optimizer, loss_scaler)
    output_dir = _check_output(args, data_config, resume_path, model, optimizer, model_ema)
    _check_push(args, output_dir)

    loader_train, loader_eval, ood_loaders, mixup_fn, mixup_active = _build_loaders(
        args, data_config, device, dataset_train, dataset_eval, ood_sets)
    task = _build_task(args, model, device, mixup_active)
    lr_scheduler, start_epoch, end_epoch, num_epochs = build_schedule(
        args, optimizer, loader_train, resume_epoch, resume_state)
    saver, summary_path = _prepare_outputs(args, args_text, output_dir, model, optimizer, model_ema, loss_scaler,
                                           lr_scheduler, resume_path, start_epoch)
    _log_schedule(args, lr_scheduler, start_epoch, num_epochs)

    best_metric, best_epoch, eval_metrics = None, None, None
    if saver is not None and saver.best_metric is not None:
        best_metric, best_epoch = saver.best_metric, saver.best_epoch
    interrupted, warned, shares = None, False, None
    started = time.time()
    try:
        for epoch in range(start_epoch, end_epoch):
            interrupted = epoch
            epoch_start = time.time()
            eval_metrics, best, train_metrics = _train_epoch(
                epoch, args, device, task, model, model_ema, optimizer, lr_scheduler, loss_scaler, amp_autocast,
                dataset_train, loader_train, mixup_fn, loader_eval, ood_loaders, detectors, saver, summary_path)
            if best is not None:
                best_metric, best_epoch = best
            if utils.is_primary(args):  # timm logs per batch; an ETA of the run, as the user waits for it
                took, left = time.time() - epoch_start, end_epoch - epoch - 1
                eta = (time.time() - started) / (epoch + 1 - start_epoch) * left
                _logger.info(f'Epoch {epoch} of {num_epochs} took {took:.0f}s; '
                             + (f'ETA {eta:.0f}s ({left} epoch{"s" if left > 1 else ""} left)' if left else 'done'))
            shares = _shares(train_metrics)
            if shares is not None and shares['ood_frac'] < SCARCE_OOD and not warned and utils.is_primary(args):
                _warn_scarce_ood(args, shares, epoch)  # once: the first epoch that has too few
                warned = True
        interrupted = None
    except KeyboardInterrupt:  # Ctrl-C: the run is not finished; ``run`` says how to continue it (exit 130)
        return dict(output_dir=output_dir, best_metric=best_metric, best_epoch=best_epoch,
                    eval_metrics=eval_metrics, interrupted=(interrupted, num_epochs))

    if best_metric is not None:
        _logger.info('*** Best metric: {0} (epoch {1})'.format(best_metric, best_epoch))
    if output_dir is not None and end_epoch > start_epoch:
        written = [f for f in (BEST, TIMM_BEST, LAST, 'summary.csv', 'args.yaml')
                   if os.path.isfile(os.path.join(output_dir, f))]
        _logger.info(f'Trained {end_epoch - start_epoch} epochs in {time.time() - started:.0f}s. Outputs in '
                     f'{output_dir}: {", ".join(written)}')
    if shares is not None and utils.is_primary(args):
        _logger.info(f"Sampler shares of the last epoch: {100 * shares['id_frac']:.1f}% ID, "
                     f"{100 * shares['ood_frac']:.1f}% OOD, {100 * shares['ignored_frac']:.1f}% ignored"
                     + (' (too few OOD samples: see the warning above)' if shares['ood_frac'] < SCARCE_OOD else ''))
    if args.push_to_hub and output_dir is not None and end_epoch == num_epochs:
        _push_to_hub(output_dir, args.push_to_hub)
    if args.distributed:
        dist.barrier()
    return dict(output_dir=output_dir, best_metric=best_metric, best_epoch=best_epoch, eval_metrics=eval_metrics)


def _report_interrupt(result: Dict[str, Any], argv: Optional[List[str]], prog: str) -> None:
    """Ctrl-C: the epoch it stopped in, the last one saved and the command that continues the run."""
    epoch, num_epochs = result['interrupted']
    output_dir = result['output_dir']
    if output_dir is None:  # not rank 0
        return
    import shlex
    saved = checkpoint_in_run(output_dir) if os.path.isdir(output_dir) else None
    print(f'{prog}: interrupted during epoch {epoch} of {num_epochs} ('
          + (f'epoch {epoch - 1} saved in {output_dir})' if saved
             else f'no epoch finished, nothing saved in {output_dir})'),
          file=sys.stderr)
    kept, skip = [], False
    for a in (sys.argv[1:] if argv is None else [str(a) for a in argv]):
        if skip:
            skip = False
        elif a == '--resume':
            skip = True
        elif not a.startswith('--resume='):
            kept.append(a)
    if saved:
        kept += ['--resume', output_dir]
    print(f'To continue: {prog} {shlex.join(kept)}', file=sys.stderr)


def run(argv: Optional[List[str]] = None, prog: str = 'timm-ssod train') -> int:
    """Command-line entry: ``main`` with user errors printed as one line (exit code 1)."""
    try:
        result = main(argv, prog=prog)
        if result.get('interrupted'):
            _report_interrupt(result, argv, prog)
            return 130  # as a shell reports a process stopped by SIGINT
    except USER_ERRORS as e:
        print(f'{prog}: error: {e}', file=sys.stderr)
        return 1
    finally:
        if dist.is_available() and dist.is_initialized():
            dist.destroy_process_group()
    return 0

