"""One ONNX file that classifies, gives P(ID) and the calibrated OOD decision.

    from timm_ssod import export_onnx
    export_onnx(model, 'model.onnx')          # or model.export_onnx('model.onnx')
    # timm-ssod export local-dir:out/model --output model.onnx

``ExportModule`` wraps an SSOD model and recomputes what ``model.predict`` gives from one
backbone pass, with traceable ops only: ``logits`` (B, M), ``class_probs`` (B, M), ``id_prob``
(B,) (Eq. 15) and ``posterior`` (B, M + 1) (Eq. 7), and on a calibrated model the deployed
decision: the detector's ``score`` (B,), its conformal ``p_value`` (B,) =
(1 + #{i : r_i <= score}) / (n + 1), a compare and a sum against the n calibration scores r_i
stored in the graph, and ``is_ood`` (B,) = p_value <= alpha (the calibration's). ``ssod_fused``
is recomputed the same way: each kept component's score, its (tail-continued) p-value against
its stored ID references, Fisher's weighted sum of log p (or Tippett's minimum), then the
calibration's p-value. The scores and p-values are float64 where ``predict`` computes them in
float64, so the file gives ``predict``'s numbers up to the backbone's float32 rounding.

Exported like timm's ``timm.utils.onnx.onnx_export``: the TorchScript exporter (``dynamo=False``),
eval mode, the batch axis dynamic, the input size fixed (the calibration's, else the data
config's: the calibration holds only at that size). Beside ``model.onnx``, ``model.onnx.json``
(``sidecar_path``) holds the preprocessing as timm's ``pretrained_cfg`` has it (input_size, mean,
std, interpolation, crop_pct, crop_mode), the class names, the output names and the decision
(detector, components, alpha, n, threshold), so a runtime without timm can preprocess and read
the outputs. A detector that cannot be expressed in the graph is refused in one line naming it.
"""
import io
import json
import os
import warnings
from typing import Dict, List, Optional, Sequence, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F

from .._util import atomic_write, atomic_write_text
from .._version import __version__
from ..core import id_probability, is_ssod_model, merge_heads, unified_posterior
from ..core._model import label_names as model_label_names
from ..detectors import ModelOutputs, apply_classifier

__all__ = ['export_onnx', 'ExportModule', 'ExportError', 'sidecar_path', 'read_sidecar', 'OUTPUTS',
           'DECISION_OUTPUTS', 'EXPORTABLE_DETECTORS', 'DEFAULT_OPSET', 'INSTALL_HINT']

OUTPUTS = ('logits', 'class_probs', 'id_prob', 'posterior')
DECISION_OUTPUTS = ('score', 'p_value', 'is_ood')
INPUT_NAME = 'input'
DEFAULT_OPSET = 17  # ONNX Runtime >= 1.12 and TensorRT >= 8.5 read it; LayerNormalization is native from 17
INSTALL_HINT = 'pip install timm-ssod[onnx]'
SIDECAR_SUFFIX = '.json'
LARGE_BANK_MB = 50.0  # a KNN bank above this many MB is named with its size when exported
# the scores whose ``_score`` traces as it is (float32 / float64 elementwise ops, matmuls, reductions)
TRACED_AS_IS = ('ssod', 'msp', 'maxlogit', 'energy', 'mahalanobis', 'rmds', 'vim', 'fdbd', 'gen', 'she', 'ssod_msp')
EXPORTABLE_DETECTORS = TRACED_AS_IS + ('knn', 'klm', 'ssod_fused')


class ExportError(ValueError):
    """A model or decision that cannot be exported (the message names the part and why)."""


def _require_onnx():
    try:
        import onnx  # noqa: F401
    except ImportError as e:
        raise ExportError(f'ONNX export needs the onnx package: {INSTALL_HINT}') from e


# ------------------------------------------------------------------------------------ the scores
def _knn_score(det, outputs: ModelOutputs) -> torch.Tensor:
    """``KNN._score`` without its chunking: one matmul against the whole bank, top k."""
    sim = F.normalize(outputs.features.float(), dim=-1) @ det.bank.float().T
    sim_k = sim.topk(det.k_used, dim=1).values[:, det.k_used - 1]
    return -(2 - 2 * sim_k).clamp_min(0).sqrt()


def _klm_score(det, outputs: ModelOutputs) -> torch.Tensor:
    """``KLMatching._score`` with ``xlogy`` written as a select (no ONNX op)."""
    p = outputs.logits.float().softmax(dim=-1)
    plogp = torch.where(p > 0, p * torch.log(p.clamp_min(torch.finfo(torch.float32).tiny)), torch.zeros_like(p))
    kl = plogp.sum(dim=-1, keepdim=True) - p @ det.log_templates.T
    return -kl.amin(dim=-1)


def _count_pvalue(reference: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
    """``conformal_pvalue`` as a compare and a sum: (1 + #{r_i <= s}) / (n + 1), float64."""
    below = (reference[None, :] <= scores.double()[:, None]).to(torch.float64).sum(dim=-1)
    return (below + 1) / (reference.numel() + 1)


def _tail_pvalue(reference: torch.Tensor, scores: torch.Tensor, scale: float) -> torch.Tensor:
    """``conformal.tail_pvalue`` with ``_count_pvalue``."""
    p = _count_pvalue(reference, scores)
    s = scores.double()
    tail = torch.exp(-(reference[0] - s) / scale) / (reference.numel() + 1)
    return torch.where(s < reference[0], tail, p).clamp_min(torch.finfo(torch.float64).tiny)


class _Scorer(nn.Module):
    """A fitted detector's score, traceable: ``forward(outputs) -> (B,)`` as ``score_outputs``."""

    def __init__(self, detector):
        super().__init__()
        name = getattr(detector, 'name', type(detector).__name__)
        kind = _kind(detector)
        if kind not in EXPORTABLE_DETECTORS:
            raise ExportError(f'the decision\'s detector {name} cannot be exported to ONNX (exportable: '
                              f'{", ".join(EXPORTABLE_DETECTORS)}); calibrate with one of these')
        detector._check_fitted()
        self.detector, self.kind = detector, kind
        if kind == 'ssod_fused':
            if detector.method == 'stouffer':
                raise ExportError(f'{name}: the stouffer combination needs the normal quantile (ndtri), which ONNX '
                                  'has no op for; calibrate with method=fisher (the default) or tippett')
            self.parts = nn.ModuleList([_Scorer(c) for c in detector.components])
            self.references = [r.double() for r in detector.references]
            self.tail_scales = list(detector.tail_scales)
            weights = getattr(detector, 'weights', None)
            self.weights = None if weights is None else torch.as_tensor(weights, dtype=torch.float64)

    def forward(self, outputs: ModelOutputs) -> torch.Tensor:
        det, kind = self.detector, self.kind
        if kind == 'knn':
            return _knn_score(det, outputs)
        if kind == 'klm':
            return _klm_score(det, outputs)
        if kind != 'ssod_fused':
            return det._score(outputs)
        ps = []
        for part, ref, scale in zip(self.parts, self.references, self.tail_scales):
            s = part(outputs)
            ps.append(_tail_pvalue(ref, s, scale) if det.tail else _count_pvalue(ref, s))
        log_p = torch.log(torch.stack(ps, dim=-1))
        if det.method == 'tippett':
            return log_p.amin(dim=-1).float()
        return (log_p.sum(dim=-1) if self.weights is None else log_p @ self.weights).float()


def _kind(detector) -> str:
    """The catalog name of a detector's class (its ``name`` may be a user's label)."""
    from ..detectors import create_detector  # noqa: F401  (the registry is loaded)
    from ..detectors.catalog import EXPERIMENTAL_DETECTORS, SINGLE_DETECTORS
    from ..detectors.ssod_fused import SSODFused
    if isinstance(detector, SSODFused):
        return 'ssod_fused'
    for name, cls in {**SINGLE_DETECTORS, **EXPERIMENTAL_DETECTORS}.items():
        if type(detector) is cls:
            return name
    return getattr(detector, 'name', type(detector).__name__)


def _components(detector) -> List[str]:
    return list(getattr(detector, 'component_names', None) or [])


def _knn_banks(detector) -> List[Tuple[str, float]]:
    """(name, MB) of each KNN bank the detector carries (itself or a component)."""
    parts = getattr(detector, 'components', None) or [detector]
    return [(getattr(c, 'name', 'knn'), c.bank.numel() * 4 / 2 ** 20) for c in parts if _kind(c) == 'knn']


# ------------------------------------------------------------------------------------ the module
class ExportModule(nn.Module):
    """``model.predict`` as a traceable module: ``forward(x)`` gives the tuple of ``output_names``.

    ``model``: an SSOD model (a plain timm classifier gives ``logits`` and ``class_probs`` only);
    its calibration (if any) adds ``score``, ``p_value`` and ``is_ood`` at ``alpha`` (default: the
    calibration's)."""

    def __init__(self, model: nn.Module, alpha: Optional[float] = None):
        super().__init__()
        self.model = model
        self.ssod = is_ssod_model(model)
        cal = getattr(model, 'ssod_calibration', None) if self.ssod else None
        self.calibration = cal
        self.scorer = None
        if cal is not None:
            cal.check_model(model)
            self.alpha = cal.check_alpha(cal.alpha if alpha is None else alpha)
            self.scorer = _Scorer(cal.detector)
            self.reference = cal.reference.double()
        elif alpha is not None:
            from ..conformal import NotCalibratedError
            raise NotCalibratedError(f'an OOD decision at alpha={alpha:g} needs an ID calibration and this model '
                                     'has none: export it calibrated (timm-ssod calibrate) or without alpha')

    @property
    def output_names(self) -> Tuple[str, ...]:
        if not self.ssod:
            return OUTPUTS[:2]
        return OUTPUTS + (DECISION_OUTPUTS if self.scorer is not None else ())

    def forward(self, x: torch.Tensor):
        m = self.model
        feats = m.forward_features(x)
        logits = merge_heads(m.forward_head(feats))
        class_probs = torch.softmax(logits.float(), dim=-1)
        if not self.ssod:
            return logits, class_probs
        ood_logits = m.forward_ood_head(feats, x.shape[-2:])
        out = (logits, class_probs, id_probability(ood_logits), unified_posterior(logits, ood_logits))
        if self.scorer is None:
            return out
        features = m.forward_head(feats, pre_logits=True)
        score = self.scorer(ModelOutputs(features, logits, ood_logits, lambda f: apply_classifier(m, f)))
        p_value = _count_pvalue(self.reference, score)
        return out + (score, p_value, p_value <= self.alpha)


# ------------------------------------------------------------------------------------ the file
def sidecar_path(path: str) -> str:
    """``model.onnx`` -> ``model.onnx.json``: the preprocessing, class names and outputs."""
    return os.fspath(path) + SIDECAR_SUFFIX


def read_sidecar(path: str) -> Dict:
    """The JSON written beside an exported file (``sidecar_path``); a one-line error if absent."""
    side = sidecar_path(path)
    if not os.path.isfile(side):
        raise ExportError(f'{side} is missing: the exported file needs the JSON written beside it (preprocessing, '
                          'class names, outputs); export again with timm-ssod export')
    with open(side, encoding='utf-8') as f:
        return json.load(f)


def _data_config(model: nn.Module, data_config: Optional[Dict], input_size) -> Dict:
    from timm.data import resolve_data_config
    cfg = resolve_data_config(dict(data_config or {}), model=model)
    if input_size is not None:
        cfg['input_size'] = tuple(int(v) for v in input_size)
    return {k: (list(v) if isinstance(v, tuple) else v) for k, v in cfg.items()}


def _decision_block(module: ExportModule) -> Optional[Dict]:
    cal = module.calibration
    if cal is None:
        return None
    det = cal.detector
    block = {'detector': det.name, 'alpha': module.alpha, 'n': cal.n, 'threshold': cal.threshold(module.alpha),
             'rule': 'is_ood = p_value <= alpha; p_value = (1 + #{calibration scores <= score}) / (n + 1)'}
    if _components(det):
        block['components'] = _components(det)
        block['method'] = det.method
    return block


def export_onnx(model: nn.Module, path: str, alpha: Optional[float] = None, data_config: Optional[Dict] = None,
                input_size: Optional[Sequence[int]] = None, batch_size: int = 2, opset: int = DEFAULT_OPSET,
                check: bool = True, verbose: bool = False) -> Dict:
    """Export ``model`` (an SSOD model, calibrated or not; a plain timm classifier gives its
    logits and class probabilities only) to the ONNX file ``path``, and its preprocessing, class
    names, output names and decision to ``sidecar_path(path)``. Returns that JSON's dict.

    ``alpha``: the decision level baked into ``is_ood`` (default: the calibration's; ``p_value``
    is an output, so any level can be applied later). ``data_config``: timm's preprocessing
    (default: ``resolve_data_config`` of the model). ``input_size``: (C, H, W) traced (default:
    the calibration's, else the data config's). Both files are written atomically."""
    _require_onnx()
    import onnx
    module = ExportModule(model, alpha).eval()
    cal = module.calibration
    if input_size is None and cal is not None:
        input_size = cal.input_size
    cfg = _data_config(model, data_config, input_size)
    size = tuple(cfg['input_size'])
    if cal is not None and size != tuple(cal.input_size):
        raise ExportError(f'the calibration was made on {"x".join(map(str, cal.input_size))} inputs; export at that '
                          f'size, not {"x".join(map(str, size))}')
    banks = _knn_banks(cal.detector) if cal is not None else []
    ref = next(model.parameters(), None)
    example = torch.randn((batch_size,) + size, generator=torch.Generator().manual_seed(0))
    if ref is not None:
        example = example.to(device=ref.device, dtype=ref.dtype)
    names = module.output_names
    was_training = model.training
    model.eval()
    buffer = io.BytesIO()
    try:
        with torch.no_grad(), warnings.catch_warnings():
            warnings.filterwarnings('ignore', category=torch.jit.TracerWarning)
            # the TorchScript exporter's own notice (attributed to this line by its stacklevel): timm's exporter too
            warnings.filterwarnings('ignore', message='You are using the legacy TorchScript-based ONNX export',
                                    category=DeprecationWarning)
            warnings.filterwarnings('ignore', category=DeprecationWarning, module=r'torch\.onnx')  # its internals'
            module(example)  # once before tracing, as timm does (Conv2dSameExport fixes its padding)
            torch.onnx.export(module, (example,), buffer, input_names=[INPUT_NAME], output_names=list(names),
                              dynamic_axes={INPUT_NAME: {0: 'batch'}, **{n: {0: 'batch'} for n in names}},
                              opset_version=opset, do_constant_folding=True, verbose=verbose, dynamo=False)
    except ExportError:
        raise
    except Exception as e:  # the exporter's own errors: name the model and the op
        msg = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ExportError(f'{type(model).__name__} could not be exported to ONNX: {msg}') from e
    finally:
        model.train(was_training)
    data = buffer.getvalue()
    if check:
        onnx.checker.check_model(onnx.load_from_string(data))
    info = {'format': 'timm_ssod.onnx', 'timm_ssod_version': __version__, 'opset': opset,
            'architecture': (getattr(model, 'pretrained_cfg', None) or {}).get('architecture'),
            'input_name': INPUT_NAME, 'output_names': list(names),
            **{k: cfg[k] for k in ('input_size', 'mean', 'std', 'interpolation', 'crop_pct', 'crop_mode') if k in cfg},
            'num_classes': int(getattr(model, 'num_classes', 0) or 0),
            'label_names': model_label_names(model), 'decision': _decision_block(module),
            'size_mb': round(len(data) / 2 ** 20, 3)}
    if banks:
        info['knn_bank_mb'] = round(sum(mb for _, mb in banks), 3)
    directory = os.path.dirname(os.path.abspath(os.fspath(path)))
    os.makedirs(directory, exist_ok=True)
    atomic_write(path, lambda f: f.write(data))
    atomic_write_text(sidecar_path(path), json.dumps(info, indent=2) + '\n')
    return info


def large_banks(info: Dict) -> Optional[str]:
    """A line naming the KNN bank's size when it makes the file large, else None."""
    mb = info.get('knn_bank_mb')
    if mb is None or mb < LARGE_BANK_MB:
        return None
    return f'the KNN bank holds {mb:.1f} MB of the {info["size_mb"]:.1f} MB file'
