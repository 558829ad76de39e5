"""The paper's figures for your models: Fig. 2 (the per-location confidence, the sampler's
labels of Eq. 12 and the OOD head's per-location P(ID), one row per image) and Fig. 6 (ID-vs-OOD
score histograms). The command that draws them, its options and examples: ``timm-ssod visualize``
(``timm_ssod.cli._visualize``). matplotlib is an optional dependency: ``pip install "timm-ssod[plot]"``.
"""
from typing import List, NamedTuple, Optional

import numpy as np
import torch
import torch.nn.functional as F

from ..core import (GAMMA, ID_INDEX, IGNORED, OOD_INDEX, head_per_location, id_probability, is_ssod_model, merge_heads,
                    sample_patches, target_confidence, to_locations)

__all__ = ['label_overlay', 'location_maps', 'render_sampler_figure', 'require_matplotlib', 'LocationMaps',
           'PlotDependencyError', 'save_figure', 'DEFAULT_GAMMA', 'DEFAULT_IMAGES']

LABEL_COLORS = {ID_INDEX: (0.0, 0.8, 0.0), OOD_INDEX: (0.9, 0.0, 0.0), IGNORED: (0.55, 0.55, 0.55)}
PANEL_INCHES, LEGEND_INCHES, DPI = 2.5, 0.5, 96  # figure = (cols * 240) x (rows * 240 + 48) pixels
DEFAULT_GAMMA, DEFAULT_IMAGES = GAMMA, 4
CMAP = 'jet'


class PlotDependencyError(ImportError):
    """matplotlib (the ``plot`` extra) is not installed."""


def require_matplotlib():
    """``(Figure, FigureCanvasAgg)``; PlotDependencyError saying how to install matplotlib."""
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError as e:
        raise PlotDependencyError('matplotlib is not installed, and the figures need it: '
                                  'pip install "timm-ssod[plot]"') from e
    return Figure, FigureCanvasAgg


def label_overlay(labels, alpha: float = 0.5) -> np.ndarray:
    """Sampler labels (H, W) (1 ID, 0 OOD, -1 ignored) -> RGBA (H, W, 4) float32 in [0, 1]."""
    labels = np.asarray(labels)
    rgba = np.zeros(labels.shape + (4,), dtype=np.float32)
    for value, color in LABEL_COLORS.items():
        rgba[labels == value] = (*color, alpha)
    if not np.isin(labels, list(LABEL_COLORS)).all():
        raise ValueError(f'sampler labels must be 1, 0 or -1, got {sorted(set(labels.ravel().tolist()))}')
    return rgba


class LocationMaps(NamedTuple):
    """What Fig. 2 shows of one image for one model (maps are (H, W) numpy arrays)."""
    confidence: np.ndarray       # softmax of the per-location logits, on class `cls`
    labels: np.ndarray           # Eq. 12 labels of `confidence` at `gamma`
    p_id: Optional[np.ndarray]   # per-location P(ID) (SSOD models), else None
    cls: int                     # the label, or the prediction when `labelled` is False
    labelled: bool
    predicted: int               # the image-level prediction
    image_p_id: Optional[float]  # Eq. 15 on the pooled features (SSOD models)
    gamma: float


@torch.no_grad()
def location_maps(model, x: torch.Tensor, targets=None, gamma: float = DEFAULT_GAMMA) -> List[LocationMaps]:
    """Per-image maps of ``model`` (eval mode) on preprocessed images ``x`` (B, C, H, W).
    ``targets`` (B,) ints; -1 or None: unlabelled, the predicted class is used."""
    if is_ssod_model(model):
        out = model.forward_ssod(x)
        logits, patch_logits, grid = out.logits, out.patch_logits, out.grid
        p_id, image_p_id = id_probability(out.patch_ood_logits).view(-1, *grid), id_probability(out.ood_logits)
    else:
        feats = model.forward_features(x)
        logits = merge_heads(model.forward_head(feats))
        locations, grid = to_locations(model, feats, x.shape[-2:])
        patch_logits, p_id, image_p_id = head_per_location(model, feats, locations), None, None
    predicted = logits.argmax(dim=-1)
    targets = torch.full_like(predicted, -1) if targets is None else torch.as_tensor(targets).to(predicted)
    cls = torch.where(targets >= 0, targets, predicted)
    confidence = target_confidence(patch_logits, cls).view(-1, *grid)
    labels = sample_patches(confidence, gamma)
    return [LocationMaps(confidence[i].cpu().numpy(), labels[i].cpu().numpy(),
                         None if p_id is None else p_id[i].cpu().numpy(), int(cls[i]), bool(targets[i] >= 0),
                         int(predicted[i]), None if image_p_id is None else float(image_p_id[i]), float(gamma))
            for i in range(x.shape[0])]


def _upsample(m: np.ndarray, size) -> np.ndarray:
    t = torch.from_numpy(np.ascontiguousarray(m, dtype=np.float32))[None, None]
    return F.interpolate(t, size=tuple(size), mode='bilinear', align_corners=False)[0, 0].numpy()


def _panel(ax, image, overlay=None, title='', **kwargs):
    h, w = image.shape[:2]
    ax.imshow(image, extent=(0, w, h, 0))
    if overlay is not None:
        ax.imshow(overlay, extent=(0, w, h, 0), **kwargs)
    ax.set_title(title, fontsize=7)
    ax.set_axis_off()


def _grid_lines(ax, image, grid):
    h, w = image.shape[:2]
    for i in range(1, grid[0]):
        ax.axhline(i * h / grid[0], color='white', lw=0.6)
    for j in range(1, grid[1]):
        ax.axvline(j * w / grid[1], color='white', lw=0.6)


def render_sampler_figure(views, maps, tags, names, class_names=None):
    """Fig. 2 as a matplotlib Figure (Agg canvas attached): a row per image.

    views[m][i]: image i as model m sees it, (h, w, 3) floats in [0, 1]; maps[m][i]: its
    ``LocationMaps``; tags[m]: the model's column title; names[i]: the image's name."""
    Figure, FigureCanvasAgg = require_matplotlib()
    from matplotlib.cm import ScalarMappable
    from matplotlib.colors import Normalize
    from matplotlib.patches import Patch

    def cname(k):
        return class_names[k] if class_names and 0 <= k < len(class_names) else f'class {k}'

    cols = 1 + sum(3 if m[0].p_id is not None else 2 for m in maps)
    rows = len(names)
    fig = Figure(figsize=(cols * PANEL_INCHES, rows * PANEL_INCHES + LEGEND_INCHES))
    FigureCanvasAgg(fig)
    height = rows * PANEL_INCHES + LEGEND_INCHES
    bottom = LEGEND_INCHES / height
    gs = fig.add_gridspec(rows, cols, left=0.01, right=0.99, top=1 - 0.3 / height, bottom=bottom + 0.1 / height,
                          wspace=0.04, hspace=0.3)
    for i, name in enumerate(names):
        first = maps[0][i]
        _panel(fig.add_subplot(gs[i, 0]), views[0][i],
               title=f'{name}\n' + (f'label: {cname(first.cls)}' if first.labelled else 'unlabelled'))
        col = 1
        for m, tag in enumerate(tags):
            mp, view = maps[m][i], views[m][i]
            size = view.shape[:2]
            which = 'label' if mp.labelled else 'pred.'
            _panel(fig.add_subplot(gs[i, col]), view, _upsample(mp.confidence, size), cmap=CMAP, vmin=0, vmax=1,
                   alpha=0.5, title=f'{tag}: confidence on\n{cname(mp.cls)} ({which}); pred. {cname(mp.predicted)}')
            counts = {v: int((mp.labels == v).sum()) for v in LABEL_COLORS}
            ax = fig.add_subplot(gs[i, col + 1])
            _panel(ax, view, label_overlay(mp.labels), interpolation='nearest',
                   title=f'{tag}: sampler, γ={mp.gamma:g}\nID {counts[ID_INDEX]} / OOD {counts[OOD_INDEX]} / '
                         f'ign. {counts[IGNORED]}')
            _grid_lines(ax, view, mp.labels.shape)
            col += 2
            if mp.p_id is not None:
                _panel(fig.add_subplot(gs[i, col]), view, _upsample(mp.p_id, size), cmap=CMAP, vmin=0, vmax=1,
                       alpha=0.5, title=f'{tag}: P(ID) per location\nimage P(ID) = {mp.image_p_id:.2f}')
                col += 1
    handles = [Patch(facecolor=LABEL_COLORS[ID_INDEX], label='ID: c ≥ γ'),
               Patch(facecolor=LABEL_COLORS[OOD_INDEX], label='OOD: c < 1 − γ'),
               Patch(facecolor=LABEL_COLORS[IGNORED], label='ignored')]
    fig.legend(handles=handles, loc='lower left', ncol=3, fontsize=7, frameon=False, bbox_to_anchor=(0.01, 0.0))
    cax = fig.add_axes((0.62, bottom * 0.45, 0.3, bottom * 0.2))
    fig.colorbar(ScalarMappable(Normalize(0, 1), CMAP), cax=cax, orientation='horizontal')
    cax.tick_params(labelsize=6)
    cax.set_title('confidence / P(ID)', fontsize=7)
    return fig


def save_figure(fig, path: str) -> str:
    """Write ``fig`` as PNG atomically (a temporary file renamed onto ``path``)."""
    from .._util import atomic_write
    atomic_write(path, lambda f: fig.savefig(f, format='png', dpi=DPI))
    return path
