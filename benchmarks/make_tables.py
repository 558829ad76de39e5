"""The result tables of README.md and docs/, generated from the committed JSON (numbers are never
typed by hand), and the CLI reference docs/cli.md, generated from the argument parsers.

    python benchmarks/make_tables.py --docs        # rewrite every generated block of README.md and docs/**/*.md, and docs/cli.md
    python benchmarks/make_tables.py               # print the tables, write benchmarks/tables.md
    python benchmarks/make_tables.py --quality other.json --out other_tables.md
    python benchmarks/make_tables.py --docs --regime-figure docs/figures/regime.png   # and the study's figure

Sources (``SOURCES``, each a flag): benchmarks/{overhead,quality,quality_converged,ablations,regime,regime_probe,
converged,demo,evidence,evidence_images,evidence_cost,calibrate_cost,calibrate_cost_small,onnx_latency,mechanism,peer}.json,
weights/*.json
and docs/measurements/ssod_fused{,_natural}.json. A page holds each table between
``<!-- make_tables:NAME -->`` and ``<!-- /make_tables:NAME -->`` (NAME: a ``SECTIONS`` name; the
``glance_*`` ones are short summaries: the README's, docs/decisions.md's, docs/study/README.md's);
``--docs`` rewrites only those blocks, wherever they are (README.md and docs/**/*.md), and tests/test_benchmarks.py checks they match the committed JSON. A missing JSON file
is skipped with a note. Metrics are printed in percent.
"""
import argparse
import json
import os
import re
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
SSOD_ROWS = ('ssod (SSOD model)', 'ssod_msp (SSOD model)', 'energy_ssod (SSOD model)', 'ssod_patch_max (SSOD model)',
             'ssod_energy_rank (SSOD model)')


def pct(x, digits=1):
    return '–' if x is None else f'{100 * x:.{digits}f}'


def pm(stat):
    """'mean ± std' in percent (just the mean for one seed)."""
    return pct(stat['mean']) if stat.get('n', 1) < 2 else f"{pct(stat['mean'])} ± {pct(stat['std'])}"


def md_table(header, rows):
    lines = ['| ' + ' | '.join(header) + ' |', '|' + '---|' + '---:|' * (len(header) - 1)]
    return '\n'.join(lines + ['| ' + ' | '.join(str(c) for c in row) + ' |' for row in rows])


def overhead_tables(d):
    env = d.get('environment', {})
    where = env.get('gpu') or f"CPU, {env.get('threads', '?')} threads"
    s = d.get('settings', {})
    rows = [[name, 'x'.join(map(str, r.get('grid', []))), f"{r['train_time_ratio']:.3f}", f"{r['train_mem_ratio']:.3f}",
             f"{r['inference_time_ratio']:.3f}", 'yes' if r.get('meets_targets') else 'no'] for name, r in d['models'].items()]
    t = d.get('targets', {})
    return (f"### Cost of SSOD vs the plain timm model ({where}; batch {s.get('batch_size')}, {s.get('img_size')} px, "
            f"amp {s.get('amp')}; targets: train ≤ {t.get('train_time')}, inference ≤ {t.get('inference_time')})\n\n"
            f"Command: `{d.get('command', '').strip()}`\n\n"
            + md_table(['Backbone', 'map', 'train time ×', 'train memory ×', 'inference time ×', 'meets targets'], rows))


def _best_vanilla(rows, key='average'):
    """Label of the vanilla-model baseline with the lowest mean FPR95 on ``key``."""
    cands = [(r[key]['fpr95']['mean'], label) for label, r in rows.items() if label.endswith('(vanilla model)')]
    return min(cands)[1] if cands else None


def sampler_cells(runs):
    """'4x4, 50/8/42, 38/10' from the runs' sampler diagnostics (mean over seeds), in percent."""
    diags = [r['sampler_alignment'] for r in runs if r.get('sampler_alignment')]
    if not diags:
        return '–'

    def mean(get):
        return sum(get(x) for x in diags) / len(diags)
    share = '/'.join(pct(mean(lambda x: x['share'][k]), 0) for k in ('id', 'ood', 'ignored'))
    bg = '/'.join(pct(mean(lambda x: x['background_cells'][k]), 0) for k in ('labelled_id', 'labelled_ood'))
    return f"{'x'.join(map(str, diags[0]['grid']))}, {share}, {bg}"


def _quality_start(d):
    """What quality.py's fine-tunes start from: a stage 1 from scratch, or the stand-ins (--from-standins)."""
    if d.get('start', 'scratch') != 'standins':
        return 'one vanilla stage 1 from scratch'
    files = ', '.join(f"`{b['stage1']['file']}` ({pct(b['stage1']['id_test_accuracy'])}% ID test accuracy)"
                      for b in d['backbones'].values() if b.get('stage1', {}).get('file'))
    return f"no stage 1, the converged stand-in ({files}) at the size it was trained at, fine-tune lr " \
           f"{d['sizes']['finetune_lr']:g}"


def quality_tables(d):
    sets = d['ood_sets'] + ['average']
    # JSON written before the natural-background default has no 'background': it was the smooth set
    start = ', fine-tuned from the converged stand-ins' if d.get('start') == 'standins' else ''
    out = [f"### Detection quality on the built-in benchmark, {d.get('background', 'smooth')} backgrounds{start} "
           f"(seeds {', '.join(map(str, d['seeds']))}; mean ± std)\n\n"
           f"Command: `{d.get('command', '').strip()}`. Each backbone: {_quality_start(d)}, then per seed a vanilla and an "
           f"SSOD fine-tune with the same budget and seed. FPR95 ↓ / AUROC ↑ in percent on the test splits. "
           f"`energy_ssod`'s weight is chosen on the validation splits.\n"]
    summary = []
    for name, b in d['backbones'].items():
        if 'summary' not in b:
            continue
        sm, rows = b['summary'], b['summary']['rows']
        best = _best_vanilla(rows)

        def vs(s):
            return f"{pm(rows['ssod (SSOD model)'][s]['fpr95'])} vs {pm(rows[best][s]['fpr95'])}"
        extra = [pm(rows[r]['average']['fpr95']) if r in rows else '–' for r in SSOD_ROWS[1:]]
        summary.append([name, f"{pm(sm['id_accuracy']['vanilla'])} / {pm(sm['id_accuracy']['ssod'])}",
                        sampler_cells(b['runs'])] + [best.split(' ')[0]] + [vs(s) for s in sets] + extra)
    out.append('FPR95 ↓ of the SSOD score vs the best post-hoc baseline on the vanilla model (the one with the lowest '
               'mean average FPR95, picked on the test results, as papers do), then the mean FPR95 of the other '
               'SSOD-model scores. Sampler: Eq. 12 on the fine-tuned SSOD model\'s validation images (mean over '
               'seeds): the share of locations labelled ID / OOD / ignored, and of the pure-background cells (no object '
               'pixel) the share labelled ID / OOD (the paper\'s premise is that they are mostly OOD).\n')
    out.append(md_table(['Backbone', 'ID acc vanilla / SSOD', 'sampler: map, % ID/OOD/ign., bg → ID/OOD',
                         'best baseline'] + [f'{s}: SSOD vs best' for s in sets]
                        + [f"{r.split(' ')[0]} avg" for r in SSOD_ROWS[1:]], summary))
    fused = fused_vs_single(d)
    if fused:
        out.append('\n' + fused)
    for name, b in d['backbones'].items():
        if 'summary' not in b:
            continue
        cfg, rows = b['config'], b['summary']['rows']
        order = [r for r in SSOD_ROWS if r in rows] + [r for r in rows if r not in SSOD_ROWS]
        table = [[label] + [f"{pm(rows[label][s]['fpr95'])} / {pm(rows[label][s]['auroc'])}" for s in sets]
                 for label in order]
        weights = ', '.join(map(str, b['summary'].get('chosen_weights', [])))
        out.append(f"\n#### {name} ({cfg['img_size']} px, {cfg['model_kwargs'] or 'default'}), "
                   f"{len(b['runs'])} seed(s); energy_ssod weight chosen on validation: {weights}\n\n"
                   + md_table(['Detector'] + [f'{s} FPR95 / AUROC' for s in sets], table))
    return '\n'.join(out)


FUSED_ROW = 'ssod_fused (SSOD model)'
# scores that combine others (not "single detectors" in the fused-vs-single comparison)
COMBINED_ROWS = (FUSED_ROW, 'energy_ssod (SSOD model)', 'ssod_energy_rank (SSOD model)')


def fused_vs_single(d):
    """Per backbone: ``ssod_fused`` against the best single detector (lowest mean average FPR95
    over every other row, either model), per OOD set and on average; then its calibrated
    decisions (ID rejection on the test split vs alpha, OOD caught) when the JSON has them."""
    sets = d['ood_sets'] + ['average']
    rows_out, decisions = [], []
    for name, b in d['backbones'].items():
        rows = b.get('summary', {}).get('rows', {})
        if FUSED_ROW not in rows:
            continue
        singles = [r for r in rows if r not in COMBINED_ROWS]
        best = min(singles, key=lambda r: rows[r]['average']['fpr95']['mean'])
        fused, single = rows[FUSED_ROW]['average']['fpr95']['mean'], rows[best]['average']['fpr95']['mean']
        verdict = 'fused' if fused < single else 'single' if single < fused else 'tie'
        rows_out.append([name, best] + [f"{pm(rows[FUSED_ROW][s]['fpr95'])} vs {pm(rows[best][s]['fpr95'])}"
                                        for s in sets] + [verdict])
        runs = [r['decisions'] for r in b['runs'] if r.get('decisions')]
        if runs:
            det = [r['detectors']['ssod_fused'] for r in runs]
            cells = []
            for a in runs[0]['alphas']:
                key = f'{a:g}'
                checks = [x['id_rejection'][key] for x in det]
                cells.append(f"{pm(_stat([c['rate'] for c in checks]))} (≤ {pct(checks[0]['expected'])} ± "
                             f"{pct(checks[0]['std'])}; {sum(c['within'] for c in checks)}/{len(checks)} within)")
            caught = pm(_stat([x['average']['caught']['0.05'] for x in det])) if '0.05' in det[0]['average']['caught'] \
                else '–'
            decisions.append([name, f"{runs[0]['n_calibration']} / {runs[0]['n_test']}"] + cells + [caught])
    if not rows_out:
        return ''
    out = ['FPR95 ↓ in percent: `ssod_fused` (SSOD + Mahalanobis + Energy through their ID p-values, Fisher; no '
           'OOD data) vs the best single detector of the tables below (lowest mean average FPR95, either model, '
           'picked on the test results: a favourable choice for the single detector).\n',
           md_table(['Backbone', 'best single detector'] + [f'{s}: fused vs single' for s in sets] + ['lower average'],
                    rows_out)]
    if decisions:
        alphas = [f'{a:g}' for a in d['backbones'][decisions[0][0]]['runs'][0]['decisions']['alphas']]
        out += ['\nCalibrated decisions of `ssod_fused` (calibrated on the ID validation split, measured on the '
                'ID test split, never used for calibration): the share of ID test images rejected at each alpha, '
                'mean ± std over seeds, beside the conformal expectation k/(n+1) ± its standard error and how '
                'many seeds stay within expectation + 3 std; and the mean share of OOD images caught at alpha 5%.\n',
                md_table(['Backbone', 'calibration / test ID images'] + [f'ID rejected at α={a}' for a in alphas]
                         + ['OOD caught at α=0.05'], decisions)]
    return '\n'.join(out)


def _stat(values):
    """{mean, std, n} of a list of fractions, for ``pm``."""
    n = len(values)
    mean = sum(values) / n
    return {'mean': mean, 'std': (sum((v - mean) ** 2 for v in values) / n) ** 0.5, 'n': n}


def ablation_tables(d):
    runs = d['runs'] if 'runs' in d else [d]  # a merge of several seeds, or one seed
    first, p = runs[0], runs[0]['protocol']
    sets = list(next(iter(first['settings'].values()))['scores']['ssod'])

    def cell(get, metric=None):
        return pm(_stat([get(r) if metric is None else get(r)[metric] for r in runs]))

    rows = []
    for key, e in first['settings'].items():
        es = [r['settings'][key] for r in runs]
        shares = '/'.join(pct(sum(x.get('sampler', {}).get(k, 0) for x in es) / len(es), 0) for k in ('id', 'ood', 'ignored'))
        epochs = ', '.join('' if x.get('epoch') is None else str(x['epoch'] + 1) for x in es)
        rows.append([key, e['setting']['gamma'], e['setting']['lam'], e['setting']['balance'],
                     f"{epochs} of {p['finetune_epochs']}", cell(lambda r: r['settings'][key]['id_accuracy']), shares]
                    + [f"{cell(lambda r: r['settings'][key]['scores']['ssod'][s], 'fpr95')} / "
                       f"{cell(lambda r: r['settings'][key]['scores']['ssod'][s], 'auroc')}" for s in sets]
                    + [cell(lambda r: r['settings'][key]['scores']['ssod_msp']['average'], 'fpr95')])
    if all('vanilla_reference' in r for r in runs):
        for det in first['vanilla_reference']['scores']:
            rows.append([f'vanilla model, {det}', '', '', '', '', cell(lambda r: r['vanilla_reference']['id_accuracy']), '']
                        + [f"{cell(lambda r: r['vanilla_reference']['scores'][det][s], 'fpr95')} / "
                           f"{cell(lambda r: r['vanilla_reference']['scores'][det][s], 'auroc')}" for s in sets] + [''])
    seeds = ', '.join(str(r['protocol']['seed']) for r in runs)
    spread = '; mean ± std over seeds' if len(runs) > 1 else ''
    renders = f" from {p['render_size']}-px renders" if p.get('render_size') not in (None, p['img_size']) else ''
    return (f"### Ablations of SSOD ({p['backbone']} {p.get('model_kwargs') or ''}, {p['img_size']} px{renders}, "
            f"{p.get('background', 'smooth')} backgrounds, "
            f"seed{'s' if len(runs) > 1 else ''} {seeds}{spread})\n\n"
            f"Command: `{d.get('command', '').strip()}`. SSOD score FPR95 ↓ / AUROC ↑ in percent on the test splits; "
            f"epoch = the fine-tuning epoch kept per seed (best validation FPR95); sampler = share of ID / OOD / "
            f"ignored locations in the last fine-tuning epoch (mean over seeds).\n\n"
            + md_table(['Setting', 'γ', 'λ', 'balance', 'epoch', 'ID acc', 'sampler % ID/OOD/ign.']
                       + [f'{s} FPR95 / AUROC' for s in sets] + ['ssod_msp avg FPR95'], rows))


def _mean(values):
    values = [v for v in values if v is not None]
    return sum(values) / len(values) if values else None


def regime_groups(d):
    """{(background, scale, backbone): [cells over seeds, by seed]}, by backbone, scale, then background
    (the grid's order, whatever order the cells finished in)."""
    groups = {}
    for c in sorted(d['cells'].values(), key=lambda c: c['seed']):
        groups.setdefault((c['background'], c['scale'], c['backbone']), []).append(c)
    scales = list(d.get('scales', {}))
    backbones = list(next(iter(d['scales'].values()))) if d.get('scales') else []
    order = lambda k: (backbones.index(k[2]) if k[2] in backbones else len(backbones),  # noqa: E731
                       scales.index(k[1]) if k[1] in scales else len(scales), k[0] != 'smooth', k[0])
    return {k: groups[k] for k in sorted(groups, key=order)}


def _bg_ood(c):
    return c['sampler_alignment']['background_cells']['labelled_ood']


def _bg_id(c):
    return c['sampler_alignment']['background_cells']['labelled_id']


def _obj_id(c):
    return c['sampler_alignment'].get('object_cells', {}).get('labelled_id')


def _pid_gap(c):
    p = c['sampler_alignment'].get('p_id') or {}
    obj, bg = p.get('object_cells'), p.get('background_cells')
    return None if obj is None or bg is None else obj - bg


def _avg(c, row):
    return c[row]['average']['fpr95']


def factor_effects(d):
    """Per factor and level: the mean over all cells at that level of SSOD's average FPR95, its gap to
    the best logit baseline, and the sampler's share of pure-background cells labelled OOD."""
    cells = list(d['cells'].values())
    out = []
    for factor in ('background', 'scale', 'backbone'):
        for level in sorted({c[factor] for c in cells}):
            sub = [c for c in cells if c[factor] == level]
            out.append((factor, level, len(sub), _mean([_avg(c, 'ssod') for c in sub]),
                        _mean([_avg(c, 'ssod') - _avg(c, 'best_logit') for c in sub]),
                        _mean([_avg(c, 'ssod') - _avg(c, 'best_feature') for c in sub]),
                        _mean([_bg_ood(c) for c in sub]), _mean([_obj_id(c) for c in sub])))
    return out


def _pearson(xs, ys):
    pairs = [(x, y) for x, y in zip(xs, ys) if x is not None and y is not None]
    if len(pairs) < 3:
        return None
    mx, my = _mean([p[0] for p in pairs]), _mean([p[1] for p in pairs])
    sxy = sum((x - mx) * (y - my) for x, y in pairs)
    sxx, syy = sum((x - mx) ** 2 for x, _ in pairs), sum((y - my) ** 2 for _, y in pairs)
    return sxy / (sxx * syy) ** 0.5 if sxx > 0 and syy > 0 else None


def regime_tables(d):
    sets = d['ood_sets']
    groups = regime_groups(d)
    rows = []
    for (bg, scale, backbone), cells in groups.items():
        c0 = cells[0]
        ident = [bg, f"{scale} ({c0['render_size']}→{c0['input_size']} px, {'x'.join(map(str, c0['grid']))})", backbone]

        def stat(get):
            return pm(_stat([get(c) for c in cells]))
        best_l = '/'.join(sorted({c['best_logit']['average']['detector'] for c in cells}))
        best_f = '/'.join(sorted({c['best_feature']['average']['detector'] for c in cells}))
        rows.append(ident + [f"{stat(lambda c: c['id_accuracy']['vanilla'])} / {stat(lambda c: c['id_accuracy']['ssod'])}",
                             f"{stat(_bg_ood)} / {stat(_bg_id)}",
                             stat(_obj_id) if all(_obj_id(c) is not None for c in cells) else '–',
                             f"{stat(lambda c: c['sampler_alignment']['p_id']['object_cells'])} / "
                             f"{stat(lambda c: c['sampler_alignment']['p_id']['background_cells'])}",
                             stat(lambda c: _avg(c, 'ssod')),
                             f"{stat(lambda c: _avg(c, 'best_logit'))} ({best_l})",
                             f"{stat(lambda c: _avg(c, 'best_feature'))} ({best_f})"])
    seeds = ', '.join(map(str, d['seeds']))
    out = [f"### SSOD in its own regime: background x input scale x backbone (seeds {seeds}; mean ± std)\n\n"
           f"Command: `python benchmarks/regime.py` (one process per shard; the JSON records the first one's command "
           f"line). Per (background, backbone): a vanilla stage 1 from scratch at the native scale "
           f"({d['sizes']['stage1_epochs']} epochs, {d['sizes'].get('stage1_images', d['sizes']['num_images'])} images), "
           f"shared by both scales; per cell and seed a vanilla and an SSOD fine-tune from it "
           f"({d['sizes']['finetune_epochs']} epochs on {d['sizes']['num_images']} images, best validation FPR95 kept), "
           f"tested on "
           f"{d['sizes']['num_test']} ID and {d['sizes']['num_ood']} images per OOD set. FPR95 ↓ in percent, averaged "
           f"over {', '.join(sets)}. Sampler: Eq. 12 on the fine-tuned SSOD model's validation images — the share of "
           f"pure-background cells (no object pixel) labelled OOD / ID, and of object cells (> 50% object) labelled ID; "
           f"the OOD head's mean P(ID) at object cells and at pure-background cells of the same images. "
           f"Best logit baseline: the lowest average FPR95 among {', '.join(d['logit_baselines'])}; best "
           f"feature-space one: among {', '.join(d['feature_baselines'])}; both on the vanilla model.\n",
           md_table(['background', 'scale (render→input, map)', 'backbone', 'ID acc vanilla / SSOD',
                     'bg cells → OOD / ID', 'object cells → ID', "head's P(ID): object / bg cells", 'SSOD avg FPR95',
                     'best logit avg FPR95',
                     'best feature avg FPR95'], rows)]
    per_set = []
    for (bg, scale, backbone), cells in groups.items():
        per_set.append([bg, scale, backbone] + [
            f"{pm(_stat([c['ssod'][s]['fpr95'] for c in cells]))} / "
            f"{pm(_stat([c['best_logit'][s]['fpr95'] for c in cells]))} / "
            f"{pm(_stat([c['best_feature'][s]['fpr95'] for c in cells]))}" for s in sets])
    out.append('\nPer OOD set, FPR95 ↓ of SSOD / the best logit baseline / the best feature-space baseline '
               '(each best picked per set on the test results):\n')
    out.append(md_table(['background', 'scale', 'backbone'] + sets, per_set))
    pooling = [[bg, scale, backbone] + [f"{pm(_stat([c['ssod'][s]['fpr95'] for c in cells]))} / "
                                        f"{pm(_stat([c['ssod_patch_max'][s]['fpr95'] for c in cells]))}"
                                        for s in sets + ['average']]
               for (bg, scale, backbone), cells in groups.items() if all(c.get('ssod_patch_max') for c in cells)]
    if pooling:
        out.append('\nPooled head or best location? FPR95 ↓ of the SSOD score (Eq. 15: the OOD head on the pooled '
                   'feature) / `ssod_patch_max` (the OOD head at every location, the image scored by its most-ID '
                   'location), on the same SSOD model, in the cells that scored both:\n')
        out.append(md_table(['background', 'scale', 'backbone'] + sets + ['average'], pooling))
    effects = factor_effects(d)
    cells = list(d['cells'].values())
    fpr = [_avg(c, 'ssod') for c in cells]
    predictors = [('the share of background cells labelled OOD', [_bg_ood(c) for c in cells]),
                  ("the head's P(ID) gap between object and background cells", [_pid_gap(c) for c in cells]),
                  ("the SSOD model's ID accuracy", [c['id_accuracy']['ssod'] for c in cells])]
    rs = [(name, _pearson(xs, fpr)) for name, xs in predictors]
    rs = [f'{name}: r = {r:+.2f}' for name, r in rs if r is not None]
    out.append('\nMain effects: for each level of each factor, the mean over every cell (all levels of the other '
               'factors, all seeds) of SSOD\'s average FPR95, its gap to the best logit and feature-space baselines '
               '(negative: SSOD better) and the sampler\'s alignment.'
               + (f' Across all {len(cells)} cells, the correlation with SSOD\'s average FPR95 of '
                  + '; of '.join(rs) + '.' if rs else '') + '\n')
    out.append(md_table(['factor', 'level', 'cells', 'SSOD avg FPR95', 'SSOD − best logit', 'SSOD − best feature',
                         'bg cells → OOD', 'object cells → ID'],
                        [[f, lvl, n, pct(a), pct(b), pct(c), pct(e), pct(o)] for f, lvl, n, a, b, c, e, o in effects]))
    scratch = d.get('from_scratch') or {}
    runs = {}
    for key, e in scratch.items():
        runs.setdefault(key.rsplit('/', 1)[0], {})[e['kind']] = e
    for key, pair in runs.items():
        if set(pair) != {'ssod', 'vanilla'}:
            continue
        s_, v_ = pair['ssod'], pair['vanilla']
        table = [['ssod (SSOD model)', pct(s_['id_accuracy'])] + [pct(s_['rows']['ssod'][x]['fpr95']) for x in sets + ['average']]]
        for det in ('ssod_msp', 'ssod_patch_max'):
            if det in s_['rows']:
                table.append([f'{det} (SSOD model)', pct(s_['id_accuracy'])]
                             + [pct(s_['rows'][det][x]['fpr95']) for x in sets + ['average']])
        for label, best in (('best logit', v_['best_logit']), ('best feature', v_['best_feature'])):
            table.append([f"{label}: {best['average']['detector']} (vanilla model)", pct(v_['id_accuracy'])]
                         + [pct(v_['rows'][best['average']['detector']][x]['fpr95']) for x in sets + ['average']])
        a = s_.get('sampler_alignment', {}).get('background_cells', {})
        out.append(f"\n#### The paper's Table-2 protocol in the best cell ({key}): SSOD from scratch for the whole run "
                   f"({s_['epochs']} epochs, the OOD term ramped in over the first {max(1, s_['epochs'] // 4)}) vs vanilla "
                   f"from scratch, the same budget; pure-background cells labelled OOD {pct(a.get('labelled_ood'), 0)}%"
                   f" / ID {pct(a.get('labelled_id'), 0)}%\n\n"
                   + md_table(['detector', 'ID acc'] + [f'{x} FPR95' for x in sets] + ['average FPR95'], table))
    return '\n'.join(out)


def probe_tables(d):
    """The regime probe (``regime_probe.json``): per configuration, the head's mean per-location
    P(ID) on ID object / background cells and on each OOD set's cells, and the AUROC of the three
    aggregations of the locations."""
    cells = list(d['cells'].values())
    sets = d['ood_sets']
    aggs = list(next(iter(cells[0]['probe']['ood'].values()))['auroc'])
    rows = []
    for c in cells:
        p = c['probe']
        ident = [c['background'], f"{c['scale']} ({'x'.join(map(str, c['grid']))})", c['backbone'], c['seed'],
                 pct(c['id_accuracy']['ssod'])]
        rows.append(ident + [f"{pct(p['id']['p_id_object_cells'], 0)} / {pct(p['id']['p_id_background_cells'], 0)}"]
                    + [f"{pct(p['ood'][s]['p_id_all_cells'], 0)}: "
                       + ' / '.join(pct(p['ood'][s]['auroc'][a], 0) for a in aggs) for s in sets])
    return (f"### Probe of the OOD head, location by location\n\n"
            f"Command: `{d.get('command', '').strip()}` (then `python benchmarks/make_tables.py --docs`). "
            f"Each configuration's SSOD fine-tune of the study repeated with the same stage 1, sizes and seed, then "
            f"`lib.location_probe` on {cells[0]['probe']['num_images']} ID test images and as many per "
            f"OOD set. In percent: the head's mean per-location P(ID) on ID object cells / ID pure-background cells; "
            f"per OOD set, the mean per-location P(ID) over all its cells, then the AUROC ↑ (ID vs the set; 50 = "
            f"chance, below 50 = the set looks *more* ID) of {' / '.join(aggs)}.\n\n"
            + md_table(['background', 'scale (map)', 'backbone', 'seed', 'ID acc', 'P(ID) ID object / bg cells']
                       + [f'{s}: P(ID) of cells: AUROC pooled / mean / max' for s in sets], rows))


def regime_figure(d, path):
    """SSOD's average FPR95 against the sampler's alignment and against the OOD head's separation of
    object from background cells, one point per cell, and SSOD vs the best baselines per
    configuration (docs/figures/regime.png)."""
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt
    fig, axes = plt.subplots(1, 3, figsize=(16, 4.4))
    colours = {'smooth': 'tab:orange', 'natural': 'tab:green'}
    markers = {'resnet10t': 'o', 'mobilenetv3_small_100': 's'}
    panels = ((axes[0], _bg_ood, 'pure-background cells labelled OOD by Eq. 12 (%)', 'Does the sampler find the background?'),
              (axes[1], _pid_gap, "head's P(ID), object cells − background cells (points)",
               'Does the OOD head separate them?'))
    for c in d['cells'].values():
        filled = c['scale'] == 'paper'
        kw = dict(marker=markers.get(c['backbone'], '^'), s=55, edgecolors=colours[c['background']],
                  facecolors=colours[c['background']] if filled else 'none', linewidths=1.6)
        for ax, get, _, _ in panels:
            if get(c) is not None:
                ax.scatter(100 * get(c), 100 * _avg(c, 'ssod'), **kw)
    cells = list(d['cells'].values())
    for ax, get, xlabel, title in panels:
        r = _pearson([get(c) for c in cells], [_avg(c, 'ssod') for c in cells])
        ax.set_xlabel(xlabel)
        ax.set_ylabel('SSOD average FPR95 (%) ↓')
        ax.set_title(title + ('' if r is None else f' (r = {r:+.2f})'), fontsize=10)
    handles = [plt.Line2D([], [], color=v, marker='o', ls='', label=k) for k, v in colours.items()]
    handles += [plt.Line2D([], [], color='grey', marker=m, ls='', mfc='none', label=k) for k, m in markers.items()]
    handles += [plt.Line2D([], [], color='grey', marker='o', ls='', label='paper scale (filled)'),
                plt.Line2D([], [], color='grey', marker='o', ls='', mfc='none', label='native scale (hollow)')]
    axes[0].legend(handles=handles, fontsize=7, loc='best')
    groups = regime_groups(d)
    labels, series = [], {'SSOD': [], 'best logit': [], 'best feature': []}
    for (bg, scale, backbone), cells in groups.items():
        labels.append(f"{bg}\n{scale}\n{backbone.split('_')[0]}")
        for name, row in (('SSOD', 'ssod'), ('best logit', 'best_logit'), ('best feature', 'best_feature')):
            series[name].append(100 * _mean([_avg(c, row) for c in cells]))
    width = 0.27
    for i, (name, vals) in enumerate(series.items()):
        axes[2].bar([x + (i - 1) * width for x in range(len(labels))], vals, width, label=name)
    axes[2].set_xticks(range(len(labels)))
    axes[2].set_xticklabels(labels, fontsize=6)
    axes[2].set_ylabel('average FPR95 (%) ↓, mean over seeds')
    axes[2].set_title('SSOD vs the best post-hoc baselines', fontsize=10)
    axes[2].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


# -- the demo (benchmarks/demo.json: the protocol.json of `timm-ssod demo`) -----------------------

LOGIT_BASELINES = ('msp', 'maxlogit', 'energy', 'odin', 'klm', 'gen')
FEATURE_BASELINES = ('mahalanobis', 'rmds', 'knn', 'react', 'vim', 'fdbd', 'scale', 'ash_s', 'ash_b', 'nnguide',
                     'she', 'dice')


def _best_row(fpr95, model, names):
    """The label ``'<name> (<model> model)'`` with the lowest value in ``fpr95`` ({label: number})
    among ``names``, or None."""
    labels = [f'{n} ({model} model)' for n in names if f'{n} ({model} model)' in fpr95]
    return min(labels, key=lambda r: fpr95[r]) if labels else None


def demo_tables(d):
    """The demo's full table (the protocol's own ``table_md``) under a line saying what ran."""
    c, sec = d.get('config', {}), d.get('seconds', {})
    render = c.get('render_size') or c.get('img_size')
    if c.get('pretrained_path'):
        stage1 = f"from `{c['pretrained_path']}` (the shipped stand-in for pretrained weights, no stage 1), "
    elif c.get('stage1_checkpoint') is None and c.get('stage1_epochs'):
        stage1 = (f"stage 1 {c['stage1_epochs']} epochs on {c.get('num_images')} images at "
                  f"{c.get('stage1_img_size') or render} px, ")
    else:
        stage1 = ''
    timing = ', '.join(f'{k} {v:.0f} s' for k, v in sec.items() if k != 'total')
    return (f"### The demo's table (`benchmarks/demo.json`)\n\n"
            f"Command: `timm-ssod demo` (it writes `output/demo/protocol.json`, copied to `benchmarks/demo.json`). "
            f"{c.get('backbone')} {c.get('model_kwargs') or ''}, {render}-px images on {c.get('background', 'smooth')} "
            f"backgrounds resized to {c.get('img_size')} px; {stage1}fine-tunes {c.get('finetune_epochs')} epochs, "
            f"seed {c.get('seed')}; detectors fitted on {c.get('num_fit')} ID training images, tested on "
            f"{c.get('num_test')} ID test images and {c.get('num_ood')} per OOD set. Protocol "
            f"{sec.get('total', 0):.0f} s ({timing}).\n\n" + d['table_md'].strip()
            + ('\n\n' + FUSION_NOTE if 'ssod_fused (SSOD model)' in d['table_md'] else ''))


def demo_glance(d):
    """The README's short form of the demo's table: SSOD's scores and the best baselines."""
    t, sets = d['table'], list(d['config']['ood_sets'])
    avg = t['average']
    fpr = {r: v['fpr95'] for r, v in avg.items()}
    rows = [r for r in ('ssod (SSOD model)', 'ssod_fused (SSOD model)', _best_row(fpr, 'vanilla', LOGIT_BASELINES),
                        _best_row(fpr, 'vanilla', FEATURE_BASELINES)) if r in avg]
    acc = t['id_accuracy']
    table = md_table(['score (model)'] + [f'{s} FPR95 ↓' for s in sets] + ['average FPR95 ↓', 'average AUROC ↑'],
                     [[f'`{r.split(" ")[0]}` {r.split(" ", 1)[1]}'] + [pct(t['results'][r][s]['fpr95']) for s in sets]
                      + [pct(avg[r]['fpr95']), pct(avg[r]['auroc'])] for r in rows])
    return (f"ID accuracy on {t['num_id']} test images: SSOD fine-tune {pct(acc['ssod'])}%, vanilla fine-tune "
            f"{pct(acc['vanilla'])}%. SSOD's two scores, and the best logit and feature-space baselines of the vanilla "
            f"model (lowest average FPR95, picked on these test results), in percent:\n\n" + table
            + ('\n\n' + FUSION_NOTE if 'ssod_fused (SSOD model)' in rows else ''))


FUSION_NOTE = ("Which fusion each row is: `ssod_fused` here is the detector's own default, the fixed fusion (Fisher "
               "over ssod, mahalanobis, energy), fitted by the protocol; it is not the decision `calibrate` deploys "
               "(components chosen from ID-only evidence). `timm-ssod eval` on a calibrated model adds that decision "
               "as its own row, `<detector> (deployed)`.")


# -- calibrated decisions: docs/measurements/ssod_fused*.json (examples/measure_ssod_fused.py) ----

def _stat1(values):
    """{mean, std (n - 1), n}, as ``examples/measure_ssod_fused.py --summary`` prints them."""
    n = len(values)
    mean = sum(values) / n
    return {'mean': mean, 'std': (sum((v - mean) ** 2 for v in values) / (n - 1)) ** 0.5 if n > 1 else 0.0, 'n': n}


FUSED_DEFAULT = 'fused[ssod+mahalanobis+energy]/fisher'


def _fused_label(name):
    if not name.startswith('fused['):
        return f'`{name}`'
    comps, rest = name[len('fused['):].split(']/', 1)
    method = rest.split('/')[0].capitalize()
    control = ' (control: no SSOD)' if 'ssod' not in comps.split('+') else ''
    default = ', **the default**' if name == FUSED_DEFAULT else ''
    return f"fused {comps.replace('+', ' + ')}, {method}{default}{control}"


def fused_measurement_tables(d, alpha='0.05'):
    """Single detectors and ``ssod_fused`` variants (with the p-value tail; Fisher and Stouffer per
    component set): FPR95 per OOD set, averages, OOD caught and ID test images rejected at alpha,
    mean ± std over the data seeds; then the check of every ID rejection rate."""
    runs = list(d['results'].values())
    first = runs[0]
    sets = list(first['n_ood'])
    names = [n for n in first['detectors'] if not n.endswith('/notail')]

    def ms(get):
        return pm(_stat1([get(r['detectors'][n]) for r in runs]))
    rows = []
    for n in names:
        rows.append([_fused_label(n)] + [ms(lambda x: x['ood'][s]['fpr95']) for s in sets]
                    + [ms(lambda x: x['average']['fpr95']), ms(lambda x: x['average']['auroc']),
                       ms(lambda x: x['average']['caught'][alpha]),
                       ', '.join(pct(r['detectors'][n]['id_rejection'][alpha]['rate']) for r in runs)])
    checks = [c for r in runs for x in r['detectors'].values() for c in x['id_rejection'].values()]
    zs = [c['z'] for c in checks]
    zm = sum(zs) / len(zs)
    seeds = ', '.join(map(str, d.get('seeds', list(d['results']))))
    return (f"Command: `{d.get('command', '').strip()}`. Checkpoint `{d.get('checkpoint')}`"
            + (f" ({d['render_size']}-px images on {d['background']} backgrounds resized to {d['img_size']} px)"
               if d.get('img_size') else '')
            + f"; data seeds {seeds}: detectors fitted on {first['n_fit']} ID training images, calibrated on "
            f"{first['n_calibration']} ID validation images, tested on {first['n_test']} ID test images and "
            f"{first['n_ood'][sets[0]]} images per OOD set. In percent, mean ± std over the seeds; caught = share of "
            f"the OOD images with p ≤ {alpha}; the fused scores use the p-value tail.\n\n"
            + md_table(['score'] + [f'{s} FPR95 ↓' for s in sets]
                       + ['average FPR95 ↓', 'average AUROC ↑', f'OOD caught at α = {alpha} ↑',
                          f'ID test images rejected at α = {alpha} (per seed)'], rows)
            + f"\n\nEvery (score, α, seed) ID rejection rate against its conformal expectation: "
            f"{sum(c['within'] for c in checks)} of {len(checks)} within expectation + 3 std; z-scores mean "
            f"{zm:.2f}, std {(sum((z - zm) ** 2 for z in zs) / len(zs)) ** 0.5:.2f}.")


# -- the README's results at a glance --------------------------------------------------------------

def _fpr(x):
    return pct(x['mean'] if isinstance(x, dict) else x)


def _help_row(label, cells, logit_key, feature_key, fused):
    """A row of ``glance_help`` from study cells (regime's or converged's): means over the seeds of ID
    accuracy, SSOD's score, the best logit and feature-space baselines (``*_key``: the cell's entry
    of the test-chosen best) and ``fused(cell)`` (None: not measured)."""
    def best(key):
        names = '/'.join(sorted({c[key]['average']['detector'] for c in cells}))
        return f"{pct(_mean([c[key]['average']['fpr95'] for c in cells]))} ({names})"
    return [label, f"{pct(_mean([c['id_accuracy']['vanilla'] for c in cells]))} / "
                   f"{pct(_mean([c['id_accuracy']['ssod'] for c in cells]))}",
            pct(_mean([_avg(c, 'ssod') for c in cells])), best(logit_key), best(feature_key),
            pct(_mean([fused(c) for c in cells])) if fused else '–', len(cells)]


def _quality_help_rows(quality):
    """``glance_help``'s rows of a quality run (from scratch, or from the stand-ins)."""
    rows = []
    start = ', from the converged stand-in (quality run)' if quality.get('start') == 'standins' else ''
    for name, b in quality['backbones'].items():
        sm = b.get('summary')
        if not sm:
            continue
        avg = {label: r['average']['fpr95'] for label, r in sm['rows'].items()}
        grid = next((r['sampler_alignment']['grid'] for r in b['runs'] if r.get('sampler_alignment')), None)
        means = {label: v['mean'] for label, v in avg.items()}
        best_l = _best_row(means, 'vanilla', LOGIT_BASELINES)
        best_f = _best_row(means, 'vanilla', FEATURE_BASELINES)
        rows.append([f"{name}, {'x'.join(map(str, grid)) if grid else '?'} map, {quality.get('background', 'smooth')}"
                     f"{start}",
                     f"{_fpr(sm['id_accuracy']['vanilla'])} / {_fpr(sm['id_accuracy']['ssod'])}",
                     _fpr(avg['ssod (SSOD model)']), f"{_fpr(avg[best_l])} ({best_l.split(' ')[0]})",
                     f"{_fpr(avg[best_f])} ({best_f.split(' ')[0]})",
                     _fpr(avg[FUSED_ROW]) if FUSED_ROW in avg else '–', len(b['runs'])])
    return rows


def glance_help(quality, regime, converged=None, quality_converged=None):
    """Does SSOD help? SSOD's score against the best logit and feature-space baselines (vanilla model)
    and ``ssod_fused``: each quality backbone, the regime study's best configuration for SSOD, the
    decisive cell's configurations and the quality run from the stand-ins (fine-tunes of the
    converged stand-ins)."""
    rows = _quality_help_rows(quality)
    if regime:
        groups = regime_groups(regime)
        (bg, scale, backbone), cells = min(groups.items(), key=lambda kv: _mean([_avg(c, 'ssod') for c in kv[1]]))
        rows.append(_help_row(f"{backbone}, {'x'.join(map(str, cells[0]['grid']))} map, {bg} (the study's best case "
                              "for SSOD)", cells, 'best_logit', 'best_feature', fused=None))
    groups = {}
    for c in (converged or {}).get('cells', {}).values():
        groups.setdefault((c['background'], c['backbone']), []).append(c)
    for (bg, backbone), cells in sorted(groups.items()):
        rows.append(_help_row(f"{backbone}, {'x'.join(map(str, cells[0]['grid']))} map, {bg}, from the converged "
                              "stand-in", cells, 'best_logit_oracle', 'best_feature_oracle',
                              fused=lambda c: c['ssod_model']['ssod_fused']['average']['fpr95']))
    if quality_converged:
        rows += _quality_help_rows(quality_converged)
    return ('Average FPR95 ↓ in percent over the four built-in OOD sets (backgrounds, novel objects, noise, textures), '
            'mean over seeds; the baselines are the best of their family on the vanilla model, picked on the test '
            'results (a choice that favours them).\n\n'
            + md_table(['backbone, feature map, backgrounds', 'ID accuracy vanilla / SSOD', "SSOD's score",
                        'best logit baseline', 'best feature-space baseline', '`ssod_fused`', 'seeds'], rows))


def glance_cost(d):
    """What does SSOD cost? The ranges of the time and memory ratios over the measured backbones."""
    env, s, models = d.get('environment', {}), d.get('settings', {}), d['models']
    where = env.get('gpu') or f"CPU, {env.get('threads', '?')} threads"

    def span(key):
        vals = [m[key] for m in models.values()]
        return f'{min(vals):.3f} – {max(vals):.3f}'
    return (md_table(['measured on', 'backbones', 'training step time ×', 'training memory ×', 'inference time ×'],
                     [[f"{where}, batch {s.get('batch_size')}, {s.get('img_size')} px", f"{len(models)}: "
                       + ', '.join(models), span('train_time_ratio'), span('train_mem_ratio'),
                       span('inference_time_ratio')]])
            + f"\n\nCommand: `{d.get('command', '').strip()}`; SSOD model ÷ the plain timm model, same weights and "
            f"batch (median over repetitions).")


def _evidence_label(label, record):
    """A model of ``benchmarks/evidence.json`` as the glance table names it."""
    b = record['benchmark']
    return f"`{label}` ({b['img_size']} px, {b.get('background', '?')})"


def glance_deploy(quality, fused, evidence=None):
    """Which score should I deploy? With ``benchmarks/evidence.json``: the default decision (``ssod_fused``,
    ``select='evidence'``) against the earlier default (Fisher-3) and the oracle on every model measured,
    with its ID rejection at alpha = 5%. Without it: ``ssod_fused`` (Fisher-3) against the best single
    detector on the quality run and the earlier demo."""
    if evidence:
        from timm_ssod.detectors.evidence import rule_key  # imported on use: it loads torch
        from timm_ssod.detectors.ssod_fused import EVIDENCE_RULE
        key = rule_key(EVIDENCE_RULE)
        groups = {}
        for label, r in evidence['models'].items():  # seeds of one configuration: <config>_s<seed>
            groups.setdefault(re.sub(r'_s\d+$', '', label), []).append((label, r))
        rows = []
        for config, members in groups.items():
            first = members[0][1]
            rules = [r['rules'][key] for _, r in members]
            held = sum(label not in evidence['summary']['design'] for label, _ in members)
            rows.append([f"{_evidence_label(config, first)}, {len(members)} seed(s), {held} held out",
                         pct(_mean([rule['average']['fpr95'] for rule in rules])),
                         pct(_mean([r['fisher3']['average']['fpr95'] for _, r in members])),
                         f"{pct(_mean([r['oracle']['fpr95'] for _, r in members]))} "
                         f"({'/'.join(sorted({r['oracle']['detector'] for _, r in members}))})",
                         ', '.join(pct(rule['id_rejection'].get('0.05')) for rule in rules)])
        return (f"Average FPR95 ↓ in percent over the four OOD sets, mean over seeds: the default decision "
                f"(`ssod_fused`, components chosen from ID-only evidence by the rule `{key}`), the earlier default "
                f"(Fisher over ssod, mahalanobis, energy) and the best of {len(first['components'])} single "
                f"detectors picked on the test results (the oracle); then the share of ID test images the calibrated "
                f"default rejects at α = 5% (per seed; the guarantee: 5% in expectation). From "
                f"`benchmarks/evidence.json`; per model: [study/evidence.md](study/evidence.md).\n\n"
                + md_table(['SSOD model', 'default decision', 'earlier default', 'oracle',
                            'ID test images rejected at α = 5%'], rows))
    rows = []
    for name, b in quality['backbones'].items():
        srows = b.get('summary', {}).get('rows', {})
        if FUSED_ROW not in srows:
            continue
        avg = {label: r['average']['fpr95'] for label, r in srows.items()}
        best = min((r for r in avg if r not in COMBINED_ROWS), key=lambda r: avg[r]['mean'])
        dec = [r['decisions']['detectors']['ssod_fused']['id_rejection']['0.05']['rate']
               for r in b['runs'] if r.get('decisions')]
        grid = next((r['sampler_alignment']['grid'] for r in b['runs'] if r.get('sampler_alignment')), None)
        rows.append([f"{name}, {'x'.join(map(str, grid)) if grid else '?'} map, {quality.get('background', 'smooth')}",
                     _fpr(avg[FUSED_ROW]), f"{_fpr(avg[best])} ({best.replace(' (', ', ').rstrip(')')})",
                     ', '.join(pct(r) for r in dec) if dec else '–'])
    if fused:
        runs = list(fused['results'].values())
        singles = [n for n in runs[0]['detectors'] if not n.startswith('fused[')]
        mean = {n: _mean([r['detectors'][n]['average']['fpr95'] for r in runs]) for n in runs[0]['detectors']}
        best = min(singles, key=lambda n: mean[n])
        size = fused.get('img_size')
        rows.append([f"the earlier demo's resnet10t (stage 1 from scratch), {size} px (7x7 map), {fused.get('background')}",
                     pct(mean[FUSED_DEFAULT]), f'{pct(mean[best])} ({best})',
                     ', '.join(pct(r['detectors'][FUSED_DEFAULT]['id_rejection']['0.05']['rate']) for r in runs)])
    return ('Average FPR95 ↓ in percent of `ssod_fused` (SSOD + Mahalanobis + Energy through their ID p-values, '
            'Fisher; the default of `calibrate`) and of the best single detector (either model, picked on the test '
            'results); then the share of ID test images the calibrated `ssod_fused` decision rejects at α = 5% '
            '(per seed; the guarantee: 5% in expectation).\n\n'
            + md_table(['backbone, feature map, backgrounds', '`ssod_fused`', 'best single detector',
                        'ID test images rejected at α = 5%'], rows))


# -- sources, sections, pages ------------------------------------------------------------------------

# -- the stand-ins for pretrained weights (weights/<backbone>.json: benchmarks/standin.py) -----------

def standin_tables(*infos):
    """What each shipped stand-in is (its JSON) and its learning curve (validation top-1 per epoch)."""
    infos = [i for i in infos if i]
    rows = []
    for i in infos:
        kwargs = ', '.join(f'{k}={v}' for k, v in (i.get('model_kwargs') or {}).items())
        hours = (i.get('wall_seconds') or 0) / 3600
        rows.append([f"`{i['model']}`" + (f' ({kwargs})' if kwargs else ''),
                     f"{i['render_size']} → {i['input_size']} px, {i['background']}",
                     f"{i['images']} / {i['val_images']}", f"{i['epochs_done']} ({i['best_epoch'] + 1})",
                     f"{hours:.1f} h on {i.get('torch_threads') or '?'} thread(s)", pct(i['id_test_accuracy'], 2),
                     f"{i['bytes'] / 1e6:.1f} MB", f"`{i['sha256'][:12]}…`"])
    table = md_table(['backbone', 'images (rendered → input)', 'train / val images', 'epochs (best)',
                      'wall time', f"ID test accuracy ({infos[0]['num_test']} images)", 'fp16 file', 'sha256'], rows)
    def point(curve, epoch):
        return f"{curve[epoch]['eval_top1']:.1f} / {curve[epoch]['train_loss']:.3f}" if epoch < len(curve) else ''
    epochs = max(len(i['learning_curve']) for i in infos)
    curve = md_table(['epoch'] + [f"`{i['model']}` val top-1 / train loss" for i in infos],
                     [[e + 1] + [point(i['learning_curve'], e) for i in infos] for e in range(epochs)])
    commands = '; '.join(f"`{i['command']}`" for i in infos)
    return (f"Trained once each by `python benchmarks/standin.py {' '.join(i['model'] for i in infos)}` "
            f"(one process per core), which ran {commands} and exported the best-validation checkpoint with "
            f"`export_standin` (JSON beside each file in `weights/`). In all {sum(i['bytes'] for i in infos) / 1e6:.1f} MB.\n\n"
            + table + f"\n\nLearning curve (validation split, {infos[0]['val_images']} images):\n\n" + curve)


def converged_tables(d):
    """``benchmarks/converged.py``'s tables (its ``table``; imported on use: it loads torch and timm)."""
    import importlib.util
    spec = importlib.util.spec_from_file_location('bench_converged', os.path.join(HERE, 'converged.py'))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.table(d)


def _rejection_text(rule):
    """'0.5/4.8/9.7 ✓': the % of ID test images a calibrated rule rejects at each alpha, ✓ when every
    one is within expectation + 3 std."""
    rates = '/'.join(pct(v) for v in (rule.get('id_rejection') or {}).values()) or '–'
    return f"{rates} {'✓' if rule.get('id_rejection_within') else '✗'}"


def _evidence_role(label, s):
    """'(design)' / '(trained after)' / '': a model's part in ``benchmarks/evidence.json``."""
    return (' (design)' if label in s['design'] else
            ' (trained after)' if label in (s.get('trained_after') or ()) else '')


def evidence_tables(d):
    """``benchmarks/evidence.py``: per model, the oracle, the earlier Fisher-3, the deployed rule
    (``EVIDENCE_RULE``) and, where it differs, the rule chosen on the design models; then Spearman of
    pseudo-AUROC against real AUROC per source and OOD set."""
    from timm_ssod.detectors.evidence import rule_key  # imported on use: it loads torch
    from timm_ssod.detectors.ssod_fused import EVIDENCE_RULE
    s, models = d['summary'], d['models']
    deployed, chosen = rule_key(EVIDENCE_RULE), s['chosen_rule']
    first = next(iter(models.values()))
    alphas = list(first['rules'][deployed]['id_rejection'])
    other = chosen != deployed
    out = [f"Command: `{d['command']}`" + (f"; then `{d['summary_command']}`" if d.get('summary_command') else '')
           + f". Per model: the oracle (the best of {len(first['components'])} single-pass detectors *picked on the "
           f"test sets*), the earlier default (`ssod_fused` with `select='all'`: Fisher over ssod, mahalanobis, "
           f"energy) and the default decision's rule (`{deployed}`, `EVIDENCE_RULE`)"
           + (f", then the rule the design models choose (`{chosen}`: the smallest largest FPR95 gap to the oracle "
              f"on them)" if other else f", which is also the rule the design models choose (the smallest largest "
              f"FPR95 gap to the oracle on them)")
           + f". Mean FPR95 ↓ in % over the OOD sets; the components each rule kept; the % of ID test images rejected "
           f"at alpha {', '.join(alphas)} once calibrated on ID validation images (✓: within expectation + 3 std).\n"]
    def points(x):  # a difference in points, never '-0.0'
        return f"{round(100 * x, 1) + 0.0:+.1f}"
    # the design models, then those trained after the registered rule, then the other held-out ones
    order = sorted(models, key=lambda k: (k not in s['design'], k not in (s.get('trained_after') or ())))
    rows = []
    for label in order:
        r = models[label]
        rule = r['rules'][deployed]
        oracle = r['oracle']['fpr95']
        rows.append([label + _evidence_role(label, s),
                     f"{r['oracle']['detector']} {pct(oracle)}", pct(r['fisher3']['average']['fpr95']),
                     f"{pct(rule['average']['fpr95'])} ({', '.join(rule['kept'])})",
                     points(rule['average']['fpr95'] - oracle),
                     points(rule['average']['fpr95'] - r['fisher3']['average']['fpr95']),
                     _rejection_text(rule)]
                    + ([f"{pct(r['rules'][chosen]['average']['fpr95'])} ({', '.join(r['rules'][chosen]['kept'])})"]
                       if other else []))
    out.append(md_table(['Model', 'oracle', 'Fisher-3', 'default rule (kept)', 'rule − oracle', 'rule − Fisher-3',
                         'rule: ID rejected % at alpha'] + (['design choice (kept)'] if other else []), rows))
    sets = list(next(iter(next(iter(s['correlations'].values())).values())))
    corr = s['correlations']['all']
    out.append(f"\nSpearman rank correlation between a pool component's pseudo-AUROC on a source (ID data only) and "
               f"its real AUROC on each OOD set, pooled over every (model, component) pair of all {len(models)} models "
               f"({corr[next(iter(corr))]['average']['pairs']} pairs); last column: the mean of the per-model "
               f"correlations (5 components each) against the mean real AUROC.\n")
    out.append(md_table(['source'] + sets + ['within a model, average'],
                        [[src] + ['–' if v[t]['pooled'] is None else f"{v[t]['pooled']:+.2f}" for t in sets]
                         + ['–' if v['average']['within_model_mean'] is None else
                            f"{v['average']['within_model_mean']:+.2f}"] for src, v in corr.items()]))
    return '\n'.join(out)


def adoption_tables(d):
    """``benchmarks/evidence.json``'s adoption criterion (``--trained-after``): the design choice and the
    registered rule, their largest FPR95 gap to the oracle per group of models, and the rule adopted."""
    a = d['summary'].get('adoption')
    if not a:
        return 'No models trained after the registered rule in `benchmarks/evidence.json` (`--trained-after`).'
    names = {'judged': 'judged (design + trained after)', 'design': 'design', 'trained_after': 'trained after',
             'other_held_out': 'other held out (decide nothing)'}
    def cell(g):
        return '–' if g is None else (f"{100 * g['max_gap']:+.1f} ({g['within_2']}/{g['models']}; "
                                      f"{g['worse_than_fisher3']})" + ('' if g['id_rejection_within'] else ' ✗'))
    groups = list(next(iter(a['rules'].values())))
    bar = '\\|'  # a rule key's | would split the table cell: GitHub renders \| as |, also inside code
    rows = [[f"`{key.replace('|', bar)}`"] + [cell(by[g]) for g in groups] for key, by in a['rules'].items()]
    return (f"From `benchmarks/evidence.json` (`--trained-after {' '.join(a['trained_after'])}`). Per rule and "
            f"group of models: the largest FPR95 gap to the oracle in points (how many models within 2 points of "
            f"it / how many; then how many worse than Fisher-3); ✗ where its ID rejection leaves expectation + 3 std "
            f"on one of them. The registered rule is adopted if its largest gap over the judged models is smaller by "
            f"more than {100 * a['margin']:.1f} point.\n\n"
            + md_table(['rule'] + [f"{names.get(g, g)}" for g in groups], rows)
            + f"\n\nAdopted by the criterion: `{a['adopted']}`."
            + ('' if not a.get('hindsight') else
               f" The grid's ceiling, the rule picked on every model's test results (no choice uses it): "
               f"`{a['hindsight']['rule']}`, largest gap {100 * a['hindsight']['all']['max_gap']:+.1f} points, within "
               f"2 points of the oracle on {a['hindsight']['all']['within_2']} of {a['hindsight']['all']['models']} "
               f"models."))


def evidence_images_tables(d):
    """``benchmarks/evidence.py --images-sensitivity``: the deployed rule with the pseudo-OOD made from
    fewer fit images, per model, and the rule each size's design models choose."""
    sizes = list(d['files'])
    out = [f"Command: `{d['command']}`. The deployed rule `{d['rule']}` with the pseudo-OOD made from "
           f"{', '.join(sizes)} of the 2000 fit images (everything else the same); mean FPR95 ↓ in % over the OOD "
           f"sets, the components kept, ✗ where its ID rejection leaves expectation + 3 std.\n"]
    rows = []
    for label, r in d['models'].items():
        oracle = r['oracle']['fpr95']
        rows.append([label + (' (design)' if label in d['design'] else ''), f"{r['oracle']['detector']} {pct(oracle)}"]
                    + ['–' if n not in r['by_images'] else
                       f"{pct(r['by_images'][n]['fpr95'])} ({', '.join(r['by_images'][n]['kept'])})"
                       + ('' if r['by_images'][n]['id_rejection_within'] else ' ✗') for n in sizes])
    out.append(md_table(['Model', 'oracle'] + [f'{n} images' for n in sizes], rows))
    out.append('\nThe rule the design models choose: ' + '; '.join(
        f"{n} images: `{k}`" for n, k in d['chosen_on_design'].items()) + '.')
    if d.get('left_out'):
        out.append(f"Not measured at every size, so left out: {', '.join(d['left_out'])}.")
    return '\n'.join(out)


def evidence_cost_tables(d):
    """``benchmarks/evidence.py --cost-only``: the fit of the default decision against Fisher-3's, and a
    prediction against a plain forward, per checkpoint."""
    out = [f"Command: `{d['command']}` ({d['sizes']['num_fit']} fit images, the pseudo-OOD from "
           f"{d['sizes']['evidence_images'] or 'the default budget of'} of them; {d['environment']['threads']} threads)."
           f"\n"]
    rows = []
    for label, r in d['models'].items():
        f, p = r['fit_seconds'], r['predict_ratio']
        rows.append([f"{label} ({r['benchmark']['img_size']} px)",
                     f"{f['ratio']:.2f}× ({f['evidence']:.1f} s / {f['fisher3']:.1f} s)",
                     f"{p['evidence']:.3f}× (Fisher-3: {p['fisher3']:.3f}×)", ', '.join(r['option_kept'])])
    out.append(md_table(['checkpoint', "fit: `select='evidence'` / Fisher-3", 'prediction / a plain forward',
                         'kept'], rows))
    return '\n'.join(out)


def calibrate_cost_tables(d):
    """``benchmarks/calibrate_cost.py``: the whole ``timm-ssod calibrate`` command per decision."""
    variants = list(d['variants'])
    env = d['environment']
    out = [f"Command: `{d['command']}` ({d['fit_samples']} fit and {d['calib_samples']} calibration images, "
           f"`{d['data']}`; {env['cpu_count']} cores). "
           f"Wall time of the whole command, median of {len(d['variants'][variants[0]]['seconds'])} run(s).\n"]
    rows = [[f"`{v}`" if v else '(the defaults)', f"{r['median_seconds']:.0f} s", f"{r['ratio']:.2f}×"]
            for v, r in d['variants'].items()]
    out.append(md_table(['flags', 'wall time', f"/ `{variants[0]}`"], rows))
    return '\n'.join(out)


def onnx_latency_tables(d):
    """``benchmarks/onnx_latency.py``: the exported decision's latency in ONNX Runtime against the plain model's."""
    s, env = d['settings'], d['environment']
    names = {'plain': 'plain timm model (logits, class_probs)',
             'ssod_default_decision': 'SSOD + default decision',
             'ssod_all_components': 'SSOD + every pool component'}
    out = [f"Command: `{d['command']}` (`{s['model']}`, {s['img_size']} px, {s['num_classes']} classes, CPU, ONNX "
           f"Runtime {env['onnxruntime']}, {env['threads']} thread(s) on a {env['cpu_count']}-core machine; median of "
           f"{s['repeats']} interleaved runs; goal ≤ {d['target_ratio']:.2f}× the plain model). Each cell: the median time, "
           'and in brackets the median of the per-run ratios to the plain model run in the same round (the robust '
           'figure on a loaded machine, where the medians of separate columns drift).\n']
    batches = list(d['results'])
    rows = []
    for name, dec in d['decisions'].items():
        comps = ', '.join(dec['components']) if dec.get('components') else '–'
        cells = [f"{d['results'][b][name]['median_ms']:.1f} ms ({d['results'][b][name]['ratio']:.3f}×)"
                 for b in batches]
        rows.append([names.get(name, name), comps, f"{dec['size_mb']:.1f}", *cells])
    out.append(md_table(['exported model', 'decision components', 'file MB', *[f'batch {b}' for b in batches]], rows))
    return '\n'.join(out)


def mechanism_tables(d):
    """The sampler's mechanism by number of classes M and map size (``benchmarks/mechanism.py``)."""
    sys.path.insert(0, HERE)
    from mechanism import table
    return f"Command: `{d['command']}` (then `python benchmarks/make_tables.py --docs`). In percent.\n\n" + table(d)
def peer_tables(d):
    """``benchmarks/peer.py``: timm_ssod's detectors against pytorch-ood's on the same features."""
    env = d['environment']
    out = [f"Command: `{d['command']}` ({env['threads']} threads, {env['cpu_count']} cores, {env['cpu']}; "
           f"pytorch-ood {env['pytorch_ood']}, torch {env['torch']}). Timed: {d['timed']}. "
           f"Time ratio = ours / pytorch-ood's (below 1: timm_ssod faster); ρ = Spearman correlation of the "
           f"two score vectors. {d['gen_note']}.\n"]
    if not d.get('complete', True):
        out.append('An interrupted run: the settings it finished.\n')
    for r in d['results']:
        what = r.get('note') or (f"synthetic: N_fit {r['n_fit']:,}, D {r['dim']:,}, M {r['classes']}, "
                                 f"{r['queries']:,} queries")
        rows = [[name, f"{x['ours_s']:.3g} s", f"{x['peer_s']:.3g} s", f"{x['ratio']:.2f}×",
                 f"{x['spearman']:.4f}", f"{100 * x['auroc_ours']:.1f} / {100 * x['auroc_peer']:.1f}",
                 f"{x.get('timings', r['repeats'])} × {x.get('calls_per_timing', 1)}"]
                for name, x in r['detectors'].items()]
        out.append(f"**{what}**\n")
        out.append(md_table(['detector', 'timm_ssod', 'pytorch-ood', 'time ×', 'ρ', 'AUROC % (ours / peer)',
                             'timings × calls'], rows) + '\n')
    return '\n'.join(out).rstrip('\n')


SOURCES = {  # flag name -> committed JSON, relative to the repository
    'overhead': 'benchmarks/overhead.json', 'quality': 'benchmarks/quality.json',
    'ablations': 'benchmarks/ablations.json', 'regime': 'benchmarks/regime.json',
    'regime_probe': 'benchmarks/regime_probe.json', 'demo': 'benchmarks/demo.json',
    'converged': 'benchmarks/converged.json', 'quality_converged': 'benchmarks/quality_converged.json',
    'evidence': 'benchmarks/evidence.json', 'evidence_images': 'benchmarks/evidence_images.json',
    'evidence_cost': 'benchmarks/evidence_cost.json', 'calibrate_cost': 'benchmarks/calibrate_cost.json',
    'calibrate_cost_small': 'benchmarks/calibrate_cost_small.json', 'onnx_latency': 'benchmarks/onnx_latency.json',
    'standin_resnet18': 'weights/resnet18.json', 'standin_mobilenetv3_small_075': 'weights/mobilenetv3_small_075.json',
    'fused': 'docs/measurements/ssod_fused.json', 'fused_natural': 'docs/measurements/ssod_fused_natural.json',
    'mechanism': 'benchmarks/mechanism.json',
    'peer': 'benchmarks/peer.json',
}
# block name, the sources it reads (all required but those marked optional), the function of their data
SECTIONS = (
    ('overhead', ('overhead',), overhead_tables),
    ('quality', ('quality',), quality_tables),
    ('quality_converged', ('quality_converged',), quality_tables),
    ('ablations', ('ablations',), ablation_tables),
    ('regime', ('regime',), regime_tables),
    ('regime_probe', ('regime_probe',), probe_tables),
    ('converged', ('converged',), converged_tables),
    ('evidence', ('evidence',), evidence_tables),
    ('evidence_images', ('evidence_images',), evidence_images_tables),
    ('evidence_adoption', ('evidence',), adoption_tables),
    ('evidence_cost', ('evidence_cost',), evidence_cost_tables),
    ('calibrate_cost', ('calibrate_cost',), calibrate_cost_tables),
    ('calibrate_cost_small', ('calibrate_cost_small',), calibrate_cost_tables),
    ('onnx_latency', ('onnx_latency',), onnx_latency_tables),
    ('peer', ('peer',), peer_tables),
    ('standin', ('standin_resnet18', 'standin_mobilenetv3_small_075?'), standin_tables),
    ('demo', ('demo',), demo_tables),
    ('fused', ('fused',), fused_measurement_tables),
    ('fused_natural', ('fused_natural',), fused_measurement_tables),
    ('mechanism', ('mechanism',), mechanism_tables),
    ('glance_demo', ('demo',), demo_glance),
    ('glance_help', ('quality', 'regime?', 'converged?', 'quality_converged?'), glance_help),
    ('glance_cost', ('overhead',), glance_cost),
    ('glance_deploy', ('quality', 'fused_natural?', 'evidence?'), glance_deploy),
)
CLI_PAGE = 'docs/cli.md'


def pages(root=ROOT):
    """The pages that may hold generated blocks: README.md and docs/**/*.md, the study's pages in
    docs/study/ included (relative paths, with '/')."""
    docs = os.path.join(root, 'docs')
    return ['README.md'] + sorted(os.path.relpath(os.path.join(d, n), root).replace(os.sep, '/')
                                  for d, _, names in os.walk(docs) for n in names if n.endswith('.md'))


def block_pattern(name):
    """The block ``NAME``: its opening line, its content (empty, or lines), its closing line."""
    return re.compile(rf'(<!-- make_tables:{name} -->\n)(.*?)(^<!-- /make_tables:{name} -->)', re.S | re.M)


def page_blocks(text):
    """{name: content (without its last newline)} of the generated blocks in a page's text."""
    return {name: m.group(2)[:-1] if m.group(2).endswith('\n') else m.group(2)
            for name, _, _ in SECTIONS for m in [block_pattern(name).search(text)] if m}


def fill_blocks(text, tables):
    """The page text with each generated block's content replaced by ``tables[name]``."""
    for name, table in tables.items():
        text = block_pattern(name).sub(lambda m: m.group(1) + table + '\n' + m.group(3), text)
    return text


def load_sources(paths):
    """{source: data} of the JSON files that exist (``paths``: {source: path})."""
    data = {}
    for name, path in paths.items():
        if os.path.exists(path):
            with open(path) as f:
                data[name] = json.load(f)
        else:
            print(f'skipped {name}: no {path}', file=sys.stderr)
    return data


def build_tables(data):
    """{block name: markdown} of every section whose required sources are in ``data``."""
    tables = {}
    for name, sources, fn in SECTIONS:
        required = [s for s in sources if not s.endswith('?')]
        if all(s in data for s in required):
            tables[name] = fn(*(data.get(s.rstrip('?')) for s in sources))
    return tables


def _write(path, text):
    tmp = path + '.tmp'
    with open(tmp, 'w') as f:
        f.write(text)
    os.replace(tmp, path)


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    for name, path in SOURCES.items():
        p.add_argument(f"--{name.replace('_', '-')}", dest=name, default=os.path.join(ROOT, path), metavar='JSON')
    p.add_argument('--regime-figure', default=None, metavar='PNG',
                   help='also draw the regime study figure (e.g. docs/figures/regime.png; needs matplotlib)')
    p.add_argument('--out', default=os.path.join(HERE, 'tables.md'))
    p.add_argument('--docs', action='store_true',
                   help=f'rewrite the generated blocks of README.md and docs/**/*.md, and {CLI_PAGE}')
    return p.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    data = load_sources({name: getattr(args, name) for name in SOURCES})
    tables = build_tables(data)
    if 'regime' in data and args.regime_figure:
        regime_figure(data['regime'], args.regime_figure)
    text = '<!-- generated by benchmarks/make_tables.py from the benchmark JSON files; do not edit -->\n\n' \
        + '\n\n'.join(t for n, t in tables.items() if not n.startswith('glance_')) + '\n'
    _write(args.out, text)
    if args.docs:
        found = set()
        for page in pages():
            path = os.path.join(ROOT, page)
            with open(path) as f:
                old = f.read()
            found |= set(page_blocks(old))
            new = fill_blocks(old, tables)
            if new != old:
                _write(path, new)
                print(f'rewrote {page}', file=sys.stderr)
        missing = [n for n in tables if n not in found]
        if missing:
            sys.exit(f'no page has a <!-- make_tables:NAME --> block for {", ".join(missing)}')
        from lib.cli_reference import reference_markdown
        _write(os.path.join(ROOT, CLI_PAGE), reference_markdown())
    print(text)
    return text


if __name__ == '__main__':
    main()
