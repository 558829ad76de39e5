"""The common detector interface, usable on any timm classifier (plain or SSOD).

Only timm's public model API is used: ``forward_features``, ``forward_head`` (with
``pre_logits=True`` for the penultimate features), ``get_classifier`` and, on SSOD models,
``forward_ood_head``. There is no other model contract, and no device is hard-coded:
tensors stay on the model's / the inputs' device.

A score is higher for in-distribution inputs.
"""
import functools
from dataclasses import dataclass
from typing import Callable, Iterable, Iterator, Optional, Sequence, Tuple

import torch
import torch.nn as nn
from torch import Tensor

from ..core import merge_heads
from ..core import is_ssod_model

__all__ = ['ModelOutputs', 'compute_outputs', 'outputs_of_features', 'apply_classifier', 'collect_outputs',
           'Detector', 'NotFittedError', 'NotApplicableError']


class NotFittedError(ValueError):
    """A detector that needs ``fit`` was asked for scores before it was fitted."""


class NotApplicableError(ValueError):
    """A detector whose premise the model does not meet: activation shaping (ASH, SCALE) on
    penultimate features with negative values, a closed form that needs an affine last layer
    (fDBD, DICE, ViM) on a head that is not affine. The message names the detector and why."""


def apply_classifier(model: nn.Module, features: Tensor) -> Tensor:
    """The model's last layer on penultimate features (B, D) -> logits (B, M).

    ``model.get_classifier()`` is one module for most timm models. Distilled DeiT returns a
    tuple ``(head, head_dist)``: the logits are then the mean of the heads, as timm does at
    eval. (Its penultimate features are already the mean of the class and distillation
    tokens, so for DeiT this is an affine stand-in for ``forward_head``, not equal to it.)
    """
    classifier = model.get_classifier()
    if isinstance(classifier, (tuple, list)):
        return torch.stack([c(features) for c in classifier]).mean(dim=0)
    return classifier(features)


@dataclass
class ModelOutputs:
    """What the detectors read, from one backbone pass.

    features:   (B, D) penultimate features, ``forward_head(f, pre_logits=True)``.
    logits:     (B, M) class logits, ``forward_head(f)`` (what the model predicts).
    ood_logits: (B, 2) SSOD OOD-head logits, index 0 = OOD, 1 = ID; None on a plain model.
    classifier: features -> logits, the model's last layer (``apply_classifier``); needed
                by detectors that change the features (ReAct) or read the last layer (ViM).
    """
    features: Tensor
    logits: Tensor
    ood_logits: Optional[Tensor] = None
    classifier: Optional[Callable[[Tensor], Tensor]] = None

    @staticmethod
    def cat(outputs: Sequence['ModelOutputs']) -> 'ModelOutputs':
        """Concatenate along the batch; the classifier of the first is kept."""
        if not outputs:
            raise ValueError('ModelOutputs.cat needs at least one element')
        ood = [o.ood_logits for o in outputs]
        return ModelOutputs(torch.cat([o.features for o in outputs]), torch.cat([o.logits for o in outputs]),
                            None if any(o is None for o in ood) else torch.cat(ood), outputs[0].classifier)


def compute_outputs(model: nn.Module, x: Tensor) -> ModelOutputs:
    """One backbone pass -> ``ModelOutputs``. Runs under the caller's grad mode and the
    model's current train/eval mode (call ``model.eval()`` first, as for any timm model)."""
    return outputs_of_features(model, model.forward_features(x), x.shape[-2:])


def outputs_of_features(model: nn.Module, feats: Tensor, img_size=None) -> ModelOutputs:
    """``compute_outputs`` from ``forward_features`` output already computed (the heads only)."""
    features = model.forward_head(feats, pre_logits=True)
    logits = merge_heads(model.forward_head(feats))
    ood_logits = model.forward_ood_head(feats, img_size=img_size) if is_ssod_model(model) else None
    return ModelOutputs(features, logits, ood_logits, functools.partial(apply_classifier, model))


def _model_device(model: nn.Module) -> torch.device:
    p = next(model.parameters(), None)
    return p.device if p is not None else torch.device('cpu')


def _split_batch(batch) -> Tuple[Tensor, Optional[Tensor]]:
    if isinstance(batch, (tuple, list)):
        return batch[0], (batch[1] if len(batch) > 1 else None)
    return batch, None


def eval_batches(model: nn.Module, loader: Iterable, device=None) -> Iterator[Tuple[Tensor, Optional[Tensor]]]:
    """Stream ``(x, y)`` on ``device`` over a loader of ``(x, y)`` (or ``x``) batches, with the
    model in eval mode and under ``no_grad``; the model's mode is restored afterwards. ``device``
    defaults to the device of the model's parameters."""
    device = torch.device(device) if device is not None else _model_device(model)
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            for batch in loader:
                x, y = _split_batch(batch)
                yield x.to(device), (y.to(device) if isinstance(y, Tensor) else y)
    finally:
        model.train(was_training)


def collect_outputs(model: nn.Module, loader: Iterable, device=None) -> Iterator[Tuple[ModelOutputs, Optional[Tensor]]]:
    """Stream ``(ModelOutputs, targets)`` over a loader (``eval_batches``: eval mode, ``no_grad``)."""
    for x, y in eval_batches(model, loader, device):
        yield compute_outputs(model, x), y


class _OutputsSource:
    """Re-iterable ``collect_outputs``: each iteration runs the loader again."""

    def __init__(self, model, loader, device):
        self.model, self.loader, self.device = model, loader, device

    def __iter__(self):
        return collect_outputs(self.model, self.loader, self.device)


class Detector:
    """Base class. Subclasses set ``name`` and implement ``_score(outputs) -> (B,)``;
    detectors that need ID data set ``needs_fit = True`` and implement ``_reset``,
    ``_update(outputs, targets, pass_index)`` and ``_finish(pass_index)`` (streaming:
    statistics are accumulated batch by batch). ``fit_passes = 2`` runs the data twice.
    """
    name = 'detector'
    needs_fit = False
    needs_inputs = False  # True when only score(model, x) works (input perturbation)
    # True when the fit reads the images themselves, not only their outputs: fit(model, loader) then,
    # fit_outputs is not enough (ssod_fused choosing from image-made pseudo-OOD)
    fits_on_images = False
    needs_ood_head = False  # True when it reads the OOD head (an SSOD model's ood_logits): the one place this is decided
    fit_passes = 1

    def __init__(self):
        self._fitted = False

    # -- fitting -------------------------------------------------------------------------
    def fit(self, model: nn.Module, loader: Iterable, device=None) -> 'Detector':
        """Fit on ID data from ``loader`` (batches ``(x, y)``), in eval mode under no_grad.
        ``device`` defaults to the model's. A detector that needs no fit returns self."""
        if not self.needs_fit:
            return self
        return self.fit_outputs(_OutputsSource(model, loader, device))

    def fit_outputs(self, batches: Iterable) -> 'Detector':
        """Fit from precomputed outputs: an iterable of ``(ModelOutputs, targets)`` pairs
        (or bare ``ModelOutputs``). Detectors with ``fit_passes = 2`` need a re-iterable
        (e.g. a list), not a one-shot iterator."""
        if not self.needs_fit:
            return self
        if self.fit_passes > 1 and iter(batches) is batches:
            raise TypeError(f'{self.name} reads the fit data {self.fit_passes} times: pass a '
                            're-iterable (a list of batches, or use fit(model, loader)), not an iterator')
        self._fitted = False
        self._reset()
        with torch.no_grad():
            for pass_index in range(self.fit_passes):
                seen = 0
                for item in batches:
                    outputs, targets = item if isinstance(item, (tuple, list)) else (item, None)
                    self._update(outputs, targets, pass_index)
                    seen += 1
                if not seen:
                    raise ValueError(f'{self.name}: fit got no batches')
                self._finish(pass_index)
        self._fitted = True
        return self

    def _reset(self) -> None:
        pass

    def _update(self, outputs: ModelOutputs, targets: Optional[Tensor], pass_index: int) -> None:
        raise NotImplementedError

    def _finish(self, pass_index: int) -> None:
        pass

    @property
    def is_fitted(self) -> bool:
        return self._fitted or not self.needs_fit

    def _check_fitted(self) -> None:
        if not self.is_fitted:
            raise NotFittedError(f'{self.name} ({type(self).__name__}) is not fitted: call '
                                 'fit(model, loader) or fit_outputs(...) on ID data before scoring')

    # -- scoring -------------------------------------------------------------------------
    def score(self, model: nn.Module, x: Tensor) -> Tensor:
        """(B,) scores for a batch of images, higher = more ID, under no_grad."""
        self._check_fitted()
        with torch.no_grad():
            return self._score(compute_outputs(model, x))

    def score_outputs(self, outputs: ModelOutputs) -> Tensor:
        """(B,) scores from precomputed ``ModelOutputs``, higher = more ID."""
        self._check_fitted()
        with torch.no_grad():
            return self._score(outputs)

    def _score(self, outputs: ModelOutputs) -> Tensor:
        raise NotImplementedError

    def __repr__(self):
        return f'{type(self).__name__}(name={self.name!r})'


def labelled_features(name: str, outputs: ModelOutputs, targets) -> Tuple[Tensor, Tensor]:
    """``(features (N, D) float64, labels (N,) long)`` of a fit batch, for a detector ``name`` that
    needs the class labels: a ValueError when they are missing, fewer or more than the rows, or
    outside ``[0, M)``."""
    if targets is None:
        raise ValueError(f'{name} needs the class labels of the fit data: batches (x, y)')
    f = outputs.features.double()
    m = outputs.logits.shape[-1]
    y = torch.as_tensor(targets, device=f.device).long().reshape(-1)
    if y.numel() != f.shape[0]:
        raise ValueError(f'{f.shape[0]} feature rows but {y.numel()} labels')
    if y.numel() and (y.min() < 0 or y.max() >= m):
        raise ValueError(f'{name}: labels must lie in [0, {m}), got [{int(y.min())}, {int(y.max())}]')
    return f, y


def top_similarities(features: Tensor, bank: Tensor, k: int, query_chunk: int, bank_chunk: int) -> Tensor:
    """``(B, min(k, len(bank)))``: each L2-normalised feature's ``k`` largest inner products with
    the rows of ``bank`` (unit rows), descending; computed in chunks of ``query_chunk`` queries x
    ``bank_chunk`` rows, so memory stays bounded whatever the bank's size."""
    bank = bank.to(features.device)
    out = []
    for q in torch.nn.functional.normalize(features.float(), dim=-1).split(query_chunk):
        best = None  # (b, <= k) largest similarities so far
        for part in bank.split(bank_chunk):
            sim = q @ part.T
            if best is not None:
                sim = torch.cat([best, sim], dim=1)
            best = sim.topk(min(k, sim.shape[1]), dim=1).values
        out.append(best)
    return torch.cat(out)
