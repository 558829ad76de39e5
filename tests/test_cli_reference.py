"""docs/cli.md is generated from the argument parsers (``benchmarks/lib/cli_reference.py``), so it cannot
drift from them: the committed page equals what the parsers give now."""
from pathlib import Path

from timm_ssod.cli import build_parser
from lib.cli_reference import MACHINE_DEPENDENT, reference_markdown

PAGE = Path(__file__).resolve().parents[1] / 'docs' / 'cli.md'


def test_committed_cli_reference_is_generated_from_the_parsers():
    assert PAGE.read_text(encoding='utf-8') == reference_markdown(), \
        'docs/cli.md differs from the parsers: run python benchmarks/make_tables.py --docs'


def test_every_command_and_flag_is_in_the_reference():
    text = reference_markdown()
    sub = next(a for a in build_parser()._actions if a.dest == 'command')
    for name, parser in sub.choices.items():
        assert f'## `timm-ssod {name}`' in text
        for action in parser._actions:
            for flag in action.option_strings:
                if flag not in ('-h', '--help'):
                    assert f'`{flag}`' in text, (name, flag)
    for flag in ('--resize-up', '--gamma', '--ood-lambda', '--balance', '--pretrained-path', '--resume'):  # train's own
        assert f'`{flag}`' in text
    assert MACHINE_DEPENDENT in text  # --workers: the CPU count, not this machine's number


def test_experimental_detectors_are_not_in_the_user_surface():
    """energy_ssod, ssod_energy_rank and ssod_patch_max stay creatable by name, but neither --help
    (hence this reference) nor the README's detector list names them."""
    readme = (PAGE.parents[1] / 'README.md').read_text(encoding='utf-8')
    for name in ('energy_ssod', 'ssod_energy_rank', 'ssod_patch_max'):
        assert name not in reference_markdown() and name not in readme, name
