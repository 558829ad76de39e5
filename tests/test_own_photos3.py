"""A user's own photos, third pass (issue 31): what a timm user expects from the command line.
Each test failed before its fix."""
import subprocess
import sys

import pytest

from timm_ssod.cli import main as cli_main


# ------------------------------------------------- item 15: an unknown flag gives the subcommand's usage
@pytest.mark.parametrize('command, flag', [('predict', '--no-such-flag'), ('eval', '--no-such-flag')])
def test_an_unknown_flag_prints_the_subcommands_usage_and_exits_2(capsys, command, flag):
    with pytest.raises(SystemExit) as e:
        cli_main([command, 'x', 'y', flag]) if command == 'predict' else cli_main([command, flag])
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith(f'usage: timm-ssod {command} '), err
    assert err.strip().splitlines()[-1] == f'timm-ssod {command}: error: unrecognized arguments: {flag}'
