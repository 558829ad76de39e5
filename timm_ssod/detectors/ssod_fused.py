"""SSOD fused with complementary scores through their ID p-values; no weight, no OOD data.

    p_j(x) = (1 + #{i : r_ji <= s_j(x)}) / (n_j + 1)      each component's ID p-value
    score(x) = sum_j w_j log p_j(x)                        Fisher (default; w_j = 1 unless weighted), or
    score(x) = sum_j w_j Phi^-1(p_j(x)) / sqrt(sum_j w_j^2) Stouffer

s_j are the component scores (default ``DEFAULT_COMPONENTS``: ``ssod`` = P(ID | x), Eq. 15;
``mahalanobis`` on the penultimate features; ``energy`` on the logits), r_j their scores on ID
data, each (n_j,); a batch of B images gives (B,) scores. All components read one backbone pass
(``ModelOutputs``): no input perturbation (ODIN) is accepted. The formulas live in
``timm_ssod.conformal`` (``conformal_pvalue``, ``combine_pvalues``, ``tail_pvalue``); the
combination follows Bates et al., "Testing for outliers with conformal p-values" (Ann. Stat.
2023). A p-value puts every score on one scale, its ID quantile, so no weight is tuned on OOD data.

The ID references r_j come from the fit data by cross-fitting: the data is cut into ``folds``
parts; a component that needs a fit (Mahalanobis, KNN, ViM ...) is fitted on all parts but one
and scores the one left out, so every r_ji is an out-of-sample score, as a test image's will be;
then it is fitted once more on all the data. Components without a fit score the fit data
directly. The fused score is a score like any other: ``timm_ssod.calibration`` calibrates it once
more on held-out ID data (never the fit data), which turns it into a conformal p-value with the
guarantee, although the components are correlated.

``select='all'`` (the detector's default, the harness's ``ssod_fused`` row) fuses every
component. ``select='evidence'`` (the default *decision* of ``calibrate``: ``DECISION_KWARGS``)
first chooses the components from ID data only (``timm_ssod.detectors.evidence``): from
``EVIDENCE_POOL`` each component's pseudo-AUROC is measured on pseudo-OOD made from the fit images
(Eq. 12's background locations, their crops, transformed images, left-out classes) against its
cross-fitted ID references, and ``EVIDENCE_RULE`` keeps the two with the highest mean
pseudo-AUROC, weighted by 2 e - 1 (``evidence.select_components``: a component without evidence
keeps its a-priori place; when none has any, the default components are kept). Only the kept
components are scored at prediction time, from the same single backbone pass; the record of the
choice (``evidence``: rule, pseudo-AUROCs, kept, reasons, fallback) is saved with the model. The
image sources need the images: ``fit(model, loader)`` (``fits_on_images``) or
``fit_evidence(collect_evidence(...))``; ``fit_outputs`` alone has only ``leave_classes_out``.
What each choice measured (Fisher vs Stouffer, the components, the rule): docs/study/evidence.md.
"""
import warnings
from typing import Dict, Iterable, List, Optional, Sequence

import torch

from .._util import warn
from ..conformal import COMBINE_METHODS, combine_pvalues, conformal_pvalue, lower_tail_scale, tail_pvalue
from .base import Detector, ModelOutputs
from .catalog import single_detector_class
from .evidence import (EvidenceData, IMAGE_SOURCES, SOURCE_SETS, SOURCES, WEIGHTINGS, collect_evidence,
                       describe_selection, evidence_table, select_components)

DEFAULT_COMPONENTS = ('ssod', 'mahalanobis', 'energy')
# the candidates of select='evidence': SSOD, two feature-space scores of different kinds, a logit score, ViM (both)
EVIDENCE_POOL = ('ssod', 'mahalanobis', 'energy', 'knn', 'vim')
SELECT_MODES = ('all', 'evidence')
# select='evidence''s rule (its key in benchmarks/evidence.json: sources|t=threshold[|topK]|weighting|method): the
# rule the design models chose without the source background_local, registered before it was tested and adopted
# on the design models and the models trained after it (REGISTERED_RULE, summary['adoption']; docs/study/evidence.md)
EVIDENCE_RULE = {'sources': 'no_local', 'threshold': 0.5, 'top': 2, 'weighting': 'informedness', 'method': 'fisher'}
# the default *decision* (timm-ssod calibrate, calibration.calibrate(), model.calibrate()): ssod_fused with
# select='evidence'; the detector's own default (select='all', Fisher over DEFAULT_COMPONENTS) is the harness's row
DECISION_KWARGS = {'select': 'evidence'}
# each select mode's defaults, the one table __init__ reads: 'all' fuses the a-priori components; 'evidence' the
# rule's choice from EVIDENCE_POOL
SELECT_DEFAULTS = {
    'all': dict(components=DEFAULT_COMPONENTS, method='fisher', threshold=0.6, evidence_sources=SOURCES,
                weighting='none', top=None),
    'evidence': dict(components=EVIDENCE_POOL, method=EVIDENCE_RULE['method'], threshold=EVIDENCE_RULE['threshold'],
                     evidence_sources=SOURCE_SETS[EVIDENCE_RULE['sources']], weighting=EVIDENCE_RULE['weighting'],
                     top=EVIDENCE_RULE['top']),
}


def select_outputs(outputs: ModelOutputs, index: torch.Tensor) -> ModelOutputs:
    """The rows ``index`` of a ``ModelOutputs``."""
    ood = outputs.ood_logits
    return ModelOutputs(outputs.features[index], outputs.logits[index], None if ood is None else ood[index],
                        outputs.classifier)


class SSODFused(Detector):
    """SSOD + complementary scores, combined through ID p-values (module docstring).

    Args:
        components: detector names (``catalog.SINGLE_DETECTORS`` or ``EXPERIMENTAL_DETECTORS``), default
            ``ssod, mahalanobis, energy``.
        method: ``fisher`` (default) or ``stouffer`` (``tippett``: the smallest p-value).
        folds: cross-fitting folds for the ID references of fitted components (>= 2).
        tail: continue each p-value below the lowest ID reference score by an exponential
            tail (``timm_ssod.conformal.tail_pvalue``), so that one component's evidence does
            not stop at 1 / (n + 1); False: plain conformal p-values.
        component_kwargs: constructor arguments by component name, e.g. ``{'knn': {'k': 10}}``.
        name: the name it is reported under (to compare variants in one evaluation).
        select: ``'all'`` (default: every component) or ``'evidence'`` (keep those the ID-only
            evidence supports, module docstring; ``components`` then defaults to ``EVIDENCE_POOL``).
        threshold: the mean pseudo-AUROC a component needs to be kept (``select='evidence'``).
        evidence_sources: the sources whose pseudo-AUROCs are averaged (``evidence.SOURCES``).
        weighting: ``'none'`` or ``'informedness'`` (Fisher / Stouffer weights 2 e - 1).
        top: keep at most this many components, those with the highest pseudo-AUROC (None: the
            rule's, else every one that reaches ``threshold``).
            With ``select='evidence'``, ``method``, ``threshold``, ``evidence_sources``, ``weighting``
            and ``top`` default to ``EVIDENCE_RULE`` (measured, ``benchmarks/evidence.py``).
        evidence_images: how many fit images the image sources are made from (None: ``evidence.evidence_budget``
            of the fit set's size, one in 8 of them, 40 to 500).
        min_samples: a source with fewer pseudo-OOD samples gives no evidence (a warning).
        gamma: Eq. 12's threshold for the background sources (default: the model's own, ``core.model_gamma``).
    """
    needs_ood_head = True
    name = 'ssod_fused'
    needs_fit = True

    def __init__(self, components: Optional[Sequence[str]] = None, method: Optional[str] = None, folds: int = 5,
                 tail: bool = True, component_kwargs: Optional[Dict[str, Dict]] = None, name: Optional[str] = None,
                 select: str = 'all', threshold: Optional[float] = None,
                 evidence_sources: Optional[Sequence[str]] = None, weighting: Optional[str] = None,
                 evidence_images: Optional[int] = None, min_samples: int = 20, gamma: Optional[float] = None,
                 top: Optional[int] = None):
        if select not in SELECT_MODES:
            raise ValueError(f'unknown select {select!r}; available: {", ".join(SELECT_MODES)}')
        defaults = SELECT_DEFAULTS[select]
        method = method or defaults['method']
        threshold = defaults['threshold'] if threshold is None else threshold
        evidence_sources = defaults['evidence_sources'] if evidence_sources is None else evidence_sources
        weighting = weighting or ('none' if method == 'tippett' else defaults['weighting'])
        top = defaults['top'] if top is None else top
        components = defaults['components'] if components is None else components
        super().__init__()
        if method not in COMBINE_METHODS:
            raise ValueError(f'unknown combination {method!r}; available: {", ".join(COMBINE_METHODS)}')
        if isinstance(evidence_sources, str):
            evidence_sources = [v.strip() for v in evidence_sources.split(',') if v.strip()]
        bad = [v for v in evidence_sources if v not in SOURCES]
        if bad or not evidence_sources:
            raise ValueError(f'evidence_sources must name one or more of {", ".join(SOURCES)}; '
                             f'got {list(evidence_sources)}')
        if weighting not in WEIGHTINGS:
            raise ValueError(f'unknown weighting {weighting!r}; available: {", ".join(WEIGHTINGS)}')
        if weighting != 'none' and method == 'tippett':
            raise ValueError('tippett (the smallest p-value) takes no weights: weighting must be none')
        if isinstance(components, str):
            components = [c for c in components.split(',') if c.strip()]
        names = [c.strip().lower() for c in components]
        if len(names) < 2 or len(set(names)) != len(names):
            raise ValueError(f'ssod_fused needs two or more different components, got {list(components)}')
        if folds < 2:
            raise ValueError(f'folds must be >= 2, got {folds}')
        if SSODFused.name in names:
            raise ValueError(f'{SSODFused.name} cannot be a component of ssod_fused: it needs its own components, '
                             'not one backbone pass')
        component_kwargs = {k.lower(): v for k, v in (component_kwargs or {}).items()}
        self.components: List[Detector] = [single_detector_class(n)(**component_kwargs.get(n, {})) for n in names]
        for c in self.components:
            if c.needs_inputs:
                raise ValueError(f'{c.name} cannot be a component of ssod_fused: it needs the input images, not one '
                                 'backbone pass')
        self.component_names = names
        self.method = method
        self.folds = int(folds)
        self.tail = bool(tail)
        self.select = select
        self.threshold = float(threshold)
        self.evidence_sources = list(evidence_sources)
        self.weighting = weighting
        self.top = None if top is None else int(top)
        if evidence_images is not None and int(evidence_images) < 1:
            raise ValueError(f'evidence_images must be >= 1, got {evidence_images}')
        self.evidence_images = None if evidence_images is None else int(evidence_images)
        self.min_samples = int(min_samples)
        self.gamma = None if gamma is None else float(gamma)
        self.weights = None    # Fisher / Stouffer weights of the kept components (select='evidence')
        self.evidence = None   # the record of select='evidence': rule, pseudo-AUROCs, kept, reasons
        if select == 'evidence':  # the pool, and the arguments to create its components again (JSON, stored)
            self.candidates = list(names)
            self.component_kwargs = component_kwargs
        if name:
            self.name = name

    # -- select='evidence': the fit needs the images ---------------------------------------
    @property
    def fits_on_images(self) -> bool:
        """True when ``select='evidence'`` has image sources: ``fit(model, loader)`` measures them,
        ``fit_outputs`` cannot (``Detector.fits_on_images``)."""
        return getattr(self, 'select', 'all') == 'evidence' and any(s in IMAGE_SOURCES for s in self.evidence_sources)

    def fit(self, model, loader, device=None) -> 'SSODFused':
        """Fit on ID images (batches ``(x, y)``); with ``select='evidence'`` the pseudo-OOD samples
        are made from the same images in the same pass (``evidence.collect_evidence``)."""
        if getattr(self, 'select', 'all') != 'evidence':
            return super().fit(model, loader, device)
        sources = [s for s in self.evidence_sources if s in IMAGE_SOURCES]
        return self.fit_evidence(collect_evidence(model, loader, sources, self.evidence_images,
                                                  gamma=self.gamma, device=device))

    def fit_evidence(self, data: EvidenceData) -> 'SSODFused':
        """Fit every candidate on ``data.outputs``, measure the evidence on ``data`` and keep the
        components it supports (``select='evidence'``; module docstring)."""
        if getattr(self, 'select', 'all') != 'evidence':
            return self._fit_components(data.outputs, data.targets)
        kwargs = self.component_kwargs or {}

        def factory(n):
            return single_detector_class(n)(**kwargs.get(n, {}))
        self.component_names = list(self.candidates)  # a second fit starts from the whole pool again
        self.components = [factory(n) for n in self.component_names]
        self._fit_components(data.outputs, data.targets)
        comps = dict(zip(self.component_names, self.components))
        refs = dict(zip(self.component_names, self.references))
        table = evidence_table(comps, refs, data, self.evidence_sources, factory=factory, min_samples=self.min_samples)
        record = select_components(table['auroc'], self.component_names, self.evidence_sources, self.threshold,
                                   self.weighting, a_priori=DEFAULT_COMPONENTS, top=getattr(self, 'top', None))
        _drop_degenerate(record, comps)
        if record['fallback']:
            warn(f'{self.name}: {record["fallback"]}')
        self.evidence = dict(record, auroc=table['auroc'], samples=table['samples'], notes=table['notes'],
                             images=data.images)
        keep = [self.component_names.index(n) for n in record['kept']]
        self.components = [self.components[i] for i in keep]
        self.references = [self.references[i] for i in keep]
        self.tail_scales = [self.tail_scales[i] for i in keep]
        self.component_names = list(record['kept'])
        self.weights = record['weights']
        return self

    def choices(self) -> Optional[Dict]:
        """What ``select='evidence'`` kept and why (saved with a calibration, shown on the model
        card); None for ``select='all'``."""
        evidence = getattr(self, 'evidence', None)
        if not evidence:
            return None
        return {k: evidence[k] for k in ('rule', 'candidates', 'kept', 'weights', 'evidence', 'reasons', 'fallback')}

    def describe_choices(self) -> Optional[str]:
        """``evidence.describe_selection`` of the choice (what ``timm-ssod calibrate`` prints), or None."""
        evidence = getattr(self, 'evidence', None)
        return describe_selection(evidence) if evidence else None

    # -- fit: components, then cross-fitted ID references ---------------------------------
    def fit_outputs(self, batches: Iterable) -> 'SSODFused':
        """Fit on ID data (an iterable of ``(ModelOutputs, targets)``; see the module doc). With
        ``select='evidence'`` only ``leave_classes_out`` can be measured from outputs alone."""
        parts, labels = [], []
        for item in batches:
            outputs, targets = item if isinstance(item, (tuple, list)) else (item, None)
            parts.append(outputs)
            labels.append(None if targets is None else torch.as_tensor(targets).reshape(-1))
        if not parts:
            raise ValueError(f'{self.name}: fit got no batches')
        outputs = ModelOutputs.cat(parts)
        targets = None if any(t is None for t in labels) else torch.cat([t.to(outputs.logits.device) for t in labels])
        if getattr(self, 'select', 'all') == 'evidence':
            missing = [s for s in self.evidence_sources if s in IMAGE_SOURCES]
            if missing:
                warn(f'{self.name}: fitted from outputs, without the images: the evidence sources {", ".join(missing)} '
                     'need fit(model, loader); only the others are measured')
            return self.fit_evidence(EvidenceData(outputs, targets))
        return self._fit_components(outputs, targets)

    def _fit_components(self, outputs: ModelOutputs, targets: Optional[torch.Tensor]) -> 'SSODFused':
        n = outputs.logits.shape[0]
        if any(c.needs_fit for c in self.components) and n < self.folds:
            raise ValueError(f'{self.name}: {n} fit images for {self.folds} cross-fitting folds')
        self._fitted = False
        fold = torch.arange(n, device=outputs.logits.device) % self.folds
        references = []
        for c in self.components:
            if not c.needs_fit:
                references.append(c.score_outputs(outputs).double().cpu())
                continue
            ref = torch.empty(n, dtype=torch.float64)
            with warnings.catch_warnings(record=True) as caught:  # the folds' fits and the full one warn alike:
                warnings.simplefilter('always')                   # shown once (the full fit's, else the first)
                for f in range(self.folds):
                    out_idx, in_idx = (fold == f).nonzero().flatten(), (fold != f).nonzero().flatten()
                    c.fit_outputs([(select_outputs(outputs, in_idx), None if targets is None else targets[in_idx])])
                    ref[out_idx.cpu()] = c.score_outputs(select_outputs(outputs, out_idx)).double().cpu()
                folds_warned = len(caught)
                c.fit_outputs([(outputs, targets)])
            if caught:
                shown = caught[folds_warned] if len(caught) > folds_warned else caught[0]
                warn(str(shown.message), shown.category)
            references.append(ref)
        self.references = [r.sort().values for r in references]
        self.tail_scales = [lower_tail_scale(r) for r in self.references]
        self._fitted = True
        return self

    # -- scoring ----------------------------------------------------------------------------
    def component_pvalues(self, outputs: ModelOutputs) -> torch.Tensor:
        """(B, k) ID p-values of the components, in ``component_names`` order."""
        self._check_fitted()
        if not self.tail:
            return torch.stack([conformal_pvalue(r, c.score_outputs(outputs))
                                for c, r in zip(self.components, self.references)], dim=-1)
        return torch.stack([tail_pvalue(r, c.score_outputs(outputs), t)
                            for c, r, t in zip(self.components, self.references, self.tail_scales)], dim=-1)

    def _score(self, outputs: ModelOutputs):
        p = self.component_pvalues(outputs)
        return combine_pvalues(p, self.method, [r.numel() for r in self.references],
                               getattr(self, 'weights', None)).float()


def _drop_degenerate(record: Dict, components: Dict[str, Detector]) -> None:
    """A kept component whose own fit flagged itself degenerate (``degenerate``: why, e.g. ViM fitted
    on fewer images than its principal dimension) is not deployed; when every kept one is, they
    stay and the reason says why. Edits the ``select_components`` record in place."""
    kept = record['kept']
    bad = {n: getattr(components.get(n), 'degenerate', None) for n in kept}
    bad = {n: why for n, why in bad.items() if why}
    if not bad:
        return
    if len(bad) == len(kept):
        for n, why in bad.items():
            record['reasons'][n] += f'; kept although its fit is degenerate ({why}): no other component was kept'
        return
    idx = [i for i, n in enumerate(kept) if n not in bad]
    if record.get('weights') is not None:
        record['weights'] = [record['weights'][i] for i in idx]
    for n, why in bad.items():
        record['reasons'][n] = f'dropped: its fit is degenerate ({why})'
    record['kept'] = [kept[i] for i in idx]
