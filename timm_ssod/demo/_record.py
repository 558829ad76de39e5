"""Paths in what the demo and the benchmarks record: relative, never the absolute paths of the machine
that ran them (a reader reruns the recorded commands from a fresh clone; nothing says where
the runs were made).

* ``relative_paths(obj, base)``: ``obj`` (dicts, lists, strings) with every absolute path made
  relative to ``base`` (the repository for the benchmarks' JSON; the run's output folder for
  ``protocol.json``), also as the value of ``--flag=PATH``; everything else unchanged.
* ``command_line(program, argv, base)``: the command as typed from ``base``, its paths relative.
* ``results_text(obj, base)``: the JSON text of ``obj`` with relative paths, as the benchmarks write it.
"""
import json
import os
from typing import Any, Iterable

__all__ = ['relative_paths', 'command_line', 'results_text']


def _relative(value: str, base: str) -> str:
    if value.startswith('-') and '=' in value:  # --out=/abs/path
        flag, path = value.split('=', 1)
        return f'{flag}={_relative(path, base)}'
    if os.path.isabs(value):
        return os.path.relpath(value, base).replace(os.sep, '/')
    return value


def relative_paths(obj: Any, base: str) -> Any:
    """A copy of ``obj`` whose absolute path strings are relative to ``base`` (module doc)."""
    base = os.path.abspath(base)
    if isinstance(obj, dict):
        return type(obj)((k, relative_paths(v, base)) for k, v in obj.items())
    if isinstance(obj, (list, tuple)):
        return [relative_paths(v, base) for v in obj]
    if isinstance(obj, str):
        return _relative(obj, base)
    return obj


def command_line(program: str, argv: Iterable[str], base: str) -> str:
    """``program`` and ``argv`` joined, each absolute path relative to ``base``."""
    return ' '.join([program, *(_relative(str(a), os.path.abspath(base)) for a in argv)])


def results_text(obj: Any, base: str) -> str:
    """``obj`` as indented JSON (no NaN), its absolute paths relative to ``base``, ending in a newline."""
    return json.dumps(relative_paths(obj, base), indent=2, allow_nan=False) + '\n'
