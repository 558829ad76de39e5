"""``timm-ssod predict``: class, P(ID), p-value and OOD decision for image files or folders.

    timm-ssod predict local-dir:out/ssod-r10 photo.jpg more/photos/ --output out/pred
    timm-ssod predict hf-hub:org/ssod-r50 images/ --alpha 0.01

MODEL is a saved model (``local-dir:PATH`` / ``hf-hub:org/name``) or a training checkpoint,
or a ``.onnx`` file written by ``timm-ssod export`` (run with ONNX Runtime, preprocessed with
the JSON beside it; the same table and files).
Folders are read recursively (every image file PIL reads). Each image is preprocessed with
the model's data config and goes through the backbone once. Printed per image: the class
(its name when config.json has ``label_names``), P(ID) (Eq. 15), and, for a model calibrated
with ``timm-ssod calibrate``, the conformal p-value and the decision (``OOD`` when
p <= alpha; ``--alpha`` overrides the calibration's). A file that cannot be read as an image
is skipped with a warning and listed as ``unreadable`` (its ``error`` field says why); the
counts are of the images read. ``--output DIR`` writes ``predictions.csv`` and
``predictions.json`` (``--results-format``). ``--alpha`` on an uncalibrated model is an error.
As timm's ``inference.py``: ``--topk K`` records the K most probable classes, ``--class-map FILE``
names the classes, ``--img-size`` / ``--input-size`` and ``--amp``; ``--no-table`` prints only
the summary.
"""
import argparse
import csv
import json
import os
import sys
from typing import Dict, List, Optional

from ._common import add_command, parse_and_run, report_errors

FIELDS = ('file', 'class_index', 'class', 'class_prob', 'p_id', 'p_value', 'decision', 'error')
UNREADABLE = 'unreadable'  # the decision of a file that could not be read as an image


def add_arguments(p: argparse.ArgumentParser) -> argparse.ArgumentParser:
    p.add_argument('model', metavar='MODEL', help='local-dir:PATH / hf-hub:org/name, a training checkpoint, or a '
                                                 'model.onnx written by timm-ssod export (run with ONNX Runtime)')
    p.add_argument('paths', metavar='PATH', nargs='+', help='image files and/or folders (read recursively)')
    p.add_argument('--alpha', type=float, default=None,
                   help="share of ID images the decision may reject (default: the calibration's alpha)")
    p.add_argument('--output', metavar='DIR', default=None, help='write predictions.csv and predictions.json here')
    p.add_argument('--batch-size', '-b', type=int, default=32)
    p.add_argument('--device', default=None, help='default: cuda if available, else cpu')
    p.add_argument('--quiet', action='store_true', help='no progress lines')
    p.add_argument('--no-table', action='store_true', help='print only the summary, not a row per image')
    p.add_argument('--topk', type=int, default=1, metavar='K',
                   help="also record the K most probable classes of each image ('topk' in the files; default 1)")
    p.add_argument('--results-format', nargs='+', choices=('csv', 'json'), default=['csv', 'json'],
                   help='files --output writes (default: csv json)')
    p.add_argument('--class-map', metavar='FILE', default=None,
                   help="class names, one a line in class-index order (timm's --class-map), over the model's")
    p.add_argument('--img-size', type=int, default=None, metavar='N', help="input image size (default: the model's)")
    p.add_argument('--input-size', type=int, nargs=3, default=None, metavar=('C', 'H', 'W'),
                   help="input size (default: the model's)")
    p.add_argument('--amp', action='store_true', help='mixed precision on CUDA (float32 on CPU)')
    return p


def add_parser(subparsers) -> argparse.ArgumentParser:
    """Register ``predict`` on the ``timm-ssod`` subparsers (``timm_ssod.cli``)."""
    return add_command(subparsers, 'predict', 'class, P(ID), p-value and OOD decision for images', __doc__,
                       add_arguments, run)


def read_images(files: List[str]):
    """``(files read, their RGB images, {unreadable file: why})``; each unreadable file is
    warned about on stderr (``predict``, ``visualize --images``)."""
    from ..data import try_load_rgb
    read, images, unreadable = [], [], {}
    for f in files:
        image, why = try_load_rgb(f)
        if image is None:
            unreadable[f] = why
            print(f'warning: skipping {f}: it cannot be read as an image ({why})', file=sys.stderr)
        else:
            read.append(f)
            images.append(image)
    return read, images, unreadable


def predict_files(model, files: List[str], transform, alpha: Optional[float], batch_size: int, device,
                  progress: bool = False, topk: int = 1, names=None, amp: bool = False) -> List[Dict]:
    """One dict per file (``FIELDS``), in order; p_value / decision are None without a
    calibration; a file that cannot be read as an image is skipped (warned) and its row has
    decision ``unreadable`` and the reason in ``error``. ``topk`` > 1 adds ``topk``: the K most
    probable ``{class, prob}``; ``names``: class names over the model's; ``amp``: autocast on CUDA."""
    import torch

    from ..core import label_names
    from ..evaluate import with_progress
    names = names or label_names(model)  # the class names when they name every class of the classifier, else None

    def label(k):
        return names[k] if names else str(k)

    rows = {}
    chunks = [files[start:start + batch_size] for start in range(0, len(files), batch_size)]
    for chunk in with_progress(chunks, 'predicting', progress, size=len):
        read, images, unreadable = read_images(chunk)
        rows.update({f: dict(dict.fromkeys(FIELDS), file=f, decision=UNREADABLE, error=why)
                     for f, why in unreadable.items()})
        if not read:
            continue
        with torch.autocast(device.type, enabled=amp and device.type == 'cuda'):
            pred = model.predict(torch.stack([transform(image) for image in images]).to(device), alpha=alpha)
        probs = pred.class_probs.float()
        top_prob, top_index = probs.topk(min(max(topk, 1), probs.shape[-1]), dim=-1)
        for i, f in enumerate(read):
            k = int(top_index[i, 0])
            p = None if pred.p_value is None else float(pred.p_value[i])
            rows[f] = {'file': f, 'class_index': k, 'class': label(k), 'class_prob': float(top_prob[i, 0]),
                       'p_id': float(pred.id_prob[i]), 'p_value': p,
                       'decision': None if p is None else ('OOD' if bool(pred.is_ood[i]) else 'ID'), 'error': None}
            if topk > 1:
                rows[f]['topk'] = [{'class': label(int(j)), 'prob': float(q)}
                                   for q, j in zip(top_prob[i], top_index[i])]
    return [rows[f] for f in files]


def decision_footnote(rows: List[Dict], detector: str) -> Optional[str]:
    """A line saying which score decides, when P(ID) and the decision disagree on some image
    (P(ID) >= 0.5 and ``OOD``, or below 0.5 and ``ID``); None when they agree on every image."""
    decided = [r for r in rows if r['decision'] in ('ID', 'OOD') and r['p_id'] is not None]
    disagree = sum((r['p_id'] >= 0.5) == (r['decision'] == 'OOD') for r in decided)
    if not disagree:
        return None
    return (f'Which score decides: the p-value of the {detector} score, not P(ID) (the OOD head alone). They disagree '
            f'on {disagree} of {len(decided)} images (P(ID) >= 0.5 but OOD, or below 0.5 but ID).')


def _fmt(value, spec: str) -> str:
    return '-' if value is None else format(value, spec)


def _predict(args) -> int:
    import torch
    from timm.data import create_transform, resolve_data_config

    from ..data import expand_image_paths
    from ._common import load_ssod_model
    files = expand_image_paths(args.paths)
    device = torch.device(args.device or ('cuda' if torch.cuda.is_available() else 'cpu'))
    if args.model.lower().endswith('.onnx') and os.path.isfile(args.model):  # timm-ssod export's file: ONNX Runtime
        from ..export import OnnxModel
        model = OnnxModel(args.model)
        data_config = model.data_config
    else:
        model, _, save_kwargs = load_ssod_model(args.model)
        model.to(device)
        data_args = dict(save_kwargs.get('data_config') or {})
        data_args.update({k: getattr(args, k) for k in ('img_size', 'input_size') if getattr(args, k) is not None})
        data_config = resolve_data_config(data_args, model=model)
    cal = model.ssod_calibration
    if args.alpha is not None and cal is not None:
        cal.check_alpha(args.alpha)
    transform = create_transform(**data_config, is_training=False)
    names = _read_class_map(args.class_map, model.num_classes) if args.class_map else None
    rows = predict_files(model, files, transform, args.alpha, args.batch_size, device, progress=not args.quiet,
                         topk=args.topk, names=names, amp=args.amp)
    read = [r for r in rows if r['decision'] != UNREADABLE]
    if not read:
        raise ValueError(f'none of the {len(rows)} file(s) could be read as an image')
    alpha = args.alpha if args.alpha is not None else (cal.alpha if cal is not None else None)
    if not args.no_table:
        print('| file | class | P(ID) | p-value | decision |\n|---|---|---:|---:|---|')
        for r in rows:
            print(f"| {r['file']} | {r['class'] or '-'} | {_fmt(r['p_id'], '.4f')} | {_fmt(r['p_value'], '.4f')} | "
                  f"{r['decision'] or '-'} |")
    if len(read) < len(rows):
        print(f'\n{len(rows) - len(read)} of {len(rows)} file(s) could not be read as images: listed as '
              f'{UNREADABLE}, not counted.')
    if cal is None:
        print('\nThis model is not calibrated: no p-value or OOD decision. Calibrate it on held-out ID images with '
              '`timm-ssod calibrate`.')
    else:
        print(f'\nOOD when p-value <= alpha = {alpha:g} ({cal.detector.name} score, {cal.n} ID calibration images): '
              f"{sum(r['decision'] == 'OOD' for r in read)} of {len(read)} images.")
        footnote = decision_footnote(read, cal.detector.name)
        if footnote:
            print(footnote)
    if args.output:
        os.makedirs(args.output, exist_ok=True)
        written = []
        if 'csv' in args.results_format:
            with open(os.path.join(args.output, 'predictions.csv'), 'w', newline='', encoding='utf-8') as f:
                fields = FIELDS + (('topk',) if args.topk > 1 else ())
                writer = csv.DictWriter(f, fieldnames=fields)
                writer.writeheader()
                writer.writerows([dict(r, topk=';'.join(f"{t['class']}:{t['prob']:.4f}" for t in r['topk']))
                                  if r.get('topk') else r for r in rows])
            written.append('predictions.csv')
        if 'json' in args.results_format:
            with open(os.path.join(args.output, 'predictions.json'), 'w', encoding='utf-8') as f:
                json.dump({'model': args.model, 'alpha': alpha, 'calibrated': cal is not None,
                           'input_size': list(data_config['input_size']), 'predictions': rows,
                           UNREADABLE: [r['file'] for r in rows if r['decision'] == UNREADABLE]}, f, indent=2)
            written.append('predictions.json')
        print(f'Written to {args.output}: {" and ".join(written)}')
    return 0


def _read_class_map(path: str, num_classes: int) -> List[str]:
    """timm's ``--class-map`` file: one class name a line, in class-index order."""
    with open(path, encoding='utf-8') as f:
        names = [line.strip() for line in f if line.strip()]
    if len(names) != num_classes:
        raise ValueError(f'--class-map {path}: {len(names)} class names for a {num_classes}-class model')
    return names


def run(args: argparse.Namespace, prog: str = 'timm-ssod predict') -> int:
    """Run the prediction of parsed arguments; 0 on success, 1 with a message on bad input."""
    return report_errors(_predict, args, prog)


def main(argv: Optional[List[str]] = None, prog: str = 'timm-ssod predict') -> int:
    return parse_and_run(argv, prog, __doc__, add_arguments, run)


if __name__ == '__main__':
    sys.exit(main())
