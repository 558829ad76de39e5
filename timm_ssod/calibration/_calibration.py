"""ID calibration: any detector's score -> a conformal p-value, and an OOD decision at a chosen
share alpha of ID images rejected. Uses ID data only (never OOD data).

    cal = calibrate(model, id_val_loader, detector='ssod_fused', fit_loader=id_train_loader)
    model.set_calibration(cal)          # or: model.calibrate(id_val_loader, fit_loader=...)
    pred = model.predict(x)             # pred.p_value, pred.is_ood (p_value <= cal.alpha)

``calibrate``: (1) a detector that needs a fit (``ssod_fused``'s Mahalanobis, KNN ...) is
fitted on ``fit_loader`` (ID training data); (2) the detector scores every image of
``loader`` (held-out ID images: a validation split, never the fit data nor the test data);
the sorted scores are the reference of ``conformal_pvalue`` (``timm_ssod.conformal``). The
guarantee: an ID test image exchangeable with the calibration images has p <= alpha with
probability at most alpha, so ``is_ood`` rejects at most a share alpha of ID images in
expectation. ``ssod_fused``'s combined statistic is calibrated here like any score, on data
its own ID references never saw: the guarantee holds although its components are correlated.

A ``Calibration`` records the class count and the input size (C, H, W) it was made for;
``set_calibration`` refuses one made for another class count, ``predict`` one made for
another input size. It is saved with the model (``timm_ssod.hub``): ``to_saved`` gives the
``calibration`` entry of config.json's ``ssod`` block and the tensors (the detector's fitted
state and the reference scores) stored in ``ssod.safetensors``.

``id_rejection_rate(cal, model, test_loader)`` measures the share of ID test images
rejected against alpha (``timm_ssod.conformal.id_rejection_check``).
"""
import datetime
import functools
from dataclasses import dataclass, field
from typing import Any, Dict, Iterable, Mapping, Optional, Sequence, Tuple, Union

import torch
import torch.nn as nn

from ..conformal import (CalibrationError, NotCalibratedError, check_calibration_size, conformal_pvalue,
                        id_rejection_check, min_calibration_size, score_threshold)
from ..detectors import Detector, ModelOutputs, apply_classifier, collect_outputs, create_detector
from ..core import DEFAULT_ALPHA, DEFAULT_DETECTOR
from ..detectors.ssod_fused import DECISION_KWARGS
from ..detectors.state import detector_state, load_detector
from .._util import warn

__all__ = ['Calibration', 'CalibrationError', 'NotCalibratedError', 'calibrate', 'calibrate_scores',
           'id_rejection_rate', 'DEFAULT_ALPHA', 'DEFAULT_DETECTOR', 'create_decision']

TENSOR_PREFIX = 'calibration.'
REFERENCE_KEY = TENSOR_PREFIX + 'reference'


@dataclass
class Calibration:
    """A fitted detector and the sorted scores it gave n held-out ID images."""
    detector: Detector
    reference: torch.Tensor                 # (n,) float64, ascending
    num_classes: int
    input_size: Tuple[int, ...]             # (C, H, W) of the calibration images
    alpha: float = DEFAULT_ALPHA            # the default decision level
    info: Dict[str, Any] = field(default_factory=dict)  # where the data came from, when (free-form, JSON)

    def __post_init__(self):
        self.reference = torch.as_tensor(self.reference, dtype=torch.float64).reshape(-1).sort().values.cpu()
        self.input_size = tuple(int(v) for v in self.input_size)
        self.check_alpha(self.alpha)

    @property
    def n(self) -> int:
        return self.reference.numel()

    def check_alpha(self, alpha: float) -> float:
        """``alpha`` if this calibration can reject at that level, else a ``CalibrationError``."""
        check_calibration_size(self.n, float(alpha))
        return float(alpha)

    def threshold(self, alpha: Optional[float] = None) -> float:
        """The score below which an image is OOD at ``alpha`` (default ``self.alpha``)."""
        return score_threshold(self.reference, self.check_alpha(self.alpha if alpha is None else alpha))

    def p_values(self, scores: torch.Tensor) -> torch.Tensor:
        """Conformal p-values of detector scores (``conformal_pvalue``), float64."""
        return conformal_pvalue(self.reference, scores)

    def p_values_of_outputs(self, outputs: ModelOutputs) -> torch.Tensor:
        return self.p_values(self.detector.score_outputs(outputs))

    def check_model(self, model: nn.Module) -> None:
        """A ``CalibrationError`` when the model's class count is not the calibration's."""
        classes = int(getattr(model, 'num_classes', 0) or 0)
        if classes != self.num_classes:
            raise CalibrationError(f'this calibration was made for a {self.num_classes}-class model, the model has '
                                   f'{classes} classes: calibrate again (timm-ssod calibrate / model.calibrate)')

    def check_input(self, x: torch.Tensor) -> None:
        """A ``CalibrationError`` when images are not of the calibration's (C, H, W)."""
        if tuple(x.shape[1:]) != self.input_size:
            raise CalibrationError(
                f'this calibration was made on {"x".join(map(str, self.input_size))} (C x H x W) inputs, these are '
                f'{"x".join(map(str, x.shape[1:]))}: scores depend on the input size, so p-values would not hold. '
                'Preprocess with the model\'s data config (timm.data.resolve_model_data_config), or calibrate again '
                'at this size.')

    # -- storage ----------------------------------------------------------------------------
    def to_saved(self) -> Tuple[Dict, Dict[str, torch.Tensor]]:
        """``(JSON block, tensors)``: the ``calibration`` entry of config.json's ``ssod``
        block and the tensors of ``ssod.safetensors`` (keys under ``calibration.``)."""
        detector, tensors = detector_state(self.detector, TENSOR_PREFIX + 'detector.')
        tensors[REFERENCE_KEY] = self.reference.contiguous()
        block = {'detector': self.detector.name, 'alpha': self.alpha, 'n': self.n,
                 'threshold': self.threshold(), 'num_classes': self.num_classes,
                 'input_size': list(self.input_size), 'info': dict(self.info), 'state': detector}
        choices = self.choices()
        if choices:  # what ssod_fused(select='evidence') kept and why, readable beside the state (model card)
            block['choices'] = choices
        return block, tensors

    def choices(self) -> Optional[Dict]:
        """The detector's record of choices made from ID data (``ssod_fused`` with
        ``select='evidence'``: the components kept and why), or None."""
        get = getattr(self.detector, 'choices', None)
        return get() if callable(get) else None

    @classmethod
    def from_saved(cls, block: Mapping, tensors: Mapping[str, torch.Tensor]) -> 'Calibration':
        """The ``Calibration`` that ``to_saved`` wrote; a ``CalibrationError`` if incomplete."""
        try:
            detector = load_detector(block['state'], dict(tensors), TENSOR_PREFIX + 'detector.')
            return cls(detector, tensors[REFERENCE_KEY], int(block['num_classes']), tuple(block['input_size']),
                       float(block.get('alpha', DEFAULT_ALPHA)), dict(block.get('info') or {}))
        except (KeyError, TypeError, ValueError) as e:
            raise CalibrationError(f'the saved calibration is incomplete or invalid ({type(e).__name__}: {e}); '
                                   'calibrate the model again') from e

    def summary(self) -> str:
        choices = self.choices()
        kept = f" [{', '.join(choices['kept'])}]" if choices else ''
        return (f'{self.detector.name}{kept} score, {self.n} ID calibration images, alpha={self.alpha:g} (reject when '
                f'p <= alpha, i.e. score < {self.threshold():.6g}); made for {self.num_classes} classes, inputs '
                f'{"x".join(map(str, self.input_size))}')


def _outputs_of(model: nn.Module, feats: torch.Tensor, logits: torch.Tensor,
                ood_logits: Optional[torch.Tensor]) -> ModelOutputs:
    """``ModelOutputs`` from a pass already made (``compute_outputs`` without the backbone)."""
    features = model.forward_head(feats, pre_logits=True)
    return ModelOutputs(features, logits, ood_logits, functools.partial(apply_classifier, model))


def decide(cal: Optional[Calibration], model: nn.Module, x: torch.Tensor, feats, logits, ood_logits,
           alpha: Optional[float]) -> Tuple[Optional[torch.Tensor], Optional[torch.Tensor]]:
    """``(p_value, is_ood)`` for ``model.predict``; both None without calibration and alpha."""
    if cal is None:
        if alpha is None:
            return None, None
        raise NotCalibratedError(
            f'an OOD decision at alpha={alpha:g} needs an ID calibration and this model has none. Calibrate it on '
            f'held-out ID images (at least {min_calibration_size(alpha)} for this alpha): model.calibrate(loader, '
            'fit_loader=...), or `timm-ssod calibrate`, or load a calibrated model.')
    cal.check_model(model)
    cal.check_input(x)
    level = cal.check_alpha(cal.alpha if alpha is None else alpha)
    p = cal.p_values_of_outputs(_outputs_of(model, feats, logits, ood_logits))
    return p, p <= level


def create_decision(name: str = DEFAULT_DETECTOR, **kwargs) -> Detector:
    """The detector a calibration deploys: ``create_detector(name, **kwargs)``, where the default
    detector (``ssod_fused``) is the default *decision*, ``DECISION_KWARGS`` (``select='evidence'``)
    under ``kwargs`` (``select='all'``: Fisher over ssod, mahalanobis, energy)."""
    if name.strip().lower() == DEFAULT_DETECTOR:
        kwargs = {**DECISION_KWARGS, **kwargs}
    return create_detector(name, **kwargs)


def calibrate_scores(detector: Detector, scores: torch.Tensor, num_classes: int, input_size: Sequence[int],
                     alpha: float = DEFAULT_ALPHA, info: Optional[Dict] = None) -> Calibration:
    """A ``Calibration`` from precomputed ID calibration scores of a fitted ``detector``."""
    scores = torch.as_tensor(scores).reshape(-1)
    if not torch.isfinite(scores).all():
        raise CalibrationError(f'{detector.name} gives NaN/Inf scores on some ID calibration images')
    check_calibration_size(scores.numel(), alpha)
    return Calibration(detector, scores, int(num_classes), tuple(input_size), float(alpha), dict(info or {}))


def calibrate(model: nn.Module, loader: Iterable, detector: Union[str, Detector] = DEFAULT_DETECTOR,
              alpha: float = DEFAULT_ALPHA, fit_loader: Optional[Iterable] = None, device=None,
              detector_kwargs: Optional[Dict] = None, info: Optional[Dict] = None) -> Calibration:
    """Calibrate ``detector`` (a name or a ``Detector``) on the held-out ID images of ``loader``
    (batches ``(x, y)`` or ``x``; labels unused); see the module docstring. A detector that
    needs a fit and is not fitted is fitted on ``fit_loader`` (ID training data, with labels
    for Mahalanobis), which must not share images with ``loader``. ``'ssod_fused'`` by name is the
    default decision: ``DECISION_KWARGS`` (``select='evidence'``) under ``detector_kwargs``
    (``{'select': 'all'}``: Fisher over ssod, mahalanobis, energy)."""
    min_calibration_size(alpha)  # alpha in (0, 1)
    det = create_decision(detector, **(detector_kwargs or {})) if isinstance(detector, str) else detector
    if det.needs_inputs:
        raise CalibrationError(f'{det.name} perturbs the input images; calibrate a detector that reads one backbone '
                               'pass (ssod, ssod_fused, energy, mahalanobis ...)')
    if det.needs_fit and not det.is_fitted:
        if fit_loader is None:
            raise CalibrationError(f'{det.name} must first be fitted on ID training data: give fit_loader (images '
                                   'other than the calibration images)')
        det.fit(model, fit_loader, device)
    parts, shapes = [], []
    for outputs, _ in collect_outputs(model, _with_shapes(loader, shapes), device):
        parts.append(det.score_outputs(outputs).detach().double().cpu())
    if not parts:
        raise CalibrationError('the ID calibration loader gave no images')
    input_size = shapes[0]
    if any(s != input_size for s in shapes):
        raise CalibrationError(f'the ID calibration images have different sizes {sorted(set(shapes))}: use one '
                               'input size (the model\'s data config)')
    configured = tuple((getattr(model, 'pretrained_cfg', None) or {}).get('input_size') or ())
    if configured and configured != tuple(input_size):
        warn(f'the calibration images are {"x".join(map(str, input_size))} but the model\'s data config '
             f'(pretrained_cfg input_size) says {"x".join(map(str, configured))}: predict() refuses inputs of '
             'another size than the calibration\'s, so preprocess test images as the calibration images (and '
             'save the model with that data_config).')
    info = dict(info or {}, date=datetime.date.today().isoformat())
    return calibrate_scores(det, torch.cat(parts), model.num_classes, input_size, alpha, info)


def _with_shapes(loader: Iterable, shapes: list):
    """``loader``'s batches, noting each image batch's (C, H, W) in ``shapes``."""
    for batch in loader:
        x = batch[0] if isinstance(batch, (tuple, list)) else batch
        shapes.append(tuple(x.shape[1:]))
        yield batch


def id_rejection_rate(cal: Calibration, model: nn.Module, test_loader: Iterable, alphas: Sequence[float] = (0.01, 0.05, 0.1),
                      device=None) -> Dict[str, Dict]:
    """The share of ID test images (never used to fit or calibrate) rejected at each alpha,
    with its expected value and binomial error (``id_rejection_check``); keys are
    ``f'{alpha:g}'``. For the benchmark of the guarantee on a real checkpoint."""
    p = torch.cat([cal.p_values_of_outputs(outputs).cpu() for outputs, _ in
                   collect_outputs(model, test_loader, device)])
    return {f'{a:g}': id_rejection_check(p, a, cal.n) for a in alphas if a * (cal.n + 1) >= 1}
