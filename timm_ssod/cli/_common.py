"""The one convention of ``timm-ssod`` subcommands (``timm_ssod.cli``): a module with
``add_parser(subparsers)`` = ``add_command(subparsers, name, help, __doc__, add_arguments, run)``,
``run(args, prog) -> exit code`` that reports bad input through ``report_errors``, and
``main(argv)`` = ``parse_and_run`` for a parser of its own. While a command runs, Python warnings
print as one line, ``timm-ssod <command>: warning: <message>`` (``one_line_warnings``), never
with a source line of the library or of the console script."""
import argparse
import sys
import warnings
from contextlib import contextmanager
from typing import List, Optional

BAD_INPUT = (ValueError, OSError, FloatingPointError)  # data / checkpoint errors, non-finite outputs ...


@contextmanager
def one_line_warnings(prog: str):
    """Python warnings shown as ``prog: warning: message`` (no file, line number or source line)
    while the block runs; the previous formatting is restored after."""
    previous = warnings.formatwarning

    def formatwarning(message, category, filename, lineno, line=None):
        kind = '' if category is UserWarning else f' ({category.__name__})'
        return f'{prog}: warning{kind}: {message}\n'
    warnings.formatwarning = formatwarning
    try:
        yield
    finally:
        warnings.formatwarning = previous


def add_command(subparsers, name: str, help_text: str, doc: str, add_args, run) -> argparse.ArgumentParser:
    """Register a subcommand on the ``timm-ssod`` subparsers: ``add_args(parser)``, ``func=run``."""
    p = subparsers.add_parser(name, help=help_text, description=doc,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
    add_args(p)
    p.set_defaults(func=run)
    return p


def report_errors(work, args: argparse.Namespace, prog: str, errors=BAD_INPUT) -> int:
    """``work(args)``; an error of bad input (``errors``) is printed as ``prog: error: ...`` and gives 1."""
    try:
        return work(args)
    except errors as e:
        print(f'{prog}: error: {e}', file=sys.stderr)
        return 1


def parse_and_run(argv: Optional[List[str]], prog: str, doc: str, add_args, run) -> int:
    """A command's ``main``: a parser of its own (``add_args``), then ``run(args, prog)``."""
    parser = argparse.ArgumentParser(prog=prog, description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_args(parser)
    args = parser.parse_args(argv)
    with one_line_warnings(prog):
        return run(args, prog)


def load_ssod_model(spec: str, use_ema: bool = True, model_kwargs=None):
    """``(SSOD model in eval mode, load info, save_pretrained kwargs)`` of a MODEL argument
    (``calibrate``, ``predict``): a saved folder (``local-dir:`` / ``hf-hub:``) or a training
    checkpoint / run folder, loaded by ``timm_ssod.hub.load_model``."""
    import os

    from ..hub import load_model
    from ..hub._run_args import run_save_kwargs
    if not spec.startswith(('hf-hub:', 'local-dir:')) and not os.path.exists(spec):
        raise ValueError(f'MODEL {spec!r} is neither a file or folder (training checkpoint / run) nor a saved model '
                         "'local-dir:PATH' / 'hf-hub:org/name'")
    model, info = load_model(spec, use_ema=use_ema, model_kwargs=model_kwargs)
    if not info['ssod']:
        raise ValueError(f'{spec} is not an SSOD model')
    return model, info, (run_save_kwargs(info['train_args']) if info['checkpoint'] else {})
