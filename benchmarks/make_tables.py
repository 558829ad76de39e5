"""The README's benchmark tables, generated from the JSON the benchmarks write (numbers are never
typed by hand): ``overhead.json``, ``quality.json``, ``ablations.json`` -> ``tables.md``.

    python benchmarks/make_tables.py               # reads benchmarks/*.json, writes benchmarks/tables.md
    python benchmarks/make_tables.py --quality other.json --out /tmp/tables.md
    python benchmarks/make_tables.py --readme README.md   # also refresh the README's generated blocks

The README holds each table between ``<!-- make_tables:NAME -->`` and ``<!-- /make_tables:NAME -->``
(NAME: overhead, quality, ablations); ``--readme`` rewrites only those blocks, and a test checks
they match the committed JSON.

A missing JSON file is skipped with a note. Metrics are printed in percent.
"""
import argparse
import json
import os
import re
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
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


def quality_tables(d):
    sets = d['ood_sets'] + ['average']
    out = [f"### Detection quality on the built-in benchmark (seeds {', '.join(map(str, d['seeds']))}; mean ± std)\n\n"
           f"Command: `{d.get('command', '').strip()}`. Each backbone: one vanilla stage 1, then per seed a vanilla and an SSOD "
           f"fine-tune with the same budget and seed. FPR95 ↓ / AUROC ↑ in percent on the test splits. "
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
    return (f"### Ablations of SSOD ({p['backbone']} {p.get('model_kwargs') or ''}, {p['img_size']} px, "
            f"seed{'s' if len(runs) > 1 else ''} {seeds}{spread})\n\n"
            f"Command: `{d.get('command', '').strip()}`. SSOD score FPR95 ↓ / AUROC ↑ in percent on the test splits; "
            f"epoch = the fine-tuning epoch kept per seed (best validation FPR95); sampler = share of ID / OOD / "
            f"ignored locations in the last fine-tuning epoch (mean over seeds).\n\n"
            + md_table(['Setting', 'γ', 'λ', 'balance', 'epoch', 'ID acc', 'sampler % ID/OOD/ign.']
                       + [f'{s} FPR95 / AUROC' for s in sets] + ['ssod_msp avg FPR95'], rows))


SECTIONS = (('overhead', overhead_tables), ('quality', quality_tables), ('ablations', ablation_tables))


def block_pattern(name):
    return re.compile(rf'(<!-- make_tables:{name} -->\n)(.*?)(\n<!-- /make_tables:{name} -->)', re.S)


def readme_blocks(text):
    """{name: content} of the generated blocks in a README's text."""
    return {name: m.group(2) for name, _ in SECTIONS for m in [block_pattern(name).search(text)] if m}


def fill_readme(text, tables):
    """The README text with each generated block replaced by ``tables[name]``."""
    for name, table in tables.items():
        text = block_pattern(name).sub(lambda m: m.group(1) + table + m.group(3), text)
    return text


def _write(path, text):
    tmp = path + '.tmp'
    with open(tmp, 'w') as f:
        f.write(text)
    os.replace(tmp, path)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    for name in ('overhead', 'quality', 'ablations'):
        p.add_argument(f'--{name}', default=os.path.join(HERE, f'{name}.json'))
    p.add_argument('--out', default=os.path.join(HERE, 'tables.md'))
    p.add_argument('--readme', default=None, metavar='PATH', help="rewrite the README's generated blocks too")
    args = p.parse_args(argv)
    tables = {}
    for name, fn in SECTIONS:
        path = getattr(args, name)
        if not os.path.exists(path):
            print(f'skipped {name}: no {path}', file=sys.stderr)
            continue
        with open(path) as f:
            tables[name] = fn(json.load(f))
    text = '<!-- generated by benchmarks/make_tables.py from the benchmark JSON files; do not edit -->\n\n' \
        + '\n\n'.join(tables.values()) + '\n'
    _write(args.out, text)
    if args.readme:
        with open(args.readme) as f:
            readme = f.read()
        missing = [n for n in tables if n not in readme_blocks(readme)]
        if missing:
            sys.exit(f'{args.readme} has no <!-- make_tables:NAME --> block for {", ".join(missing)}')
        _write(args.readme, fill_readme(readme, tables))
    print(text)
    return text


if __name__ == '__main__':
    main()
