"""Data for timm_ssod: the built-in generated OOD benchmark and OOD image folders.

- ``SyntheticDataset('id' | <OOD set>, split, ..., background='natural' | 'smooth')``:
  deterministic, lazily generated shapes on label-free backgrounds (ID) and OOD sets ``OOD_SETS``:
  ``backgrounds`` (far), ``novel_objects`` (near), ``noise``, ``textures``.
- ``create_dataset('synthetic/<set>' | any timm name, root, split, **kwargs)``.
- ``write_image_folder(dataset, root)`` and ``ImageFolderOOD(root)`` for data on disk.
"""
from .factory import create_dataset, parse_synthetic_name
from .folders import ImageFolderOOD, find_image_files, load_rgb, write_image_folder
from .generators import BACKGROUNDS, DEFAULT_BACKGROUND, OOD_SETS, id_class_names, list_ood_sets, register_ood_set
from .shapes import ID_SHAPES, NOVEL_SHAPES
from .synthetic import SPLITS, SYNTHETIC_PREFIX, Rendered, SyntheticDataset, sample_rng

__all__ = [
    'SyntheticDataset', 'Rendered', 'OOD_SETS', 'BACKGROUNDS', 'DEFAULT_BACKGROUND', 'SYNTHETIC_PREFIX', 'SPLITS', 'ID_SHAPES', 'NOVEL_SHAPES',
    'create_dataset', 'parse_synthetic_name', 'write_image_folder', 'ImageFolderOOD',
    'find_image_files', 'load_rgb', 'register_ood_set', 'list_ood_sets', 'id_class_names', 'sample_rng',
]
