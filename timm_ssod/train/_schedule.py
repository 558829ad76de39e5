"""The LR schedule of ``timm-ssod train``: built from the arguments of this invocation, as
timm's ``train.py`` builds it, and put where a resumed run continues it.

* Resumed with the same schedule (the checkpoint's scheduler state equals the one built now,
  apart from what a run changes in it: the last metric, the plateau's best): exactly where the
  run left it, with the LR of the next epoch the checkpoint holds. A run killed after epoch k
  and resumed then ends as the uninterrupted run, for every scheduler, plateau included.
* Resumed with another schedule (a larger ``--epochs``, another ``--sched``, ``--min-lr`` ...):
  the new schedule stepped to the resume epoch, as timm's ``train.py`` does. (Loading the old
  state would keep the old schedule: a 3-epoch cosine resumed with ``--epochs 4`` trained its
  4th epoch at the old end, LR 0.)
* Resumed with fewer epochs than the checkpoint already trained: an error, before anything is
  written.
* A warm-up at least as long as the run (``--warmup-epochs`` >= ``--epochs``): a warning, as the
  LR never leaves the warm-up (timm's default is 5 warm-up epochs from 1e-5).
"""
import logging
from typing import Any, Dict

from timm import utils
from timm.scheduler import create_scheduler_v2, scheduler_kwargs

from ..checkpoints import set_rng_state
from ._args import is_decreasing
from ._data import TrainConfigError

_logger = logging.getLogger('train')

# scheduler state that a run changes as it goes (timm's last metric; the plateau's best metric
# and epoch); everything else is the schedule the arguments built
_RUN_STATE = ('metric', 'best', 'last_epoch')


def _schedule(state: Dict[str, Any]) -> Dict[str, Any]:
    return {k: v for k, v in state.items() if k not in _RUN_STATE}


def same_schedule(saved: Dict[str, Any], lr_scheduler) -> bool:
    """True when a checkpoint's scheduler state is the schedule ``lr_scheduler`` follows."""
    return _schedule(saved) == _schedule(lr_scheduler.state_dict())


def _restore(args, optimizer, lr_scheduler, resume_state, resumed_lrs, start_epoch, updates_per_epoch) -> None:
    """RNG and LR schedule where the resumed run left them (see the module docstring). Other
    checkpoints (timm's, or --start-epoch) get timm's ``step(start_epoch)``."""
    exact_lr = False
    if resume_state is not None:
        if 'rng' in resume_state:
            set_rng_state(resume_state['rng'])
        saved = resume_state.get('scheduler')
        if saved is not None and lr_scheduler is not None and args.start_epoch is None and not args.no_resume_opt:
            if same_schedule(saved, lr_scheduler):
                lr_scheduler.load_state_dict(saved)
                for group, lr in zip(optimizer.param_groups, resumed_lrs):
                    group[lr_scheduler.param_group_field] = lr
                exact_lr = True
            elif utils.is_primary(args):
                _logger.info(f'The LR schedule differs from the checkpoint\'s (--epochs {args.epochs}, --sched '
                             f'{args.sched} ...): the new one is used from epoch {start_epoch}, as timm\'s train.py '
                             'resumes')
    if lr_scheduler is not None and start_epoch > 0 and not exact_lr:
        if args.sched_on_updates:
            lr_scheduler.step_update(start_epoch * updates_per_epoch)
        else:
            lr_scheduler.step(start_epoch)


def _warn_long_warmup(args, lr_scheduler) -> None:
    if lr_scheduler is None or not args.warmup_epochs or args.warmup_epochs < args.epochs or not utils.is_primary(args):
        return
    _logger.warning(
        f'--warmup-epochs {args.warmup_epochs} (the default is 5) >= --epochs {args.epochs}: the LR warm-up, from '
        f'--warmup-lr {args.warmup_lr:g} towards --lr {args.lr:g}, outlasts the run, which never trains at --lr '
        f'(one epoch trains at {args.warmup_lr:g} throughout). Pass --warmup-epochs 0, or fewer than --epochs.')


def build_schedule(args, optimizer, loader_train, resume_epoch, resume_state):
    """The LR scheduler and the epochs of this invocation, the schedule put where a resumed run
    left it. Returns ``(lr_scheduler, start_epoch, end_epoch, num_epochs)``."""
    resumed_lrs = [group['lr'] for group in optimizer.param_groups]
    updates_per_epoch = (len(loader_train) + args.grad_accum_steps - 1) // args.grad_accum_steps
    lr_scheduler, num_epochs = create_scheduler_v2(
        optimizer, **scheduler_kwargs(args, decreasing_metric=is_decreasing(args.eval_metric)),
        updates_per_epoch=updates_per_epoch)
    start_epoch = args.start_epoch if args.start_epoch is not None else (resume_epoch or 0)
    if start_epoch > num_epochs:
        where = 'the checkpoint (--resume)' if args.start_epoch is None else '--start-epoch'
        raise TrainConfigError(f'--epochs {args.epochs}: {where} is already at epoch {start_epoch}, past the '
                               f'{num_epochs} epochs of this schedule. To train on, give --epochs larger than '
                               f'{start_epoch} (the LR schedule is rebuilt for it).')
    _restore(args, optimizer, lr_scheduler, resume_state, resumed_lrs, start_epoch, updates_per_epoch)
    _warn_long_warmup(args, lr_scheduler)
    end_epoch = num_epochs if not args.run_epochs else min(num_epochs, start_epoch + args.run_epochs)
    return lr_scheduler, start_epoch, end_epoch, num_epochs
