"""Small helpers every layer may use (the bottom layer: imports nothing of ``timm_ssod``).

* ``first_line(e)``: an exception as one line, ``"TypeName: first line of its message"``.
* ``atomic_write(path, write_fn)`` / ``atomic_write_text``: a file appears whole or not at all
  (written to ``<path>.partial``, fsynced, ``os.replace``d, the folder fsynced).
* ``fsync_path`` / ``fsync_dir``: make a written file / a rename durable.
* ``sha256_of(path)``: a file's sha256 (the shipped weights' JSON records it).
* ``as_json(value)``: tuples as lists at any depth, what a JSON round trip gives back.
* ``warn(message)``: ``warnings.warn`` attributed to the user's line, the first frame outside
  this package (and outside torch / timm code that called into it, e.g. ``nn.Module.__call__``
  or a ``DataLoader``), so the warning never shows an unrelated line of the library.
"""
import hashlib
import os
import sys
import warnings
from typing import Any, Callable, Type

PARTIAL_SUFFIX = '.partial'

# frames that are not the user's: this package, and the libraries that call into it
_PACKAGE_DIR = os.path.dirname(os.path.abspath(__file__)) + os.sep


def _library_dirs():
    dirs = [_PACKAGE_DIR]
    for name in ('torch', 'timm'):
        path = getattr(sys.modules.get(name), '__file__', None)
        if path:
            dirs.append(os.path.dirname(os.path.abspath(path)) + os.sep)
    return tuple(dirs)


def warn(message: str, category: Type[Warning] = UserWarning) -> None:
    """``warnings.warn(message, category)`` with the ``stacklevel`` of the first frame that is
    neither this package nor torch / timm / Python's own frozen modules: the user's call. When
    there is none (``python -m timm_ssod.cli``), the warning names no source line at all."""
    dirs = _library_dirs()
    frame, level = sys._getframe(1), 2  # stacklevel 2: the caller of warn()
    while frame is not None and (frame.f_code.co_filename.startswith(dirs)
                                 or frame.f_code.co_filename.startswith('<frozen ')):
        frame, level = frame.f_back, level + 1
    warnings.warn(message, category, stacklevel=level)


def as_json(value: Any) -> Any:
    """Tuples as lists, at any depth: what a JSON round trip gives back (to store or compare values)."""
    if isinstance(value, (list, tuple)):
        return [as_json(v) for v in value]
    if isinstance(value, dict):
        return {k: as_json(v) for k, v in value.items()}
    return value


def first_line(e: BaseException) -> str:
    """``"TypeName: <first line of str(e)>"``, or ``"TypeName"`` when the message is empty."""
    text = str(e).strip()
    return f'{type(e).__name__}: {text.splitlines()[0] if text else ""}'.rstrip(': ')


def fsync_path(path) -> None:
    """fsync a file already written and closed."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_dir(path: str) -> None:
    """Make a rename in ``path`` durable (no-op where directories cannot be opened)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def atomic_write(path: str, write_fn: Callable, durable: bool = True) -> None:
    """Call ``write_fn(file)`` on ``<path>.partial`` (binary), fsync it, then ``os.replace`` it
    onto ``path``. On any error the partial file is removed and ``path`` is left untouched.
    ``durable=False`` skips the fsyncs (a reader still never sees a half file, but a power cut may
    lose the file): for bulk data that can be regenerated, such as thousands of generated images."""
    path = os.fspath(path)
    tmp = path + PARTIAL_SUFFIX
    try:
        with open(tmp, 'wb') as f:
            write_fn(f)
            if durable:
                f.flush()
                os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.remove(tmp)
        except OSError:
            pass
        raise
    if durable:
        fsync_dir(os.path.dirname(os.path.abspath(path)))


def atomic_write_text(path: str, text: str) -> None:
    """``atomic_write`` of ``text`` as UTF-8."""
    atomic_write(path, lambda f: f.write(text.encode('utf-8')))


def sha256_of(path) -> str:
    """Hex sha256 of a file, read in 1 MiB blocks."""
    h = hashlib.sha256()
    with open(path, 'rb') as f:
        for block in iter(lambda: f.read(1 << 20), b''):
            h.update(block)
    return h.hexdigest()
