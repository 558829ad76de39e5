"""Where ``timm-ssod demo`` finds its stand-in for pretrained weights: ``weights/<backbone>.safetensors``
of the working folder (a repository checkout has them; ``scripts/demo.sh`` runs from its root; a pip
install ships none), with ``<backbone>.json`` beside it (what it was trained on, at which size).
How they were trained and exported: ``benchmarks/standin.py``."""
import os
from typing import Optional

__all__ = ['WEIGHTS_DIR', 'recipe_path', 'standin_file']

WEIGHTS_DIR = 'weights'  # relative to the working folder


def recipe_path(backbone: str, weights_dir: str = WEIGHTS_DIR) -> str:
    """The training recipe (a ``timm-ssod train --config`` YAML) of a stand-in."""
    return os.path.join(weights_dir, f'{backbone}.yaml')


def standin_file(backbone: str, weights_dir: str = WEIGHTS_DIR) -> Optional[str]:
    """``<weights_dir>/<backbone>.safetensors`` when it is there, else None."""
    path = os.path.join(weights_dir, f'{backbone}.safetensors')
    return path if os.path.isfile(path) else None
