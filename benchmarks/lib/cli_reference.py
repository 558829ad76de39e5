"""The full flag reference of ``timm-ssod`` (``docs/cli.md``), generated from the argument
parsers themselves, so it cannot drift from them: ``build_parser`` for the subcommands,
``timm_ssod.train.build_parser`` for ``train``.

    python benchmarks/make_tables.py --docs      # rewrites docs/cli.md with the other generated pages

The page is built from each argument's names, metavar, default and help, not from argparse's
formatted ``--help`` (whose layout changes with the Python version and the terminal width). A
default that depends on the machine (the CPU count) is said in words; ``tests/test_cli_reference.py``
checks the committed page equals ``reference_markdown()``.
"""
import argparse
import os
from typing import Dict, List, Optional
from unittest import mock

__all__ = ['reference_markdown']

MACHINE_DEPENDENT = 'depends on the CPU count'


def _parsers(cpu_count: int) -> Dict[str, argparse.ArgumentParser]:
    """{command: parser}, built while ``os.cpu_count()`` returns ``cpu_count``."""
    from timm_ssod.train import build_parser as train_parser
    from timm_ssod.cli._main import RAW_COMMANDS, build_parser
    with mock.patch.object(os, 'cpu_count', return_value=cpu_count):
        top = build_parser()
        subs = next(a for a in top._actions if isinstance(a, argparse._SubParsersAction))
        parsers = {'timm-ssod': top}
        for name, parser in subs.choices.items():
            parsers[name] = train_parser(prog='timm-ssod train') if name in RAW_COMMANDS else parser
    return parsers


def _metavar(action: argparse.Action) -> str:
    if action.nargs == 0:
        return ''
    if action.choices is not None and action.metavar is None:
        base = '{' + ','.join(map(str, action.choices)) + '}'
    else:
        base = action.metavar or (action.dest if not action.option_strings else action.dest.upper())
    if isinstance(base, tuple):
        return ' '.join(base)
    if action.nargs == '?':
        return f'[{base}]'
    if action.nargs == '*':
        return f'[{base} ...]'
    if action.nargs == '+':
        return f'{base} [{base} ...]'
    if isinstance(action.nargs, int):
        return ' '.join([base] * action.nargs)
    return base


def _default(action: argparse.Action, other: Optional[argparse.Action]) -> str:
    if other is not None and other.default != action.default:
        return MACHINE_DEPENDENT
    value = action.default
    if action.nargs == 0 or value is None or value is argparse.SUPPRESS or value in ('', [], {}, ()):
        return ''
    if isinstance(value, (list, tuple)):
        value = ' '.join(map(str, value))
    return f'`{value}`'


def _help(action: argparse.Action, prog: str) -> str:
    text = action.help or ''
    if '%' in text:
        params = dict(vars(action), prog=prog)
        for name in list(params):
            if params[name] is argparse.SUPPRESS:
                del params[name]
            elif hasattr(params[name], '__name__'):
                params[name] = params[name].__name__
        if params.get('choices') is not None:
            params['choices'] = ', '.join(map(str, params['choices']))
        text = text % params
    return ' '.join(text.split())


def _cell(text: str) -> str:
    return text.replace('|', '\\|')


def _groups(parser: argparse.ArgumentParser):
    for group in parser._action_groups:
        title = 'arguments' if group is parser._positionals else 'options' if group is parser._optionals \
            else group.title
        actions = [a for a in group._group_actions if a.help is not argparse.SUPPRESS
                   and not isinstance(a, (argparse._HelpAction, argparse._SubParsersAction))]
        if actions:
            yield title, actions


def _command_section(name: str, parser: argparse.ArgumentParser, other: argparse.ArgumentParser,
                     help_text: str) -> List[str]:
    prog = 'timm-ssod' if name == 'timm-ssod' else f'timm-ssod {name}'
    lines = [f'## `{prog}`', '']
    description = (parser.description or '').strip('\n') if name != 'timm-ssod' else ''
    if '\n' not in description:  # one line (train's): said as the sentence
        help_text, description = description or help_text, ''
    if help_text:
        lines += [help_text[0].upper() + help_text[1:].rstrip('.') + '.', '']
    if description:
        lines += ['```text', description, '```', '']
    others = {a.dest: a for a in other._actions}
    for title, actions in _groups(parser):
        lines += [f'**{title}**', '', '| flag | value | default | what |', '|---|---|---|---|']
        for a in actions:
            flags = ', '.join(f'`{s}`' for s in a.option_strings) or f'`{a.metavar or a.dest}`'
            meta = _metavar(a) if a.option_strings else ''
            lines.append(f"| {flags} | {_cell(f'`{meta}`' if meta else '')} | {_cell(_default(a, others.get(a.dest)))} "
                         f"| {_cell(_help(a, prog))} |")
        lines.append('')
    return lines


def reference_markdown() -> str:
    """The text of ``docs/cli.md``."""
    from timm_ssod.cli._main import RAW_COMMANDS
    small, large = _parsers(1), _parsers(64)
    top = small['timm-ssod']
    subs = next(a for a in top._actions if isinstance(a, argparse._SubParsersAction))
    helps = {c.dest: c.help for c in subs._choices_actions}
    helps.update({k: v[2] for k, v in RAW_COMMANDS.items()})
    lines = ['# `timm-ssod` command reference', '',
             '<!-- generated from the argument parsers by benchmarks/make_tables.py --docs '
             '(benchmarks/lib/cli_reference.py); do not edit -->', '',
             'Every flag of every subcommand, as its parser defines it (`timm-ssod COMMAND --help` prints the same). '
             '`train` takes timm\'s `train.py` flags and a `--config` YAML whose values become the defaults '
             '(flags on the command line override it).', '',
             '| command | what it does |', '|---|---|']
    lines += [f'| [`timm-ssod {n}`](#timm-ssod-{n}) | {_cell(helps.get(n) or "")} |' for n in subs.choices]
    lines.append('')
    lines += _command_section('timm-ssod', top, large['timm-ssod'], '')
    for name in subs.choices:
        lines += _command_section(name, small[name], large[name], helps.get(name) or '')
    return '\n'.join(lines).rstrip('\n') + '\n'


if __name__ == '__main__':
    print(reference_markdown(), end='')
