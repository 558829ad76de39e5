"""The study's probes and run bookkeeping, on checkpoints of the built-in benchmark:
``location_probe`` (the OOD head's P(ID) location by location), ``decisions_checkpoint``
(calibrated decisions, ``lib.decisions``), ``read_result`` / ``train_stage_once`` (resumable runs)."""
import fcntl
import json
import os
from collections import OrderedDict
from typing import Callable, Dict, Iterable, Optional, Sequence, Union

import torch
import torch.nn.functional as F
from timm.data import create_transform, resolve_data_config

from timm_ssod._util import atomic_write_text
from timm_ssod.core import id_probability
from timm_ssod.data import DEFAULT_BACKGROUND, OOD_SETS, SyntheticDataset, create_dataset
from timm_ssod.demo._protocol import _loader
from timm_ssod.evaluate import load_eval_model

__all__ = ['read_result', 'train_stage_once', 'decisions_checkpoint', 'location_probe']


def read_result(path: str) -> Optional[Dict]:
    """The JSON an earlier (perhaps interrupted) benchmark run wrote at ``path``, for a rerun to
    resume from; None when there is none. Exits naming the file when it is not valid JSON, so
    that a rerun never overwrites a file it could not read."""
    if not os.path.exists(path):
        return None
    try:
        with open(path) as f:
            return json.load(f)
    except ValueError as e:
        raise SystemExit(f'{path}: not valid JSON ({e}); move it away to start again')


def train_stage_once(root: str, train: Callable[[], Dict]) -> Dict:
    """A stage shared by several runs (e.g. one stage 1 per backbone), trained once: ``train()``
    (a ``train_stage`` call) runs only when ``<root>/stage1.json`` is missing or names a checkpoint
    that is gone; its record is then written there atomically. A file lock makes a second process
    wait for the first instead of training the same stage again. Returns the record."""
    os.makedirs(root, exist_ok=True)
    marker = os.path.join(root, 'stage1.json')
    with open(os.path.join(root, 'stage1.lock'), 'w') as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if os.path.exists(marker):
            with open(marker) as f:
                record = json.load(f)
            if os.path.exists(record['checkpoint']):
                return record
        record = train()
        atomic_write_text(marker, json.dumps(record, indent=2) + '\n')
        return record


def decisions_checkpoint(checkpoint: str, detectors: Sequence[Union[str, object]], *, img_size: int, num_classes: int,
                         ood_sets: Iterable[str] = OOD_SETS, num_fit: int = 2000, num_calib: int = 200,
                         num_test: int = 600, num_ood: int = 600, alphas: Sequence[float] = (0.01, 0.05, 0.1),
                         batch_size: int = 128, render_size: Optional[int] = None,
                         background: str = DEFAULT_BACKGROUND) -> Dict:
    """Calibrated decisions on one checkpoint (``lib.decisions.measure_decisions``):
    detectors fitted on ``num_fit`` ID training images, calibrated on ``num_calib`` ID *validation*
    images, the ID rejection rate at each alpha measured on the ID test split (never used for
    either), and the share of each OOD set's test split caught. The same images and transforms
    as ``evaluate_checkpoint``."""
    from .decisions import measure_decisions
    model, _ = load_eval_model(checkpoint=checkpoint)

    def data(name, split, n):
        ds = create_dataset(name, split=split, img_size=render_size or img_size, num_images=n,
                            num_classes=num_classes, background=background)
        return _loader(model, ds, img_size, batch_size, 0)
    return measure_decisions(model, data('synthetic/id', 'train', num_fit), data('synthetic/id', 'val', num_calib),
                             data('synthetic/id', 'test', num_test),
                             OrderedDict((s, data(f'synthetic/{s}', 'test', num_ood)) for s in ood_sets),
                             detectors=detectors, alphas=alphas)


def location_probe(checkpoint: str, *, img_size: int, num_classes: int, ood_sets: Iterable[str] = OOD_SETS,
                   num_images: int = 200, split: str = 'test', batch_size: int = 64, render_size: Optional[int] = None,
                   background: str = DEFAULT_BACKGROUND) -> Dict:
    """Where does the OOD head's P(ID) go wrong? On ``num_images`` ID images and as many of each
    OOD set: the mean P(ID) of the head at every location (ID images: on object cells, > 50%
    object, and pure-background cells, < 5%), and the AUROC (ID vs set; 0.5 = no separation) of
    three ways to turn the locations into one score: the head on the pooled feature (Eq. 15, the
    SSOD score), the mean of the per-location P(ID), and the most-ID location (``ssod_patch_max``).
    If all three fail where the per-location P(ID) of object-free images is as high as that of ID
    object cells, the head itself misjudges those images, whatever the pooling."""
    from timm_ssod.metrics import ood_metrics
    model, _ = load_eval_model(checkpoint=checkpoint)
    cfg = resolve_data_config({'img_size': img_size, 'crop_pct': 1.0}, model=model)  # cells aligned with the masks
    tf = create_transform(**cfg)

    def run(kind):
        ds = SyntheticDataset(kind, split=split, num_images=num_images, img_size=render_size or img_size,
                              num_classes=num_classes, background=background)
        pooled, cells, cover = [], [], []
        with torch.no_grad():
            for start in range(0, num_images, batch_size):
                idx = range(start, min(start + batch_size, num_images))
                out = model.forward_ssod(torch.stack([tf(ds.image(i)) for i in idx]))
                pooled.append(id_probability(out.ood_logits))
                cells.append(id_probability(out.patch_ood_logits))
                if kind == 'id':
                    masks = torch.stack([torch.tensor(ds.object_mask(i), dtype=torch.float32) for i in idx])[:, None]
                    cover.append(F.adaptive_avg_pool2d(masks, out.grid).flatten(1))
        return torch.cat(pooled), torch.cat(cells), torch.cat(cover) if cover else None

    id_pooled, id_cells, id_cover = run('id')
    scores = {'pooled head (Eq. 15)': lambda pooled, cells: pooled, 'mean of locations': lambda pooled, cells:
              cells.mean(1), 'most-ID location': lambda pooled, cells: cells.max(1).values}
    result = {'num_images': num_images, 'split': split, 'id': {
        'p_id_object_cells': float(id_cells[id_cover > 0.5].mean()) if (id_cover > 0.5).any() else None,
        'p_id_background_cells': float(id_cells[id_cover < 0.05].mean()) if (id_cover < 0.05).any() else None,
        'p_id_all_cells': float(id_cells.mean()), 'p_id_pooled': float(id_pooled.mean())}, 'ood': OrderedDict()}
    for name in ood_sets:
        pooled, cells, _ = run(name)
        result['ood'][name] = {'p_id_all_cells': float(cells.mean()), 'p_id_pooled': float(pooled.mean()),
                               'auroc': {k: ood_metrics(f(id_pooled, id_cells).numpy(), f(pooled, cells).numpy())['auroc']
                                         for k, f in scores.items()}}
    return result
