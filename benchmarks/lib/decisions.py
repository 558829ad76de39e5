"""Measuring calibrated decisions: does the ID rejection rate hold alpha on test data, and how
many OOD images does each score catch at that alpha?

    from lib import measure_decisions, format_decisions
    result = measure_decisions(model, fit_loader, calib_loader, test_loader, {'noise': noise_loader, ...},
                               detectors=('ssod', 'mahalanobis', 'energy', 'ssod_fused'))
    print(format_decisions(result))

Four disjoint sets of images, every one through the backbone once (outputs kept in memory):
``fit_loader`` (ID training images: the detectors' fits), ``calib_loader`` (held-out ID
images: the conformal calibration, ``timm_ssod.calibration``), ``test_loader`` (ID images
never used for either) and the OOD sets. Per detector: on the ID test images, the share
rejected at each alpha with its expected value and binomial error
(``timm_ssod.conformal.id_rejection_check``); per OOD set, the share caught (p <= alpha) at
each alpha, FPR95 and AUROC (``timm_ssod.metrics``, the ID test images against the set, all
images). Detectors are names or ``Detector`` instances (``SSODFused(method='stouffer',
name='ssod_fused_stouffer')`` to compare variants). No OOD image is used for any choice.
"""
from collections import OrderedDict
from typing import Dict, Iterable, Mapping, Optional, Sequence, Union

import numpy as np
import torch.nn as nn

from timm_ssod.calibration import calibrate_scores
from timm_ssod.conformal import id_rejection_check
from timm_ssod.detectors import Detector, ModelOutputs, collect_outputs, create_detector
from timm_ssod.metrics import ood_metrics

__all__ = ['measure_decisions', 'format_decisions']


def _collect(model, loader, device):
    outputs = list(collect_outputs(model, loader, device))
    if not outputs:
        raise ValueError('a loader gave no images')
    return outputs


def measure_decisions(model: nn.Module, fit_loader: Iterable, calib_loader: Iterable, test_loader: Iterable,
                      ood_loaders: Mapping[str, Iterable], detectors: Sequence[Union[str, Detector]] = ('ssod_fused',),
                      alphas: Sequence[float] = (0.01, 0.05, 0.1), device=None,
                      detector_kwargs: Optional[Mapping[str, Dict]] = None) -> Dict:
    """See the module docstring. Returns a JSON-serialisable dict::

        {"n_fit": N, "n_calibration": n, "n_test": m, "n_ood": {set: k}, "alphas": [...],
         "detectors": {name: {"id_rejection": {"0.05": id_rejection_check(...), ...},
                              "ood": {set: {"fpr95": f, "auroc": f, "caught": {"0.05": f, ...}}},
                              "average": {"fpr95": f, "auroc": f, "caught": {...}}}}}"""
    fit = _collect(model, fit_loader, device)
    calib = ModelOutputs.cat([o for o, _ in _collect(model, calib_loader, device)])
    test = ModelOutputs.cat([o for o, _ in _collect(model, test_loader, device)])
    ood = OrderedDict((k, ModelOutputs.cat([o for o, _ in _collect(model, v, device)])) for k, v in ood_loaders.items())
    first = next(iter(calib_loader))
    input_size = tuple((first[0] if isinstance(first, (tuple, list)) else first).shape[1:])
    result = {'n_fit': sum(o.logits.shape[0] for o, _ in fit), 'n_calibration': calib.logits.shape[0],
              'n_test': test.logits.shape[0], 'n_ood': {k: v.logits.shape[0] for k, v in ood.items()},
              'alphas': [float(a) for a in alphas], 'detectors': OrderedDict()}
    for d in detectors:
        det = create_detector(d, **(detector_kwargs or {}).get(d, {})) if isinstance(d, str) else d
        if det.needs_fit and not det.is_fitted:
            det.fit(model, fit_loader, device) if det.fits_on_images else det.fit_outputs(fit)
        cal = calibrate_scores(det, det.score_outputs(calib).double().cpu(), model.num_classes, input_size,
                               min(alphas))
        test_scores = det.score_outputs(test).double().cpu()
        p_test = cal.p_values(test_scores)
        entry = {'id_rejection': {f'{a:g}': id_rejection_check(p_test, a, cal.n) for a in alphas}, 'ood': {}}
        for name, out in ood.items():
            scores = det.score_outputs(out).double().cpu()
            p = cal.p_values(scores)
            metrics = ood_metrics(test_scores.numpy(), scores.numpy())
            entry['ood'][name] = {'fpr95': metrics['fpr95'], 'auroc': metrics['auroc'],
                                  'caught': {f'{a:g}': float((p <= a).double().mean()) for a in alphas}}
        sets = list(entry['ood'].values())
        entry['average'] = {'fpr95': float(np.mean([s['fpr95'] for s in sets])),
                            'auroc': float(np.mean([s['auroc'] for s in sets])),
                            'caught': {f'{a:g}': float(np.mean([s['caught'][f'{a:g}'] for s in sets])) for a in alphas}}
        result['detectors'][det.name] = entry
    return result


def format_decisions(result: Dict, alpha: float = 0.05) -> str:
    """A markdown table of ``measure_decisions``: per detector, FPR95 / AUROC per OOD set and on
    average, the share of OOD caught and of ID test images rejected at ``alpha`` (percent)."""
    key = f'{alpha:g}'
    sets = list(result['n_ood'])
    head = ['Detector'] + [f'{s} FPR95↓ / AUROC↑ / caught@{key}' for s in sets] + \
        ['average FPR95↓ / AUROC↑ / caught', f'ID rejected @{key} (expected ± std)']
    lines = ['| ' + ' | '.join(head) + ' |', '|---|' + '---:|' * (len(head) - 1)]
    for name, d in result['detectors'].items():
        cells = [name]
        for s in sets + ['average']:
            m = d['average'] if s == 'average' else d['ood'][s]
            cells.append(f"{100 * m['fpr95']:.2f} / {100 * m['auroc']:.2f} / {100 * m['caught'][key]:.1f}")
        r = d['id_rejection'][key]
        cells.append(f"{100 * r['rate']:.2f} ({100 * r['expected']:.2f} ± {100 * r['std']:.2f})")
        lines.append('| ' + ' | '.join(cells) + ' |')
    return '\n'.join(lines)
