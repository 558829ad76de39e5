"""Reading datasets for scoring: a deterministic subset (``subsample_indices``, ``cut``), an
in-order loader that leaves unreadable images out (``make_loader``), and whether two folder
datasets read the same folder (``same_folder``). Used by ``eval``, ``calibrate``, ``visualize``."""
import os

import numpy as np
import torch
import torch.utils.data as tud

from ._unreadable import drop_unreadable, leave_out_unreadable, readable_batches

__all__ = ['subsample_indices', 'cut', 'make_loader', 'same_folder']


def subsample_indices(n: int, k: int, seed: int = 0) -> np.ndarray:
    """Sorted indices of ``k`` of ``n`` items, drawn without replacement by
    ``numpy.random.default_rng(seed)``; all ``n`` when ``k >= n``. Deterministic."""
    if k >= n:
        return np.arange(n)
    return np.sort(np.random.default_rng(seed).choice(n, size=k, replace=False))


def same_folder(a, b) -> bool:
    """True when two timm folder datasets read the same folder (no split sub-folders found)."""
    roots = [getattr(getattr(d, 'reader', None), 'root', None) for d in (a, b)]
    return roots[0] is not None and os.path.realpath(str(roots[0])) == os.path.realpath(str(roots[1] or ''))


class _Take(tud.IterableDataset):
    """The first ``n`` items of an iterable dataset."""

    def __init__(self, dataset, n: int):
        self.dataset, self.n = dataset, n

    def __iter__(self):
        for i, item in enumerate(self.dataset):
            if i >= self.n:
                break
            yield item


def cut(dataset, n: int, seed: int):
    """At most ``n`` items: a deterministic random subset (``subsample_indices``) of a
    map-style dataset, the first ``n`` items of an iterable one."""
    if isinstance(dataset, tud.IterableDataset):
        return _Take(dataset, n)
    if n >= len(dataset):
        return dataset
    return tud.Subset(dataset, subsample_indices(len(dataset), n, seed).tolist())


def make_loader(dataset, transform, batch_size: int, workers: int, device: torch.device):
    """An in-order DataLoader, ``transform`` set on the dataset (or the one a Subset wraps). An
    image file that cannot be read is left out (``timm_ssod.data._unreadable``): its batch is
    shorter, so counts and scores are of the images read."""
    base = dataset
    while isinstance(base, (tud.Subset, _Take)):
        base = base.dataset
    base.transform = transform
    leave_out_unreadable(base)
    return readable_batches(tud.DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=workers,
                                           pin_memory=device.type == 'cuda', drop_last=False,
                                           collate_fn=drop_unreadable()))
