"""Why Eq. 12 starves the OOD head where users fine-tune (issue 30, item 1): the sampler, the head
and SSOD's score as a function of the number of ID classes M and of the map size.

Cells: the shipped converged stand-ins (``weights/resnet18.safetensors``: output stride 16, 112 px
-> 7x7, 64 px -> 4x4; ``weights/mobilenetv3_small_075.safetensors``: 224 px -> 7x7, 128 px -> 4x4),
images rendered at 64 px on natural backgrounds, class subsets M in {2, 3, 6}: the built-in
benchmark's ``num_classes=M`` (its first M shapes of ``ID_SHAPES``: disc, square, triangle, ...;
labels sorted by name; class hues spread over M bands instead of 6).

Two kinds of piece, each its own JSON under ``--pieces`` (a finished piece is skipped on a rerun):

* ``epoch0``: the stand-in itself, before any fine-tune: its own 6-class head restricted to the M
  kept classes' logits (softmax over those M), on ``--num-images`` ID validation images. Eq. 12's
  shares (gamma 0.95) on pure-background cells (< 5% object) and object cells (> 50%), and how
  well each per-location quantity tells object cells from pure-background cells (AUROC; 0.5 =
  none): the softmax confidence Eq. 12 thresholds, the label's logit, that logit min-max scaled
  within the image, the margin over the next class, the feature vector's norm.
* ``ssod``: an SSOD fine-tune (``timm-ssod train --pretrained-path``: the classifier is
  re-initialised with M outputs, as timm does for any class count other than its config's; the
  demo's budget: 1000 images, 2 epochs, batch 32, AdamW lr 1e-4, gamma 0.95, balance lwb, the last
  epoch) of one seed, then the same measurements with the fine-tuned M-class head (what the
  sampler saw at the end of training), the OOD head's mean P(ID) on object minus pure-background
  cells, SSOD's own score (Eq. 15, the head on the pooled feature) AUROC on the ``backgrounds``
  set's validation split, the most-ID location's AUROC beside it, and ID validation accuracy.

    python benchmarks/mechanism.py epoch0                     # every M x map x model, ~2 min
    python benchmarks/mechanism.py ssod --seeds 0 1 2         # 12 fine-tunes per seed, on one core: ResNet-18 7x7
                                                              # 5-8 min each, MobileNetV3 7x7 about 2 min
    python benchmarks/mechanism.py --summary                  # benchmarks/mechanism.json + the table
    python benchmarks/make_tables.py --docs                   # docs/study/sampler.md

Needs the built-in benchmark's object masks.
"""
import argparse
import json
import os
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
MODELS = {  # stand-in -> {map side: input size}
    'resnet18': {7: 112, 4: 64},
    'mobilenetv3_small_075': {7: 224, 4: 128},
}
MODEL_KWARGS = {'resnet18': {'output_stride': 16}, 'mobilenetv3_small_075': {}}
CLASSES = (2, 3, 6)
MAPS = (7, 4)
RENDER, BACKGROUND, GAMMA = 64, 'natural', 0.95
FINETUNE = dict(num_images=1000, epochs=2, batch_size=32, lr=1e-4, num_val=150)  # the demo's budget
QUANTITIES = ('softmax confidence (Eq. 12)', 'label logit', 'label logit, min-max in image',
              'margin over next class', 'feature norm')


def cell_key(kind, model, side, m, seed=None):
    return f'{kind}/{model}/{side}x{side}/M{m}' + ('' if seed is None else f'/seed{seed}')


def piece_path(pieces, key):
    return os.path.join(pieces, key.replace('/', '__') + '.json')


def _auroc(pos, neg):
    from timm_ssod.metrics import auroc
    if len(pos) == 0 or len(neg) == 0:
        return None
    return float(auroc(pos.numpy(), neg.numpy()))


def measure(model, keep, m, img_size, num_images, ood_head):
    """Per-location statistics of ``model`` on ID validation images of the M-class benchmark.
    ``keep``: the indices of the model's logits for the M classes (sorted names), in label order."""
    import torch
    import torch.nn.functional as F
    from timm.data import create_transform, resolve_data_config
    from timm_ssod.core import ID_INDEX, IGNORED, OOD_INDEX, id_probability, sample_patches
    from timm_ssod.core._layout import head_per_location
    from timm_ssod.data import SyntheticDataset

    cfg = resolve_data_config({'img_size': img_size, 'crop_pct': 1.0}, model=model)  # cells aligned with the masks
    tf = create_transform(**cfg)
    ds = SyntheticDataset('id', split='val', num_images=num_images, img_size=RENDER, num_classes=m,
                          background=BACKGROUND)
    rows = {k: [] for k in ('conf', 'logit', 'minmax', 'margin', 'norm', 'cover', 'pid', 'pooled', 'correct')}
    with torch.no_grad():
        for start in range(0, num_images, 50):
            idx = range(start, min(start + 50, num_images))
            x = torch.stack([tf(ds.image(i)) for i in idx])
            y = torch.tensor([ds.label(i) for i in idx])
            feats = model.forward_features(x)
            logits = model.forward_head(feats)[:, keep]
            locations, grid = model._locations(feats, x.shape[-2:])
            pl = head_per_location(model, feats, locations)[..., keep].float()  # (B, L, M)
            conf = F.softmax(pl, -1).gather(-1, y.view(-1, 1, 1).expand(-1, pl.shape[1], 1)).squeeze(-1)
            lab = pl.gather(-1, y.view(-1, 1, 1).expand(-1, pl.shape[1], 1)).squeeze(-1)
            lo, hi = lab.min(1, keepdim=True).values, lab.max(1, keepdim=True).values
            other = pl.scatter(-1, y.view(-1, 1, 1).expand(-1, pl.shape[1], 1), float('-inf')).max(-1).values
            masks = torch.stack([torch.tensor(ds.object_mask(i), dtype=torch.float32) for i in idx])[:, None]
            rows['cover'].append(F.adaptive_avg_pool2d(masks, grid).flatten(1))
            rows['conf'].append(conf)
            rows['logit'].append(lab)
            rows['minmax'].append((lab - lo) / (hi - lo).clamp_min(1e-6))
            rows['margin'].append(lab - other)
            rows['norm'].append(locations.float().norm(dim=-1))
            rows['correct'].append((logits.argmax(1) == y).float())
            if ood_head:
                rows['pid'].append(id_probability(model.ood_head(locations)))
                rows['pooled'].append(id_probability(model.forward_ood_head(feats, x.shape[-2:])))
    t = {k: torch.cat(v) for k, v in rows.items() if v}
    bg, obj = t['cover'] < 0.05, t['cover'] > 0.5
    labels = sample_patches(t['conf'], GAMMA)

    def share(mask, value):
        return float((labels[mask] == value).float().mean()) if mask.any() else None
    out = {'grid': list(grid), 'num_images': num_images, 'id_accuracy': float(t['correct'].mean()),
           'share_of_cells': {'background': float(bg.float().mean()), 'object': float(obj.float().mean())},
           'sampler': {'all_id': float((labels == ID_INDEX).float().mean()),
                       'all_ood': float((labels == OOD_INDEX).float().mean()),
                       'background_ood': share(bg, OOD_INDEX), 'background_id': share(bg, ID_INDEX),
                       'background_ignored': share(bg, IGNORED), 'object_id': share(obj, ID_INDEX),
                       'object_ood': share(obj, OOD_INDEX)},
           'location_auroc': {q: _auroc(t[k][obj], t[k][bg]) for q, k in
                              zip(QUANTITIES, ('conf', 'logit', 'minmax', 'margin', 'norm'))},
           'minmax_below_0.2': {'background': float((t['minmax'][bg] < 0.2).float().mean()),
                                'object': float((t['minmax'][obj] < 0.2).float().mean())},
           'mean_confidence': {'background': float(t['conf'][bg].mean()), 'object': float(t['conf'][obj].mean())}}
    if ood_head:
        out['p_id'] = {'object': float(t['pid'][obj].mean()), 'background': float(t['pid'][bg].mean())}
        out['_id_scores'] = {'pooled': t['pooled'], 'max_cell': t['pid'].max(1).values}
    return out


def ood_auroc(model, img_size, num_images, id_scores, m):
    """AUROC of SSOD's score (Eq. 15) and of the most-ID location, ID val vs backgrounds val."""
    import torch
    from timm.data import create_transform, resolve_data_config
    from timm_ssod.core import id_probability
    from timm_ssod.data import SyntheticDataset
    cfg = resolve_data_config({'img_size': img_size, 'crop_pct': 1.0}, model=model)
    tf = create_transform(**cfg)
    ds = SyntheticDataset('backgrounds', split='val', num_images=num_images, img_size=RENDER, num_classes=m,
                          background=BACKGROUND)
    pooled, cell = [], []
    with torch.no_grad():
        for start in range(0, num_images, 50):
            x = torch.stack([tf(ds.image(i)) for i in range(start, min(start + 50, num_images))])
            feats = model.forward_features(x)
            locations, _ = model._locations(feats, x.shape[-2:])
            pooled.append(id_probability(model.forward_ood_head(feats, x.shape[-2:])))
            cell.append(id_probability(model.ood_head(locations)).max(1).values)
    return {'ssod (Eq. 15)': _auroc(id_scores['pooled'], torch.cat(pooled)),
            'most-ID location': _auroc(id_scores['max_cell'], torch.cat(cell))}


def keep_indices(names, m):
    from timm_ssod.data.generators import id_class_names
    return [list(names).index(n) for n in id_class_names(m)]


def run_epoch0(model_name, side, m, num_images):
    import timm_ssod
    info = json.load(open(os.path.join(ROOT, 'weights', f'{model_name}.json')))
    model = timm_ssod.create_model(model_name, pretrained=True, num_classes=info['num_classes'],
                                   pretrained_cfg_overlay=dict(file=os.path.join(ROOT, 'weights',
                                                                                 f'{model_name}.safetensors'),
                                                               num_classes=info['num_classes']),
                                   **MODEL_KWARGS[model_name]).eval()
    keep = keep_indices(info['label_names'], m)
    r = measure(model, keep, m, MODELS[model_name][side], num_images, ood_head=False)
    r['kept_classes'] = [info['label_names'][i] for i in keep]
    return r


def run_ssod(model_name, side, m, seed, num_images, runs_dir):
    from timm_ssod.evaluate import load_eval_model
    from timm_ssod.demo import train_stage
    out_dir = os.path.join(runs_dir, model_name, f'{side}x{side}', f'M{m}', f'seed{seed}')
    t = time.time()
    rec = train_stage('finetune_ssod', out_dir, backbone=model_name, model_kwargs=MODEL_KWARGS[model_name],
                      img_size=MODELS[model_name][side], num_images=FINETUNE['num_images'],
                      num_val=FINETUNE['num_val'], num_classes=m, epochs=FINETUNE['epochs'], lr=FINETUNE['lr'],
                      batch_size=FINETUNE['batch_size'], seed=seed, ssod=True,
                      pretrained_path=os.path.join(ROOT, 'weights', f'{model_name}.safetensors'), gamma=GAMMA,
                      render_size=RENDER, background=BACKGROUND, log_interval=50)
    train_seconds = time.time() - t
    model, _ = load_eval_model(checkpoint=rec['checkpoint'])
    model.eval()
    r = measure(model, list(range(m)), m, MODELS[model_name][side], num_images, ood_head=True)
    ids = r.pop('_id_scores')
    r['backgrounds_auroc'] = ood_auroc(model, MODELS[model_name][side], num_images, ids, m)
    r['train_seconds'] = round(train_seconds, 1)
    r['val_top1_train'] = rec['val_top1']
    for name in os.listdir(os.path.dirname(rec['checkpoint'])):  # keep the logs, not the weights
        if name.endswith('.pth.tar'):
            os.remove(os.path.join(os.path.dirname(rec['checkpoint']), name))
    return r


def write_piece(path, piece):
    from timm_ssod._util import atomic_write_text
    os.makedirs(os.path.dirname(path), exist_ok=True)
    atomic_write_text(path, json.dumps(piece, indent=1) + '\n')


def _mean_std(values):
    vals = [v for v in values if v is not None]
    if not vals:
        return None
    mu = sum(vals) / len(vals)
    sd = (sum((v - mu) ** 2 for v in vals) / (len(vals) - 1)) ** 0.5 if len(vals) > 1 else None
    return {'mean': mu, 'std': sd, 'n': len(vals), 'values': vals}


def _flat(d, prefix=''):
    out = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(_flat(v, f'{prefix}{k}.'))
        elif isinstance(v, (int, float)) and not isinstance(v, bool):
            out[prefix + k] = v
    return out


def summary(pieces, out):
    from timm_ssod._util import atomic_write_text
    cells = {}
    for name in sorted(os.listdir(pieces)) if os.path.isdir(pieces) else []:
        if not name.endswith('.json'):
            continue
        p = json.load(open(os.path.join(pieces, name)))
        key = cell_key(p['kind'], p['model'], p['side'], p['M'])
        c = cells.setdefault(key, {'kind': p['kind'], 'model': p['model'], 'map': f"{p['side']}x{p['side']}",
                                   'M': p['M'], 'input_size': MODELS[p['model']][p['side']], 'seeds': [],
                                   'pieces': []})
        c['seeds'].append(p.get('seed'))
        c['pieces'].append(p)
    for c in cells.values():
        flats = [_flat(p['result']) for p in c['pieces']]
        c['stats'] = {k: _mean_std([f.get(k) for f in flats]) for k in flats[0]}
        c['seconds'] = [p['seconds'] for p in c['pieces']]
        del c['pieces']
    record = {'command': 'python benchmarks/mechanism.py epoch0; python benchmarks/mechanism.py ssod --seeds 0 1 2 '
                         '(run in parts: --models / --maps / --classes choose cells, each piece one cell and seed); '
                         'python benchmarks/mechanism.py --summary',
              'settings': {'render_size': RENDER, 'background': BACKGROUND, 'gamma': GAMMA, 'finetune': FINETUNE,
                           'models': {k: {f'{s}x{s}': v for s, v in d.items()} for k, d in MODELS.items()},
                           'model_kwargs': MODEL_KWARGS, 'measured_on': 'ID validation split (and backgrounds '
                           'validation split): pure-background cells < 5% object, object cells > 50%',
                           'epoch0_head': "the stand-in's 6-class head restricted to the M kept classes' logits"},
              'cells': dict(sorted(cells.items()))}
    atomic_write_text(out, json.dumps(record, indent=1) + '\n')
    print(table(record))
    print(f'wrote {out}')
    return record


def _f(stat, scale=100, digits=0):
    if not stat:
        return '–'
    s = f"{scale * stat['mean']:.{digits}f}".replace('-0', '0') if abs(scale * stat['mean']) < 0.5 * 10 ** -digits \
        else f"{scale * stat['mean']:.{digits}f}"
    if stat.get('std') is not None:
        s += f" ± {scale * stat['std']:.{digits}f}"
    return s


def table(record):
    """Markdown tables: epoch 0 (the stand-in) and after the SSOD fine-tune."""
    lines = ['Epoch 0 (the stand-in, its head restricted to the M classes): Eq. 12 on pure-background / object '
             'cells, and AUROC object vs pure-background cells of each per-location quantity', '',
             '| model | map | M | bg → OOD | bg → ID | obj → ID | ' + ' | '.join(QUANTITIES) + ' | ID acc |',
             '|---|---|---|---|---|---|' + '---|' * len(QUANTITIES) + '---|']
    for c in record['cells'].values():
        if c['kind'] != 'epoch0':
            continue
        s = c['stats']
        lines.append(f"| {c['model']} | {c['map']} | {c['M']} | {_f(s['sampler.background_ood'])} | "
                     f"{_f(s['sampler.background_id'])} | {_f(s['sampler.object_id'])} | "
                     + ' | '.join(_f(s.get(f'location_auroc.{q}')) for q in QUANTITIES)
                     + f" | {_f(s['id_accuracy'], digits=1)} |")
    lines += ['', 'After the SSOD fine-tune (mean ± std over seeds): Eq. 12 with the fine-tuned head, the OOD head\'s '
              'P(ID) object − background (points), SSOD AUROC on backgrounds (val)', '',
              '| model | map | M | seeds | bg → OOD | bg → ID | obj → ID | P(ID) obj − bg | SSOD AUROC (Eq. 15) | '
              'most-ID cell AUROC | ID acc | fine-tune s |', '|---|---|---|---|---|---|---|---|---|---|---|---|']
    for c in record['cells'].values():
        if c['kind'] != 'ssod':
            continue
        s = c['stats']
        gap = None
        if s.get('p_id.object') and s.get('p_id.background'):
            vals = [a - b for a, b in zip(s['p_id.object']['values'], s['p_id.background']['values'])]
            gap = _mean_std(vals)
        lines.append(f"| {c['model']} | {c['map']} | {c['M']} | {','.join(str(x) for x in sorted(c['seeds']))} | "
                     f"{_f(s['sampler.background_ood'])} | {_f(s['sampler.background_id'])} | "
                     f"{_f(s['sampler.object_id'])} | {_f(gap)} | {_f(s['backgrounds_auroc.ssod (Eq. 15)'])} | "
                     f"{_f(s['backgrounds_auroc.most-ID location'])} | {_f(s['id_accuracy'], digits=1)} | "
                     f"{_f(s['train_seconds'], scale=1)} |")
    return '\n'.join(lines)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    p.add_argument('kind', nargs='?', choices=('epoch0', 'ssod'))
    p.add_argument('--models', nargs='+', default=list(MODELS), choices=list(MODELS))
    p.add_argument('--maps', nargs='+', type=int, default=list(MAPS), choices=list(MAPS))
    p.add_argument('--classes', nargs='+', type=int, default=list(CLASSES))
    p.add_argument('--seeds', nargs='+', type=int, default=[0])
    p.add_argument('--num-images', type=int, default=200, help='ID validation images (and backgrounds images)')
    p.add_argument('--pieces', default=os.path.join(HERE, 'mechanism_pieces'))
    p.add_argument('--runs-dir', default='./output/benchmarks/mechanism')
    p.add_argument('--summary', action='store_true', help='join the pieces into --out and print the table')
    p.add_argument('--out', default=os.path.join(HERE, 'mechanism.json'))
    args = p.parse_args(argv)
    if args.summary:
        return summary(args.pieces, args.out)
    if not args.kind:
        p.error('name epoch0 or ssod (or --summary)')
    import torch
    torch.set_num_threads(1)
    seeds = [None] if args.kind == 'epoch0' else args.seeds
    for seed in seeds:
        for m in args.classes:
            for model in args.models:
                for side in args.maps:
                    key = cell_key(args.kind, model, side, m, seed)
                    path = piece_path(args.pieces, key)
                    if os.path.exists(path):
                        print(f'[mechanism] {key}: done, skipped', flush=True)
                        continue
                    t = time.time()
                    if args.kind == 'epoch0':
                        r = run_epoch0(model, side, m, args.num_images)
                    else:
                        r = run_ssod(model, side, m, seed, args.num_images, os.path.abspath(args.runs_dir))
                    piece = {'kind': args.kind, 'model': model, 'side': side, 'M': m, 'seed': seed,
                             'num_images': args.num_images, 'seconds': round(time.time() - t, 1), 'result': r}
                    write_piece(path, piece)
                    s = r['sampler']
                    print(f"[mechanism] {key}: bg->OOD {s['background_ood']:.2f} bg->ID {s['background_id']:.2f} "
                          f"obj->ID {s['object_id']:.2f} acc {r['id_accuracy']:.3f}"
                          + (f" P(ID) obj {r['p_id']['object']:.2f} bg {r['p_id']['background']:.2f} "
                             f"AUROC {r['backgrounds_auroc']}" if 'p_id' in r else '')
                          + f" ({time.time() - t:.0f}s)", flush=True)


if __name__ == '__main__':
    main()
