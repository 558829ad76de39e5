"""One training epoch and one validation pass, as in timm's ``train.py``, plus SSOD's extras:
the terms of the task's loss (its CE and OOD terms, the sampler's share of ID / OOD / ignored
locations; see ``_task``), and OOD validation (FPR95 / AUROC) with the post-hoc detectors.

Metrics returned here are already reduced over all ranks. Validation drops the samples
timm's ``OrderedDistributedSampler`` repeats to even out the ranks, so accuracy and OOD
metrics are exact for any world size.
"""
import logging
import random
import time
from collections import OrderedDict
from contextlib import suppress
from typing import Dict, Iterable, List, Optional, Sequence, Tuple

import numpy as np
import torch
import torch.distributed as dist
import torch.nn as nn
import torch.nn.functional as F
from timm import utils

from ..core import merge_heads


_logger = logging.getLogger('train')


class NonFiniteLossError(FloatingPointError):
    """NaN/Inf in a training batch or loss: training stops before the weights are updated."""


def seed_epoch(seed: int, epoch: int, rank: int = 0) -> None:
    """Reseed python, numpy and torch from (seed, epoch, rank) at the start of every epoch:
    shuffling, augmentation (data-loader workers are seeded from torch's RNG when an epoch's
    iterator starts), dropout and the DR balance then depend only on these three numbers,
    so a run resumed at epoch k continues exactly as the uninterrupted run."""
    value = int(np.random.SeedSequence([seed, epoch, rank]).generate_state(1)[0])
    random.seed(value)
    np.random.seed(value)
    torch.manual_seed(value)


def _all_reduce_sum(t: torch.Tensor, distributed: bool) -> torch.Tensor:
    if distributed:
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t


def _check_batch(input: torch.Tensor, epoch: int, batch_idx: int, num_batches: int) -> None:
    if input.is_floating_point() and not torch.isfinite(input).all():
        raise NonFiniteLossError(
            f'NaN/Inf in the input batch at epoch {epoch}, step {batch_idx} (batch {batch_idx + 1}/{num_batches}): '
            'training stopped before updating the weights; no checkpoint was written for this epoch. '
            'Check the dataset and its transforms.')


def _check_loss(loss: torch.Tensor, stats: Dict, epoch: int, batch_idx: int, num_batches: int) -> float:
    value = loss.item()
    if not np.isfinite(value):
        parts = ', '.join(f'{k} {stats[k].item():.4g}' for k in ('cls_loss', 'ood_loss') if k in stats)
        raise NonFiniteLossError(
            f'non-finite training loss ({value}) at epoch {epoch}, step {batch_idx} (batch {batch_idx + 1}/'
            f'{num_batches}){" (" + parts + ")" if parts else ""}: training stopped before updating the weights; '
            'no checkpoint was written for this epoch. Lower the learning rate, use --clip-grad, or check the data.')
    return value


# what a task's result may hold beyond ``loss``: terms summed per sample and reported as epoch
# means, and location counts reported as shares of all sampled locations (a task that lacks
# them, the plain classifier, gets no such columns)
LOSS_TERMS = ('loss', 'cls_loss', 'ood_loss')
LOCATION_COUNTS = OrderedDict([('num_id', 'id_frac'), ('num_ood', 'ood_frac'), ('num_ignored', 'ignored_frac')])


class EpochSums:
    """Running float64 sums, by name, of one epoch's task results: each loss term times the
    batch size, the number of samples, the location counts. ``metrics()`` reduces them over
    the ranks into the epoch's means and shares (the ``train_*`` columns of summary.csv)."""

    def __init__(self, device: torch.device):
        self.device = device
        self.sums: 'OrderedDict[str, torch.Tensor]' = OrderedDict()

    def _add(self, name: str, value: torch.Tensor) -> None:
        if name not in self.sums:
            self.sums[name] = torch.zeros((), dtype=torch.float64, device=self.device)
        self.sums[name] += value

    def add(self, result: Dict[str, torch.Tensor], n: int) -> None:
        for name in LOSS_TERMS:
            if name in result:
                self._add(name, result[name].detach().double() * n)
        self._add('samples', torch.tensor(float(n), dtype=torch.float64, device=self.device))
        self.add_counts(result)

    def add_counts(self, result: Dict[str, torch.Tensor]) -> None:
        for name in LOCATION_COUNTS:
            if name in result:
                self._add(name, result[name].double())

    def location_shares(self) -> List[float]:
        """The ID / OOD / ignored shares of the locations counted so far (empty: no counts)."""
        counts = [self.sums[k] for k in LOCATION_COUNTS if k in self.sums]
        if not counts:
            return []
        window = torch.stack(counts)
        return (window / window.sum().clamp(min=1)).tolist()

    def metrics(self, distributed: bool) -> 'OrderedDict[str, float]':
        names = list(self.sums)
        values = _all_reduce_sum(torch.stack([self.sums[k] for k in names]), distributed).tolist()
        total = dict(zip(names, values))
        samples = max(total['samples'], 1.0)
        metrics = OrderedDict((k, total[k] / samples) for k in LOSS_TERMS if k in total)
        counts = [k for k in LOCATION_COUNTS if k in total]
        locations = max(sum(total[k] for k in counts), 1.0)
        metrics.update((LOCATION_COUNTS[k], total[k] / locations) for k in counts)
        return metrics


def _terms_text(result: Dict[str, torch.Tensor], window: EpochSums) -> str:
    """The log line's loss terms and location shares since the last line, for a task that has them."""
    text = ''
    if 'cls_loss' in result and 'ood_loss' in result:
        text += f'CE: {result["cls_loss"].item():#.3g}  OOD: {result["ood_loss"].item() + 0.0:#.3g}  '
    share = window.location_shares()
    if share:
        text += f'Locations ID/OOD/ignored: {share[0]:.0%}/{share[1]:.0%}/{share[2]:.0%}  '
    return text


def _mixup_off(epoch, loader, mixup_fn, args) -> None:
    if args.mixup_off_epoch and epoch >= args.mixup_off_epoch:
        if args.prefetcher and getattr(loader, 'mixup_enabled', False):
            loader.mixup_enabled = False
        elif mixup_fn is not None:
            mixup_fn.mixup_enabled = False


def train_one_epoch(
        epoch: int,
        task: nn.Module,
        loader: Iterable,
        optimizer: torch.optim.Optimizer,
        args,
        device: torch.device,
        lr_scheduler=None,
        amp_autocast=suppress,
        loss_scaler=None,
        model_ema=None,
        ema_source: Optional[nn.Module] = None,
        mixup_fn=None,
) -> 'OrderedDict[str, float]':
    """timm's ``train_one_epoch`` (gradient accumulation, AMP loss scaler, clipping, EMA of
    ``ema_source``, per-update LR schedule) around a training task (``_task``): ``task(input,
    target)`` returns ``loss`` and the terms the epoch reports. Returns the epoch's ``loss`` and
    whichever of ``cls_loss``, ``ood_loss``, ``id_frac``, ``ood_frac``, ``ignored_frac`` the task
    has. Raises ``NonFiniteLossError`` on NaN/Inf in a batch or the loss, before the optimizer
    step."""
    _mixup_off(epoch, loader, mixup_fn, args)

    second_order = getattr(optimizer, 'is_second_order', False)
    update_time_m, data_time_m, losses_m = utils.AverageMeter(), utils.AverageMeter(), utils.AverageMeter()
    task.train()

    num_batches = len(loader)
    accum_steps = args.grad_accum_steps
    last_accum_steps = num_batches % accum_steps
    updates_per_epoch = (num_batches + accum_steps - 1) // accum_steps
    num_updates = epoch * updates_per_epoch
    last_batch_idx = num_batches - 1
    last_batch_idx_to_accum = num_batches - last_accum_steps
    epoch_sums = EpochSums(device)
    window = EpochSums(device)  # location counts since the last log line

    data_start_time = update_start_time = time.time()
    optimizer.zero_grad()
    update_sample_count = 0
    for batch_idx, (input, target) in enumerate(loader):
        last_batch = batch_idx == last_batch_idx
        need_update = last_batch or (batch_idx + 1) % accum_steps == 0
        update_idx = batch_idx // accum_steps
        if batch_idx >= last_batch_idx_to_accum:
            accum_steps = last_accum_steps

        if not args.prefetcher:
            input, target = input.to(device), target.to(device)
            if mixup_fn is not None:
                input, target = mixup_fn(input, target)
        _check_batch(input, epoch, batch_idx, num_batches)
        if args.channels_last:
            input = input.contiguous(memory_format=torch.channels_last)
        data_time_m.update(accum_steps * (time.time() - data_start_time))

        def _forward():
            task.set_update(num_updates + update_idx, updates_per_epoch)
            with amp_autocast():
                return task(input, target)

        def _backward(_loss):
            if accum_steps > 1:
                _loss = _loss / accum_steps
            clip_parameters = task.get_clip_parameters(exclude_head='agc' in args.clip_mode)
            if loss_scaler is not None:
                loss_scaler(_loss, optimizer, clip_grad=args.clip_grad, clip_mode=args.clip_mode,
                            parameters=clip_parameters, create_graph=second_order, need_update=need_update)
            else:
                _loss.backward(create_graph=second_order)
                if need_update:
                    if args.clip_grad is not None:
                        utils.dispatch_clip_grad(clip_parameters, value=args.clip_grad, mode=args.clip_mode)
                    optimizer.step()

        with task.no_sync() if not need_update else suppress():
            result = _forward()
            loss_value = _check_loss(result['loss'], result, epoch, batch_idx, num_batches)
            _backward(result['loss'])

        n = input.size(0)
        losses_m.update(loss_value, n)
        epoch_sums.add(result, n)
        window.add_counts(result)
        update_sample_count += n

        if not need_update:
            data_start_time = time.time()
            continue

        num_updates += 1
        optimizer.zero_grad()
        if model_ema is not None:
            model_ema.update(ema_source, step=num_updates)

        if args.synchronize_step and device.type == 'cuda':
            torch.cuda.synchronize()
        time_now = time.time()
        update_time_m.update(time.time() - update_start_time)
        update_start_time = time_now

        if update_idx % args.log_interval == 0 or last_batch:
            lrl = [param_group['lr'] for param_group in optimizer.param_groups]
            lr = sum(lrl) / len(lrl)
            if utils.is_primary(args):
                _logger.info(
                    f'Train: {epoch} [{update_idx:>4d}/{updates_per_epoch} '
                    f'({100. * update_idx / max(1, updates_per_epoch - 1):>3.0f}%)]  '
                    f'Loss: {losses_m.val:#.3g} ({losses_m.avg:#.3g})  {_terms_text(result, window)}'
                    f'Time: {update_time_m.val:.3f}s, {update_sample_count * args.world_size / update_time_m.val:>7.2f}/s  '
                    f'({update_time_m.avg:.3f}s, {update_sample_count * args.world_size / update_time_m.avg:>7.2f}/s)  '
                    f'LR: {lr:.3e}  '
                    f'Data: {data_time_m.val:.3f} ({data_time_m.avg:.3f})')
            window = EpochSums(device)

        if lr_scheduler is not None:
            lr_scheduler.step_update(num_updates=num_updates, metric=losses_m.avg)

        update_sample_count = 0
        data_start_time = time.time()

    if hasattr(optimizer, 'sync_lookahead'):
        optimizer.sync_lookahead()
    return epoch_sums.metrics(args.distributed)


def _valid_count(loader) -> Optional[int]:
    """Samples of this rank that are not padding of timm's OrderedDistributedSampler."""
    sampler = getattr(loader, 'sampler', None)
    return getattr(sampler, 'num_valid_samples', None)


def _gather_scores(local: torch.Tensor, distributed: bool) -> np.ndarray:
    if not distributed:
        return local.numpy()
    parts: List = [None] * dist.get_world_size()
    dist.all_gather_object(parts, local)
    return torch.cat(parts).numpy()


def _batches(loader, args, device):
    for input, target in loader:
        if not args.prefetcher:
            input, target = input.to(device), target.to(device)
        if args.channels_last:
            input = input.contiguous(memory_format=torch.channels_last)
        yield input, target


def _log_test_batch(batch_idx, last_idx, batch_time_m, sums, batch_sums, log_suffix):
    """timm's per-interval validation line (this rank's images)."""
    n, bn = max(sums[3].item(), 1.0), max(batch_sums[3].item(), 1.0)
    _logger.info(
        f'Test{log_suffix}: [{batch_idx:>4d}/{last_idx}]  '
        f'Time: {batch_time_m.val:.3f} ({batch_time_m.avg:.3f})  '
        f'Loss: {batch_sums[0] / bn:>7.3f} ({sums[0] / n:>6.3f})  '
        f'Acc@1: {100 * batch_sums[1] / bn:>7.3f} ({100 * sums[1] / n:>7.3f})  '
        f'Acc@5: {100 * batch_sums[2] / bn:>7.3f} ({100 * sums[2] / n:>7.3f})')


@torch.no_grad()
def _score_loader(model, loader, detectors, args, device, amp_autocast, with_targets: bool, log_suffix: str = ''):
    """One pass: (sums of loss/top1/top5/count, {detector: local scores}) of the valid samples."""
    if detectors:
        from ..detectors import compute_outputs  # only OOD validation needs the detectors
    model.eval()
    remaining = _valid_count(loader) if args.distributed else None
    sums = torch.zeros(4, dtype=torch.float64)
    scores = {d.name: [] for d in detectors}
    batch_time_m, end, last_idx = utils.AverageMeter(), time.time(), len(loader) - 1
    for batch_idx, (input, target) in enumerate(_batches(loader, args, device)):
        keep = input.size(0) if remaining is None else max(0, min(input.size(0), remaining))
        if remaining is not None:
            remaining -= input.size(0)
        with amp_autocast():
            if detectors:
                outputs = compute_outputs(model, input)
                logits = outputs.logits
            else:
                logits = model(input)
                logits = merge_heads(logits)  # distilled models: the mean of both heads, as everywhere else
        for d in detectors:
            scores[d.name].append(d.score_outputs(outputs)[:keep].float().cpu())
        if with_targets and keep:
            logits, target = logits[:keep].float(), target[:keep]
            k5 = min(5, logits.shape[-1])
            top = logits.topk(k5, dim=-1).indices
            hit = top == target[:, None]
            batch_sums = torch.tensor([F.cross_entropy(logits, target, reduction='sum').item(),
                                       hit[:, :1].sum().item(), hit.sum().item(), keep], dtype=torch.float64)
            sums += batch_sums
            batch_time_m.update(time.time() - end)
            end = time.time()
            if utils.is_primary(args) and (batch_idx % args.log_interval == 0 or batch_idx == last_idx):
                _log_test_batch(batch_idx, last_idx, batch_time_m, sums, batch_sums, log_suffix)
    return sums, {k: torch.cat(v) if v else torch.zeros(0) for k, v in scores.items()}


def validate(
        model: nn.Module,
        loader: Iterable,
        args,
        device: torch.device,
        amp_autocast=suppress,
        detectors: Sequence = (),
        ood_loaders: Optional[Dict[str, Iterable]] = None,
        log_suffix: str = '',
) -> Tuple['OrderedDict[str, float]', Dict]:
    """ID accuracy (``loss``, ``top1``, ``top5`` in percent, as timm) and, with ``ood_loaders``
    and ``detectors``, per set and detector ``<set>_<det>_fpr95`` / ``_auroc`` (percent) plus
    ``fpr95`` / ``auroc``: the first detector's mean over the OOD sets."""
    start = time.time()
    sums, id_scores = _score_loader(model, loader, detectors if ood_loaders else (), args, device,
                                    amp_autocast, with_targets=True, log_suffix=log_suffix)
    sums = _all_reduce_sum(sums.to(device), args.distributed).cpu().tolist()
    n = max(sums[3], 1.0)
    metrics = OrderedDict([('loss', sums[0] / n), ('top1', 100. * sums[1] / n), ('top5', 100. * sums[2] / n)])
    if utils.is_primary(args):
        _logger.info(f'Test{log_suffix}: [{int(sums[3])} images, all ranks]  Time: {time.time() - start:.3f}  '
                     f'Loss: {metrics["loss"]:>6.3f}  Acc@1: {metrics["top1"]:>7.3f}  Acc@5: {metrics["top5"]:>7.3f}')
    if not ood_loaders or not detectors:
        return metrics, {}

    from ..metrics import ood_metrics
    id_scores = {k: _gather_scores(v, args.distributed) for k, v in id_scores.items()}
    per_set = OrderedDict()
    for set_name, ood_loader in ood_loaders.items():
        _, ood_scores = _score_loader(model, ood_loader, detectors, args, device, amp_autocast, with_targets=False)
        for d in detectors:
            m = ood_metrics(id_scores[d.name], _gather_scores(ood_scores[d.name], args.distributed))
            per_set[(set_name, d.name)] = m
            metrics[f'{set_name}_{d.name}_fpr95'] = 100. * m['fpr95']
            metrics[f'{set_name}_{d.name}_auroc'] = 100. * m['auroc']
    primary = detectors[0].name
    for key in ('fpr95', 'auroc'):
        metrics[key] = float(np.mean([100. * m[key] for (s, d), m in per_set.items() if d == primary]))
    if utils.is_primary(args):
        for d in detectors:
            sets = '  '.join(f'{s}: FPR95 {100 * m["fpr95"]:.2f} AUROC {100 * m["auroc"]:.2f}'
                             for (s, dn), m in per_set.items() if dn == d.name)
            _logger.info(f'OOD{log_suffix} ({d.name}): {sets}')
        _logger.info(f'OOD{log_suffix} ({primary}, mean over {len(ood_loaders)} set(s)): '
                     f'FPR95 {metrics["fpr95"]:.2f}  AUROC {metrics["auroc"]:.2f}')
    return metrics, per_set
