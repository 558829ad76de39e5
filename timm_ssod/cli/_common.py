"""The one convention of ``timm-ssod`` subcommands (``timm_ssod.cli``): a module with
``add_parser(subparsers)`` = ``add_command(subparsers, name, help, __doc__, add_arguments, run)``,
``run(args, prog) -> exit code`` that reports bad input through ``report_errors``, and
``main(argv)`` = ``parse_and_run`` for a parser of its own."""
import argparse
import sys
from typing import List, Optional

BAD_INPUT = (ValueError, OSError, FloatingPointError)  # data / checkpoint errors, non-finite outputs ...


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
    return run(parser.parse_args(argv), prog)
