"""Does ID-only evidence predict real OOD performance? The measurement behind issue 22.

    from lib import evidence_checkpoint, summarize_evidence
    record = evidence_checkpoint('output/.../model_best.pth.tar')        # one trained SSOD checkpoint
    summary = summarize_evidence({'r18_s0': record, ...}, design=['r18_s0', ...])

Per checkpoint (``evidence_checkpoint``), on the built-in benchmark as the checkpoint was trained
(``trained_benchmark``): the candidates of ``ssod_fused(select='evidence')`` (``EVIDENCE_POOL``) are
fitted on ID training images exactly as that option fits them (cross-fitted ID references,
``timm_ssod.detectors.evidence``), and give

* ``evidence``: every candidate's pseudo-AUROC on every pseudo-OOD source (ID data only);
* ``components``: every single-pass detector's real AUROC / FPR95 on the ID test split against
  each OOD set's test split (the pool's and the others', for the oracle: the best single detector
  picked on the test sets);
* ``rules``: the fused score of every rule of ``rule_grid`` (sources x threshold x top x weighting x
  combination; keyed by ``rule_key``) over the pool's p-values: its kept components, weights, real
  FPR95 per OOD set, mean FPR95 / AUROC (rounded to 5 digits), the share of ID test images it
  rejects at each alpha once calibrated on the ID validation images and whether every one is
  within expectation + 3 std (``id_rejection_check``); ``fisher3``
  is the earlier default (select='all': ssod, mahalanobis, energy; Fisher);
* ``id_rejection``: the earlier default and the option's default rule at measurement time, calibrated on ID validation
  images, the share of ID test images rejected at each alpha (``id_rejection_check``);
* ``seconds``: the cost of collecting the evidence and of the pool's fit; ``cost``: the issue's cost
  targets (the fit of ``select='evidence'`` against the earlier Fisher-3's, prediction against a plain forward).

``summarize_evidence`` then gives, per source and OOD set, the Spearman rank correlation between a
component's pseudo-AUROC and its real AUROC: pooled over every (model, component) pair and within
each model (mean over models), separately on the design models, the held-out models and all; and
the rule chosen on the *design* models (among those whose ID rejection is within expectation + 3 std
on every design model: the smallest largest gap to the oracle, then the smallest mean gap, then the
key), reported on the held-out models against the oracle and the earlier default. No OOD test set makes
a choice on a held-out model. With models trained after ``REGISTERED_RULE`` was registered
(``trained_after``), ``adoption`` judges that rule against the design choice (docs/study/evidence.md).
"""
import time
from collections import OrderedDict
from typing import Callable, Dict, Iterable, List, Mapping, Optional, Sequence

import numpy as np
import torch

from timm_ssod.conformal import combine_pvalues, conformal_pvalue, id_rejection_check, min_calibration_size
from timm_ssod.data import DEFAULT_BACKGROUND, OOD_SETS, create_dataset
from timm_ssod.detectors import ModelOutputs, NotApplicableError, SSODFused, collect_outputs, compute_outputs
from timm_ssod.detectors.catalog import SINGLE_DETECTORS, single_detector_class
from timm_ssod.detectors.evidence import (IMAGE_SOURCES, SOURCE_SETS, SOURCES, collect_evidence, evidence_table, rule_key,
                                  select_components)
from timm_ssod.detectors.ssod_fused import DEFAULT_COMPONENTS, EVIDENCE_POOL, EVIDENCE_RULE
from timm_ssod.evaluate import load_eval_model
from timm_ssod.metrics import ood_metrics, spearman
from timm_ssod.demo._protocol import _loader, trained_benchmark

__all__ = ['evidence_checkpoint', 'cost_checkpoint', 'summarize_evidence', 'rule_grid', 'rule_key', 'SINGLES', 'SOURCE_SETS',
           'DEFAULT_RULE', 'REGISTERED_RULE', 'adoption']

# the single detectors the oracle picks from: every single-pass one (ODIN perturbs the inputs)
SINGLES = tuple(n for n, c in SINGLE_DETECTORS.items() if not c.needs_inputs)
THRESHOLDS = (0.5, 0.6, 0.7, 0.8)
TOPS = (None, 1, 2)  # every component that reaches the threshold, or only the 1 / 2 with the most evidence
# SSODFused(select='evidence')'s defaults, as a rule of the grid (what _costs fits end to end)
DEFAULT_RULE = dict(EVIDENCE_RULE)
# the option's rule before it was measured (all sources, 0.6, Fisher), kept in the reports for comparison
PLACEHOLDER_RULE = {'sources': 'all', 'threshold': 0.6, 'top': None, 'weighting': 'none', 'method': 'fisher'}
# the rule registered (commit d4dc72f) before the models trained after it were scored: the design choice
# without the source background_local. ``summarize_evidence`` judges it against the design choice by the
# adoption criterion of docs/study/evidence.md
REGISTERED_RULE = {'sources': 'no_local', 'threshold': 0.5, 'top': 2, 'weighting': 'informedness', 'method': 'fisher'}
# the registered rule replaces the design choice only if its largest gap to the oracle over the judged models
# is smaller by more than this (FPR95 as a fraction)
ADOPTION_MARGIN = 0.005


def rule_grid(thresholds: Sequence[float] = THRESHOLDS, tops: Sequence[Optional[int]] = TOPS) -> List[Dict]:
    """Every rule measured: source set x threshold x top x (Fisher, informedness-weighted Fisher,
    Tippett); with top 1 the three combinations are one score, so only Fisher is listed."""
    rules = []
    for sources in SOURCE_SETS:
        for t in thresholds:
            for top in tops:
                for weighting, method in (('none', 'fisher'), ('informedness', 'fisher'), ('none', 'tippett')):
                    if top == 1 and method != 'fisher' or top == 1 and weighting != 'none':
                        continue
                    rules.append({'sources': sources, 'threshold': float(t), 'top': top, 'weighting': weighting,
                                  'method': method})
    return rules


def _outputs(model, loader) -> ModelOutputs:
    parts = [o for o, _ in collect_outputs(model, loader)]
    if not parts:
        raise ValueError('a loader gave no images')
    return ModelOutputs.cat(parts)


def _metrics(id_scores: torch.Tensor, ood: Mapping[str, torch.Tensor]) -> Dict:
    per = {s: ood_metrics(id_scores.double().numpy(), v.double().numpy()) for s, v in ood.items()}
    out = {'fpr95': {s: m['fpr95'] for s, m in per.items()}, 'auroc': {s: m['auroc'] for s, m in per.items()}}
    out['average'] = {k: float(np.mean(list(out[k].values()))) for k in ('fpr95', 'auroc')}
    return out


def _rejection(calib: torch.Tensor, test: torch.Tensor, alphas: Sequence[float]) -> Dict:
    """The share of ID test images rejected at each alpha by the score calibrated on ``calib``."""
    reference = calib.double().sort().values
    p = conformal_pvalue(reference, test.double())
    return {f'{a:g}': id_rejection_check(p, a, reference.numel()) for a in alphas}


def _as_trained(checkpoint: str, batch_size: int):
    """The checkpoint's model, its info, the built-in benchmark as it was trained, and
    ``data(name, split, n)``: a loader of that benchmark's images as the model was trained on them."""
    model, info = load_eval_model(checkpoint=checkpoint)
    trained = trained_benchmark(info['train_args'], checkpoint)

    def data(name, split, n):
        ds = create_dataset(name, split=split, img_size=trained['render_size'], num_images=n,
                            num_classes=model.num_classes, background=trained.get('background', DEFAULT_BACKGROUND))
        return _loader(model, ds, trained['img_size'], batch_size, 0)
    return model, info, trained, data


def evidence_checkpoint(checkpoint: str, *, num_fit: int = 2000, num_calib: int = 500, num_test: int = 600,
                        num_ood: int = 600, evidence_images: Optional[int] = None, min_samples: int = 20,
                        ood_sets: Iterable[str] = OOD_SETS, alphas: Sequence[float] = (0.01, 0.05, 0.1),
                        batch_size: int = 128, singles: Sequence[str] = SINGLES, rules: Optional[List[Dict]] = None,
                        seed: int = 0, timing: bool = True) -> Dict:
    """The record of one checkpoint (module docstring). ``num_fit`` ID training images fit the
    detectors and make the pseudo-OOD (the first ``evidence_images`` of them), ``num_calib`` ID
    validation images calibrate, ``num_test`` ID test images and ``num_ood`` of each OOD set's test
    split measure. ``timing``: also measure the cost targets (``_costs``: two more passes over the fit
    images). JSON-ready (None where a value is undefined, never NaN)."""
    torch.manual_seed(seed)
    model, info, trained, data = _as_trained(checkpoint, batch_size)
    classes = model.num_classes

    start = time.time()
    # Eq. 12's gamma: the training run's (what `timm-ssod calibrate` reads from a checkpoint), else the model's
    gamma = (info.get('train_args') or {}).get('gamma') or None
    evid = collect_evidence(model, data('synthetic/id', 'train', num_fit), IMAGE_SOURCES, evidence_images,
                            gamma=gamma, seed=seed)
    collect_seconds = time.time() - start
    start = time.time()
    pool = SSODFused(components=EVIDENCE_POOL).fit_evidence(evid)
    fit_seconds = time.time() - start
    start = time.time()
    names = list(pool.component_names)
    table = evidence_table(dict(zip(names, pool.components)), dict(zip(names, pool.references)), evid, SOURCES,
                           factory=lambda n: single_detector_class(n)(), min_samples=min_samples, seed=seed)
    evidence_seconds = time.time() - start

    calib = _outputs(model, data('synthetic/id', 'val', num_calib))
    test = _outputs(model, data('synthetic/id', 'test', num_test))
    ood = OrderedDict((s, _outputs(model, data(f'synthetic/{s}', 'test', num_ood))) for s in ood_sets)

    components, skipped = OrderedDict(), {}
    fit_batches = [(evid.outputs, evid.targets)]
    for name in dict.fromkeys(list(names) + list(singles)):
        det = single_detector_class(name)()
        try:
            if det.needs_fit:
                det.fit_outputs(fit_batches)
            components[name] = _metrics(det.score_outputs(test).cpu(),
                                        {s: det.score_outputs(o).cpu() for s, o in ood.items()})
        except (NotApplicableError, ValueError, RuntimeError) as e:
            skipped[name] = f'{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ""}'
    oracle_name = min((n for n in components), key=lambda n: components[n]['average']['fpr95'])

    p_test, p_calib = pool.component_pvalues(test).cpu(), pool.component_pvalues(calib).cpu()
    p_ood = {s: pool.component_pvalues(o).cpu() for s, o in ood.items()}
    n_ref = [r.numel() for r in pool.references]

    def fused(columns, method, weights=None):
        idx = [names.index(c) for c in columns]

        def combine(p):
            return combine_pvalues(p[:, idx], method, [n_ref[i] for i in idx], weights)
        return combine(p_calib), combine(p_test), {s: combine(p) for s, p in p_ood.items()}

    rule_results = OrderedDict()
    alphas = [a for a in alphas if min_calibration_size(a) <= calib.logits.shape[0]]
    for rule in rules if rules is not None else rule_grid():
        choice = select_components(table['auroc'], names, SOURCE_SETS[rule['sources']], rule['threshold'],
                                   rule['weighting'], a_priori=DEFAULT_COMPONENTS, top=rule.get('top'))
        c, t, o = fused(choice['kept'], rule['method'], choice['weights'])
        m = _metrics(t, o)  # compact (hundreds of rules per model): the rule is its key, FPR95 per set
        rejection = _rejection(c, t, alphas) if alphas else {}
        rule_results[rule_key(rule)] = dict(kept=choice['kept'], fallback=choice['fallback'],
                                            weights=None if choice['weights'] is None else
                                            [round(w, 4) for w in choice['weights']],
                                            fpr95={k: round(v, 5) for k, v in m['fpr95'].items()},
                                            average={k: round(v, 5) for k, v in m['average'].items()},
                                            id_rejection={a: round(r['rate'], 5) for a, r in rejection.items()},
                                            id_rejection_within=all(r['within'] for r in rejection.values()))
    baseline = fused(DEFAULT_COMPONENTS, 'fisher')
    default_choice = select_components(table['auroc'], names, SOURCE_SETS[DEFAULT_RULE['sources']],
                                       DEFAULT_RULE['threshold'], DEFAULT_RULE['weighting'],
                                       a_priori=DEFAULT_COMPONENTS, top=DEFAULT_RULE['top'])
    default = fused(default_choice['kept'], DEFAULT_RULE['method'], default_choice['weights'])
    cost = _costs(model, lambda: data('synthetic/id', 'train', num_fit), data('synthetic/id', 'test', num_test),
                  gamma, evidence_images, min_samples) if timing else None
    return {
        'checkpoint': checkpoint, 'benchmark': trained, 'num_classes': classes, 'gamma': gamma,
        'sizes': {'fit': evid.outputs.logits.shape[0], 'evidence_images': evid.images, 'calib': calib.logits.shape[0],
                  'test': test.logits.shape[0], 'ood': {s: o.logits.shape[0] for s, o in ood.items()}},
        'pool': names,
        'evidence': table,
        'components': components, 'skipped': skipped,
        'oracle': {'detector': oracle_name, **components[oracle_name]['average']},
        'fisher3': {'components': list(DEFAULT_COMPONENTS), **_metrics(baseline[1], baseline[2])},
        'default_rule': {'rule': rule_key(DEFAULT_RULE), 'kept': default_choice['kept']},
        'rules': rule_results,
        'id_rejection': {'fisher3': _rejection(baseline[0], baseline[1], alphas) if alphas else {},
                         'default_rule': _rejection(default[0], default[1], alphas) if alphas else {}},
        'seconds': {'collect_evidence': round(collect_seconds, 2), 'fit_pool': round(fit_seconds, 2),
                    'evidence_table': round(evidence_seconds, 2)},
        'cost': cost,
    }


def cost_checkpoint(checkpoint: str, *, num_fit: int = 2000, num_test: int = 600,
                    evidence_images: Optional[int] = None,
                    min_samples: int = 20, batch_size: int = 128, seed: int = 0) -> Dict:
    """Only the issue's cost targets (``_costs``) on one checkpoint, on the built-in benchmark as it was
    trained: the fit of ``ssod_fused`` with ``select='all'`` (Fisher-3, the earlier default) against ``select='evidence'``, and prediction
    against a plain forward. Measure on idle cores."""
    torch.manual_seed(seed)
    model, info, trained, data = _as_trained(checkpoint, batch_size)
    gamma = (info.get('train_args') or {}).get('gamma') or None
    return {'checkpoint': checkpoint, 'benchmark': trained, 'threads': torch.get_num_threads(),
            **_costs(model, lambda: data('synthetic/id', 'train', num_fit), data('synthetic/id', 'test', num_test),
                     gamma, evidence_images, min_samples)}


def _median_seconds(fns: Mapping[str, Callable[[], object]], repeats: int = 15) -> Dict[str, float]:
    """The median seconds of each function, timed in turns (one call of each per round, after a warm-up
    round), so that a drift of the machine's speed falls on all of them alike."""
    times = {k: [] for k in fns}
    for round_ in range(repeats + 1):
        for k, fn in fns.items():
            start = time.perf_counter()
            fn()
            if round_:
                times[k].append(time.perf_counter() - start)
    return {k: float(np.median(v)) for k, v in times.items()}


def _costs(model, fit_loader, test_loader, gamma, evidence_images, min_samples) -> Dict:
    """The issue's cost targets, on this machine: the fit of ``ssod_fused`` with ``select='all'`` (Fisher over ssod,
    mahalanobis, energy) against ``select='evidence'`` end to end from the same ID training images
    (``calibrate`` adds one pass over the calibration images to both, so the ratio of the whole
    command is lower), and what prediction costs on one test batch: a plain forward ``model(x)``
    against the backbone pass plus each fused score (medians of 15, timed in turns). Also the option's own choice,
    which must equal the ``default_rule`` entry (the same images and seed)."""
    start = time.perf_counter()
    today = SSODFused().fit(model, fit_loader())
    today_seconds = time.perf_counter() - start
    start = time.perf_counter()
    option = SSODFused(select='evidence', gamma=gamma, evidence_images=evidence_images, min_samples=min_samples)
    option.fit(model, fit_loader())
    option_seconds = time.perf_counter() - start
    x = next(iter(test_loader))[0]
    with torch.no_grad():
        fused = _median_seconds({'plain': lambda: model(x), **{
            k: (lambda d=d: d.score_outputs(compute_outputs(model, x))) for k, d in (('fisher3', today),
                                                                                   ('evidence', option))}})
    plain = fused.pop('plain')
    return {'fit_seconds': {'fisher3': round(today_seconds, 3), 'evidence': round(option_seconds, 3),
                            'ratio': option_seconds / today_seconds},
            'predict_batch': int(x.shape[0]), 'plain_forward_seconds': plain,
            'predict_ratio': {k: v / plain for k, v in fused.items()}, 'option_kept': option.component_names}


def _correlations(records: Mapping[str, Dict], source: str, target: str) -> Dict:
    """Spearman between pseudo-AUROC on ``source`` and real AUROC on OOD set ``target`` ('average':
    the mean over the sets): pooled over (model, component) pairs, and the mean of the per-model ones."""
    xs, ys, within = [], [], []
    for rec in records.values():
        px, py = [], []
        for c in rec['pool']:
            real = rec['components'].get(c)
            if real is None:
                continue
            px.append(rec['evidence']['auroc'][c].get(source))
            py.append(real['average']['auroc'] if target == 'average' else real['auroc'].get(target))
        xs += px
        ys += py
        rho = spearman(px, py)
        if rho is not None:
            within.append(rho)
    pairs = sum(1 for a, b in zip(xs, ys) if a is not None and b is not None)
    return {'pooled': spearman(xs, ys), 'pairs': pairs,
            'within_model_mean': float(np.mean(within)) if within else None, 'models': len(within)}


def _gap_stats(recs: Mapping[str, Dict], key: str) -> Optional[Dict]:
    """A rule over some models: its largest and mean FPR95 gap to the oracle, how many models it is
    within 2 points of the oracle on, how many it is worse than Fisher-3 on, whether its ID rejection
    is within expectation + 3 std on all of them. None without models."""
    if not recs:
        return None
    gaps = [r['rules'][key]['average']['fpr95'] - r['oracle']['fpr95'] for r in recs.values()]
    return {'models': len(gaps), 'max_gap': max(gaps), 'mean_gap': float(np.mean(gaps)),
            'within_2': sum(g <= 0.02 for g in gaps),
            'worse_than_fisher3': sum(r['rules'][key]['average']['fpr95'] > r['fisher3']['average']['fpr95']
                                      for r in recs.values()),
            'id_rejection_within': all(r['rules'][key].get('id_rejection_within', True) for r in recs.values())}


def _common_rules(records: Mapping[str, Dict]) -> List[str]:
    """The rule keys every record has, in the first record's order."""
    first = list(next(iter(records.values()))['rules'])
    return [k for k in first if all(k in r['rules'] for r in records.values())]


def adoption(records: Mapping[str, Dict], design: Sequence[str], trained_after: Sequence[str], chosen: str) -> Dict:
    """The adoption criterion of docs/study/evidence.md: the design choice ``chosen`` and ``REGISTERED_RULE``
    over the judged models (the design models and those trained after the registration): the registered
    rule is adopted if its ID rejection holds on all of them and its largest gap to the oracle is smaller
    than the design choice's by more than ``ADOPTION_MARGIN``. Both rules are also reported on the design
    models, the models trained after and the other held-out models (which decide nothing); ``hindsight``
    is the grid's ceiling, the rule with the smallest largest gap over every model's test results."""
    judged = list(design) + [t for t in trained_after if t not in design]
    groups = OrderedDict([('judged', judged), ('design', list(design)), ('trained_after', list(trained_after)),
                          ('other_held_out', [k for k in records if k not in judged])])
    registered = rule_key(REGISTERED_RULE)
    older = [k for k, r in records.items() if registered not in r['rules']]
    if older:
        raise ValueError(f'{older} were scored without the registered rule {registered} (an older grid): score '
                         'them again to judge it')
    rules = OrderedDict((key, {g: _gap_stats({k: records[k] for k in labels}, key) for g, labels in groups.items()})
                        for key in dict.fromkeys([chosen, registered]))
    better = (rules[registered]['judged']['id_rejection_within']
              and rules[registered]['judged']['max_gap'] < rules[chosen]['judged']['max_gap'] - ADOPTION_MARGIN)
    # the grid's ceiling: the rule picked on every model's test results (not deployable, no choice uses it)
    every = {k: _gap_stats(records, k) for k in sorted(_common_rules(records))}
    best = min((k for k in every if every[k]['id_rejection_within']) or every,
               key=lambda k: (every[k]['max_gap'], -every[k]['within_2'], k))
    return {'judged': judged, 'trained_after': list(trained_after), 'margin': ADOPTION_MARGIN, 'rules': rules,
            'adopted': registered if better else chosen,
            'hindsight': {'rule': best, 'all': every[best]}}


def summarize_evidence(records: Mapping[str, Dict], design: Sequence[str] = (),
                       trained_after: Sequence[str] = ()) -> Dict:
    """Correlations and the rule chosen on the design models (module docstring). ``records``:
    {model label: ``evidence_checkpoint`` record}; ``design``: the labels the rule is chosen on,
    the others are held out; ``trained_after``: held-out models trained after ``REGISTERED_RULE`` was
    registered, which with the design models judge it (``adoption``)."""
    unknown = [d for d in list(design) + list(trained_after) if d not in records]
    if unknown:
        raise ValueError(f'--design / --trained-after name models that were not measured: {unknown}; '
                         f'measured: {list(records)}')
    if set(design) & set(trained_after):
        raise ValueError(f'models both design and trained after: {sorted(set(design) & set(trained_after))}')
    groups = {'design': {k: v for k, v in records.items() if k in design},
              'held_out': {k: v for k, v in records.items() if k not in design}, 'all': dict(records)}
    sets = list(next(iter(records.values()))['fisher3']['auroc']) if records else []
    correlations = {g: {s: {t: _correlations(recs, s, t) for t in sets + ['average']} for s in SOURCES}
                    for g, recs in groups.items() if recs}

    chosen, on_design = None, {}
    if groups['design']:  # minimax: the target is every model within 2 points of its oracle
        keys = _common_rules(groups['design'])
        on_design = {k: _gap_stats(groups['design'], k) for k in keys}
        valid = [k for k in keys if on_design[k]['id_rejection_within']] or keys
        chosen = min(valid, key=lambda k: (on_design[k]['max_gap'], on_design[k]['mean_gap'], k))

    def report(recs, key):
        rows = OrderedDict()
        for label, r in recs.items():
            rule = r['rules'].get(key) if key else None
            rows[label] = {'oracle': r['oracle']['detector'], 'oracle_fpr95': r['oracle']['fpr95'],
                           'fisher3_fpr95': r['fisher3']['average']['fpr95'],
                           'rule_fpr95': None if rule is None else rule['average']['fpr95'],
                           'rule_kept': None if rule is None else rule['kept'],
                           'rule_minus_oracle': None if rule is None else
                           rule['average']['fpr95'] - r['oracle']['fpr95'],
                           'rule_minus_fisher3': None if rule is None else
                           rule['average']['fpr95'] - r['fisher3']['average']['fpr95']}
        return rows
    default_key = rule_key(PLACEHOLDER_RULE)
    return {'design': list(design), 'held_out': list(groups['held_out']), 'correlations': correlations,
            'chosen_rule': chosen,
            'chosen_rule_design_mean_gap': on_design[chosen]['mean_gap'] if chosen else None,
            'chosen_rule_design_max_gap': on_design[chosen]['max_gap'] if chosen else None,
            'held_out_report': {'chosen_rule': report(groups['held_out'], chosen),
                                'default_rule': report(groups['held_out'], default_key)},
            'design_report': {'chosen_rule': report(groups['design'], chosen)} if chosen else {},
            'trained_after': list(trained_after),
            'adoption': adoption(records, design, trained_after, chosen) if chosen and trained_after else None}
