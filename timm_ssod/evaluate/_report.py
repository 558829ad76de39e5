"""Reports of an evaluation result (``timm_ssod.evaluate``): a markdown table like the paper's,
JSON and CSV files written atomically, and score histograms (ID vs OOD, like the paper's
Fig. 6) when matplotlib is installed (the optional ``plot`` extra).

Result metrics are fractions; the table shows percent with 2 decimals.
"""
import csv
import io
import json
import os
import re
from typing import Dict, List, Optional

import numpy as np

from .._util import atomic_write, atomic_write_text
from ._evaluate import AVERAGE, SSOD_DETECTORS

__all__ = ['format_table', 'result_rows', 'write_results', 'best_baseline', 'plot_histograms', 'CSV_FIELDS']

METRIC_KEYS = ('fpr95', 'auroc', 'aupr_in', 'aupr_out')
CSV_FIELDS = ('detector', 'ood_set') + METRIC_KEYS + ('num_id', 'num_ood', 'id_accuracy')
_LOWER_IS_BETTER = {'fpr95'}
INVERTED = 'ⁱ'  # the marker of an AUROC below 50 (the score is inverted on that set), explained under the table


def _ood_sets(result: Dict) -> List[str]:
    """OOD set names in result order, then ``'average'``."""
    sets = []
    for by_set in result['results'].values():
        sets += [s for s in by_set if s not in sets]
    return sets + [AVERAGE]


def _with_average(result: Dict, detector: str) -> Dict[str, Dict]:
    """``{ood_set: metrics, ..., 'average': metrics}`` of one detector."""
    by_set = dict(result['results'][detector])
    if detector in (result.get(AVERAGE) or {}):
        by_set[AVERAGE] = result[AVERAGE][detector]
    return by_set


def _best(values: List[Optional[float]], key: str) -> Optional[float]:
    present = [v for v in values if v is not None]
    if len(present) < 2:
        return None
    return min(present) if key in _LOWER_IS_BETTER else max(present)


def format_table(result: Dict, metrics=('fpr95', 'auroc')) -> str:
    """Markdown: an ID-accuracy line, then rows = detectors, columns = each OOD set and the
    average, each with ``metrics`` (FPR95 ↓ / AUROC ↑ by default) in percent, 2 decimals;
    the best value of each column in bold; an AUROC below 50 marked ``ⁱ`` (inverted); skipped
    detectors and notes listed below."""
    titles = {'fpr95': 'FPR95↓', 'auroc': 'AUROC↑', 'aupr_in': 'AUPR-In↑', 'aupr_out': 'AUPR-Out↑'}
    sets = _ood_sets(result)
    columns = [(s, k) for s in sets for k in metrics]
    detectors = list(result['results'])
    cells = {d: [_with_average(result, d).get(s, {}).get(k) for s, k in columns] for d in detectors}
    best = [_best([cells[d][i] for d in detectors], k) for i, (_, k) in enumerate(columns)]

    def cell(v, b, key=None):
        if v is None:
            return '–'
        text = f'{100 * v:.2f}'
        text = f'**{text}**' if b is not None and round(100 * v, 2) == round(100 * b, 2) else text
        return f'{text} {INVERTED}' if key == 'auroc' and v < 0.5 else text

    acc = result.get('id_accuracy')
    lines = [f"Model: {result.get('model', '?')}, ID accuracy: "
             + ('– (unlabelled ID data)' if acc is None else f'{100 * acc:.2f}%')
             + f" on {result.get('num_id', '?')} ID images"
             + (f" (top-5: {100 * result['id_accuracy_top5']:.2f}%)" if result.get('id_accuracy_top5') is not None
                else '')]
    names = result.get('label_names') or []
    if names:
        lines.append(f"Classes ({len(names)}): {', '.join(names[:20])}{', ...' if len(names) > 20 else ''}")
    lines.append('')
    lines.append('| Detector | ' + ' | '.join(f'{s} {titles[k]}' for s, k in columns) + ' |')
    lines.append('|---|' + '---:|' * len(columns))
    for d in detectors:
        lines.append(f'| {d} | ' + ' | '.join(cell(v, b, k) for v, b, (_, k) in zip(cells[d], best, columns)) + ' |')
    inverted = [f'{d} on {s}' for d in detectors for s in sets if s != AVERAGE
                and (_with_average(result, d).get(s) or {}).get('auroc', 1.0) < 0.5]
    extra = [f'- {INVERTED} inverted: AUROC below 50, this score ranks these OOD images as more in-distribution than '
             f'the ID images ({", ".join(inverted)})'] if inverted else []
    extra += [f'- skipped {name}: {why}' for name, why in (result.get('skipped') or {}).items()]
    extra += [f'- {note}' for note in result.get('notes') or ()]
    return '\n'.join(lines + ([''] + extra if extra else []))


def result_rows(result: Dict) -> List[Dict]:
    """One dict per (detector, OOD set) with the ``CSV_FIELDS`` (fractions; the average row
    has ``ood_set = 'average'`` and no counts)."""
    rows = []
    for det in result['results']:
        for set_name, m in _with_average(result, det).items():
            used = (result.get('num_used') or {}).get(set_name, {})
            rows.append(dict({k: m.get(k) for k in METRIC_KEYS}, detector=det, ood_set=set_name,
                             num_id=used.get('id'), num_ood=used.get('ood'), id_accuracy=result.get('id_accuracy')))
    return rows


def write_results(result: Dict, out_dir: str) -> Dict[str, str]:
    """Write ``results.json``, ``results.csv`` and ``results.md`` (the table) to ``out_dir``,
    each atomically (a temporary file renamed with ``os.replace``). Returns their paths."""
    os.makedirs(out_dir, exist_ok=True)
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=CSV_FIELDS, lineterminator='\n')
    writer.writeheader()
    writer.writerows(result_rows(result))
    texts = {'json': json.dumps(result, indent=2, allow_nan=False) + '\n', 'csv': buf.getvalue(),
             'md': format_table(result) + '\n'}
    paths = {}
    for ext, text in texts.items():
        paths[ext] = os.path.join(out_dir, f'results.{ext}')
        atomic_write_text(paths[ext], text)
    return paths


def best_baseline(result: Dict) -> Optional[str]:
    """The non-SSOD detector with the lowest average FPR95 (ties: highest AUROC), or None."""
    candidates = [(m['fpr95'], -m['auroc'], d) for d, m in result[AVERAGE].items() if d not in SSOD_DETECTORS]
    return min(candidates)[2] if candidates else None


def _file_name(name: str) -> str:
    return re.sub(r'[^A-Za-z0-9_.-]+', '_', name).strip('_') or 'set'


def plot_histograms(scores, result: Dict, out_dir: str, detectors: Optional[List[str]] = None) -> List[str]:
    """One PNG per OOD set, ``hist_<set>.png``: histograms of the ID and the OOD scores
    (density) of ``detectors``, one panel each; default the SSOD score and the best
    baseline. ``scores``: the ``EvalScores`` of ``evaluate(..., return_scores=True)``.
    Raises ImportError without matplotlib. Returns the paths written."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg  # no pyplot: no global state
    from matplotlib.figure import Figure

    if detectors is None:
        detectors = [d for d in ('ssod', best_baseline(result)) if d in scores.id_scores]
    detectors = [d for d in detectors if d in scores.id_scores]
    os.makedirs(out_dir, exist_ok=True)
    paths = []
    for set_name, by_detector in scores.ood_scores.items():
        fig = Figure(figsize=(4.2 * max(1, len(detectors)), 3.4))
        FigureCanvasAgg(fig)
        for i, det in enumerate(detectors, 1):
            ax = fig.add_subplot(1, len(detectors), i)
            id_s, ood_s = scores.id_scores[det], by_detector[det]
            bins = np.histogram_bin_edges(np.concatenate([id_s, ood_s]), bins=40)
            ax.hist(id_s, bins=bins, density=True, alpha=0.55, label=f'ID ({len(id_s)})')
            ax.hist(ood_s, bins=bins, density=True, alpha=0.55, label=f'{set_name} ({len(ood_s)})')
            m = result['results'][det][set_name]
            ax.set_title(f"{det}: FPR95 {100 * m['fpr95']:.2f}, AUROC {100 * m['auroc']:.2f}", fontsize=9)
            ax.set_xlabel('score (higher = more in-distribution)')
            ax.legend(fontsize=8)
        fig.tight_layout()
        path = os.path.join(out_dir, f'hist_{_file_name(set_name)}.png')
        atomic_write(path, lambda f: fig.savefig(f, format='png', dpi=110))
        paths.append(path)
    return paths
