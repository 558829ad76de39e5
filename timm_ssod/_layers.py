"""The layers of ``timm_ssod``, bottom to top: a module may import its own layer's package and
any layer below, never one above. ``tests/test_imports.py`` checks every import (module-level
and inside functions) against this list and that there is no import cycle between packages.

=================  ============================================================================
layer              what it holds
=================  ============================================================================
``_util``          first line of an exception, atomic file writes (imports nothing of timm_ssod)
``core``           the paper: layout, OOD head, model mixin, sampler, posterior, loss
``metrics``        FPR95, AUROC, AUPR (numpy only)
``conformal``      conformal p-values and their combination (torch only)
``data``           the built-in benchmark, image folders, ID data, OOD set specs
``detectors``      the post-hoc scores, one file each, their registry
``calibration``    a detector's score -> p-value and OOD decision on ID data
``export``         the model and its calibrated decision as one ONNX file
``checkpoints``    the one torch.load, training checkpoints, the atomic saver
``hub``            create_model, save_pretrained / push_to_hub, loading saved folders
``evaluate``       the harness: scores, metrics, tables, the model of ``timm-ssod eval``
``train``          ``timm-ssod train``
``figures``        the paper's figures (matplotlib)
``demo``           ``timm-ssod demo``: the paper's protocol on the built-in benchmark, its settings
``cli``            ``timm-ssod`` and its subcommands (and the ``__main__`` entry points)
=================  ============================================================================

Within one layer, the packages named on one line do not import each other.
"""
LAYERS = (
    ('_util', '_version', '_layers'),
    ('core', 'metrics', 'conformal'),
    ('data',),
    ('detectors',),
    ('calibration',),
    ('export',),
    ('checkpoints',),
    ('hub',),
    ('evaluate',),
    ('train',),
    ('figures',),
    ('demo',),
    ('cli',),
)

# Imports made at call time from ``core``'s model mixin, to keep ``model.calibrate(...)``,
# ``model.predict(x)`` of a calibrated model and ``model.save_pretrained(...)`` /
# ``model.push_to_hub(...)`` as methods (as transformers and timm users expect). They are thin
# facades over the layer above; nothing at import time depends on them. (importer, imported)
FACADES = (
    ('timm_ssod.core._model', 'timm_ssod.calibration'),
    ('timm_ssod.core._model', 'timm_ssod.hub'),
    ('timm_ssod.core._model', 'timm_ssod.export'),
)
