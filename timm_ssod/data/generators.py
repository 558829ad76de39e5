"""What one synthetic image is: the ID generator and the registry of OOD set generators.

A generator is ``fn(rng, size, num_classes, background=...) -> (image, background, alpha)``:
float32 images (h, w, 3) in [0, 255] and the object coverage (h, w) in [0, 1] (zeros when
there is no object); ``background`` is the background generator ``(rng, size) -> image``
of the benchmark (``BACKGROUNDS``), so that ID objects, near-OOD objects and the far-OOD
``backgrounds`` set share it. ``register_ood_set`` adds a new OOD set by name (a function
without a ``background`` parameter is called without it).
"""
import inspect
from typing import Callable, Dict, Tuple

import numpy as np

from .backgrounds import random_smooth_background
from .natural import random_natural_background
from .canvas import Size
from .shapes import ID_SHAPES, NOVEL_SHAPES, class_colour, paste_object
from .textures import random_noise, random_texture

Generated = Tuple[np.ndarray, np.ndarray, np.ndarray]
Generator = Callable[..., Generated]
Background = Callable[[np.random.Generator, Size], np.ndarray]

# The benchmark's background families: 'natural' (default: natural image statistics, diverse)
# and 'smooth' (gradients and blobs: the paper's A.5 failure case, kept as its own benchmark).
BACKGROUNDS: Dict[str, Background] = {'natural': random_natural_background, 'smooth': random_smooth_background}
DEFAULT_BACKGROUND = 'natural'


def get_background(name: str) -> Background:
    """The background generator called ``name``; ValueError listing the valid names."""
    try:
        return BACKGROUNDS[name]
    except KeyError:
        raise ValueError(f'unknown background {name!r}; valid: {", ".join(map(repr, BACKGROUNDS))}') from None


def id_class_names(num_classes: int):
    """Class names of the ID data, sorted alphabetically (the order timm's folder reader
    gives them, so labels survive ``write_image_folder`` + ``timm.data.create_dataset``)."""
    if not 2 <= num_classes <= len(ID_SHAPES):
        raise ValueError(f'num_classes must be in [2, {len(ID_SHAPES)}], got {num_classes}')
    return sorted(list(ID_SHAPES)[:num_classes])


def generate_id(rng: np.random.Generator, size: Size, label: int, num_classes: int,
                background: Background = random_natural_background) -> Generated:
    """An ID image of class ``label``: its shape in a class colour on a random background."""
    bg = background(rng, size)
    name = id_class_names(num_classes)[label]
    img, alpha = paste_object(rng, bg, name, class_colour(rng, label, num_classes))
    return img, bg, alpha


def _no_object(img: np.ndarray) -> Generated:
    return img, img, np.zeros(img.shape[:2], dtype=np.float32)


def generate_backgrounds(rng, size, num_classes, background=random_natural_background) -> Generated:
    """Far OOD: the ID background generator with no object."""
    return _no_object(background(rng, size))


def generate_novel_objects(rng, size, num_classes, background=random_natural_background) -> Generated:
    """Near OOD: a shape that is no ID class, coloured like a random ID class, on an ID background."""
    bg = background(rng, size)
    names = list(NOVEL_SHAPES)
    name = names[int(rng.integers(len(names)))]
    colour = class_colour(rng, int(rng.integers(num_classes)), num_classes)
    img, alpha = paste_object(rng, bg, name, colour)
    return img, bg, alpha


def generate_noise(rng, size, num_classes, background=None) -> Generated:
    """Pixel noise images (Gaussian, uniform, salt and pepper)."""
    return _no_object(random_noise(rng, size))


def generate_textures(rng, size, num_classes, background=None) -> Generated:
    """Regular or fractal textures with no object."""
    return _no_object(random_texture(rng, size))


_OOD_GENERATORS: Dict[str, Generator] = {
    'backgrounds': generate_backgrounds,
    'novel_objects': generate_novel_objects,
    'noise': generate_noise,
    'textures': generate_textures,
}
OOD_SETS = tuple(_OOD_GENERATORS)  # the built-in OOD sets, far to near is not implied


def register_ood_set(name: str, fn: Generator, overwrite: bool = False) -> None:
    """Register an OOD set generator under ``name`` (usable as ``SyntheticDataset(kind=name)``)."""
    if name == 'id' or '/' in name or not name:
        raise ValueError(f'invalid OOD set name {name!r}')
    if name in _OOD_GENERATORS and not overwrite:
        raise ValueError(f'OOD set {name!r} already registered; pass overwrite=True to replace it')
    if 'background' not in inspect.signature(fn).parameters:
        def with_background(rng, size, num_classes, background=None, _fn=fn):
            return _fn(rng, size, num_classes)
        _OOD_GENERATORS[name] = with_background
    else:
        _OOD_GENERATORS[name] = fn


def list_ood_sets() -> Tuple[str, ...]:
    """Names of all registered OOD sets (built-in first)."""
    return tuple(_OOD_GENERATORS)


def get_ood_generator(name: str) -> Generator:
    """The generator of OOD set ``name``; ValueError listing the valid kinds if unknown."""
    try:
        return _OOD_GENERATORS[name]
    except KeyError:
        raise ValueError(
            f"unknown synthetic set {name!r}; valid: 'id', " + ', '.join(map(repr, _OOD_GENERATORS))
        ) from None
