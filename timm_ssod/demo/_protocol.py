"""The paper's fine-tuning protocol on the built-in benchmark, as one reusable function.

``run_protocol`` is what ``timm-ssod demo`` and the benchmarks (``benchmarks/quality.py``,
``benchmarks/ablations.py``) run:

1. **stage 1**: a short vanilla (cross-entropy) training of the backbone from scratch, a
   stand-in for the pretrained weights that cannot be downloaded here (the paper fine-tunes
   pretrained backbones, A.4);
2. **stage 2**: from those weights, a vanilla fine-tune and an SSOD fine-tune with the same
   budget, data, augmentation, optimizer and seed: the only difference is the objective; each
   keeps the epoch with the best FPR95 of its own score on the OOD sets' validation splits
   (the paper's A.4 keeps the best-FPR95 checkpoint);
3. **evaluation** with the harness (``timm_ssod.evaluate.evaluate``) of both fine-tuned models
   on the ID test split and every OOD set's test split: the SSOD scores on the SSOD model, the
   post-hoc baselines on the vanilla model and, labelled as such, on the SSOD model too.

Every training run is a real ``timm-ssod train`` run (``timm_ssod.train.main``) in
``<out_dir>/<stage>/``. The synthetic data are the fixed benchmark (data seed 0); ``seed``
is the training seed (weights init, augmentation, batch order).
"""
import logging
import os
import time
from collections import OrderedDict
from typing import Dict, Iterable, List, Mapping, Optional, Sequence, Union

import torch
import torch.nn.functional as F
from timm.data import create_loader, create_transform, resolve_data_config

from .._util import atomic_write_text
from ._record import results_text
from ..data import DEFAULT_BACKGROUND, OOD_SETS, SyntheticDataset, create_dataset
from ..core import (BALANCE, GAMMA, ID_INDEX, IGNORED, LAMBDA, OOD_INDEX, id_probability, sample_patches,
                    target_confidence)
from ..detectors import detector_class
from ..evaluate import AVERAGE, DEFAULT_DETECTORS, SSOD_DETECTORS, evaluate, format_table, load_eval_model, write_results

__all__ = ['run_protocol', 'train_stage', 'evaluate_checkpoint', 'merge_results', 'protocol_table',
           'remove_checkpoints', 'sampler_alignment', 'alignment_line', 'trained_benchmark', 'ssod_only', 'BASELINES',
           'ROW_LABELS']

_logger = logging.getLogger(__name__)

BASELINES = tuple(d for d in DEFAULT_DETECTORS if d not in SSOD_DETECTORS)
# how a (model, detector) pair is named in the combined table
ROW_LABELS = {'ssod': '{det} (SSOD model)', 'vanilla': '{det} (vanilla model)'}


def ssod_only(detector: str) -> bool:
    """Whether a detector name needs the OOD head (scored on the SSOD model only)."""
    return detector_class(detector).needs_ood_head


def _kv(mapping: Mapping) -> List[str]:
    return [f'{k}={v}' for k, v in mapping.items()]


def train_stage(name: str, out_dir: str, *, backbone: str, model_kwargs: Mapping, img_size: int, num_images: int,
                num_val: int, num_classes: int, epochs: int, lr: float, batch_size: int, seed: int, ssod: bool,
                initial_checkpoint: Optional[str] = None, pretrained_path: Optional[str] = None,
                gamma: float = GAMMA, lam: float = LAMBDA,
                balance: str = BALANCE, workers: int = 0, log_interval: int = 20,
                select_on: Sequence[str] = (), extra_args: Sequence[str] = (), render_size: Optional[int] = None,
                background: str = DEFAULT_BACKGROUND) -> Dict:
    """One ``timm-ssod train`` run into ``<out_dir>/<name>``: images rendered at ``render_size``
    (default ``img_size``) on ``background`` backgrounds, resized by timm's transforms to
    ``img_size`` (the paper's resize-up recipe when ``render_size < img_size``); AdamW, cosine schedule without
    warm-up, mild augmentation (objects stay in the crop), no label smoothing (it would cap
    the class confidence below gamma). ``select_on``: OOD sets whose *validation* splits
    select the checkpoint (``--ood-val``, ``--eval-metric fpr95``: the lowest mean FPR95 of
    the run's own score, SSOD or MSP; the paper's A.4); empty: the last epoch. The starting
    weights: ``initial_checkpoint`` (a training checkpoint) or ``pretrained_path`` (a weights file,
    ``--pretrained-path``: timm's offline pretrained path, the shipped stand-ins'). Returns
    ``dict(checkpoint, best_epoch, argv, seconds, val_top1)``."""
    from ..train import main as train_main
    data_kwargs = dict(num_images=num_images, img_size=render_size or img_size, background=background)
    argv = ['--dataset', 'synthetic/id', '--dataset-kwargs', *_kv(data_kwargs),
            '--val-split', 'val', '--val-dataset-kwargs', f'num_images={num_val}', '--num-classes', str(num_classes),
            '--model', backbone, '--img-size', str(img_size),
            '--opt', 'adamw', '--lr', str(lr), '--weight-decay', '0.05', '--sched', 'cosine', '--warmup-epochs', '0',
            '--epochs', str(epochs), '-b', str(batch_size), '--workers', str(workers),
            '--scale', '0.8', '1.0', '--color-jitter', '0', '--smoothing', '0', '--seed', str(seed),
            '--output', out_dir, '--experiment', name, '--checkpoint-hist', '1', '--log-interval', str(log_interval)]
    if model_kwargs:
        argv += ['--model-kwargs', *_kv(model_kwargs)]
    if initial_checkpoint:
        argv += ['--initial-checkpoint', initial_checkpoint]
    if pretrained_path:  # the path a user takes with downloaded weights, offline
        argv += ['--pretrained-path', pretrained_path]
    argv += ['--ssod', '--gamma', str(gamma), '--ood-lambda', str(lam), '--balance', balance] if ssod else ['--no-ssod']
    if select_on:
        argv += ['--ood-val', *[f'{o}=synthetic/{o}' for o in select_on], '--eval-metric', 'fpr95']
    argv += list(extra_args)
    start = time.time()
    result = train_main(argv)
    metrics = result.get('eval_metrics') or {}
    best = 'model_best.pth.tar' if select_on else 'last.pth.tar'
    return dict(checkpoint=os.path.join(result['output_dir'], best), argv=argv, seconds=round(time.time() - start, 1),
                best_epoch=result.get('best_epoch') if select_on else epochs - 1, val_top1=metrics.get('top1'))


def trained_benchmark(train_args: Mapping, checkpoint: str) -> Dict:
    """The built-in benchmark's input a checkpoint was trained on, from its run's arguments
    (``load_eval_model``'s ``info['train_args']``): ``img_size`` (``--img-size``), ``render_size``
    and ``background`` (``--dataset-kwargs img_size=... background=...``; by default the input size
    and the default background). A ValueError naming the checkpoint when its arguments are missing."""
    if not train_args.get('img_size'):
        raise ValueError(f'{checkpoint}: no training arguments beside it (args.yaml), so the input size is unknown')
    rendered = train_args.get('dataset_kwargs') or {}
    return {'img_size': train_args['img_size'], 'render_size': rendered.get('img_size', train_args['img_size']),
            'background': rendered.get('background', DEFAULT_BACKGROUND)}


def remove_checkpoints(run_dir: str, keep: Optional[str] = None) -> None:
    """Delete the ``*.pth.tar`` files of a training run (its logs and args.yaml stay), except the
    file named ``keep`` (a name or path inside ``run_dir``) when given."""
    keep = os.path.basename(keep) if keep else None
    for name in os.listdir(run_dir):
        if name.endswith('.pth.tar') and name != keep:
            os.remove(os.path.join(run_dir, name))


def _loader(model, dataset, img_size: int, batch_size: int, workers: int):
    """The evaluation transforms of training's validation (timm's eval transforms at the
    training size), images in order."""
    cfg = resolve_data_config({'img_size': img_size}, model=model)
    return create_loader(dataset, input_size=cfg['input_size'], batch_size=batch_size, is_training=False,
                         use_prefetcher=False, interpolation=cfg['interpolation'], mean=cfg['mean'], std=cfg['std'],
                         crop_pct=cfg['crop_pct'], num_workers=workers)


def evaluate_checkpoint(checkpoint: str, detectors: Sequence[Union[str, object]], *, img_size: int, num_classes: int,
                        ood_sets: Iterable[str] = OOD_SETS, num_test: int = 600, num_ood: int = 600,
                        num_fit: int = 2000, split: str = 'test', batch_size: int = 128, workers: int = 0,
                        progress: bool = True, seed: int = 0, return_scores: bool = False,
                        render_size: Optional[int] = None, background: str = DEFAULT_BACKGROUND):
    """The harness on one checkpoint (data rendered at ``render_size`` on ``background``
    backgrounds, resized to ``img_size``): ID ``split`` (``num_test`` images), each OOD set's
    ``split`` (``num_ood`` images), detectors that fit fitted on the first ``num_fit``
    ID training images (no augmentation). ``split='val'`` gives validation scores, for
    choices (e.g. a mixing weight) that must not see the test sets."""
    model, _ = load_eval_model(checkpoint=checkpoint)

    def data(name, split_, n):
        ds = create_dataset(name, split=split_, img_size=render_size or img_size, num_images=n,
                            num_classes=num_classes, background=background)
        return _loader(model, ds, img_size, batch_size, workers)

    ood = OrderedDict((s, data(f'synthetic/{s}', split, num_ood)) for s in ood_sets)
    cfg = resolve_data_config({'img_size': img_size}, model=model)
    kwargs = {'odin': {'std': cfg['std']}} if 'odin' in detectors else None
    return evaluate(model, data('synthetic/id', split, num_test), ood, detectors=detectors,
                    fit_loader=data('synthetic/id', 'train', num_fit) if num_fit else None, progress=progress,
                    seed=seed, detector_kwargs=kwargs, return_scores=return_scores)


def sampler_alignment(checkpoint: str, *, img_size: int, num_classes: int, gamma: float = GAMMA,
                      num_images: int = 256, split: str = 'val', batch_size: int = 64,
                      render_size: Optional[int] = None, background: str = DEFAULT_BACKGROUND) -> Dict:
    """Does Eq. 12 find the backgrounds? On ``num_images`` ID images of ``split``, the share of
    locations the sampler labels ID / OOD / ignored, the mean object coverage of each (the
    fraction of the location's cell covered by the object, from the generator's masks), the
    sampler's label on pure-background cells (coverage < 5%) and on object cells (coverage > 50%),
    the mean P(ID) of the OOD head on object cells (coverage > 50%) and on background cells, and
    the images with no ID location (their share, the share of the OOD locations they hold and the
    coverage of those: the OOD samples that balance ``dr`` drops). The paper's premise is that
    OOD-labelled locations are background: their coverage should be near 0."""
    model, _ = load_eval_model(checkpoint=checkpoint)
    cfg = resolve_data_config({'img_size': img_size, 'crop_pct': 1.0}, model=model)  # cells aligned with the masks
    ds = SyntheticDataset('id', split=split, num_images=num_images, img_size=render_size or img_size,
                          num_classes=num_classes, background=background)
    tf = create_transform(**cfg)
    labels, cover, p_id = [], [], []
    with torch.no_grad():
        for start in range(0, num_images, batch_size):
            idx = range(start, min(start + batch_size, num_images))
            x = torch.stack([tf(ds.image(i)) for i in idx])
            y = torch.tensor([ds.label(i) for i in idx])
            out = model.forward_ssod(x)
            masks = torch.stack([torch.tensor(ds.object_mask(i), dtype=torch.float32) for i in idx])[:, None]
            cover.append(F.adaptive_avg_pool2d(masks, out.grid).flatten(1))
            labels.append(sample_patches(target_confidence(out.patch_logits, y), gamma))
            p_id.append(id_probability(out.patch_ood_logits))
    return {'num_images': num_images, 'split': split, 'gamma': gamma, 'grid': list(out.grid),
            **alignment_stats(torch.cat(labels), torch.cat(cover), torch.cat(p_id))}


def alignment_stats(labels: torch.Tensor, cover: torch.Tensor, p_id: torch.Tensor) -> Dict:
    """``sampler_alignment``'s statistics from the sampler's labels (N, L) in {1 ID, 0 OOD, -1
    ignored}, each location's object coverage (N, L) in [0, 1] and the head's P(ID) (N, L).
    Pure-background cells: coverage < 5%; object cells: > 50%. A mean over no location is None."""
    background, obj = cover < 0.05, cover > 0.5
    # images with no ID location: their OOD locations count in 'lwb' and 'lw', not in 'dr' (per image, min(#ID, #OOD))
    no_id = ~(labels == ID_INDEX).any(1, keepdim=True).expand_as(labels)
    ood = labels == OOD_INDEX

    def mean(t, mask):
        return float(t[mask].float().mean()) if mask.any() else None
    names = {'id': ID_INDEX, 'ood': OOD_INDEX, 'ignored': IGNORED}
    return {'share': {k: float((labels == v).float().mean()) for k, v in names.items()},
            'object_coverage': {k: mean(cover, labels == v) for k, v in names.items()},
            'background_cells': {'share_of_cells': float(background.float().mean()),
                                 **{f'labelled_{k}': mean(labels == v, background) for k, v in names.items()}},
            'object_cells': {'share_of_cells': float(obj.float().mean()),
                             **{f'labelled_{k}': mean(labels == v, obj) for k, v in names.items()}},
            'p_id': {'object_cells': mean(p_id, obj), 'background_cells': mean(p_id, background)},
            'images_without_id': {'share_of_images': float(no_id[:, 0].float().mean()),
                                  'share_of_ood_locations': mean(no_id, ood),
                                  'object_coverage_of_their_ood': mean(cover, ood & no_id),
                                  'object_coverage_of_other_ood': mean(cover, ood & ~no_id)}}


def alignment_line(a: Dict) -> str:
    """One line summarising ``sampler_alignment``."""
    def pct(v):
        return '–' if v is None else f'{100 * v:.0f}%'
    c, b, p = a['object_coverage'], a['background_cells'], a['p_id']
    return (f"Sampler (Eq. 12) on {a['num_images']} ID {a['split']} images, {a['grid'][0]}x{a['grid'][1]} map: "
            f"ID {pct(a['share']['id'])} / OOD {pct(a['share']['ood'])} / ignored {pct(a['share']['ignored'])} of "
            f"locations; object coverage of ID-labelled {pct(c['id'])}, OOD-labelled {pct(c['ood'])}; pure-background "
            f"cells labelled OOD {pct(b['labelled_ood'])}, ID {pct(b['labelled_id'])}; P(ID) object cells "
            f"{pct(p['object_cells'])}, background cells {pct(p['background_cells'])}")


def merge_results(results: Mapping[str, Dict]) -> Dict:
    """One harness-style result whose rows are ``'<detector> (<model> model)'``, SSOD scores
    first, from ``{'ssod': result, 'vanilla': result}``; ``id_accuracy`` per model."""
    rows, average = OrderedDict(), OrderedDict()
    order = [(m, d) for m in ('ssod',) if m in results for d in results[m]['results'] if d not in BASELINES]
    order += [(m, d) for m in ('vanilla', 'ssod') if m in results for d in results[m]['results'] if d in BASELINES]
    for model, det in order:
        label = ROW_LABELS.get(model, '{det} (' + model + ')').format(det=det)
        rows[label] = results[model]['results'][det]
        average[label] = results[model][AVERAGE][det]
    first = next(iter(results.values()))
    return {'model': first['model'], 'id_accuracy': {m: r['id_accuracy'] for m, r in results.items()},
            'num_id': first['num_id'], 'num_ood': first['num_ood'], 'num_used': first['num_used'],
            'results': rows, AVERAGE: average, 'skipped': {}, 'notes': first.get('notes', [])}


def protocol_table(merged: Dict, title: str = '') -> str:
    """The paper-style markdown table (``report.format_table``) of ``merge_results``, with
    one ID-accuracy line per model instead of format_table's single one."""
    acc = ', '.join(f'{m} fine-tune {100 * a:.2f}%' for m, a in merged['id_accuracy'].items() if a is not None)
    body = format_table(dict(merged, id_accuracy=None)).split('\n', 2)[2]  # drop format_table's model/accuracy line
    head = [title, ''] if title else []
    return '\n'.join(head + [f"Model: {merged['model']}, ID accuracy ({merged['num_id']} test images): {acc}", '',
                             body])


def run_protocol(backbone: str = 'resnet10t', model_kwargs: Optional[Mapping] = None, img_size: int = 64,
                 num_images: int = 4000, stage1_epochs: int = 6, finetune_epochs: int = 3, seed: int = 0,
                 gamma: float = GAMMA, lam: float = LAMBDA, balance: str = BALANCE,
                 detectors: Sequence[str] = DEFAULT_DETECTORS, out_dir: str = './output/protocol', *,
                 num_classes: int = 6, num_val: int = 300, num_test: int = 600, num_ood: int = 600,
                 num_fit: int = 2000, ood_sets: Sequence[str] = OOD_SETS, lr: float = 2e-3,
                 finetune_lr: float = 5e-4, batch_size: int = 64, workers: int = 0,
                 stage1_checkpoint: Optional[str] = None, pretrained_path: Optional[str] = None,
                 vanilla: bool = True, progress: bool = True,
                 log_interval: int = 20, train_args: Sequence[str] = (), select: str = 'fpr95',
                 keep_checkpoints: bool = True, render_size: Optional[int] = None,
                 background: str = DEFAULT_BACKGROUND, stage1_img_size: Optional[int] = None) -> Dict:
    """Run the protocol (module docstring) into ``out_dir`` and return its record::

        {"config": {...every argument...}, "stage1": {"checkpoint", "seconds", "val_top1", "argv"},
         "finetune": {"ssod": {...}, "vanilla": {...}},
         "eval": {"ssod": <evaluate() result>, "vanilla": <evaluate() result>},
         "table": <merge_results(eval)>, "table_md": "...", "seconds": {...}}

    ``background``: the benchmark's background family (``'natural'`` or ``'smooth'``, the A.5
    failure case); ``render_size``: the size images are generated at (default ``img_size``),
    resized up to ``img_size`` by timm's transforms (the paper renders CIFAR at 32 px, trains at 224).
    ``stage1_img_size``: the input size of stage 1 (default ``img_size``); ``benchmarks/regime.py``
    and the demo train it at the render size and fine-tune resized up, as pretrained weights are
    trained at one resolution and fine-tuned at another (a CNN's weights do not depend on it).
    ``model_kwargs``: ``timm.create_model`` arguments; None means ``{'output_stride': 16}``
    (a 4x4 map at 64 px). The defaults are ``timm-ssod demo``'s.
    ``stage1_checkpoint``: reuse a stage-1 checkpoint (e.g. one per backbone for several
    seeds or ablation settings, like fixed pretrained weights) instead of training one.
    ``pretrained_path``: fine-tune from a weights file instead (the paper's protocol: a converged
    classifier; ``weights/<backbone>.safetensors``, the shipped stand-ins), no stage 1.
    ``select='fpr95'`` (the paper's A.4): each fine-tune keeps the epoch with the lowest mean
    FPR95 of its own score (SSOD / MSP) on the *validation* splits of ``ood_sets``;
    ``'last'``: the last epoch. The test splits never choose anything.
    ``detectors`` may include ``EXPERIMENTAL_DETECTORS`` (SSOD model only).
    ``keep_checkpoints=False`` deletes the fine-tunes' ``*.pth.tar`` once they are evaluated.
    ``vanilla=False``: only the SSOD fine-tune (ablations). ``detectors``: the baselines run
    on both models, SSOD detectors on the SSOD model only. Writes ``protocol.json`` (its paths
    relative to ``out_dir``) and ``table.md`` in ``out_dir`` and each model's
    ``eval/<model>/results.{json,csv,md}``.
    """
    model_kwargs = {'output_stride': 16} if model_kwargs is None else dict(model_kwargs)
    config = dict(backbone=backbone, model_kwargs=model_kwargs, img_size=img_size, num_images=num_images,
                  stage1_epochs=stage1_epochs, finetune_epochs=finetune_epochs, seed=seed, gamma=gamma, lam=lam,
                  balance=balance, detectors=list(detectors), num_classes=num_classes, num_val=num_val,
                  num_test=num_test, num_ood=num_ood, num_fit=num_fit, ood_sets=list(ood_sets), lr=lr,
                  finetune_lr=finetune_lr, batch_size=batch_size, stage1_checkpoint=stage1_checkpoint,
                  pretrained_path=pretrained_path,
                  vanilla=vanilla, train_args=list(train_args), select=select, render_size=render_size,
                  background=background, stage1_img_size=stage1_img_size)
    out_dir = os.path.abspath(out_dir)
    start = time.time()
    common = dict(backbone=backbone, model_kwargs=model_kwargs, img_size=img_size, num_images=num_images,
                  num_val=num_val, num_classes=num_classes, batch_size=batch_size, seed=seed, workers=workers,
                  log_interval=log_interval, extra_args=train_args, render_size=render_size, background=background)
    if stage1_checkpoint and pretrained_path:
        raise ValueError('give stage1_checkpoint or pretrained_path, not both: both are the fine-tunes\' start')
    steps = 1 + (stage1_checkpoint is None and pretrained_path is None) + 2 * (1 + vanilla)
    step = iter(range(1, steps + 1))

    if select not in ('fpr95', 'last'):
        raise ValueError(f"select must be 'fpr95' or 'last', got {select!r}")
    if pretrained_path:
        stage1 = dict(checkpoint=None, pretrained_path=pretrained_path, seconds=0.0, val_top1=None, argv=None)
        start_from = dict(pretrained_path=pretrained_path)
    elif stage1_checkpoint is None:
        _logger.info(f'[protocol {next(step)}/{steps}] stage 1: vanilla {backbone} from scratch, {stage1_epochs} '
                     f'epochs on {num_images} images at {stage1_img_size or img_size}px (stand-in for pretrained '
                     'weights)')
        stage1 = train_stage('stage1_vanilla', out_dir, epochs=stage1_epochs, lr=lr, ssod=False,
                             **dict(common, img_size=stage1_img_size or img_size))
        start_from = dict(initial_checkpoint=stage1['checkpoint'])
    else:
        stage1 = dict(checkpoint=stage1_checkpoint, seconds=0.0, val_top1=None, argv=None)
        start_from = dict(initial_checkpoint=stage1_checkpoint)
    source = os.path.basename(pretrained_path) if pretrained_path else 'stage 1'

    runs = ['ssod'] + (['vanilla'] if vanilla else [])
    finetune = OrderedDict()
    for kind in runs:
        what = f'SSOD (gamma {gamma}, lambda {lam}, {balance})' if kind == 'ssod' else 'vanilla (cross-entropy)'
        _logger.info(f'[protocol {next(step)}/{steps}] fine-tune {what}: {finetune_epochs} epochs from {source}, '
                     f'seed {seed}')
        finetune[kind] = train_stage(f'finetune_{kind}', out_dir, epochs=finetune_epochs, lr=finetune_lr,
                                     ssod=kind == 'ssod', **start_from, gamma=gamma,
                                     lam=lam, balance=balance, select_on=ood_sets if select == 'fpr95' else (),
                                     **common)

    alignment = sampler_alignment(finetune['ssod']['checkpoint'], img_size=img_size, num_classes=num_classes,
                                  gamma=gamma, num_images=min(256, num_val), render_size=render_size,
                                  background=background)
    results = OrderedDict()
    for kind in runs:
        dets = [d for d in detectors if kind == 'ssod' or not ssod_only(d)]
        _logger.info(f'[protocol {next(step)}/{steps}] evaluate the {kind} model: {", ".join(dets)} on the ID test '
                     f'split and {", ".join(ood_sets)}')
        t = time.time()
        results[kind] = evaluate_checkpoint(finetune[kind]['checkpoint'], dets, img_size=img_size,
                                            num_classes=num_classes, ood_sets=ood_sets, num_test=num_test,
                                            num_ood=num_ood, num_fit=num_fit, workers=workers, progress=progress,
                                            render_size=render_size, background=background)
        finetune[kind]['eval_seconds'] = round(time.time() - t, 1)
        write_results(results[kind], os.path.join(out_dir, 'eval', kind))
        if not keep_checkpoints:
            remove_checkpoints(os.path.dirname(finetune[kind]['checkpoint']))

    merged = merge_results(results)
    chosen = ', '.join(f"{k} epoch {v['best_epoch'] + 1}/{finetune_epochs}" for k, v in finetune.items())
    how = 'best validation FPR95' if select == 'fpr95' else 'last epoch'
    table_md = protocol_table(merged, f'{backbone}: SSOD vs vanilla fine-tuning, seed {seed} (checkpoints: {chosen}; '
                              f'{how})') + '\n\n' + alignment_line(alignment)
    seconds = dict(stage1=stage1['seconds'], **{f'finetune_{k}': v['seconds'] for k, v in finetune.items()},
                   **{f'eval_{k}': v['eval_seconds'] for k, v in finetune.items()}, total=round(time.time() - start, 1))
    record = dict(config=config, stage1=stage1, finetune=finetune, eval=results, table=merged, table_md=table_md,
                  sampler_alignment=alignment, seconds=seconds)
    # paths relative to out_dir: the record says nothing of where the run was made
    atomic_write_text(os.path.join(out_dir, 'protocol.json'), results_text(record, out_dir))
    atomic_write_text(os.path.join(out_dir, 'table.md'), table_md + '\n')
    return record
