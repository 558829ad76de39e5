"""Image files that cannot be read are left out of what is scored, never replaced.

timm's ``ImageDataset`` replaces an image it cannot read by the next one, and ``ImageFolderOOD``
does the same by default: the count then includes the unreadable file and a duplicate is
scored in its place. For everything that scores images (``eval``, ``calibrate``, ``visualize``,
the validation of ``train``; ``predict`` reads its files itself) that is a wrong answer, so:

* ``leave_out_unreadable(dataset)``: an image folder dataset (timm's, ``ImageFolderOOD``) gives
  None for a file it cannot read, after its warning naming the file;
* ``drop_unreadable(collate)``: a loader's ``collate_fn`` that leaves those out of the batch
  (None for a batch of which nothing could be read);
* ``readable_batches(loader)``: the loader without such empty batches.

Counts and scores are then of the images read. Training batches keep timm's behaviour (a
training epoch only sees one image twice; its size and batch shapes stay as configured).
"""
import functools
from typing import Callable, Optional

import torch.utils.data as tud
from timm.data import ImageDataset
from timm.data.loader import PrefetchLoader

from ._id_data import name_skipped_files
from .folders import ImageFolderOOD

__all__ = ['leave_out_unreadable', 'drop_unreadable', 'readable_batches']


def leave_out_unreadable(dataset):
    """Make an image folder dataset (or the one a ``Subset`` wraps) give None for a file it
    cannot read; other datasets are returned as they are. Returns ``dataset``."""
    base = dataset
    while isinstance(base, tud.Subset):
        base = base.dataset
    if isinstance(base, ImageDataset):
        name_skipped_files(base)  # its warning names the file
        base.leave_out_unreadable = True
    elif isinstance(base, ImageFolderOOD):
        base.leave_out_unreadable = True
    return dataset


def _collate_readable(collate: Callable, batch):
    kept = [item for item in batch if item is not None]
    return collate(kept) if kept else None


def drop_unreadable(collate: Optional[Callable] = None) -> Callable:
    """``collate`` (default torch's ``default_collate``) of the items that were read."""
    return functools.partial(_collate_readable, collate or tud.default_collate)


class _ReadableBatches:
    """A loader's batches without the None of a batch of which no image was read; everything
    else (``len``, ``dataset``, ``sampler`` ...) is the loader's."""

    def __init__(self, loader):
        self.loader = loader

    def __iter__(self):
        return (batch for batch in self.loader if batch is not None)

    def __len__(self) -> int:
        return len(self.loader)

    def __getattr__(self, name):
        if name == 'loader':  # not set yet (unpickling): no recursion
            raise AttributeError(name)
        return getattr(self.loader, name)


def readable_batches(loader):
    """``loader`` (a DataLoader, or timm's PrefetchLoader around one) skipping empty batches."""
    if isinstance(loader, PrefetchLoader):  # it unpacks every batch of the loader it wraps
        loader.loader = _ReadableBatches(loader.loader)
        return loader
    return _ReadableBatches(loader)
