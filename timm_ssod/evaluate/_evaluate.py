"""The evaluation harness: SSOD and the post-hoc baselines scored on the same model, the same
images and the same metrics (``timm_ssod.metrics``), as in the paper's Tables 1-3.

Python API::

    from timm_ssod.evaluate import evaluate
    from timm_ssod.evaluate import format_table, write_results

    result = evaluate(model, id_loader, {'textures': tex_loader, 'noise': noise_loader},
                      fit_loader=train_loader)   # ID training data, for the detectors that fit
    print(format_table(result))
    write_results(result, 'output/eval/my-run')   # results.json, results.csv, results.md

Loaders yield ``(images, labels)`` batches (labels of OOD batches are ignored; an ID loader
without labels gives ``id_accuracy = None``). What ``evaluate`` does:

1. detectors are created by name (``timm_ssod.detectors.create_detector``; ``Detector``
   instances are used as given). ``ssod`` / ``ssod_msp`` are skipped on a plain model, and
   the detectors that need fitting are skipped without a ``fit_loader``; ``result['skipped']``
   says why. An unknown name raises ValueError.
2. the fitted detectors are fitted on ``fit_loader``, from one backbone pass per batch shared
   by all of them (the fit outputs are kept while fitting: about N x (D + M) floats, the
   size of the KNN bank that KNN keeps anyway).
3. every ID and OOD batch goes through the backbone once (``compute_outputs``); all
   detectors but ODIN score these outputs, ODIN scores the images (it needs input
   gradients). ID accuracy is the top-1 accuracy over all ID images.
4. model outputs or scores with NaN/Inf raise ``NonFiniteOutputError`` naming the set.
5. per detector and OOD set, ``timm_ssod.metrics.ood_metrics`` (fractions; ID positive,
   FPR95 at 95% ID recall, as in the paper), and per detector the mean over the sets
   (``result["average"]``, outside ``"results"`` so that ``"results"`` holds OOD sets only).
   With ``equal_counts=True`` (default; the paper's A.4 follows Hendrycks & Gimpel 2017)
   each pair uses ``min(n_id, n_ood)`` images of each side, the larger side subsampled by
   ``subsample_indices(n, k, seed)``, the same images for every detector.

The result is JSON-serialisable; its ``{"id_accuracy", "results": {detector: {ood_set:
{"fpr95", "auroc", "aupr_in", "aupr_out"}}}}`` part is what ``timm_ssod.hub`` reads::

    {"model": "resnet18", "num_classes": 6, "id_accuracy": 0.94, "num_id": 600,
     "num_ood": {"noise": 600}, "num_used": {"noise": {"id": 600, "ood": 600}},
     "equal_counts": true, "seed": 0, "detectors": ["msp", ...],
     "results": {"msp": {"noise": {"fpr95": ..., "auroc": ..., "aupr_in": ..., "aupr_out": ...}}},
     "average": {"msp": {"fpr95": ..., "auroc": ..., "aupr_in": ..., "aupr_out": ...}},
     "skipped": {"ssod": "plain model: no OOD head"}, "notes": ["..."]}

``evaluate(..., return_scores=True)`` also returns the raw scores (``EvalScores``), for the
histograms of ``timm_ssod.evaluate.plot_histograms``; ``compute_scores`` + ``summarize`` are
the two halves of ``evaluate``.

Command line: ``timm-ssod eval`` / ``python -m timm_ssod.evaluate`` (``timm_ssod.cli._eval``).
"""
import sys
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Dict, Iterable, List, Mapping, Optional, Sequence, Tuple, Union

import numpy as np
import torch
import torch.nn as nn

from ..data import subsample_indices
from ..detectors import Detector, ModelOutputs, compute_outputs, create_detector
from ..metrics import ood_metrics
from ..core import is_ssod_model

__all__ = ['DEFAULT_DETECTORS', 'SSOD_DETECTORS', 'AVERAGE', 'EvalScores', 'NonFiniteOutputError',
           'DeployedDetector', 'evaluate', 'compute_scores', 'summarize', 'subsample_indices', 'resolve_detectors',
           'with_progress']

# The default set (demo, benchmarks, `timm-ssod eval` without --detectors), explicit rather than
# "everything registered": every detector added to the registry would otherwise slow the demo and
# change every committed table. RMDS and GEN (single pass, any backbone, near the top of OpenOOD v1.5)
# are in it; the others (fdbd, scale, ash_s, ash_b, nnguide, she, dice) run when named:
# evaluate(..., detectors=[...]) or `timm-ssod eval --detectors fdbd,dice`.
DEFAULT_DETECTORS = ('msp', 'maxlogit', 'energy', 'odin', 'klm', 'gen', 'mahalanobis', 'rmds', 'knn', 'react', 'vim',
                     'ssod', 'ssod_msp', 'ssod_fused')
SSOD_DETECTORS = ('ssod', 'ssod_msp', 'ssod_fused')
AVERAGE = 'average'  # result[AVERAGE][detector]: the mean over the OOD sets; no OOD set may have this name
SMALL_SET = 100  # fewer images than this in a metric pair: a note that the numbers are noisy


class NonFiniteOutputError(FloatingPointError):
    """The model (or a detector) gave NaN/Inf on some images: no metric is computed."""


@dataclass
class EvalScores:
    """Raw per-image scores (higher = more ID) of ``compute_scores``."""
    id_scores: Dict[str, np.ndarray]                 # detector -> (N_id,)
    ood_scores: Dict[str, Dict[str, np.ndarray]]     # ood_set -> detector -> (N_ood,)
    id_accuracy: Optional[float]
    num_id: int
    model: str = ''
    num_classes: int = 0
    skipped: Dict[str, str] = field(default_factory=dict)
    id_accuracy_top5: Optional[float] = None  # with 5 classes or more

    @property
    def detectors(self) -> List[str]:
        return list(self.id_scores)


class DeployedDetector(Detector):
    """The detector a calibrated model decides with (``model.ssod_calibration.detector``), as
    saved: scored as it is, never refitted, under the name ``<detector> (deployed)``. Its
    FPR95 / AUROC are those of the model's p-value (a monotone map of this score, ties aside)."""
    SUFFIX = ' (deployed)'

    def __init__(self, calibration):
        super().__init__()
        self.inner = calibration.detector
        self.name = f'{self.inner.name}{self.SUFFIX}'
        self.needs_ood_head = self.inner.needs_ood_head
        self._fitted = True

    def score_outputs(self, outputs: ModelOutputs) -> torch.Tensor:
        return self.inner.score_outputs(outputs)


def _model_name(model: nn.Module) -> str:
    cfg = getattr(model, 'ssod_cfg', None) or {}
    return cfg.get('backbone') or getattr(model, 'pretrained_cfg', {}).get('architecture') or type(model).__name__


def resolve_detectors(model: nn.Module, detectors: Sequence[Union[str, Detector]], with_fit_data: bool = True,
                      detector_kwargs: Optional[Mapping[str, Dict]] = None) -> Tuple[List[Detector], Dict[str, str]]:
    """``(detectors to run, {skipped name: reason})``. Names go through ``create_detector``
    with ``detector_kwargs[name]``; unknown names raise ValueError."""
    detector_kwargs = detector_kwargs or {}
    run, skipped, seen = [], OrderedDict(), set()
    for d in detectors:
        det = create_detector(d, **detector_kwargs.get(d.lower(), {})) if isinstance(d, str) else d
        if det.name in seen:
            raise ValueError(f'detector {det.name!r} is listed twice')
        seen.add(det.name)
        if det.needs_ood_head and not is_ssod_model(model):
            skipped[det.name] = 'plain model: no OOD head (SSOD detectors need an SSOD model)'
        elif det.needs_fit and not det.is_fitted and not with_fit_data:
            skipped[det.name] = 'needs ID training data to fit (fit_loader) and none was given'
        else:
            run.append(det)
    if not run:
        raise ValueError('no detector left to evaluate' + ''.join(f'; {k}: {v}' for k, v in skipped.items()))
    return run, dict(skipped)


class _Progress:
    """A one-line progress counter on stderr (``\\r`` on a terminal, a few lines otherwise)."""

    def __init__(self, desc: str, loader, enabled: bool):
        self.desc, self.enabled, self.start = desc, enabled, time.time()
        try:
            self.total = len(loader)
        except TypeError:
            self.total = None
        self.tty = enabled and sys.stderr.isatty()
        self.step = max(1, (self.total or 40) // 4)

    def update(self, i: int, images: int) -> None:
        if not self.enabled:
            return
        done = self.total is not None and i == self.total
        if self.tty or done or i % self.step == 0:
            total = f'/{self.total}' if self.total else ''
            line = f'{self.desc}: batch {i}{total}, {images} images, {time.time() - self.start:.1f}s'
            sys.stderr.write(('\r' + line + ('\n' if done else '')) if self.tty else line + '\n')
            sys.stderr.flush()

    def close(self, i: int, images: int) -> None:
        if self.enabled and self.tty and (self.total is None or i != self.total):
            sys.stderr.write('\n')


def _split_batch(batch):
    if isinstance(batch, (tuple, list)):
        return batch[0], (batch[1] if len(batch) > 1 else None)
    return batch, None


def _check_finite(outputs: ModelOutputs, where: str, batch_index: int) -> None:
    for name in ('features', 'logits', 'ood_logits'):
        t = getattr(outputs, name)
        if t is not None and not torch.isfinite(t).all():
            rows = (~torch.isfinite(t.reshape(t.shape[0], -1))).any(dim=1).nonzero().flatten().tolist()
            raise NonFiniteOutputError(
                f'the model gives NaN/Inf {name} on {where} (batch {batch_index}, images {rows[:5]} of the '
                f'batch): refusing to compute metrics. Check the checkpoint weights and the input images.')


class _ProgressBatches:
    """``with_progress``: a loader's batches, counted on a ``_Progress`` line as they are read."""

    def __init__(self, loader, desc: str, enabled: bool, size):
        self.loader, self.desc, self.enabled, self.size = loader, desc, enabled, size

    def __len__(self) -> int:
        return len(self.loader)

    def __iter__(self):
        bar, i, images = _Progress(self.desc, self.loader, self.enabled), 0, 0
        for i, batch in enumerate(self.loader, 1):
            images += self.size(batch) if self.size else len(_split_batch(batch)[0])
            yield batch
            bar.update(i, images)
        bar.close(i, images)


def with_progress(loader, desc: str, enabled: bool = True, size=None) -> _ProgressBatches:
    """``loader``'s batches, counted on one progress line as they are read: the display of
    every command that scores images. Re-iterable (each pass counts anew), with ``len``.
    ``size(batch)``: its number of images (default: the length of its images)."""
    return _ProgressBatches(loader, desc, enabled, size)


def _batches(model, loader, device, where: str, progress: bool):
    """Yield ``(x, y, outputs)`` under no_grad, outputs checked for NaN/Inf."""
    images = 0
    for i, batch in enumerate(with_progress(loader, where, progress), 1):
        x, y = _split_batch(batch)
        x = x.to(device)
        with torch.no_grad():
            outputs = compute_outputs(model, x)
        _check_finite(outputs, where, i)
        images += x.shape[0]
        yield x, y, outputs
    if not images:
        raise ValueError(f'{where} is empty: no images to evaluate')


def _fit(model, detectors: List[Detector], fit_loader, device, progress: bool) -> None:
    todo = [d for d in detectors if d.needs_fit and not d.is_fitted]
    if not todo:
        return
    cached = [(outputs, y) for _, y, outputs in _batches(model, fit_loader, device, 'fit data (ID training)', progress)]
    for d in todo:
        if d.fits_on_images:  # its own pass over the images (ssod_fused's image-made pseudo-OOD)
            d.fit(model, with_progress(fit_loader, f'fit data (ID training) for {d.name}', progress), device)
        else:
            d.fit_outputs(cached)


def _score(model, loader, detectors: List[Detector], device, where: str, progress: bool, num_classes: int = 0):
    """({detector: scores}, number correct or None, number of images); labels are read
    (and checked against ``num_classes``) only when ``num_classes`` is given."""
    parts = {d.name: [] for d in detectors}
    correct, correct5, labelled, images = 0, 0, True, 0
    for x, y, outputs in _batches(model, loader, device, where, progress):
        images += x.shape[0]
        for d in detectors:
            s = d.score(model, x) if d.needs_inputs else d.score_outputs(outputs)
            s = s.detach().float().cpu()
            if not torch.isfinite(s).all():
                raise NonFiniteOutputError(f'detector {d.name} gives NaN/Inf scores on {where}: refusing to '
                                           'compute metrics')
            parts[d.name].append(s)
        if not num_classes or y is None or not torch.is_tensor(y):
            labelled = False
            continue
        y = y.to(outputs.logits.device)
        if y.numel() and (y.min() < 0 or y.max() >= num_classes):
            raise ValueError(f'{where}: labels must lie in [0, {num_classes}) for a {num_classes}-class model, '
                             f'got [{int(y.min())}, {int(y.max())}]')
        correct += int((outputs.logits.argmax(dim=-1) == y).sum())
        if num_classes >= 5:
            correct5 += int((outputs.logits.topk(5, dim=-1).indices == y[:, None]).any(dim=-1).sum())
    return ({k: torch.cat(v).numpy() for k, v in parts.items()}, (correct if labelled else None), images,
            (correct5 if labelled and num_classes >= 5 else None))


def compute_scores(model: nn.Module, id_loader: Iterable, ood_loaders: Mapping[str, Iterable],
                   detectors: Sequence[Union[str, Detector]] = DEFAULT_DETECTORS, fit_loader: Optional[Iterable] = None,
                   device=None, progress: bool = True, detector_kwargs: Optional[Mapping[str, Dict]] = None
                   ) -> EvalScores:
    """Fit the detectors and score every ID and OOD image (steps 1-4 of the module docstring).
    ``device``: the model is moved there; default the model's device. The model's
    train/eval mode is restored afterwards."""
    if not ood_loaders:
        raise ValueError('no OOD set given: OOD metrics need at least one')
    if AVERAGE in ood_loaders:
        raise ValueError(f'an OOD set may not be named {AVERAGE!r}: that key holds the mean over the sets')
    if device is not None:
        model.to(device)
    param = next(model.parameters(), None)
    if device is None:
        device = param.device if param is not None else 'cpu'
    device = torch.device(device)
    run, skipped = resolve_detectors(model, detectors, fit_loader is not None, detector_kwargs)
    num_classes = int(getattr(model, 'num_classes', 0) or 0)
    was_training = model.training
    model.eval()
    try:
        if fit_loader is not None:
            _fit(model, run, fit_loader, device, progress)
        id_scores, correct, num_id, correct5 = _score(model, id_loader, run, device, 'the ID set', progress,
                                                      num_classes)
        ood_scores = OrderedDict()
        for name, loader in ood_loaders.items():
            ood_scores[name] = _score(model, loader, run, device, f'OOD set {name!r}', progress)[0]
    finally:
        model.train(was_training)
    return EvalScores(id_scores, dict(ood_scores), None if correct is None else correct / num_id, num_id,
                      _model_name(model), num_classes, skipped, None if correct5 is None else correct5 / num_id)


def summarize(scores: EvalScores, equal_counts: bool = True, seed: int = 0) -> Dict:
    """The result dict (see the module docstring) of ``compute_scores``' output."""
    results = OrderedDict((d, OrderedDict()) for d in scores.detectors)
    num_used, notes = OrderedDict(), []
    for set_name, by_detector in scores.ood_scores.items():
        n_id, n_ood = scores.num_id, len(next(iter(by_detector.values())))
        k_id, k_ood = (min(n_id, n_ood),) * 2 if equal_counts else (n_id, n_ood)
        id_idx, ood_idx = subsample_indices(n_id, k_id, seed), subsample_indices(n_ood, k_ood, seed)
        num_used[set_name] = {'id': k_id, 'ood': k_ood}
        if min(k_id, k_ood) < SMALL_SET:
            notes.append(f'OOD set {set_name!r}: metrics from {k_id} ID and {k_ood} OOD image(s); they are '
                         f'defined but noisy (fewer than {SMALL_SET} images)')
        for det, ood in by_detector.items():
            results[det][set_name] = ood_metrics(scores.id_scores[det][id_idx], ood[ood_idx])
    average = {det: {k: float(np.mean([m[k] for m in sets.values()])) for k in next(iter(sets.values()))}
               for det, sets in results.items()}
    return {
        'model': scores.model, 'num_classes': scores.num_classes, 'id_accuracy': scores.id_accuracy,
        'id_accuracy_top5': scores.id_accuracy_top5,
        'num_id': scores.num_id, 'num_ood': {s: len(next(iter(v.values()))) for s, v in scores.ood_scores.items()},
        'num_used': dict(num_used), 'equal_counts': bool(equal_counts), 'seed': int(seed),
        'detectors': scores.detectors, 'results': {d: dict(s) for d, s in results.items()}, AVERAGE: average,
        'skipped': dict(scores.skipped), 'notes': notes,
    }


def evaluate(model: nn.Module, id_loader: Iterable, ood_loaders: Mapping[str, Iterable],
             detectors: Sequence[Union[str, Detector]] = DEFAULT_DETECTORS, fit_loader: Optional[Iterable] = None,
             device=None, progress: bool = True, equal_counts: bool = True, seed: int = 0,
             detector_kwargs: Optional[Mapping[str, Dict]] = None, return_scores: bool = False):
    """Evaluate ``model`` as an OOD detector with each of ``detectors`` (see the module
    docstring). Returns the result dict, or ``(result, EvalScores)`` with ``return_scores``.
    ``detector_kwargs``: constructor arguments by detector name, e.g. ``{'odin': {'std':
    data_config['std']}}`` (ODIN's eps in pixel units, as in its paper)."""
    scores = compute_scores(model, id_loader, ood_loaders, detectors, fit_loader, device, progress, detector_kwargs)
    result = summarize(scores, equal_counts, seed)
    return (result, scores) if return_scores else result

