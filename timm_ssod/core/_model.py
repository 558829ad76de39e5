"""The SSOD model: a timm classifier that also carries a binary ID/OOD head.

``attach_ssod(model)`` keeps the timm model object itself (its class, weights, state_dict
keys, ``pretrained_cfg``, ``forward``, ``forward_head``, ``reset_classifier`` ...) and adds:

* ``model.ood_head``: the OOD head f_ood (Eq. 13), applied to every feature location;
* ``model.forward_ssod(x)``: what the SSOD objective (Eq. 12 + 14) needs;
* ``model.forward_ood_head(features)``: the pooled ID/OOD logits (Eq. 15);
* ``model.predict(x)``: class posterior, P(ID | x) and the (M+1)-way posterior (Eq. 7), and,
  once the model is calibrated on ID data (``model.calibrate`` / ``set_calibration``,
  ``timm_ssod.calibration``), a conformal p-value and an OOD decision per image.

It does so by switching the instance to a subclass of its own class that mixes in
``SSODMixin``, so a timm ResNet stays an instance of ``timm.models.ResNet`` and its
state_dict is the plain model's plus ``ood_head.*``: timm checkpoints load into it
(``strict=False``) and its backbone weights load back into the plain timm model.
"""
from typing import Dict, List, NamedTuple, Optional, Sequence, Tuple, Type

import torch
import torch.nn as nn

from .._util import warn
from ._layout import head_per_location, merge_heads, pool_locations, to_locations
from ._head import OODHead
from ._posterior import id_probability, posterior_of


# the default decision of ``model.calibrate`` (and of ``timm_ssod.calibration``, ``timm-ssod calibrate``)
DEFAULT_DETECTOR = 'ssod_fused'
DEFAULT_ALPHA = 0.05  # the share of ID images the calibrated decision rejects, in expectation


class SSODOutput(NamedTuple):
    """Everything the SSOD objective needs, from one backbone pass."""
    logits: torch.Tensor            # (B, M) the classifier's own output (Eq. 11)
    patch_logits: torch.Tensor      # (B, L, M) the head at every location, no gradient
    patch_ood_logits: torch.Tensor  # (B, L, 2) f_ood at every location (Eq. 13), [OOD, ID]
    ood_logits: torch.Tensor        # (B, 2) f_ood on the pooled features (Eq. 15)
    grid: Tuple[int, int]           # (H, W), L = H * W


class _Prediction(NamedTuple):
    logits: torch.Tensor       # (B, M)
    class_probs: torch.Tensor  # (B, M)  P(w_i | x in ID): softmax of the logits
    id_prob: torch.Tensor      # (B,)    P(x in ID | x), Eq. 15
    posterior: torch.Tensor    # (B, M + 1) Eq. 7; last column = "unknown"
    p_value: Optional[torch.Tensor] = None  # (B,) float64, conformal p-value of the calibrated score
    is_ood: Optional[torch.Tensor] = None   # (B,) bool, p_value <= alpha


class SSODPrediction(_Prediction):
    """Inference output of ``predict``, a named tuple (probabilities float32): ``logits`` (B, M),
    ``class_probs`` (B, M) = P(w_i | x in ID), ``id_prob`` (B,) = P(ID | x) (Eq. 15),
    ``posterior`` (B, M + 1) (Eq. 7, last column "unknown"), and ``p_value`` / ``is_ood`` (None
    unless the model is calibrated, ``timm_ssod.calibration``). Besides them (not tuple fields):
    ``label_names``, the model's class names if it has them, and ``labels``, the predicted class
    of each image by name."""
    label_names: Optional[Tuple[str, ...]] = None  # per instance, set by __new__ (``_replace`` drops it)

    def __new__(cls, logits, class_probs, id_prob, posterior, p_value=None, is_ood=None,
                label_names: Optional[Sequence[str]] = None):
        self = super().__new__(cls, logits, class_probs, id_prob, posterior, p_value, is_ood)
        self.label_names = tuple(label_names) if label_names else None
        return self

    def __getnewargs__(self):
        return tuple(self) + (self.label_names,)

    @property
    def labels(self) -> List[str]:
        """The predicted class of each image (argmax of ``class_probs``) by name, or its index as
        a string when the model has no class names."""
        top = self.class_probs.argmax(dim=-1).tolist()
        return [self.label_names[i] if self.label_names else str(i) for i in top]


class SSODMixin:
    """Methods added to a timm model by ``attach_ssod``. Not used on its own."""
    ood_head: OODHead
    ssod_cfg: Dict
    ssod_calibration = None  # a timm_ssod.calibration.Calibration, or None

    def _locations(self, feats, img_size):
        locations, grid = to_locations(self, feats, img_size)
        if locations.shape[-1] != self.ssod_cfg['num_features']:
            raise RuntimeError(
                f'{type(self).__name__}: forward_features() gives {locations.shape[-1]} channels per '
                f"location but the OOD head was built for {self.ssod_cfg['num_features']} "
                '(model.num_features); this architecture is not supported by SSOD.')
        if grid[0] * grid[1] == 1 and not getattr(self, '_ssod_warned_1x1', False):
            self._ssod_warned_1x1 = True
            warn(
                f'{type(self).__name__}: the feature map is 1x1 at this input size, so SSOD has a '
                'single location per image and no background to sample. SSOD needs spatial maps: '
                'use larger inputs or a smaller output stride.')
        return locations, grid

    def forward_ood_head(self, feats: torch.Tensor, img_size=None) -> torch.Tensor:
        """Eq. 15's logits: f_ood(GAP(X)) from forward_features() output, (B, 2)."""
        locations, _ = self._locations(feats, img_size)
        return self.ood_head(pool_locations(locations))

    def forward_ssod(self, x: torch.Tensor) -> SSODOutput:
        """One backbone pass giving the classifier logits and the OOD head at every location
        and on the pooled features. The per-location class logits are computed without
        gradient: they only feed the sampler's targets (Eq. 12)."""
        feats = self.forward_features(x)
        logits = merge_heads(self.forward_head(feats))
        locations, grid = self._locations(feats, x.shape[-2:])
        with torch.no_grad():
            patch_logits = head_per_location(self, feats, locations)
        patch_ood_logits = self.ood_head(locations)
        ood_logits = self.ood_head(pool_locations(locations))
        return SSODOutput(logits, patch_logits, patch_ood_logits, ood_logits, grid)

    @torch.no_grad()
    def predict(self, x: torch.Tensor, alpha: Optional[float] = None) -> SSODPrediction:
        """Inference (Eq. 7 and 15) from one backbone pass. Call ``model.eval()`` first, as
        for any timm model.

        A calibrated model (``calibrate`` / ``set_calibration``) also gives each image's
        conformal p-value and ``is_ood = p_value <= alpha`` (default: the calibration's
        alpha), which rejects at most a share alpha of ID images in expectation. Asking for
        ``alpha`` without a calibration raises ``NotCalibratedError``."""
        feats = self.forward_features(x)
        logits = merge_heads(self.forward_head(feats))
        ood_logits = self.forward_ood_head(feats, x.shape[-2:])
        p_value = is_ood = None
        if self.ssod_calibration is not None or alpha is not None:
            from ..calibration import decide
            p_value, is_ood = decide(self.ssod_calibration, self, x, feats, logits, ood_logits, alpha)
        class_probs, id_prob = torch.softmax(logits.float(), dim=-1), id_probability(ood_logits)
        return SSODPrediction(logits, class_probs, id_prob, posterior_of(class_probs, id_prob), p_value, is_ood,
                              label_names=label_names(self))  # Eq. 7 from the two above, not recomputed

    # ID calibration (timm_ssod.calibration)
    def calibrate(self, loader, detector: str = DEFAULT_DETECTOR, alpha: float = DEFAULT_ALPHA, fit_loader=None, **kwargs):
        """Calibrate an OOD decision on held-out ID images (``timm_ssod.calibration.calibrate``)
        and keep it with the model (saved by ``save_pretrained``). Returns the calibration."""
        from ..calibration import calibrate
        cal = calibrate(self, loader, detector=detector, alpha=alpha, fit_loader=fit_loader, **kwargs)
        self.set_calibration(cal)
        return cal

    def set_calibration(self, calibration) -> None:
        """Attach a ``Calibration`` (None removes it); one made for another class count is refused."""
        if calibration is not None:
            calibration.check_model(self)
        self.ssod_calibration = calibration

    def export_onnx(self, path, **kwargs):
        """Write ``path`` (ONNX: logits, class_probs, id_prob, posterior and, calibrated, score, p_value,
        is_ood) and its preprocessing JSON beside it (``timm_ssod.export.export_onnx``)."""
        from ..export import export_onnx
        return export_onnx(self, path, **kwargs)

    # Hub (timm_ssod.hub): thin methods, so ``model.save_pretrained(...)`` reads like transformers
    def save_pretrained(self, save_directory, **kwargs):
        """Write model.safetensors, config.json and README.md (``timm_ssod.hub.save_pretrained``)."""
        from ..hub import save_pretrained
        return save_pretrained(self, save_directory, **kwargs)

    def push_to_hub(self, repo_id: str, **kwargs):
        """Upload the ``save_pretrained`` folder to the Hub (``timm_ssod.hub.push_to_hub``)."""
        from ..hub import push_to_hub
        return push_to_hub(self, repo_id, **kwargs)


def label_names(model: nn.Module) -> Optional[List[str]]:
    """The class names of a timm model, by classifier index: timm's ``pretrained_cfg['label_names']``
    (a list, or timm's ``{index: name}`` form) when it names every class of the current
    classifier, else None (e.g. ImageNet names after ``num_classes=3``)."""
    names = (getattr(model, 'pretrained_cfg', None) or {}).get('label_names')
    count = getattr(model, 'num_classes', None)
    if isinstance(names, dict):
        try:
            names = [names[i] if i in names else names[str(i)] for i in range(count or 0)]
        except KeyError:
            return None
    if isinstance(names, (list, tuple)) and names and len(names) == count:
        return [str(n) for n in names]
    return None


def set_label_names(model: nn.Module, names: Sequence[str]) -> None:
    """Record class names where timm keeps them (``model.pretrained_cfg['label_names']``), so
    ``save_pretrained`` writes them to config.json and ``predict`` returns them."""
    names = [str(n) for n in names]
    if len(names) != model.num_classes:
        raise ValueError(f'{len(names)} class names for a model with {model.num_classes} classes')
    model.pretrained_cfg['label_names'] = names  # a dict of this model's own (timm copies it per model)


_SSOD_CLASSES: Dict[type, type] = {}


def _ssod_class(base: Type[nn.Module]) -> type:
    if base not in _SSOD_CLASSES:
        _SSOD_CLASSES[base] = type(f'SSOD{base.__name__}', (SSODMixin, base),
                                   {'__module__': __name__, '__doc__': base.__doc__})
    return _SSOD_CLASSES[base]


def is_ssod_model(model: nn.Module) -> bool:
    """True for a model made by ``attach_ssod`` / ``create_model(..., ssod=True)``."""
    return isinstance(model, SSODMixin)


def attach_ssod(model: nn.Module, ood_hidden: int = 0, backbone: str = None) -> nn.Module:
    """Turn a timm classifier into an SSOD model in place (see the module docstring) and
    return it. ``backbone`` is the timm name, recorded in ``model.ssod_cfg``."""
    if is_ssod_model(model):
        raise ValueError('model is already an SSOD model')
    for needed in ('forward_features', 'forward_head', 'num_features'):
        if not hasattr(model, needed):
            raise ValueError(f'{type(model).__name__} has no {needed}(): SSOD needs a timm '
                             'classifier with forward_features / forward_head')
    num_features = int(model.num_features)
    model.__class__ = _ssod_class(type(model))
    ref = next(model.parameters(), None)
    model.ood_head = OODHead(num_features, ood_hidden)
    if ref is not None:
        model.ood_head.to(device=ref.device, dtype=ref.dtype)
    model.ssod_cfg = dict(backbone=backbone or model.pretrained_cfg.get('architecture'),
                          num_features=num_features, ood_hidden=int(ood_hidden))
    return model
