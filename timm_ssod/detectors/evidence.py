"""Evidence from ID data only on what a fused score should trust: pseudo-OOD samples made from
ID images, and each detector's AUROC on them (its pseudo-AUROC). How well each source predicts real
OOD performance is measured in docs/study/evidence.md.

No OOD image is used anywhere. Each source is a set of pseudo-OOD samples that a detector
scores like images (``ModelOutputs``: features, logits, SSOD logits), against an ID side:

=====================  ============================================================  ======================
source                 pseudo-OOD                                                    ID side
=====================  ============================================================  ======================
``background``         locations Eq. 12 labels OOD (confidence on the labelled       ID images
                       class < 1 - gamma), at most ``per_image`` per image, the
                       least confident first. Each is read as an image whose whole
                       map were that location: features ``forward_head(1x1 map,
                       pre_logits=True)``, logits ``forward_head(1x1 map)``, SSOD
                       logits ``f_ood(location)``
``background_local``   the same locations                                            locations Eq. 12
                                                                                     labels ID (the most
                                                                                     confident first)
``background_crop``    the input region under each image's least confident          ID images
                       OOD-labelled cell, cropped and resized to the input size,
                       through the backbone (one pass per image that has one)
``patch_shuffle``      ID images cut into a 4 x 4 grid of patches, shuffled          ID images
``blur``               ID images under a Gaussian blur, sigma = 1/10 of the side     ID images
``pixel_permutation``  ID images with their pixels permuted (the colours stay,       ID images
                       every structure goes)
``leave_classes_out``  the ID images of held-out classes; the detector is fitted,    the other classes'
                       and the logits restricted, without those classes (no          images, out of fold
                       retraining; a score that reads the OOD head, trained on
                       every class, has none)
=====================  ============================================================  ======================

Why ``background_local`` beside ``background``: a single location lies further from the pooled
class means than any pooled image does, so ``background`` also rewards a score for telling one
location from a pooled map; ``background_local`` compares like with like. Which source predicts
which real OOD sets is measured, not assumed (``benchmarks/evidence.py``).

Too few samples: a source with fewer than ``min_samples`` pseudo-OOD (or ID) samples gives no
pseudo-AUROC (None, never NaN) for any detector, with a warning that says why; e.g. an untrained
or under-confident classifier, for which Eq. 12 labels no location OOD. The selection rule
(``select_components``) then uses the other sources; a component with no evidence at all keeps its
a-priori place, and with no evidence for any component the a-priori components are kept.
"""
from collections import OrderedDict
import functools
import math
from dataclasses import dataclass, field
from typing import Callable, Dict, Iterable, Mapping, Optional, Sequence, Tuple

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor

from ..core import (ID_INDEX, OOD_INDEX, head_per_location, is_ssod_model, model_gamma, sample_patches,
                    target_confidence, to_locations)
from ..metrics import auroc
from .._util import warn
from .base import Detector, ModelOutputs, _model_device, apply_classifier, compute_outputs, eval_batches, \
    outputs_of_features

__all__ = ['SOURCES', 'IMAGE_SOURCES', 'TRANSFORMS', 'EvidenceData', 'collect_evidence', 'evidence_budget',
           'evidence_table', 'leave_classes_out', 'select_components', 'describe_selection', 'patch_shuffle',
           'heavy_blur', 'permute_pixels', 'pseudo_auroc', 'restrict_classes']

LOCATION_SOURCES = ('background', 'background_local', 'background_crop')
TRANSFORM_SOURCES = ('patch_shuffle', 'blur', 'pixel_permutation')
IMAGE_SOURCES = LOCATION_SOURCES + TRANSFORM_SOURCES
SOURCES = IMAGE_SOURCES + ('leave_classes_out',)
# named sets of sources a rule may average (a rule's ``sources``). ``no_local``: every source but
# background_local, which predicted nothing (docs/study/evidence.md); registered after the held-out misses it caused,
# judged on models trained after it was added, and the default rule's sources since (ssod_fused.EVIDENCE_RULE)
SOURCE_SETS = OrderedDict([('all', SOURCES), ('locations', LOCATION_SOURCES), ('transforms', TRANSFORM_SOURCES),
                           *((s, (s,)) for s in SOURCES),
                           ('no_local', tuple(s for s in SOURCES if s != 'background_local'))])


# How many fit images the image sources are made from by default (``evidence_budget``). Each costs up to four
# more backbone passes (three transforms, one crop), so one in EVIDENCE_SHARE of the fit images keeps the extra
# passes at half a pass over the fit images; capped at EVIDENCE_IMAGES, and at least MIN_EVIDENCE_IMAGES (or every
# fit image) so that a small fit set still gets twice the default min_samples (below 320 fit images that floor
# costs more than half a pass, on a fit that takes seconds). Measured against the rule's quality
# at 500, 250 and 125 images (benchmarks/evidence_images.json, docs/study/evidence.md).
EVIDENCE_IMAGES = 500
EVIDENCE_SHARE = 8
MIN_EVIDENCE_IMAGES = 40


def evidence_budget(num_fit: Optional[int]) -> int:
    """The default number of evidence images for ``num_fit`` fit images (None: not known, the cap)."""
    if num_fit is None:
        return EVIDENCE_IMAGES
    return max(0, min(num_fit, max(MIN_EVIDENCE_IMAGES, min(EVIDENCE_IMAGES, num_fit // EVIDENCE_SHARE))))


def _loader_images(loader, batch_size: int) -> Optional[int]:
    """How many images ``loader`` gives: its dataset's length (a DataLoader, or a wrapper's ``.loader``), else
    its number of batches times the first batch's size, else None."""
    for obj in (loader, getattr(loader, 'loader', None)):
        dataset = getattr(obj, 'dataset', None)
        if dataset is not None and hasattr(dataset, '__len__'):
            return len(dataset)
    try:
        return len(loader) * batch_size
    except TypeError:
        return None


def rule_key(rule: Mapping) -> str:
    """A rule as one string, ``sources|t=threshold[|topK]|weighting|method`` (``benchmarks/evidence.json``'s keys)."""
    top = f"|top{rule['top']}" if rule.get('top') else ''
    return f"{rule['sources']}|t={rule['threshold']:g}{top}|{rule['weighting']}|{rule['method']}"
WEIGHTINGS = ('none', 'informedness')


# ------------------------------------------------------------------ input transforms of ID images
def patch_shuffle(x: Tensor, grid: int = 4, generator: Optional[torch.Generator] = None) -> Tensor:
    """Each image of (B, C, H, W) cut into ``grid`` x ``grid`` patches put back in a random order
    (one permutation per image). Rows / columns beyond a multiple of ``grid`` stay in place."""
    b, c, h, w = x.shape
    ph, pw = h // grid, w // grid
    if ph < 1 or pw < 1:
        raise ValueError(f'patch_shuffle: a {h}x{w} image cannot be cut into {grid}x{grid} patches')
    out = x.clone()
    body = x[:, :, :ph * grid, :pw * grid].reshape(b, c, grid, ph, grid, pw).permute(0, 2, 4, 1, 3, 5)
    body = body.reshape(b, grid * grid, c, ph, pw)
    order = torch.stack([torch.randperm(grid * grid, generator=generator) for _ in range(b)]).to(x.device)
    body = body[torch.arange(b, device=x.device)[:, None], order]
    out[:, :, :ph * grid, :pw * grid] = body.reshape(b, grid, grid, c, ph, pw).permute(0, 3, 1, 4, 2, 5).reshape(
        b, c, ph * grid, pw * grid)
    return out


def heavy_blur(x: Tensor, sigma_share: float = 0.1) -> Tensor:
    """A Gaussian blur of sigma = ``sigma_share`` x the shorter side (separable, reflected borders)."""
    h, w = x.shape[-2:]
    sigma = max(sigma_share * min(h, w), 0.5)
    radius = max(1, min(int(math.ceil(3 * sigma)), h - 1, w - 1))
    t = torch.arange(-radius, radius + 1, dtype=torch.float32, device=x.device)
    k = torch.exp(-0.5 * (t / sigma) ** 2)
    k = (k / k.sum()).to(x.dtype)
    c = x.shape[1]
    y = F.pad(x, (radius, radius, radius, radius), mode='reflect')
    y = F.conv2d(y, k.view(1, 1, 1, -1).expand(c, 1, 1, -1), groups=c)
    return F.conv2d(y, k.view(1, 1, -1, 1).expand(c, 1, -1, 1), groups=c)


def permute_pixels(x: Tensor, generator: Optional[torch.Generator] = None) -> Tensor:
    """The H x W pixel positions of each image in a random order (all channels together)."""
    b, c, h, w = x.shape
    order = torch.stack([torch.randperm(h * w, generator=generator) for _ in range(b)]).to(x.device)
    flat = x.reshape(b, c, h * w)
    return flat.gather(2, order[:, None, :].expand(b, c, h * w)).reshape(b, c, h, w)


TRANSFORMS: Dict[str, Callable] = {
    'patch_shuffle': patch_shuffle,
    'blur': lambda x, generator=None: heavy_blur(x),
    'pixel_permutation': permute_pixels,
}


# -------------------------------------------------------------------------- collecting the samples
@dataclass
class EvidenceData:
    """ID images' outputs and the pseudo-OOD samples made from them (``collect_evidence``).

    outputs:      ``ModelOutputs`` of every image (one backbone pass each, as ``compute_outputs``).
    targets:      their class labels, or None.
    pseudo:       {image source: ``ModelOutputs`` of its pseudo-OOD samples}, sources with samples only.
    id_locations: ``ModelOutputs`` of the locations Eq. 12 labels ID (``background_local``'s ID side).
    counts:       {source: number of pseudo-OOD samples} for every source asked (0 when none).
    images:       how many images the image sources were made from.
    notes:        {source: why it has no samples}.
    """
    outputs: ModelOutputs
    targets: Optional[Tensor] = None
    pseudo: Dict[str, ModelOutputs] = field(default_factory=dict)
    id_locations: Optional[ModelOutputs] = None
    counts: Dict[str, int] = field(default_factory=dict)
    images: int = 0
    notes: Dict[str, str] = field(default_factory=dict)


def _locations(model: nn.Module, feats: Tensor, img_size) -> Tuple[Tensor, Tensor, Optional[Tensor], Tuple[int, int]]:
    """(features (B, L, D), logits (B, L, M), SSOD logits (B, L, 2) or None, grid) of every location."""
    locations, grid = to_locations(model, feats, img_size)
    pre = head_per_location(model, feats, locations, pre_logits=True)
    logits = head_per_location(model, feats, locations)
    ood = model.ood_head(locations) if is_ssod_model(model) else None
    return pre, logits, ood, grid


def _pick(confidence: Tensor, mask: Tensor, per_image: int, lowest: bool) -> Tuple[Tensor, Tensor]:
    """(image index, location index) of at most ``per_image`` locations of ``mask`` per image, the
    lowest (or highest) confidence first."""
    fill = float('inf') if lowest else float('-inf')
    key = confidence.masked_fill(~mask, fill)
    order = key.argsort(dim=1, descending=not lowest)[:, :per_image]
    valid = mask.gather(1, order)
    rows = torch.arange(confidence.shape[0], device=confidence.device)[:, None].expand_as(order)
    return rows[valid], order[valid]


def _crop_cells(x: Tensor, rows: Tensor, cells: Tensor, grid: Tuple[int, int]) -> Tensor:
    """The input region under cell ``cells[i]`` of image ``rows[i]``, resized to the input size."""
    h, w = x.shape[-2:]
    gh, gw = grid
    crops = []
    for r, cell in zip(rows.tolist(), cells.tolist()):
        i, j = divmod(cell, gw)
        top, bottom = (i * h) // gh, max((i + 1) * h // gh, (i * h) // gh + 1)
        left, right = (j * w) // gw, max((j + 1) * w // gw, (j * w) // gw + 1)
        crops.append(F.interpolate(x[r:r + 1, :, top:bottom, left:right], size=(h, w), mode='bilinear',
                                   align_corners=False))
    return torch.cat(crops)


def collect_evidence(model: nn.Module, loader: Iterable, sources: Sequence[str] = IMAGE_SOURCES,
                     max_images: Optional[int] = None, per_image: int = 2, gamma: Optional[float] = None,
                     seed: int = 0, device=None) -> EvidenceData:
    """One pass over ``loader`` (ID images, batches ``(x, y)``): every image's outputs, and the
    pseudo-OOD samples of the image ``sources`` made from the first ``max_images`` images (see the
    module docstring; None: ``evidence_budget`` of the loader's size). ``gamma``: Eq. 12's threshold,
    default the model's own (``core.model_gamma``). The transforms use a generator seeded with ``seed``.
    Eval mode and no_grad; the mode is restored."""
    unknown = [s for s in sources if s not in SOURCES]
    if unknown:
        raise ValueError(f'unknown evidence source(s) {unknown}; available: {", ".join(SOURCES)}')
    if per_image < 1:
        raise ValueError(f'per_image must be >= 1, got {per_image}')
    if max_images is not None and max_images < 1:
        raise ValueError(f'max_images must be >= 1, got {max_images}')
    sources = [s for s in sources if s in IMAGE_SOURCES]
    gamma = model_gamma(model) if gamma is None else float(gamma)
    device = torch.device(device) if device is not None else _model_device(model)
    generator = torch.Generator().manual_seed(seed)
    parts, labels, pseudo, id_locs = [], [], {s: [] for s in sources}, []
    used, notes = 0, {}
    need_locations = any(s in LOCATION_SOURCES for s in sources)
    for x, y in eval_batches(model, loader, device):
        feats = model.forward_features(x)
        parts.append(outputs_of_features(model, feats, x.shape[-2:]))
        labels.append(None if y is None else torch.as_tensor(y).reshape(-1).long().to(x.device))
        if max_images is None:  # the default budget, from the loader's size (known at the first batch)
            max_images = evidence_budget(_loader_images(loader, x.shape[0]))
        take = min(x.shape[0], max_images - used)
        if take <= 0:
            continue
        xs = x[:take]
        for s in sources:
            if s in TRANSFORMS:
                pseudo[s].append(compute_outputs(model, TRANSFORMS[s](xs, generator=generator)))
        if need_locations:
            if y is None:
                notes.update({s: 'the ID images have no labels: Eq. 12 needs the labelled class'
                              for s in sources if s in LOCATION_SOURCES})
            else:
                _location_samples(model, feats[:take], xs, labels[-1][:take], gamma, per_image, sources,
                                  pseudo, id_locs)
        used += take
    if not parts:
        raise ValueError('collect_evidence: the loader gave no images')
    targets = None if any(t is None for t in labels) else torch.cat(labels)
    data = EvidenceData(ModelOutputs.cat(parts), targets, images=used, notes=notes)
    for s in sources:
        data.counts[s] = sum(o.logits.shape[0] for o in pseudo[s])
        if data.counts[s]:
            data.pseudo[s] = ModelOutputs.cat(pseudo[s])
        elif s not in notes and s in LOCATION_SOURCES:
            notes[s] = (f'Eq. 12 labelled no location OOD (confidence on the labelled class < 1 - gamma = '
                        f'{1 - gamma:.3g}) in {used} ID images: the classifier is not confident enough (untrained?)')
    if id_locs:
        data.id_locations = ModelOutputs.cat(id_locs)
    return data


def _location_samples(model, feats, x, y, gamma, per_image, sources, pseudo, id_locs):
    """The location sources of one batch, appended to ``pseudo`` / ``id_locs``."""
    pre, logits, ood, grid = _locations(model, feats, x.shape[-2:])
    confidence = target_confidence(logits, y)
    labels = sample_patches(confidence, gamma)
    classifier = functools.partial(apply_classifier, model)

    def rows(index):
        i, j = index
        return ModelOutputs(pre[i, j], logits[i, j], None if ood is None else ood[i, j], classifier)
    background = _pick(confidence, labels == OOD_INDEX, per_image, lowest=True)
    if background[0].numel():
        if 'background' in sources or 'background_local' in sources:
            found = rows(background)
            for s in ('background', 'background_local'):  # the same samples, against two ID sides
                if s in sources:
                    pseudo[s].append(found)
        if 'background_crop' in sources:
            first = _pick(confidence, labels == OOD_INDEX, 1, lowest=True)
            pseudo['background_crop'].append(compute_outputs(model, _crop_cells(x, *first, grid)))
    if 'background_local' in sources:
        found = _pick(confidence, labels == ID_INDEX, per_image, lowest=False)
        if found[0].numel():
            id_locs.append(rows(found))


# ------------------------------------------------------------------------- pseudo-AUROCs
def pseudo_auroc(id_scores, ood_scores) -> Optional[float]:
    """AUROC (ID positive, ``timm_ssod.metrics.auroc``) of ID against pseudo-OOD scores; None when
    a side is empty or holds NaN / Inf (never NaN)."""
    a = np.asarray(id_scores.detach().double().cpu() if isinstance(id_scores, Tensor) else id_scores, dtype=np.float64)
    b = np.asarray(ood_scores.detach().double().cpu() if isinstance(ood_scores, Tensor) else ood_scores,
                   dtype=np.float64)
    if a.size == 0 or b.size == 0 or not np.isfinite(a).all() or not np.isfinite(b).all():
        return None
    return float(auroc(a, b))


def restrict_classes(outputs: ModelOutputs, kept: Tensor) -> ModelOutputs:
    """``outputs`` as a model with only the classes ``kept`` would give them: logits (and the
    classifier) restricted to those columns; features and SSOD logits unchanged."""
    kept = kept.to(outputs.logits.device)
    classifier = outputs.classifier
    restricted = None if classifier is None else (lambda f: classifier(f)[:, kept.to(f.device)])
    return ModelOutputs(outputs.features, outputs.logits[:, kept], outputs.ood_logits, restricted)


def _rows(outputs: ModelOutputs, mask: Tensor) -> ModelOutputs:
    idx = mask.nonzero().flatten()
    ood = outputs.ood_logits
    return ModelOutputs(outputs.features[idx], outputs.logits[idx], None if ood is None else ood[idx],
                        outputs.classifier)


def leave_classes_out(names: Sequence[str], factory: Callable[[str], Detector], outputs: ModelOutputs,
                      targets: Optional[Tensor], groups: int = 5, min_samples: int = 20, seed: int = 0
                      ) -> Tuple[Dict[str, Optional[float]], int, Optional[str], Dict[str, str]]:
    """Leave-classes-out pseudo-AUROC of each detector ``names`` (created by ``factory``): the
    classes are cut into ``groups`` groups (at most one per class, seeded order) and the images
    into as many folds; for group g the detector is fitted on the other classes' images outside
    fold g, with the logits restricted to those classes (``restrict_classes``), and scores the
    other classes' images of fold g (ID) against every image of group g (pseudo-OOD). Returns
    ``({name: mean AUROC over the groups, or None}, pseudo-OOD samples, note on the whole source
    or None, {name: note})``. Detectors that read the OOD head (trained on every class) get None."""
    if targets is None:
        return {n: None for n in names}, 0, 'the ID images have no labels', {}
    y = targets.reshape(-1).long().cpu()
    classes = y.unique()
    if classes.numel() < 2:
        return {n: None for n in names}, 0, f'{classes.numel()} class(es) in the ID images: at least 2 are needed', {}
    gen = torch.Generator().manual_seed(seed)
    count = min(int(groups), classes.numel())
    class_groups = [g for g in classes[torch.randperm(classes.numel(), generator=gen)].tensor_split(count)]
    fold = torch.randperm(y.numel(), generator=gen) % count
    num_classes = outputs.logits.shape[-1]
    plans = []
    for g, held in enumerate(class_groups):
        ood = torch.isin(y, held)
        kept = torch.tensor([c for c in range(num_classes) if c not in set(held.tolist())])
        fit, ident = ~ood & (fold != g), ~ood & (fold == g)
        if fit.sum() >= 2 and ident.any() and ood.any():
            remap = torch.full((num_classes,), -1, dtype=torch.long)
            remap[kept] = torch.arange(kept.numel())
            plans.append((kept, fit, ident, ood, remap))
    n_ood = sum(int(p[3].sum()) for p in plans)
    n_id = sum(int(p[2].sum()) for p in plans)
    if not plans or min(n_ood, n_id) < min_samples:
        return ({n: None for n in names}, n_ood,
                f'{n_id} ID and {n_ood} held-out-class images over {len(plans)} usable class groups, fewer than '
                f'min_samples={min_samples}', {})
    device = outputs.logits.device
    result, notes = {}, {}
    for name in names:
        det = factory(name)
        if det.needs_ood_head:
            result[name] = None
            notes[name] = 'reads the OOD head, trained on every class: no class can be left out without retraining'
            continue
        values = []
        try:
            for kept, fit, ident, ood, remap in plans:
                restricted = restrict_classes(outputs, kept)
                if det.needs_fit:
                    det.fit_outputs([(_rows(restricted, fit.to(device)), remap[y[fit]].to(device))])
                value = pseudo_auroc(det.score_outputs(_rows(restricted, ident.to(device))),
                                     det.score_outputs(_rows(restricted, ood.to(device))))
                if value is not None:
                    values.append(value)
        except (ValueError, RuntimeError) as e:
            notes[name] = f'{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ""}'
            values = []
        result[name] = float(np.mean(values)) if values else None
    return result, n_ood, None, notes


def evidence_table(components: Mapping[str, Detector], id_scores: Mapping[str, Tensor], data: EvidenceData,
                   sources: Sequence[str] = SOURCES, factory: Optional[Callable[[str], Detector]] = None,
                   groups: int = 5, min_samples: int = 20, seed: int = 0, warn_missing: bool = True) -> Dict:
    """Every component's pseudo-AUROC on every source (module docstring).

    components: {name: fitted detector}; id_scores: {name: its scores on the ID images of
    ``data.outputs``, out of sample (``ssod_fused``'s cross-fitted references)}; ``factory``
    creates a fresh detector by name for ``leave_classes_out`` (without it that source is skipped).
    Returns a JSON-ready dict: ``auroc`` {name: {source: float or None}}, ``samples`` {source: n},
    ``notes`` {source or 'name on source': why there is no value}. A source with fewer than
    ``min_samples`` samples gives None for every component and, with ``warn_missing``, a warning."""
    names = list(components)
    table = {n: {} for n in names}
    samples, notes = {}, {}
    for s in sources:
        if s == 'leave_classes_out':
            if factory is None:
                values, n, note, per = {k: None for k in names}, 0, 'no detector factory given', {}
            else:
                values, n, note, per = leave_classes_out(names, factory, data.outputs, data.targets, groups,
                                                         min_samples, seed)
            samples[s] = n
            if note:
                notes[s] = note
            notes.update({f'{k} on {s}': v for k, v in per.items()})
            for k in names:
                table[k][s] = values[k]
            continue
        n = data.counts.get(s, 0)
        samples[s] = n
        id_side = data.id_locations if s == 'background_local' else None
        n_id = (0 if id_side is None else id_side.logits.shape[0]) if s == 'background_local' else \
            data.outputs.logits.shape[0]
        if s not in data.pseudo or n < min_samples or n_id < min_samples:
            notes[s] = data.notes.get(s) or (f'{n} pseudo-OOD and {n_id} ID samples, fewer than '
                                             f'min_samples={min_samples}' if s in data.counts else
                                             'not collected (fit on images: fit(model, loader))')
            for k in names:
                table[k][s] = None
            continue
        for k, det in components.items():
            try:
                ood = det.score_outputs(data.pseudo[s])
                ref = det.score_outputs(id_side) if id_side is not None else id_scores[k]
                table[k][s] = pseudo_auroc(ref, ood)
                if table[k][s] is None:
                    notes[f'{k} on {s}'] = 'NaN or Inf scores'
            except (ValueError, RuntimeError) as e:
                table[k][s] = None
                notes[f'{k} on {s}'] = f'{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ""}'
    if warn_missing:
        for s in sources:
            if s in notes and (s in data.counts or s == 'leave_classes_out'):  # not the ones never collected
                warn(f'evidence source {s!r} gives no pseudo-AUROC: {notes[s]}. Fallback: the other sources decide '
                     '(a component with no evidence at all keeps its a-priori place).')
    return {'auroc': table, 'samples': samples, 'notes': notes}


# ------------------------------------------------------------------------------ the rule
def select_components(auroc_table: Mapping[str, Mapping[str, Optional[float]]], names: Sequence[str],
                      sources: Sequence[str] = SOURCES, threshold: float = 0.6, weighting: str = 'none',
                      a_priori: Sequence[str] = (), top: Optional[int] = None) -> Dict:
    """Which components to fuse, from their pseudo-AUROCs only (ID data, no OOD data).

    A component's evidence e is the mean of its pseudo-AUROCs over ``sources`` (those with a
    value). It is kept when e >= ``threshold``; a component with no value on any of the sources
    is kept when it is one of ``a_priori`` (the default components: no evidence either way, the
    a-priori choice stands). ``top``: of the components with evidence that reach the threshold, only
    the ``top`` highest are kept (ties: the pool's order); None keeps them all. Fallback when no component is kept: the ``a_priori`` components
    (those among ``names``; all of ``names`` if none is). ``weighting='informedness'``: Fisher
    weights w = 2 e - 1 (1 for a kept component without evidence). Returns a JSON-ready dict:
    ``rule``, ``candidates``, ``kept``, ``weights`` (or None), ``evidence`` {name: e or None},
    ``reasons`` {name: sentence}, ``fallback`` (None, or why it was used)."""
    if weighting not in WEIGHTINGS:
        raise ValueError(f'unknown weighting {weighting!r}; available: {", ".join(WEIGHTINGS)}')
    if top is not None and (isinstance(top, bool) or not isinstance(top, int) or top < 1):
        raise ValueError(f'top must be a whole number >= 1 or None, got {top!r}')
    unknown = [s for s in sources if s not in SOURCES]
    if unknown:
        raise ValueError(f'unknown evidence source(s) {unknown}; available: {", ".join(SOURCES)}')
    names = list(names)
    evidence, reasons = {}, {}
    for n in names:
        values = [v for v in (auroc_table.get(n, {}).get(s) for s in sources) if v is not None]
        evidence[n] = float(np.mean(values)) if values else None
    kept = []
    for n in names:
        e = evidence[n]
        if e is None:
            if n in a_priori:
                kept.append(n)
                reasons[n] = 'kept: no pseudo-AUROC on these sources, an a-priori component'
            else:
                reasons[n] = 'dropped: no pseudo-AUROC on these sources, not an a-priori component'
        elif e >= threshold:
            kept.append(n)
            reasons[n] = f'kept: pseudo-AUROC {e:.3f} >= {threshold:g}'
        else:
            reasons[n] = f'dropped: pseudo-AUROC {e:.3f} < {threshold:g}'
    if top is not None:
        ranked = sorted((n for n in kept if evidence[n] is not None), key=lambda n: -evidence[n])  # stable: pool order
        for n in ranked[top:]:
            kept.remove(n)
            reasons[n] = f'dropped: pseudo-AUROC {evidence[n]:.3f}, not among the {top} highest'
    fallback = None
    if all(evidence[n] is None for n in names):
        fallback = 'no source gave any component a pseudo-AUROC'
    elif not [n for n in kept if evidence[n] is not None]:
        fallback = f'no component reached pseudo-AUROC {threshold:g}'
    if fallback:
        kept = [n for n in names if n in a_priori] or names
        fallback += f': the a-priori components {", ".join(kept)} are kept'
        for n in names:
            reasons[n] = ('kept (fallback):' if n in kept else 'dropped (fallback):') + reasons[n].split(':', 1)[1]
    weights = None
    if weighting == 'informedness':
        weights = [1.0 if evidence[n] is None else max(2 * evidence[n] - 1, 0.0) for n in kept]
        if not any(w > 0 for w in weights):
            weights = None
    return {'rule': {'sources': list(sources), 'aggregate': 'mean', 'threshold': float(threshold), 'top': top,
                     'weighting': weighting, 'a_priori': [n for n in names if n in a_priori]},
            'candidates': names, 'kept': kept, 'weights': weights, 'evidence': evidence, 'reasons': reasons,
            'fallback': fallback}


def _top_text(rule: Mapping) -> str:
    return f", the {rule['top']} highest" if rule.get('top') else ''


HEAD_CHANCE = 0.05  # a pseudo-AUROC within this of 0.5: SSOD's head separates nothing on the evidence


def ssod_head_note(record: Optional[Mapping]) -> Optional[str]:
    """A plain sentence when the evidence shows SSOD's OOD head separating nothing (pseudo-AUROC
    near 0.5) or ranking the pseudo-OOD above the ID images (below 0.5); None otherwise."""
    e = ((record or {}).get('evidence') or {}).get('ssod')
    if e is None or e >= 0.5 + HEAD_CHANCE:
        return None
    others = ', '.join(n for n in record.get('kept', []) if n != 'ssod') or 'none'
    if e < 0.5 - HEAD_CHANCE:
        return (f"SSOD's OOD head ranks the ID-only pseudo-OOD above the ID images (pseudo-AUROC {e:.2f}): it learned "
                f'OOD backwards, so its P(ID) is misleading on new images; the decision rests on the other components '
                f'({others})')
    return (f"SSOD's OOD head separates nothing on the ID-only evidence (pseudo-AUROC {e:.2f}; 0.50 is chance): its "
            f'P(ID) says little about new images; the decision rests on the other components ({others})')


def describe_selection(record: Mapping) -> str:
    """The lines ``timm-ssod calibrate`` prints: which components were kept, and why."""
    rule = record['rule']
    lines = [f"Components kept from ID-only evidence: {', '.join(record['kept'])} of "
             f"{', '.join(record['candidates'])} (rule: mean pseudo-AUROC over {', '.join(rule['sources'])} >= "
             f"{rule['threshold']:g}{_top_text(rule)}; weighting {rule['weighting']})"]
    if record.get('fallback'):
        lines.append(f"  fallback: {record['fallback']}")
    samples = record.get('samples') or {}
    width = max(len(n) for n in record['candidates'])
    for n in record['candidates']:
        per = record.get('auroc', {}).get(n, {})
        shown = ' '.join(f'{s}={per[s]:.2f}' for s in rule['sources'] if per.get(s) is not None)
        lines.append(f"  {n:<{width}}  {record['reasons'][n]}" + (f'  [{shown}]' if shown else ''))
    if samples:
        made = f" (made from {record['images']} of the fit images)" if record.get('images') else ''
        lines.append('  pseudo-OOD samples: ' + ', '.join(f'{s} {n}' for s, n in samples.items()) + made)
    for s, note in (record.get('notes') or {}).items():
        if s in rule['sources']:
            lines.append(f'  no evidence from {s}: {note}')
    head = ssod_head_note(record)
    if head:
        lines.append(f'warning: {head}')
    return '\n'.join(lines)
