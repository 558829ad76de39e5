"""``timm-ssod``: the command line, one subcommand per task (the top layer: imports any other).

``timm-ssod train|eval|push|calibrate|predict|visualize|demo``. Each subcommand is a module
``_<name>.py`` following one convention (``_common``): ``add_parser`` registers it through
``add_command``, ``run(args, prog)`` reports bad input through ``report_errors``; ``train`` parses
its own arguments (timm's two-stage ``--config`` parsing, ``timm_ssod.train.run``).
"""
from ._common import BAD_INPUT, add_command, parse_and_run, report_errors
from ._main import RAW_COMMANDS, SUBPARSER_MODULES, build_parser, main

__all__ = ['BAD_INPUT', 'add_command', 'parse_and_run', 'report_errors', 'RAW_COMMANDS', 'SUBPARSER_MODULES',
           'build_parser', 'main']
