"""Data for timm_ssod: the built-in generated OOD benchmark and OOD image folders.

- ``SyntheticDataset('id' | <OOD set>, split, ..., background='natural' | 'smooth')``:
  deterministic, lazily generated shapes on label-free backgrounds (ID) and OOD sets ``OOD_SETS``:
  ``backgrounds`` (far), ``novel_objects`` (near), ``noise``, ``textures``.
- ``create_dataset('synthetic/<set>' | any timm name, root, split, **kwargs)``.
- ``write_image_folder(dataset, root)`` and ``ImageFolderOOD(root)`` for data on disk.
- ``create_id_dataset`` / ``class_names`` ... (``_id_data``): ID images as timm reads them, split
  folders checked, class names, clear errors; ``parse_ood_spec`` / ``open_ood_set``
  (``_ood_specs``): the OOD sets named on the command line; ``cut`` / ``make_loader`` (``_loading``):
  reading a dataset in order for scoring.
"""
from .factory import create_dataset, parse_synthetic_name
from .folders import ImageFolderOOD, expand_image_paths, find_image_files, load_rgb, try_load_rgb, write_image_folder
from .generators import BACKGROUNDS, DEFAULT_BACKGROUND, OOD_SETS, id_class_names, list_ood_sets, register_ood_set
from .shapes import ID_SHAPES, NOVEL_SHAPES
from .synthetic import SPLITS, SYNTHETIC_PREFIX, Rendered, SyntheticDataset, sample_rng
# ID data as timm reads it, and the OOD sets named on the command line (after the modules above)
from ._ood_specs import TORCH_DATASETS, is_synthetic, open_ood_set, parse_ood_spec, unknown_torch_dataset
from ._id_data import (HELD_OUT_SPLIT, TRAIN_SPLIT, check_evaluation_split, check_held_out_split, class_names,
                       create_id_dataset, dataset_num_classes, folder_summary, is_image_folder, model_class_map,
                       recorded_training_folder, resolve_split)
from ._unreadable import drop_unreadable, leave_out_unreadable, readable_batches
from ._loading import cut, make_loader, same_folder, subsample_indices

__all__ = [
    'SyntheticDataset', 'Rendered', 'OOD_SETS', 'BACKGROUNDS', 'DEFAULT_BACKGROUND', 'SYNTHETIC_PREFIX', 'SPLITS', 'ID_SHAPES', 'NOVEL_SHAPES',
    'create_dataset', 'parse_synthetic_name', 'write_image_folder', 'ImageFolderOOD',
    'expand_image_paths', 'find_image_files', 'load_rgb', 'try_load_rgb', 'register_ood_set', 'list_ood_sets', 'id_class_names', 'sample_rng',
    'TORCH_DATASETS', 'is_synthetic', 'open_ood_set', 'parse_ood_spec', 'unknown_torch_dataset',
    'check_evaluation_split', 'class_names', 'create_id_dataset', 'dataset_num_classes', 'folder_summary',
    'is_image_folder', 'model_class_map', 'recorded_training_folder', 'resolve_split',
    'TRAIN_SPLIT', 'HELD_OUT_SPLIT', 'check_held_out_split', 'drop_unreadable', 'leave_out_unreadable',
    'readable_batches', 'cut', 'make_loader', 'same_folder', 'subsample_indices',
]
