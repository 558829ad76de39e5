"""``SyntheticDataset``: the built-in, generated, deterministic OOD benchmark."""
import threading
import zlib
from collections import OrderedDict
from typing import Callable, Dict, List, NamedTuple, Optional, Tuple, Union

import numpy as np
import torch.utils.data
from PIL import Image

from .canvas import to_size, to_uint8
from .generators import DEFAULT_BACKGROUND, generate_id, get_background, get_ood_generator, id_class_names

SYNTHETIC_PREFIX = 'synthetic'
SPLITS = ('train', 'val', 'test')
_SPLIT_ALIASES = {'training': 'train', 'validation': 'val', 'valid': 'val', 'eval': 'val',
                  'evaluation': 'val', 'testing': 'test'}
DEFAULT_SIZES = {'id': {'train': 3000, 'val': 600, 'test': 600}, 'ood': 600}
CACHE_BYTES = 256 * 2 ** 20  # rendered images are kept in memory (epochs after the first reuse them) up to this


class Rendered(NamedTuple):
    """One generated sample: uint8 (h, w, 3) image and its object-free background, the
    boolean (h, w) object mask (coverage >= 0.5; all False without object), the label."""
    image: np.ndarray
    background: np.ndarray
    mask: np.ndarray
    label: int


# Renders shared by every dataset of this process with the same (kind, split, seed, size, classes,
# background): image i does not depend on num_images, so the training, validation and evaluation
# datasets that several stages of one run create (the protocol's stage 1, two fine-tunes and two
# evaluations) render each image once. {key: [renders, bytes reserved]}, oldest first; a new
# dataset reserves num_images renders and the oldest others are dropped beyond CACHE_BYTES.
_SHARED: 'OrderedDict[tuple, list]' = OrderedDict()
_SHARED_LOCK = threading.Lock()


def _shared_renders(key: tuple, reserve: int) -> Optional[Dict[int, 'Rendered']]:
    """The render cache of ``key`` (None when ``reserve`` bytes alone exceed CACHE_BYTES)."""
    if reserve > CACHE_BYTES:
        return None
    with _SHARED_LOCK:
        renders, reserved = _SHARED.pop(key, ({}, 0))
        _SHARED[key] = [renders, max(reserved, reserve)]
        while sum(r for _, r in _SHARED.values()) > CACHE_BYTES:
            _SHARED.popitem(last=False)  # a dataset still holding it keeps its own reference
        return renders


def normalize_split(split: str) -> str:
    """Map a split name or a timm synonym ('validation', 'eval', ...) to train/val/test."""
    s = _SPLIT_ALIASES.get(split.lower(), split.lower())
    if s not in SPLITS:
        raise ValueError(f'unknown split {split!r}; valid: {SPLITS} (or synonyms {tuple(_SPLIT_ALIASES)})')
    return s


def sample_rng(seed: int, kind: str, split: str, index: int) -> np.random.Generator:
    """The random generator of one image, a pure function of (seed, kind, split, index).

    Names are hashed with CRC32 (stable across runs, unlike ``hash``); numpy's
    SeedSequence mixes the four words, so every split and set is its own stream.
    """
    words = [int(seed), zlib.crc32(kind.encode()), zlib.crc32(split.encode()), int(index)]
    return np.random.default_rng(np.random.SeedSequence(words))


class SyntheticDataset(torch.utils.data.Dataset):
    """Generated images: ``kind='id'`` gives shapes of ``num_classes`` classes on varied
    backgrounds, any OOD set name (``OOD_SETS`` or registered) gives label -1 images.

    ``background``: the background family under ID and near-OOD objects and of the far-OOD
    ``backgrounds`` set: ``'natural'`` (default; natural image statistics, ``natural.py``) or
    ``'smooth'`` (gradients and blobs, the paper's A.5 failure case, ``backgrounds.py``).
    ``img_size`` is the size images are *rendered* at; timm's transforms resize them to the
    model's input size (the paper's recipe renders CIFAR at 32 px and trains at 224).

    Image ``i`` is a pure function of (kind, split, seed, i, img_size, num_classes, background),
    rendered lazily in ``__getitem__``; splits use different random streams, so they
    are disjoint. ID labels are ``i % num_classes`` (balanced) and index ``classes``,
    which is sorted alphabetically like timm's folder reader. Returns
    ``(PIL RGB image, int label)`` with ``transform`` / ``target_transform`` applied
    as in ``timm.data.ImageDataset`` (``timm.data.create_loader`` sets ``transform``).
    """

    def __init__(
            self,
            kind: str = 'id',
            split: str = 'train',
            num_images: Optional[int] = None,
            img_size: Union[int, Tuple[int, int]] = 64,
            num_classes: int = 6,
            seed: int = 0,
            transform: Optional[Callable] = None,
            target_transform: Optional[Callable] = None,
            background: str = DEFAULT_BACKGROUND,
    ):
        self.kind = kind
        self.background = background
        self._background = get_background(background)
        self.split = normalize_split(split)
        self._generator = None if kind == 'id' else get_ood_generator(kind)
        self.is_ood = kind != 'id'
        self.num_classes = num_classes
        self.id_classes: List[str] = id_class_names(num_classes)
        self.classes: List[str] = [] if self.is_ood else list(self.id_classes)
        self.size = to_size(img_size)
        if seed < 0:
            raise ValueError(f'seed must be >= 0, got {seed}')
        self.seed = int(seed)
        if num_images is None:
            num_images = DEFAULT_SIZES['ood'] if self.is_ood else DEFAULT_SIZES['id'][self.split]
        if num_images < 0:
            raise ValueError(f'num_images must be >= 0, got {num_images}')
        self.num_images = int(num_images)
        self.transform = transform
        self.target_transform = target_transform
        # every image is a pure function of its index: keep renders when they all fit in CACHE_BYTES,
        # shared with the other datasets of this process that render the same images
        key = (kind, self._generator, self.split, self.seed, self.size, num_classes, self._background)
        self._cache = _shared_renders(key, self.num_images * self.size[0] * self.size[1] * 7)

    def __len__(self) -> int:
        return self.num_images

    def _check_index(self, index: int) -> int:
        if index < 0:
            index += self.num_images
        if not 0 <= index < self.num_images:
            raise IndexError(f'index {index} out of range for {self.num_images} images')
        return int(index)

    def label(self, index: int) -> int:
        """The label of image ``index`` without rendering it (-1 for OOD sets)."""
        return -1 if self.is_ood else self._check_index(index) % self.num_classes

    def render(self, index: int) -> Rendered:
        """Generate image ``index`` with its background and object mask (see ``Rendered``)."""
        index = self._check_index(index)
        if self._cache is not None and index in self._cache:
            return self._cache[index]
        rng = sample_rng(self.seed, self.kind, self.split, index)
        label = self.label(index)
        if self.is_ood:
            img, bg, alpha = self._generator(rng, self.size, self.num_classes, background=self._background)
        else:
            img, bg, alpha = generate_id(rng, self.size, label, self.num_classes, background=self._background)
        rendered = Rendered(to_uint8(img), to_uint8(bg), alpha >= 0.5, label)
        if self._cache is not None:
            for array in rendered[:3]:
                array.flags.writeable = False  # shared by every later call
            self._cache[index] = rendered
        return rendered

    def object_mask(self, index: int) -> np.ndarray:
        """Boolean (h, w) mask of the object in image ``index`` (all False if none)."""
        return self.render(index).mask

    def image(self, index: int) -> Image.Image:
        """Image ``index`` as a PIL RGB image, without ``transform``."""
        return Image.fromarray(self.render(index).image, mode='RGB')

    def __getitem__(self, index: int):
        img, target = self.image(index), self.label(index)
        if self.transform is not None:
            img = self.transform(img)
        if self.target_transform is not None:
            target = self.target_transform(target)
        return img, target

    def __repr__(self) -> str:
        return (f'{type(self).__name__}(kind={self.kind!r}, split={self.split!r}, num_images={self.num_images}, '
                f'img_size={self.size}, num_classes={self.num_classes}, seed={self.seed}, background={self.background!r})')
