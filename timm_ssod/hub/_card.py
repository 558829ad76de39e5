"""The model card (README.md) of a saved SSOD model, generated from its config.json and an
evaluation JSON: nothing in it is typed by hand.

Evaluation JSON (what ``timm-ssod evaluate`` writes; metrics are fractions, the card shows
percent)::

    {"id_accuracy": 0.9417,
     "results": {"ssod": {"svhn": {"fpr95": 0.052, "auroc": 0.989, "aupr_in": ..., "aupr_out": ...},
                          "textures": {...}},
                 "msp": {...}}}

``fpr95`` and ``auroc`` are required for every (detector, OOD set); ``aupr_in`` /
``aupr_out`` are shown when present; other keys are ignored. With two or more OOD sets each
detector gets an "average" row (the mean over its sets).
"""
import json
from pathlib import Path
from typing import Dict, List, Optional

METRICS = (('fpr95', 'FPR95 ↓'), ('auroc', 'AUROC ↑'), ('aupr_in', 'AUPR-In ↑'), ('aupr_out', 'AUPR-Out ↑'))
REQUIRED_METRICS = ('fpr95', 'auroc')
TAGS = ('image-classification', 'timm', 'timm_ssod', 'out-of-distribution-detection')
PAPER = ('Image Background Serves as Good Proxy for Out-of-distribution Data', 'ICLR 2024',
         'https://arxiv.org/abs/2307.00519')
CITATION = """@inproceedings{ssod2024,
  title = {Image Background Serves as Good Proxy for Out-of-distribution Data},
  booktitle = {International Conference on Learning Representations (ICLR)},
  year = {2024},
  eprint = {2307.00519},
  archivePrefix = {arXiv}
}"""
_SSOD_SETTINGS = (('gamma', 'sampler threshold γ (Eq. 12)'), ('lam', 'OOD-term weight λ (Eq. 14)'),
                  ('balance', 'balance of the OOD term (Table 5)'), ('ood_weight', 'OOD weight of balance "lw"'),
                  ('sampler', 'sampler of ID / OOD locations (paper: Eq. 12)'))
_SHOWN_ELSEWHERE = ('backbone', 'num_features', 'ood_hidden', 'weights', 'calibration')


def _fraction(value, where: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 <= value <= 1.0:
        raise ValueError(f'evaluation results: {where} must be a fraction in [0, 1], got {value!r}')
    return float(value)


def load_eval_results(results) -> Dict:
    """Read (path) and check an evaluation JSON; returns it as a dict."""
    if isinstance(results, (str, Path)):
        with open(results, 'r', encoding='utf-8') as f:
            results = json.load(f)
    if not isinstance(results, dict) or not isinstance(results.get('results'), dict):
        raise ValueError('evaluation results must be {"id_accuracy": float, "results": {detector: {ood_set: '
                         '{"fpr95": f, "auroc": f, ...}}}}')
    if results.get('id_accuracy') is not None:
        _fraction(results['id_accuracy'], 'id_accuracy')
    for detector, sets in results['results'].items():
        if not isinstance(sets, dict) or not sets:
            raise ValueError(f'evaluation results: results[{detector!r}] must map OOD set names to metrics')
        for ood_set, metrics in sets.items():
            if not isinstance(metrics, dict):
                raise ValueError(f'evaluation results: results[{detector!r}][{ood_set!r}] must be a dict')
            for key, _ in METRICS:
                if key in metrics or key in REQUIRED_METRICS:
                    _fraction(metrics.get(key), f'results[{detector!r}][{ood_set!r}][{key!r}]')
    return results


def _pct(value) -> str:
    return '–' if value is None else f'{100 * value:.2f}'


def eval_table(results: Dict) -> str:
    """The markdown table of an evaluation JSON (percent, 2 decimals)."""
    rows = [(d, s, m) for d, sets in results['results'].items() for s, m in sets.items()]
    shown = [(k, title) for k, title in METRICS if any(k in m for _, _, m in rows)]
    lines = ['| Detector | OOD set | ' + ' | '.join(title for _, title in shown) + ' |',
             '|---|---|' + '---:|' * len(shown)]
    for detector, sets in results['results'].items():
        for ood_set, metrics in sets.items():
            lines.append(f'| {detector} | {ood_set} | ' + ' | '.join(_pct(metrics.get(k)) for k, _ in shown) + ' |')
        if len(sets) > 1:
            means = []
            for k, _ in shown:
                values = [m[k] for m in sets.values() if k in m]
                means.append(_pct(sum(values) / len(values)) if len(values) == len(sets) else '–')
            lines.append(f'| {detector} | **average** | ' + ' | '.join(means) + ' |')
    return '\n'.join(lines)


def _front_matter(card: Dict, license: str) -> str:
    lines = ['---', 'library_name: timm', f'license: {json.dumps(license)}',
             'pipeline_tag: image-classification', 'tags:'] + [f'- {t}' for t in TAGS]
    if card.get('datasets'):
        lines += ['datasets:'] + [f'- {json.dumps(d)}' for d in card['datasets']]
    if card.get('base_model'):
        lines.append(f"base_model: {json.dumps(card['base_model'])}")
    return '\n'.join(lines + ['---'])


def _ood_head(block: Dict) -> str:
    c, h = block.get('num_features'), block.get('ood_hidden')
    return f'Linear({c} → 2)' if not h else f'Linear({c} → {h}) → GELU → Linear({h} → 2)'


def usage_snippet(repo_id: str, config: Dict) -> str:
    """Python code that loads the model and scores one image (the card's usage section)."""
    label = ("print('label:', pred.labels[0])  # the class name (config.json label_names)\n"
             if config.get('label_names') else "print('class:', pred.class_probs.argmax(-1).item())\n")
    decision = ("print('p-value:', pred.p_value.item(), 'OOD:', pred.is_ood.item())  # ID calibration, "
                f"alpha={config.get('ssod', {}).get('calibration', {}).get('alpha')}\n"
                if config.get('ssod', {}).get('calibration') else '')
    return (
        'import timm_ssod\n'
        'from PIL import Image\n'
        'from timm.data import create_transform, resolve_model_data_config\n\n'
        f"model = timm_ssod.create_model('hf-hub:{repo_id}', pretrained=True).eval()\n"
        'transform = create_transform(**resolve_model_data_config(model), is_training=False)\n\n'
        "image = Image.new('RGB', (256, 256))  # your image: Image.open('photo.jpg').convert('RGB')\n"
        'pred = model.predict(transform(image).unsqueeze(0))\n'
        + label +
        "print('P(in-distribution):', pred.id_prob.item())  # Eq. 15; low => out-of-distribution\n"
        "print('P(unknown):', pred.posterior[0, -1].item())  # the (M+1)-th class of Eq. 7\n"
        + decision)


def calibration_section(config: Dict) -> str:
    """The card's section on the ID calibration (the OOD decision), from config.json."""
    cal = config.get('ssod', {}).get('calibration')
    if not cal:
        return ('## OOD decision\nNot calibrated: `model.predict` gives P(in-distribution) but no decision. '
                'Calibrate on held-out ID images with `timm-ssod calibrate` (or `model.calibrate`).')
    info = cal.get('info') or {}
    data = f" ({info['data']})" if info.get('data') else ''
    size = ' x '.join(str(v) for v in cal.get('input_size', []))
    return '\n'.join([
        '## OOD decision (ID-calibrated)',
        f"`model.predict(x)` also gives a conformal p-value per image and `is_ood = p_value <= alpha`. The "
        f"`{cal.get('detector')}` score was calibrated on **{cal.get('n')} held-out in-distribution images**{data}, "
        'no OOD data. For ID images like those, the share rejected as OOD is at most alpha in expectation '
        '(conformal guarantee); what share of OOD images is caught depends on the OOD data (see Evaluation).',
        '',
        '| | |', '|---|---|',
        f"| score | `{cal.get('detector')}` |",
        f"| alpha (default target share of ID rejected) | {cal.get('alpha')} |",
        f"| calibration images n | {cal.get('n')} (the smallest usable alpha is 1/(n+1)) |",
        f"| score threshold at alpha | {cal.get('threshold'):.6g} (OOD when the score is below) |",
        f"| made for | {cal.get('num_classes')} classes, input {size} |",
    ] + _choices_rows(cal.get('choices')))


def _choices_rows(choices: Optional[Dict]) -> List[str]:
    """The card's rows on the components a fused score kept from ID-only evidence, if it chose."""
    if not choices:
        return []
    rule = choices.get('rule') or {}
    evidence = choices.get('evidence') or {}

    def shown(name):
        e = evidence.get(name)
        return f'`{name}` ({"no evidence" if e is None else f"{e:.2f}"})'
    kept = choices.get('kept', [])
    top = f", the {rule['top']} highest" if rule.get('top') else ''
    dropped = [n for n in choices.get('candidates', []) if n not in kept]
    rows = [f"| components kept (ID-only evidence) | {', '.join(shown(n) for n in kept)} |",
            f"| components dropped | {', '.join(shown(n) for n in dropped) or 'none'} |",
            f"| rule | mean pseudo-AUROC over {', '.join(rule.get('sources', []))} >= {rule.get('threshold')}{top}; "
            f"weighting {rule.get('weighting')}; pseudo-OOD made from ID images only |"]
    if choices.get('fallback'):
        rows.append(f"| fallback | {choices['fallback']} |")
    from ..detectors.evidence import ssod_head_note
    head = ssod_head_note(choices)
    if head:
        rows.append(f'| SSOD head | {head} |')
    return rows


def onnx_snippet(repo_id: str, info: Dict) -> str:
    """Python code that runs the folder's model.onnx in ONNX Runtime (the card's ONNX section)."""
    decision = ("print('p-value:', out['p_value'][0], 'OOD:', out['is_ood'][0])  # alpha="
                f"{info['decision']['alpha']:g}\n" if info.get('decision') else '')
    return (
        'import json\n'
        'import onnxruntime as ort\n'
        'from huggingface_hub import snapshot_download\n'
        'from PIL import Image\n'
        'from timm.data import create_transform\n\n'
        f"folder = snapshot_download('{repo_id}', allow_patterns=['model.onnx*'])\n"
        "cfg = json.load(open(f'{folder}/model.onnx.json'))  # preprocessing, class names, outputs\n"
        "session = ort.InferenceSession(f'{folder}/model.onnx')\n"
        "transform = create_transform(**{k: cfg[k] for k in ('input_size', 'interpolation', 'mean', 'std', "
        "'crop_pct', 'crop_mode')})\n\n"
        "image = Image.new('RGB', (256, 256))  # your image: Image.open('photo.jpg').convert('RGB')\n"
        "out = dict(zip(cfg['output_names'], session.run(None, {cfg['input_name']: transform(image)[None].numpy()})))\n"
        "print('class:', out['class_probs'][0].argmax(), 'P(in-distribution):', out['id_prob'][0])\n"
        + decision)


def onnx_section(repo_id: str, info: Dict) -> str:
    """The card's section on ``model.onnx`` (``save_pretrained(onnx=True)``)."""
    outputs = ', '.join(f'`{n}`' for n in info['output_names'])
    return ('## ONNX\n'
            f"`model.onnx` ({info['size_mb']:.1f} MB, opset {info['opset']}) is this model and its OOD decision for "
            f"ONNX Runtime or TensorRT, without PyTorch: input `{info['input_name']}`, a batch of preprocessed "
            f"{' x '.join(map(str, info['input_size']))} images; outputs {outputs}. `model.onnx.json` holds the "
            'preprocessing (as timm\'s `pretrained_cfg`), the class names and the decision.\n'
            '```python\n' + onnx_snippet(repo_id, info) + '```')


def render_model_card(config: Dict, repo_id: str, eval_results: Optional[Dict] = None,
                      card: Optional[Dict] = None, onnx: Optional[Dict] = None) -> str:
    """README.md text for a folder whose config.json is ``config``. ``card``: optional
    ``training_data``, ``datasets``, ``license``, ``description``, ``base_model``. ``onnx``: the
    JSON of the folder's ``model.onnx`` (``export_onnx``), shown with how to run it."""
    card = dict(card or {})  # training_data, datasets, license, description, base_model
    block = config.get('ssod', {})
    pcfg = config.get('pretrained_cfg', {})
    backbone = block.get('backbone', '?')
    labels = config.get('label_names') or []
    classes = f"{config.get('num_classes')}"
    if labels:
        shown = ', '.join(f'`{n}`' for n in labels[:20])
        classes += f" ({shown}{', …' if len(labels) > 20 else ''})"
    title = f"# Model card for {repo_id.split('/')[-1]}"
    intro = (f'An image classifier with an out-of-distribution (OOD) detector, trained with **SSOD** '
             f'(Self-supervised Sampling for OOD Detection; "{PAPER[0]}", {PAPER[1]}, {PAPER[2]}) on a timm '
             f'`{backbone}` backbone. Besides the class logits it gives P(in-distribution | x) from a binary '
             'OOD head, trained on the image locations that the classifier itself finds confidently in- or '
             'out-of-distribution (the background of the training images serves as OOD data).')
    parts = [_front_matter(card, card.get('license') or pcfg.get('license') or 'apache-2.0'), title, intro]
    if card.get('description'):
        parts.append(card['description'])
    details = ['## Model details',
               f'- **Backbone:** `{backbone}` (timm), {block.get("num_features")} features',
               f'- **Classes:** {classes}',
               f"- **Input size:** {' x '.join(str(v) for v in pcfg.get('input_size', []))}, "
               f"mean {pcfg.get('mean')}, std {pcfg.get('std')}",
               f"- **Training data:** {card.get('training_data') or 'not recorded'}",
               f'- **OOD head:** {_ood_head(block)}, applied to the pooled features (Eq. 15)',
               f'- **Paper:** {PAPER[2]}']
    parts.append('\n'.join(details))
    settings = ['## SSOD settings', '| Setting | Value |', '|---|---|']
    named = dict(_SSOD_SETTINGS)
    for key, value in block.items():
        if key not in _SHOWN_ELSEWHERE:
            shown = value if isinstance(value, str) else json.dumps(value)
            settings.append(f'| {named.get(key, key)} (`{key}`) | {shown} |')
    parts.append('\n'.join(settings) if len(settings) > 3 else '## SSOD settings\nNot recorded (only the model '
                 'architecture is known).')
    if eval_results:
        acc = eval_results.get('id_accuracy')
        head = ['## Evaluation']
        if acc is not None:
            head.append(f'ID accuracy (top-1): **{_pct(acc)}%**\n')
        head.append('OOD detection, in percent. ID is the positive class: FPR95 is the fraction of OOD images '
                    'accepted at the threshold that accepts 95% of ID images (lower is better); AUROC with ID '
                    'positive.\n')
        parts.append('\n'.join(head) + '\n' + eval_table(eval_results))
    else:
        parts.append('## Evaluation\nNo evaluation results were given when this card was generated.')
    parts.append(calibration_section(config))
    parts.append('## Usage\n```python\n' + usage_snippet(repo_id, config) + '```\n\n'
                 'Without timm_ssod, stock timm loads the classifier of this folder (`model.safetensors` holds only '
                 f"the timm weights): `timm.create_model('hf-hub:{repo_id}', pretrained=True)`. The OOD head and the "
                 'calibration are in `ssod.safetensors` and the `ssod` block of `config.json`.')
    if onnx:
        parts.append(onnx_section(repo_id, onnx))
    parts.append('## Citation\n```bibtex\n' + CITATION + '\n```')
    return '\n\n'.join(parts) + '\n'
