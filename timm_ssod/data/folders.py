"""Image folders on disk: write any dataset as an ImageFolder, read any folder as OOD data."""
import os
from typing import Callable, List, Optional, Set, Tuple

import torch.utils.data
from PIL import Image

from .._util import atomic_write, warn

OOD_FOLDER = 'ood'
# PIL opens these formats but cannot decode them by itself (stubs, MPEG, EPS needs Ghostscript)
_NOT_DECODED = {'BUFR', 'GRIB', 'HDF5', 'WMF', 'MPEG', 'EPS', 'IPTC'}


def image_extensions() -> Set[str]:
    """Lower-case extensions (with the dot) of every image format PIL reads and decodes itself:
    .jpg, .png, .webp, .bmp, .tif, .gif, ... (timm's folder reader takes only .png/.jpg/.jpeg)."""
    Image.init()
    return {ext.lower() for ext, fmt in Image.registered_extensions().items()
            if fmt in Image.OPEN and fmt not in _NOT_DECODED}


def expand_image_paths(paths: List[str], flag: Optional[str] = None) -> List[str]:
    """Image files and folders (searched recursively, ``find_image_files``) -> image file paths,
    in order. A folder without images or a missing path is an error naming it (and ``flag``,
    the command-line option it came from, if any)."""
    files = []
    for path in paths:
        name = f'{flag} {path!r}' if flag else path
        if os.path.isdir(path):
            found = find_image_files(path)
            if not found:
                raise ValueError(f'{name}: no image files in this folder')
            files += found
        elif os.path.isfile(path):
            files.append(path)
        else:
            raise FileNotFoundError(f'{name}: no such image file or folder')
    return files

_FORMATS = {'png': 'PNG', 'jpg': 'JPEG', 'jpeg': 'JPEG'}


def write_image_folder(dataset, root: str, ext: str = 'png') -> str:
    """Write every ``(PIL image, label)`` of ``dataset`` as PNG (``ext='jpg'``: JPEG, quality 95)
    to an ImageFolder layout: ``root/<classes[label]>/<index>.png``, label -1 to
    ``root/ood/<index>.png``.

    The dataset's ``transform`` is bypassed while writing. Each file is written under a
    temporary name and renamed (``timm_ssod._util.atomic_write``), so a reader never sees a half file.
    SyntheticDataset class names are sorted, so timm's folder reader gives the same labels.
    Returns ``root``.
    """
    if ext.lower() not in _FORMATS:
        raise ValueError(f'write_image_folder: ext {ext!r} is not one of {", ".join(_FORMATS)}')
    fmt = _FORMATS[ext.lower()]
    classes = getattr(dataset, 'classes', None) or []
    width = max(5, len(str(len(dataset) - 1)))
    transform = getattr(dataset, 'transform', None)
    if transform is not None:
        dataset.transform = None
    try:
        for index in range(len(dataset)):
            img, label = dataset[index][:2]
            if not isinstance(img, Image.Image):
                raise TypeError(f'write_image_folder needs PIL images, got {type(img).__name__}')
            label = int(label)
            folder = os.path.join(root, OOD_FOLDER if label < 0 else (classes[label] if classes else str(label)))
            os.makedirs(folder, exist_ok=True)
            rgb = img.convert('RGB')
            atomic_write(os.path.join(folder, f'{index:0{width}d}.{ext}'),
                         lambda f: rgb.save(f, format=fmt, **({'quality': 95} if fmt == 'JPEG' else {})),
                         durable=False)  # regenerable data: no fsync per image
    finally:
        if transform is not None:
            dataset.transform = transform
    return root


def find_image_files(root: str) -> List[str]:
    """Sorted paths of all image files under ``root``, recursively, hidden files skipped."""
    if not os.path.isdir(root):
        raise FileNotFoundError(f'OOD image folder not found (or not a directory): {root!r}')
    extensions = image_extensions()
    files = []
    for dirpath, dirnames, filenames in os.walk(root, followlinks=True):
        dirnames[:] = [d for d in dirnames if not d.startswith('.')]
        files += [os.path.join(dirpath, f) for f in filenames
                  if not f.startswith('.') and os.path.splitext(f)[1].lower() in extensions]
    return sorted(files)


def load_rgb(path: str) -> Image.Image:
    """Decode an image file fully and convert it to RGB (grayscale, RGBA, palette, ...)."""
    with Image.open(path) as img:
        if img.mode == 'P' and 'transparency' in img.info:
            img = img.convert('RGBA')  # avoids PIL's palette-transparency warning
        return img.convert('RGB')


def try_load_rgb(path: str) -> Tuple[Optional[Image.Image], Optional[str]]:
    """``(load_rgb(path), None)``, or ``(None, why)`` for a file that cannot be read as an image
    (the commands that read files themselves skip it, warned, as the datasets do)."""
    try:
        return load_rgb(path), None
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as e:
        return None, f'{type(e).__name__}: {e}'


class ImageFolderOOD(torch.utils.data.Dataset):
    """Every image file under ``root`` (recursively, any folder layout, sorted paths) as an
    OOD dataset returning ``(PIL RGB image, -1)``; every format PIL decodes (``image_extensions``).

    Decoding is lazy, so a corrupt file is only found in ``__getitem__``. With
    ``skip_corrupt=True`` (default) it is replaced by the next file that decodes (the
    dataset length does not change, one image then appears twice) and a warning names
    the skipped file, once per file. With ``skip_corrupt=False`` an ``OSError`` naming
    the file is raised. With ``leave_out_unreadable`` set (``timm_ssod.data._unreadable``,
    for scoring) the warning is followed by None, no substitute. A missing folder raises
    FileNotFoundError, a folder without image files ValueError.
    """
    leave_out_unreadable = False

    def __init__(self, root: str, transform: Optional[Callable] = None, skip_corrupt: bool = True):
        self.root = str(root)
        self.files = find_image_files(self.root)
        if not self.files:
            raise ValueError(f'no image files (.jpg, .png, .webp, .bmp, .tif, ...: any format PIL reads) found under '
                             f'{self.root!r}')
        self.transform = transform
        self.skip_corrupt = skip_corrupt
        self.classes: List[str] = []
        self._corrupt = set()

    def __len__(self) -> int:
        return len(self.files)

    def _load(self, index: int) -> Image.Image:
        path = self.files[index]
        try:
            return load_rgb(path)
        except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as e:
            raise OSError(f'cannot decode image file {path!r}: {e}') from e

    def __getitem__(self, index: int):
        n = len(self.files)
        if not -n <= index < n:
            raise IndexError(f'index {index} out of range for {n} images')
        index %= n
        if self.leave_out_unreadable and index in self._corrupt:
            return None
        for step in range(n):
            i = (index + step) % n
            if i in self._corrupt:
                continue
            try:
                img = self._load(i)
                break
            except OSError as e:
                if not self.skip_corrupt and not self.leave_out_unreadable:
                    raise
                self._corrupt.add(i)
                warn(f'skipping corrupt image file {self.files[i]!r} ({e.__cause__})')
                if self.leave_out_unreadable:
                    return None
        else:
            raise OSError(f'no image under {self.root!r} could be decoded')
        if self.transform is not None:
            img = self.transform(img)
        return img, -1
