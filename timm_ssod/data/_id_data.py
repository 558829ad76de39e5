"""ID images as timm reads them (``timm-ssod train``, ``eval``, ``visualize``), with the checks
timm leaves out.

``timm.data.create_dataset('', root, split)`` reads an image folder: ``root/<split>`` when that
folder exists (or a synonym: ``train``/``training``; ``val``/``valid``/``validation``/``eval``/
``evaluation``), otherwise, silently, ``root`` itself. On a folder holding ``train/`` and
``val/`` that fallback puts the training images into an evaluation split (``--split test``
read train + val). Here:

* ``TRAIN_SPLIT`` / ``HELD_OUT_SPLIT``: the one rule for default splits. Every command trains
  or fits on ``train`` (``train/``) and reads held-out images (train's validation, eval,
  calibrate, visualize) from ``validation`` (``val/``, or ``valid/``, ``validation/``,
  ``eval/``, ``evaluation/``); ``test/`` is read only when asked for (``--split test``);
* ``resolve_split``: the folder a split reads, and whether it was found or is that fallback;
* ``check_evaluation_split``: an evaluation split that falls back to a folder holding the
  training images is an error saying which folders and what to pass instead; naming the
  training folder explicitly (``--split train``) is allowed, and reported by the caller;
  ``check_held_out_split``: that rule for the ``--split`` / ``--fit-split`` of eval,
  calibrate and visualize;
* ``create_id_dataset``: ``create_dataset`` with one-line errors (missing folder, unknown
  torchvision dataset, torchvision data not downloaded or the download failing), image
  folders reading every format PIL decodes (timm reads only .png/.jpg/.jpeg), and timm's
  "Skipped sample (index i)" warning naming the file (``name_skipped_files``);
* ``class_names``: a dataset's class names (folder names, torchvision ``classes``, synthetic);
  ``model_class_map``: how to read a folder with a model's class indices.
"""
import logging
import os
import re
import threading
from typing import Dict, List, NamedTuple, Optional, Sequence, Type

from timm.data import ImageDataset
from timm.data.dataset_factory import _search_split  # timm's own split lookup, so both agree

from .._util import first_line
from .factory import create_dataset
from .folders import image_extensions
from ._ood_specs import is_synthetic, unknown_torch_dataset

__all__ = ['SplitFolder', 'resolve_split', 'check_evaluation_split', 'create_id_dataset', 'class_names',
           'name_skipped_files', 'is_image_folder', 'folder_summary', 'recorded_training_folder', 'model_class_map',
           'EVAL_SPLITS', 'TRAIN_SPLIT', 'HELD_OUT_SPLIT', 'check_held_out_split']

TRAIN_SPLIT = 'train'  # the default training / fit split of every command
HELD_OUT_SPLIT = 'validation'  # the default held-out split of every command (timm: val/, valid/, ... never test/)
EVAL_SPLITS = ('test', 'val', 'valid', 'validation', 'eval', 'evaluation')  # sub-folders offered as a way out


def is_image_folder(name: str) -> bool:
    """True for a timm dataset name that reads a folder (``''``, no ``prefix/``)."""
    return not name or ('/' not in name and not is_synthetic(name))


# ------------------------------------------------------------------------------------- splits
class SplitFolder(NamedTuple):
    """The folder a split of an image folder reads. ``found`` is False for timm's fallback,
    the whole root. ``training``: the training folder it equals or holds, if any."""
    split: str
    folder: str
    found: bool
    training: Optional[str] = None


def _real(path) -> str:
    return os.path.realpath(os.path.abspath(str(path)))


def _holds(outer: str, inner: str) -> bool:
    outer, inner = _real(outer), _real(inner)
    return inner == outer or inner.startswith(outer.rstrip(os.sep) + os.sep)


def resolve_split(root: str, split: str) -> SplitFolder:
    """The folder timm's ``create_dataset('', root, split)`` reads (see the module docstring)."""
    folder = _search_split(str(root), split)
    return SplitFolder(split, folder, _real(folder) != _real(root))


def check_evaluation_split(root: str, split: str, flag: str, training: Sequence[Optional[str]],
                           error: Type[Exception] = ValueError) -> SplitFolder:
    """Resolve an evaluation split; ``training``: folders holding training images. A split that
    falls back to a folder holding one of them is an ``error``; one that was found and holds
    them (``--split train``) is returned with ``training`` set, for the caller to report."""
    ev = resolve_split(root, split)
    clash = next((t for t in training if t and _holds(ev.folder, t)), None)
    if clash is None:
        return ev
    if ev.found:
        return ev._replace(training=clash)
    same = _real(clash) == _real(ev.folder)
    where = (f'which is the training folder itself ({clash})' if same else f'which holds the training images ({clash})')
    found = [s for s in EVAL_SPLITS if os.path.isdir(os.path.join(root, s))]
    parent = os.path.dirname(_real(root))
    in_parent = resolve_split(parent, split) if same else None  # what this split reads there
    beside = [s for s in EVAL_SPLITS if os.path.isdir(os.path.join(parent, s))] if same else []
    if found:
        way_out = f'Give {flag} {found[0]} (it reads {os.path.join(root, found[0])}).'
    elif in_parent is not None and in_parent.found:
        way_out = f'Pass the parent folder, --data-dir {parent}: {flag} {split!r} reads {in_parent.folder} there.'
    elif beside:
        way_out = (f'Pass the parent folder, --data-dir {parent}, with {flag} {beside[0]} (it reads '
                   f'{os.path.join(parent, beside[0])}).')
    elif same and _real(resolve_split(parent, TRAIN_SPLIT).folder) != _real(root):
        # a folder of class folders: the parent would not read it as its training split either
        classes = sorted(d for d in os.listdir(root) if os.path.isdir(os.path.join(root, d)) and not d.startswith('.'))
        shown = ', '.join(classes[:5]) + (', ...' if len(classes) > 5 else '')
        way_out = (f'Move its class folders ({shown}) into {os.path.join(root, TRAIN_SPLIT)} and put evaluation images '
                   f'in {os.path.join(root, "val")} (the same class sub-folders), then run the same command again.')
    elif same:
        way_out = (f'Put evaluation images in a folder beside it ({os.path.join(parent, "val")}, class sub-folders as '
                   f'in {clash}) and pass the parent folder {parent} as --data-dir.')
    else:
        way_out = f'Put evaluation images in {os.path.join(root, "val")} (class sub-folders as in {clash}).'
    raise error(f'{flag} {split!r}: {root} has no {split.split("[")[0]!r} sub-folder, so timm would read all of '
                f'{root}, {where}. Scores on training images say nothing about new images. {way_out}')


def check_held_out_split(dataset: str, root: Optional[str], split: str, fit_split: str,
                         train_args: Optional[Dict] = None, error: Type[Exception] = ValueError):
    """``(held-out split, fit split)`` folders of an image-folder ID set (``(None, None)`` for
    other data), through ``check_evaluation_split``: the fit split's folder, when it exists,
    and the folder a training run recorded (``train_args``) hold training images."""
    if not is_image_folder(dataset) or not root or not os.path.isdir(root):
        return None, None
    split_fit = resolve_split(root, fit_split)
    training = [split_fit.folder if split_fit.found else None, recorded_training_folder(train_args or {})]
    return check_evaluation_split(root, split, '--split', training, error), split_fit


# ----------------------------------------------------------------------------- file names
_CURRENT = threading.local()  # the dataset whose __getitem__ runs in this thread
_SKIPPED = re.compile(r'^Skipped sample \(index (\d+)\)\.')


class _NameSkippedFile(logging.Filter):
    """Adds the file name to timm's "Skipped sample (index i). <error>" (a truncated image's
    error does not name it)."""

    def filter(self, record: logging.LogRecord) -> bool:
        dataset = getattr(_CURRENT, 'dataset', None)
        match = _SKIPPED.match(str(record.msg)) if dataset is not None else None
        if match:
            try:
                path = dataset.reader.filename(int(match.group(1)), absolute=True)
            except Exception:  # a reader without file names: leave timm's message as it is
                return True
            record.msg = f"Skipped sample (index {match.group(1)}, file '{path}')." + str(record.msg)[match.end():]
        return True


logging.getLogger('timm.data.dataset').addFilter(_NameSkippedFile())


class _ImageDatasetNamingFiles(ImageDataset):
    """timm's ImageDataset whose skipped-sample warnings name the file (``name_skipped_files``).
    With ``leave_out_unreadable`` set (``timm_ssod.data._unreadable``) a file it cannot read
    gives None instead of timm's substitute, the next file."""
    leave_out_unreadable = False

    def __getitem__(self, index):
        previous, _CURRENT.dataset = getattr(_CURRENT, 'dataset', None), self
        try:
            if not self.leave_out_unreadable:
                return super().__getitem__(index)
            retries, self._max_retries = self._max_retries, 1  # one try: no substitute
            try:
                return super().__getitem__(index)
            except RuntimeError as e:  # timm: "Failed to load 1 consecutive samples", after its warning
                if 'consecutive samples' not in str(e):
                    raise
                return None
            finally:
                self._max_retries = retries
        finally:
            _CURRENT.dataset = previous


def name_skipped_files(dataset):
    """Make timm's warning for an image it cannot read name the file; returns ``dataset``."""
    if type(dataset) is ImageDataset:
        dataset.__class__ = _ImageDatasetNamingFiles
    return dataset


# ----------------------------------------------------------------------------- datasets
def class_names(dataset) -> Optional[List[str]]:
    """Class names by index: ``classes`` (torchvision, synthetic) or the folder reader's
    ``class_to_idx``; None when unknown or not one name per index."""
    classes = getattr(dataset, 'classes', None)
    if classes:
        return [str(c) for c in classes]
    mapping = getattr(getattr(dataset, 'reader', None), 'class_to_idx', None)
    if not mapping:
        return None
    by_index = sorted((i, str(c)) for c, i in mapping.items())
    if [i for i, _ in by_index] != list(range(len(by_index))):
        return None
    return [c for _, c in by_index]


def create_id_dataset(name: str, root: Optional[str], split: str, *, error: Type[Exception] = ValueError,
                      download: bool = False, download_hint: str = 'pass --dataset-download', **kwargs):
    """``timm_ssod.data.create_dataset`` of ID data, with the errors and folder behaviour of the
    module docstring. ``download_hint``: how the caller's user allows a download."""
    if is_synthetic(name):
        return create_dataset(name, root=root, split=split, **kwargs)
    if is_image_folder(name):
        if not root:
            raise error('no data folder: give --data-dir DIR (an image folder with train/ and val/ sub-folders)')
        if not os.path.exists(root):
            raise error(f'--data-dir {root!r}: no such folder')
        if os.path.isdir(root):
            kwargs.setdefault('input_key', ';'.join(sorted(image_extensions())))
    elif unknown_torch_dataset(name):
        raise error(unknown_torch_dataset(name))
    try:
        dataset = create_dataset(name, root=root, split=split, download=download, **kwargs)
    except RuntimeError as e:
        if 'download=True' in str(e) or 'not found' in str(e).lower():
            raise error(f'{name} was not found in {root!r} ({first_line(e)}); {download_hint} to download it '
                        '(needs internet), or copy its files there') from e
        raise
    except OSError as e:  # urllib's URLError, socket errors ... while downloading
        if not download:
            raise
        raise error(f'downloading {name} into {root!r} failed ({first_line(e)}). Without internet, download it on '
                    f'another machine, copy it into {root!r} and run again without the download option') from e
    if os.path.isdir(str(root or '')) and is_image_folder(name):
        name_skipped_files(dataset)
    return dataset


def folder_summary(dataset, split: SplitFolder) -> str:
    """``"split 'validation' -> DIR/val (12 images, 3 classes: a, b, c)"``, for logs."""
    names = class_names(dataset) or []
    shown = ', '.join(names[:10]) + (', ...' if len(names) > 10 else '')
    n = len(dataset) if hasattr(dataset, '__len__') else '?'
    return (f"split {split.split!r} -> {split.folder}" + ('' if split.found else ' (no split sub-folder: the whole '
                                                                                  'folder)') +
            f' ({n} images' + (f', {len(names)} classes: {shown})' if names else ')'))


def recorded_training_folder(train_args: Dict) -> Optional[str]:
    """The training folder a ``timm-ssod train`` run recorded in its checkpoint args, if it was
    an image folder (relative paths are taken from the current folder)."""
    root = train_args.get('data_dir') or train_args.get('data')
    if not root or not is_image_folder(train_args.get('dataset') or '') or not os.path.isdir(root):
        return None
    return resolve_split(root, train_args.get('train_split') or 'train').folder


def model_class_map(model_names: Optional[Sequence[str]], data_names: Optional[Sequence[str]], what: str,
                    error: Type[Exception] = ValueError) -> Optional[Dict[str, int]]:
    """How to read labelled data for a model with class names. None: nothing to do (the same
    classes in the same order, or either side unknown). A ``class_map`` (name -> the model's
    index) when the data holds some of the model's classes, e.g. a val folder without one class,
    whose folder indices would otherwise be shifted. An ``error`` when it holds classes the model
    does not know."""
    if not model_names or not data_names or list(model_names) == list(data_names):
        return None
    unknown = [n for n in data_names if n not in model_names]
    if unknown:
        raise error(f'{what} has classes the model was not trained on: {", ".join(unknown[:10])}'
                    f'{", ..." if len(unknown) > 10 else ""} (the model knows {", ".join(list(model_names)[:10])}'
                    f'{", ..." if len(model_names) > 10 else ""}); its labels would index the wrong classes')
    return {n: i for i, n in enumerate(model_names)}


def dataset_num_classes(dataset) -> Optional[int]:
    """Number of classes a dataset declares (``num_classes``, ``classes`` or its reader's
    ``class_to_idx``), or None."""
    n = getattr(dataset, 'num_classes', None)
    if isinstance(n, int) and n > 0:
        return n
    for owner in (dataset, getattr(dataset, 'reader', None), getattr(dataset, 'parser', None)):
        classes = getattr(owner, 'classes', None) or getattr(owner, 'class_to_idx', None)
        if classes:
            return len(classes)
    return None
