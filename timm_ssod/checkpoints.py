"""Training checkpoints: atomic writes, what a resume needs, and the output-folder check.

Atomic writes. timm's ``CheckpointSaver`` writes ``tmp.pth.tar`` with ``torch.save`` and then
unlinks ``last.pth.tar`` before renaming, so a kill at the wrong moment leaves no
``last.pth.tar`` (or, after a power loss, a file whose data never reached the disk).
``AtomicCheckpointSaver`` keeps timm's file names and bookkeeping but every file name only
ever appears through ``os.replace`` of a fully written and fsynced temporary file
(``<name>.partial``), and the folder is fsynced after the rename. A SIGKILL at any point
leaves the previous ``last.pth.tar`` / ``model_best.pth.tar`` intact.

Stock timm. ``model_best.pth.tar`` holds the OOD head (``ood_head.*``), which stock
``timm.create_model(arch, checkpoint_path=...)`` refuses as unexpected keys. So whenever
``model_best.pth.tar`` is written, ``model_best_timm.safetensors`` is written beside it (also
atomically): the same weights (the EMA weights when the run keeps them, as timm's loader picks
them from the checkpoint) without ``ood_head.*``, which stock timm loads with
``timm.create_model(arch, num_classes=N, checkpoint_path='.../model_best_timm.safetensors')``
(plus the run's ``--model-kwargs``).

Trust. Training checkpoints (``last.pth.tar``, ``model_best.pth.tar``, ``checkpoint-N.pth.tar``)
are loaded with ``torch.load(weights_only=True)`` only: tensors and plain containers, never
arbitrary pickled objects, so ``--resume`` / ``--initial-checkpoint`` run no code from the
file. For that, the arguments are stored as a plain dict (not timm's ``argparse.Namespace``)
and the RNG states as tensors / tuples of ints. A file that needs other globals is refused
with timm's error naming them. ``weights_only`` does not guard against huge or
maliciously shaped tensors: only resume from files you would also train on.
"""
import argparse
import glob
import logging
import os
import pickle
import random
import re
import shutil
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Tuple

import numpy as np
import torch
from timm.utils import CheckpointSaver
from timm.utils.model import get_state_dict

from ._util import PARTIAL_SUFFIX, atomic_write, first_line, fsync_dir

from timm.utils.summary import trim_summary

_logger = logging.getLogger(__name__)

LAST = 'last.pth.tar'
BEST = 'model_best.pth.tar'
TIMM_BEST = 'model_best_timm.safetensors'  # model_best's weights without ood_head.*, for stock timm


class CheckpointError(ValueError):
    """A checkpoint or weights file that cannot be used (unreadable, refused, inconsistent)."""


class OutputDirError(OSError):
    """The output folder cannot be created or written (read-only, no permission, disk full)."""


class NonFiniteWeightsError(FloatingPointError):
    """Refused to write a checkpoint: the weights contain NaN or Inf."""


# -- atomic file primitives ------------------------------------------------------------------
def atomic_torch_save(obj: Any, path: str) -> None:
    atomic_write(path, lambda f: torch.save(obj, f))


def remove_partial_files(folder: str) -> None:
    """Delete ``*.partial`` leftovers of a killed run (never complete files)."""
    for path in glob.glob(os.path.join(folder, '*' + PARTIAL_SUFFIX)):
        try:
            os.remove(path)
            _logger.info(f'Removed incomplete file of an interrupted save: {path}')
        except OSError:
            pass


# -- plain, weights_only-loadable content ----------------------------------------------------
def plain_args(args) -> Dict[str, Any]:
    """``vars(args)`` reduced to what ``torch.load(weights_only=True)`` accepts."""
    def plain(v):
        if v is None or isinstance(v, (bool, int, float, str)):
            return v
        if isinstance(v, (list, tuple)):
            return [plain(x) for x in v]
        if isinstance(v, dict):
            return {str(k): plain(x) for k, x in v.items()}
        return str(v)
    return {k: plain(v) for k, v in vars(args).items()}


def rng_state() -> Dict[str, Any]:
    """Python, numpy and torch (CPU and CUDA) RNG states, as weights_only-safe values."""
    name, keys, pos, has_gauss, cached = np.random.get_state()
    state = {
        'python': random.getstate(),
        'numpy': {'keys': torch.from_numpy(keys.astype(np.int64)), 'pos': int(pos),
                  'has_gauss': int(has_gauss), 'cached_gaussian': float(cached)},
        'torch': torch.get_rng_state(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state['cuda'] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: Dict[str, Any]) -> None:
    """Inverse of ``rng_state``."""
    py = state['python']
    random.setstate((py[0], tuple(py[1]), py[2]))
    n = state['numpy']
    np.random.set_state(('MT19937', n['keys'].numpy().astype(np.uint32), n['pos'], n['has_gauss'],
                         n['cached_gaussian']))
    torch.set_rng_state(state['torch'])
    if 'cuda' in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state['cuda'])


def nonfinite_tensors(state_dict: Dict[str, torch.Tensor]) -> List[str]:
    """Names of floating-point tensors holding NaN/Inf (empty list: all finite)."""
    return [k for k, v in state_dict.items()
            if torch.is_tensor(v) and v.is_floating_point() and not torch.isfinite(v).all()]


# -- the saver -------------------------------------------------------------------------------
class AtomicCheckpointSaver(CheckpointSaver):
    """timm's ``CheckpointSaver`` (same files, history, ``model_best`` tracking) with atomic
    writes, arguments as a plain dict, and ``extra_state()`` added to each checkpoint (LR
    scheduler, RNG states, ``ssod_cfg``). Refuses to write NaN/Inf weights."""

    def __init__(self, *args, extra_state: Optional[Callable[[], Dict[str, Any]]] = None, **kwargs):
        super().__init__(*args, **kwargs)
        self.extra_state = extra_state

    def _state(self, epoch: int, metric=None) -> Dict[str, Any]:
        state = {
            'epoch': epoch,
            'arch': type(self.model).__name__.lower(),
            'optimizer': self.optimizer.state_dict(),
            'version': 2,  # timm: version >= 2 stores the finished epoch, resume starts at epoch + 1
        }
        if self.args is not None:
            state['arch'] = self.args.model
            state['args'] = plain_args(self.args)
        if self.amp_scaler is not None:
            state[self.amp_scaler.state_dict_key] = self.amp_scaler.state_dict()
        state['state_dict'] = get_state_dict(self.model, self.unwrap_fn)
        if self.model_ema is not None:
            state['state_dict_ema'] = get_state_dict(self.model_ema, self.unwrap_fn)
        for key in ('state_dict', 'state_dict_ema'):
            bad = nonfinite_tensors(state.get(key, {}))
            if bad:
                raise NonFiniteWeightsError(
                    f'refusing to write a checkpoint of epoch {epoch}: {key} has NaN/Inf in {len(bad)} tensor(s) '
                    f'(first: {bad[0]}); the previous checkpoint is left untouched')
        if metric is not None:
            state['metric'] = float(metric)
        if hasattr(CheckpointSaver, 'state_dict'):
            state['saver'] = self.state_dict(epoch, metric)
        if self.extra_state is not None:
            state.update(self.extra_state())
        return state

    def _save(self, save_path, epoch, metric=None):
        atomic_torch_save(self._state(epoch, metric), save_path)

    def _replace(self, src, dst):
        os.replace(src, dst)  # atomic: dst is the old file or the new one, never missing
        fsync_dir(os.path.dirname(os.path.abspath(dst)))

    def _duplicate(self, src, dst):
        self._link_or_copy(src, dst)
        if os.path.basename(dst) == BEST:  # timm's saver copies last -> model_best on a new best metric
            self._save_timm_weights(os.path.join(os.path.dirname(dst), TIMM_BEST))

    def _save_timm_weights(self, path: str) -> None:
        """``model_best``'s weights as stock timm loads them: EMA when kept (timm's choice), no ``ood_head.*``."""
        from safetensors.torch import save
        state = get_state_dict(self.model_ema if self.model_ema is not None else self.model, self.unwrap_fn)
        tensors = {k: v.detach().cpu().contiguous() for k, v in state.items() if not k.startswith('ood_head.')}
        data = save(tensors, metadata={'format': 'pt'})
        atomic_write(path, lambda f: f.write(data))

    def _link_or_copy(self, src, dst):
        tmp = dst + PARTIAL_SUFFIX
        if os.path.lexists(tmp):
            os.remove(tmp)
        linked = False
        if self.can_hardlink:
            try:
                os.link(src, tmp)
                linked = True
            except (OSError, NotImplementedError):
                self.can_hardlink = False
        if not linked:
            atomic_write(tmp, lambda f: _copy_into(src, f))
        self._replace(tmp, dst)


def _copy_into(src: str, f) -> None:
    with open(src, 'rb') as s:
        shutil.copyfileobj(s, f)


# -- resume ----------------------------------------------------------------------------------
def classifier_classes(arch: str, state_dict: Dict[str, torch.Tensor]) -> Tuple[Optional[int], Optional[str]]:
    """``(number of classes, classifier weight key)`` of a checkpoint of timm model ``arch``, read
    from its classifier weight (timm's ``pretrained_cfg['classifier']``); ``(None, None)`` if absent."""
    import timm
    classifier = timm.models.get_pretrained_cfg_value(arch, 'classifier') if timm.is_model(arch) else None
    names = (classifier,) if isinstance(classifier, str) else tuple(classifier or ())
    for name in names:
        weight = state_dict.get(f'{name}.weight')
        if weight is not None and weight.ndim >= 1:
            return int(weight.shape[0]), f'{name}.weight'
    return None, None


def torch_load(path, mmap: bool = False):
    """The one ``torch.load`` of this package: on the CPU, ``weights_only=True`` (tensors and plain
    containers, never arbitrary objects), plus ``argparse.Namespace``, in which timm's own
    checkpoints store their args (as timm's loader allows it)."""
    with torch.serialization.safe_globals([argparse.Namespace]):
        return torch.load(path, map_location='cpu', weights_only=True, mmap=mmap)


def unreadable_checkpoint(path: str, e: BaseException, what: str = 'checkpoint') -> CheckpointError:
    """The error for a checkpoint that ``torch.load(weights_only=True)`` could not read: refused
    pickled objects, or a truncated / corrupt file (torch's own first line is often misleading,
    e.g. a truncated file read with ``mmap=True`` is said to need ``_use_new_zipfile_serialization``)."""
    text = f'{e} {e.__cause__ or ""}'
    unpickling = isinstance(e, pickle.UnpicklingError) or isinstance(e.__cause__, pickle.UnpicklingError)
    if unpickling and 'global' in text.lower():  # a refused class or function; else the file is garbage
        found = re.search(r'Unsupported globals?: (GLOBAL )?[\w.]+(, [\w.]+)*', text)
        detail = found.group(0).rstrip('.') if found else type(e).__name__
        return CheckpointError(f'{what} {path!r} was refused by torch.load(weights_only=True): it holds pickled '
                               f'objects other than tensors and plain containers ({detail}). Such files are never '
                               'unpickled; re-save the weights as a plain state dict or safetensors if you trust it.')
    return CheckpointError(f'{what} {path!r} is truncated or corrupt and cannot be read ({first_line(e)}).')


def load_file(path: str, what: str = 'checkpoint') -> Any:
    """The one reader of a torch checkpoint file (``torch_load``: ``weights_only=True``, tensors
    memory-mapped where the file allows it). A missing file is a ``FileNotFoundError``, one that
    cannot be read a ``CheckpointError`` (``unreadable_checkpoint``); ``what`` names the file for
    the user (``'--resume'``, ``'checkpoint_path'`` ...)."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f'{what} {str(path)!r}: no such file')
    try:
        try:
            return torch_load(path, mmap=True)
        except RuntimeError:  # mmap needs the zip format: a legacy torch.save file, or a truncated one
            return torch_load(path)
    except Exception as e:
        raise unreadable_checkpoint(path, e, what) from e


def load_safetensors(path: str, where: str = '') -> Dict[str, torch.Tensor]:
    """``safetensors.torch.load_file`` with a clear error for truncated or corrupt files."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file as load_tensors
    try:
        return load_tensors(path, device='cpu')
    except (SafetensorError, OSError, ValueError) as e:
        raise CheckpointError(
            f'{os.path.basename(path)}{" of " + where if where else ""} ({path}) is truncated or corrupt and cannot be '
            f'read: {e}. Delete this file (for a Hub repo, its cache entry, or pass force_download) and fetch it '
            'again.') from e


# timm's keys of a checkpoint's weights, in timm's order of preference (``timm.models.load_state_dict``)
_EMA_KEYS, _WEIGHT_KEYS = ('state_dict_ema', 'model_ema'), ('state_dict', 'model')


def read_checkpoint(path: str, use_ema: bool = True, what: str = 'checkpoint'
                    ) -> Tuple[Dict[str, torch.Tensor], Dict[str, Any], str]:
    """``(state_dict, meta, which weights)`` of a weights file: a training checkpoint (``.pth.tar``:
    a dict with ``state_dict`` and maybe ``state_dict_ema``, ``arch``, ``args``, ``ssod_cfg``,
    ``label_names``), a bare state dict, or ``.safetensors``. ``meta`` holds ``arch``, ``args``
    (a dict), ``label_names`` and ``ssod_cfg`` when the file has them. ``use_ema``: the EMA
    weights when present (timm's choice). Module prefixes (``module.``) are removed."""
    from timm.models import clean_state_dict
    if str(path).endswith('.safetensors'):
        if not os.path.isfile(path):
            raise FileNotFoundError(f'{what} {str(path)!r}: no such file')
        return load_safetensors(path), {}, 'safetensors'
    ckpt = load_file(path, what)
    if isinstance(ckpt, dict):
        keys = (_EMA_KEYS if use_ema else ()) + _WEIGHT_KEYS
        key = next((k for k in keys if isinstance(ckpt.get(k), dict)), None)
        if key is not None:
            args = ckpt.get('args') or {}
            meta = dict(arch=ckpt.get('arch'), args=vars(args) if isinstance(args, argparse.Namespace) else dict(args),
                        label_names=ckpt.get('label_names'), ssod_cfg=dict(ckpt.get('ssod_cfg') or {}))
            return clean_state_dict(ckpt[key]), meta, key
        if ckpt and all(torch.is_tensor(v) for v in ckpt.values()):
            return clean_state_dict(ckpt), {}, 'state_dict'
    raise CheckpointError(f'{what} {str(path)!r} holds neither a state dict nor a dict with "state_dict"')


def load_training_state(path: str) -> Dict[str, Any]:
    """A training checkpoint as a dict (``load_file``), for ``--resume``. A file that cannot be
    read, or that is not a training checkpoint, raises ``CheckpointError`` saying which."""
    state = load_file(path, 'training checkpoint')
    if not isinstance(state, dict) or 'state_dict' not in state:
        raise CheckpointError(f'{path!r} is not a training checkpoint (no state_dict): cannot --resume from it; '
                              'use --initial-checkpoint to start from its weights')
    return state


def resolve_checkpoint(output_dir_or_checkpoint) -> Path:
    """``<dir>/model_best.pth.tar`` (else ``last.pth.tar``, with a warning), or the file given."""
    path = Path(output_dir_or_checkpoint)
    if not path.is_dir():
        if not path.is_file():
            raise FileNotFoundError(f'{path}: no such training output folder or checkpoint')
        return path
    if (path / BEST).is_file():
        return path / BEST
    if (path / LAST).is_file():
        _logger.warning(f'{path} has no {BEST} (no validation metric?): using {LAST}')
        return path / LAST
    raise FileNotFoundError(f'{path} holds neither {BEST} nor {LAST}: not a training output folder')


# the training flags that make a model's ``ssod_cfg`` (config key -> ``timm-ssod train`` argument)
SSOD_CFG_ARGS = {'gamma': 'gamma', 'lam': 'ood_lambda', 'balance': 'balance', 'ood_warmup_epochs': 'ood_warmup_epochs',
                 'ood_weight': 'ood_weight', 'sampler': 'sampler'}
_TEXT_CFG = ('balance', 'sampler')


def ssod_cfg_from_args(args: Dict[str, Any]) -> Dict[str, Any]:
    """The ``ssod_cfg`` entries a training run's arguments set (``SSOD_CFG_ARGS``; unset ones left out)."""
    return {key: (v if key in _TEXT_CFG else float(v)) for key, arg in SSOD_CFG_ARGS.items()
            if (v := args.get(arg)) is not None}


def _epoch_of(path: str) -> int:
    m = re.search(r'-(\d+)\.pth\.tar$', path)
    return int(m.group(1)) if m else -1


def _loadable(path: str) -> bool:
    try:
        load_training_state(path)
        return True
    except Exception as e:  # corrupt / truncated / foreign file
        _logger.warning(f'Cannot use checkpoint {path}: {e.__class__.__name__}: {e}')
        return False


def checkpoint_in_run(run_dir: str) -> Optional[str]:
    """The checkpoint to resume a run folder from: ``last.pth.tar`` if it loads, else the
    newest ``checkpoint-N.pth.tar`` that does (None if there is none)."""
    candidates = [os.path.join(run_dir, LAST)]
    candidates += sorted(glob.glob(os.path.join(run_dir, 'checkpoint-*.pth.tar')), key=_epoch_of, reverse=True)
    for path in candidates:
        if os.path.isfile(path) and _loadable(path):
            return path
    return None


def resolve_resume(resume: str, output_root: str, experiment: str = '') -> Optional[str]:
    """Turn ``--resume`` into a checkpoint path.

    * a file: itself;
    * a folder: its ``last.pth.tar`` (or the newest loadable ``checkpoint-N``);
    * ``auto``: ``<output_root>/<experiment>`` when ``--experiment`` is set, else the run
      folder under ``output_root`` whose ``last.pth.tar`` is newest; None (start fresh) when
      there is nothing to resume, so the same command line can be rerun after a kill.
    """
    if not resume:
        return None
    if resume == 'auto':
        if experiment:
            runs = [os.path.join(output_root, experiment)]
        else:
            runs = sorted(glob.glob(os.path.join(output_root, '*', LAST)), key=os.path.getmtime, reverse=True)
            runs = [os.path.dirname(p) for p in runs]
        for run in runs:
            path = checkpoint_in_run(run) if os.path.isdir(run) else None
            if path:
                return path
        _logger.info(f'--resume auto: no checkpoint under {os.path.join(output_root, experiment)}, starting fresh')
        return None
    if os.path.isdir(resume):
        path = checkpoint_in_run(resume)
        if path is None:
            raise FileNotFoundError(f'--resume {resume!r}: no loadable {LAST} or checkpoint-N.pth.tar in this folder')
        return path
    if not os.path.isfile(resume):
        raise FileNotFoundError(f'--resume {resume!r}: no such checkpoint file or run folder')
    return resume


# -- output folder ---------------------------------------------------------------------------
def check_output_dir(path: str, min_free_bytes: int = 0, probe_bytes: int = 1 << 16) -> None:
    """Create ``path`` and prove it is writable before training starts: write, fsync and
    delete a small probe file, then compare the free space with ``min_free_bytes`` (about
    two checkpoints). Raises ``OutputDirError`` with the reason."""
    try:
        os.makedirs(path, exist_ok=True)
    except OSError as e:
        raise OutputDirError(f'cannot create the output folder {path!r}: {e.strerror or e}') from e
    probe = os.path.join(path, f'.write-probe-{os.getpid()}')
    try:
        with open(probe, 'wb') as f:
            f.write(b'\0' * probe_bytes)
            f.flush()
            os.fsync(f.fileno())
    except OSError as e:
        raise OutputDirError(f'the output folder {path!r} is not writable ({e.strerror or e}); checkpoints '
                             'could not be saved. Choose another --output.') from e
    finally:
        try:
            os.remove(probe)
        except OSError:
            pass
    free = shutil.disk_usage(path).free
    if free < min_free_bytes:
        raise OutputDirError(f'only {free / 2 ** 20:.1f} MiB free in {path!r}, but about '
                             f'{min_free_bytes / 2 ** 20:.1f} MiB are needed for two checkpoints. '
                             'Free some space or choose another --output.')


def estimate_checkpoint_bytes(model: torch.nn.Module, optimizer: torch.optim.Optimizer, with_ema: bool) -> int:
    """Rough size of one checkpoint: weights, optimizer state (from its type) and EMA."""
    weights = sum(t.numel() * t.element_size() for t in model.state_dict().values())
    params = sum(p.numel() * p.element_size() for p in model.parameters())
    name = type(optimizer).__name__.lower()
    per_param = 2 if ('adam' in name or 'lamb' in name or 'lion' in name) else 1
    return int(weights * (2 if with_ema else 1) + params * per_param)
