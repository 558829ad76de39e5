"""``timm-ssod``: one entry point, one subcommand per task.

    timm-ssod train --config examples/synthetic.yaml
    timm-ssod train --help
    timm-ssod push output/train/<run> org/name
    timm-ssod calibrate output/train/<run> --dataset synthetic/id --save-dir out/model
    timm-ssod predict local-dir:out/model photos/

Two kinds of subcommands:

* ``RAW_COMMANDS``: the command gets its raw arguments and parses them itself, through
  ``run(argv, prog) -> exit code`` (``train``: timm's two-stage ``--config`` parsing and
  some 150 flags). Imported only when that command runs.
* ``SUBPARSER_MODULES``: a module with ``add_parser(subparsers)`` that registers an argparse
  subparser whose defaults hold ``func=run(args) -> exit code`` (``push``; ``eval``,
  ``calibrate``, ``predict``, ``visualize``, ``demo``, ``export`` are added the same way: one line in this tuple). ``add_command``,
  ``report_errors`` and ``parse_and_run`` are their ``add_parser``, ``run`` and ``main``.
"""
import argparse
import importlib
import sys
from typing import List, Optional

from ._common import one_line_warnings

# name -> (module, function, one-line help)
# ``train`` stays outside ``add_command`` on purpose: its parsing is timm's train.py, in two
# stages (``--config`` YAML first, its values become the argparse defaults, then the command
# line over them, and the merged result is written to args.yaml), with timm's
# ArgumentDefaultsHelpFormatter, so ``--config recipe.yaml --help`` shows the recipe's values.
# One argparse subparser parses in one stage and formats help with add_command's
# RawDescriptionHelpFormatter: moving train there would change its flags' help and what a
# --config file can set. Errors still follow the convention: ``train.run`` prints the user
# errors (``train.USER_ERRORS``) as ``timm-ssod train: error: ...`` with exit code 1.
RAW_COMMANDS = {
    'train': ('timm_ssod.train', 'run', 'train a timm model with the SSOD objective (timm train.py flags, --config YAML)'),
}
SUBPARSER_MODULES = ('timm_ssod.cli._eval', 'timm_ssod.cli._push', 'timm_ssod.cli._calibrate', 'timm_ssod.cli._predict',
                     'timm_ssod.cli._visualize', 'timm_ssod.cli._demo', 'timm_ssod.cli._export')


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog='timm-ssod', description='SSOD (Self-supervised Sampling for OOD Detection) for any timm backbone')
    parser.add_argument('--version', action='store_true', help='print the version and exit')
    sub = parser.add_subparsers(dest='command', metavar='COMMAND')
    for name, (_, _, help_text) in RAW_COMMANDS.items():
        sub.add_parser(name, help=help_text, add_help=False)
    for module_name in SUBPARSER_MODULES:
        importlib.import_module(module_name).add_parser(sub)
    parser.set_defaults(_subparsers=sub)
    return parser


def main(argv: Optional[List[str]] = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] in RAW_COMMANDS:
        module, function, _ = RAW_COMMANDS[argv[0]]
        with one_line_warnings(f'timm-ssod {argv[0]}'):
            return getattr(importlib.import_module(module), function)(argv[1:], prog=f'timm-ssod {argv[0]}')
    parser = build_parser()
    args, unknown = parser.parse_known_args(argv)
    if unknown:  # the subcommand's usage, not the top level's (argparse reports them on the top parser)
        command = getattr(args, 'command', None)
        (args._subparsers.choices[command] if command else parser).error(
            f'unrecognized arguments: {" ".join(unknown)}')
    del args._subparsers
    if args.version:
        from .._version import __version__
        print(__version__)
        return 0
    if getattr(args, 'func', None) is None:
        parser.print_help()
        return 2
    with one_line_warnings(f'timm-ssod {args.command}'):
        return int(args.func(args) or 0)

