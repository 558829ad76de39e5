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
