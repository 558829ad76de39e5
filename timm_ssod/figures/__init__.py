"""The paper's figures: the sampler's per-location maps (Fig. 2) drawn with matplotlib (optional,
``pip install "timm-ssod[plot]"``); the score histograms (Fig. 6) are ``timm_ssod.evaluate.plot_histograms``.
The command is ``timm-ssod visualize`` (``timm_ssod.cli``)."""
from ._visualize import (CMAP, DEFAULT_GAMMA, DEFAULT_IMAGES, DPI, LABEL_COLORS, LEGEND_INCHES, PANEL_INCHES, LocationMaps, PlotDependencyError,
                         label_overlay, location_maps, render_sampler_figure, require_matplotlib, save_figure)

__all__ = ['CMAP', 'DEFAULT_GAMMA', 'DEFAULT_IMAGES', 'DPI', 'LABEL_COLORS', 'LEGEND_INCHES', 'PANEL_INCHES', 'LocationMaps', 'PlotDependencyError',
           'label_overlay', 'location_maps', 'render_sampler_figure', 'require_matplotlib', 'save_figure']
