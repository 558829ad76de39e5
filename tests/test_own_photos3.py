"""A user's own photos, third pass (issue 31): what a timm user expects from the command line.
Each test failed before its fix."""
import subprocess
import sys

import pytest

from timm_ssod.cli import main as cli_main

from test_own_photos import CLASSES, IMG, TRAIN, calibrate, calibrated, error_line, root  # noqa: F401 (fixtures)


# ------------------------------------------------- item 15: an unknown flag gives the subcommand's usage
@pytest.mark.parametrize('command, flag', [('predict', '--no-such-flag'), ('eval', '--no-such-flag')])
def test_an_unknown_flag_prints_the_subcommands_usage_and_exits_2(capsys, command, flag):
    with pytest.raises(SystemExit) as e:
        cli_main([command, 'x', 'y', flag]) if command == 'predict' else cli_main([command, flag])
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith(f'usage: timm-ssod {command} '), err
    assert err.strip().splitlines()[-1] == f'timm-ssod {command}: error: unrecognized arguments: {flag}'


# ------------------------------------------------- item 13: visualize --ood is not silently ignored
def test_visualize_ood_without_hist_draws_the_histograms(root, capsys, tmp_path):
    pytest.importorskip('matplotlib')
    assert cli_main(['visualize', '--model', f'local-dir:{root / "model"}', '--data-dir', str(root / 'photos'),
                     '-n', '2', '--ood', f'other={root / "photos" / "test"}', '--hist-samples', '4',
                     '--output', str(tmp_path)]) == 0
    assert '--ood given: drawing the score histograms too (--hist)' in capsys.readouterr().out
    assert (tmp_path / 'hist_other.png').is_file()
