"""``timm-ssod demo --quick``: every step of the protocol runs and the outputs have the
documented structure (no accuracy assertions: the quick sizes learn nothing)."""
import json

import pytest
import torch

from timm_ssod.cli import main as cli_main
from timm_ssod.data import OOD_SETS
from timm_ssod.evaluate import DEFAULT_DETECTORS, SSOD_DETECTORS
from timm_ssod.experiments import BASELINES


@pytest.fixture(autouse=True, scope='module')
def _one_thread():
    # tiny models: a second thread buys nothing and, when other jobs share the 2 cores, makes
    # each step several times slower (threads waiting for each other)
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def test_demo_quick_writes_table_and_results(tmp_path, capsys):
    out = tmp_path / 'demo'
    assert cli_main(['demo', '--quick', '--output', str(out), '--seed', '3']) == 0
    printed = capsys.readouterr().out

    record = json.loads((out / 'protocol.json').read_text())
    assert set(record) >= {'config', 'stage1', 'finetune', 'eval', 'table', 'table_md', 'seconds'}
    assert record['config']['seed'] == 3 and record['config']['ood_sets'] == list(OOD_SETS)

    # fair comparison: the two fine-tunes differ only in the objective flags and folder
    argv = {k: v['argv'] for k, v in record['finetune'].items()}
    strip = {'--ssod', '--no-ssod', '--gamma', '--ood-lambda', '--balance', 'finetune_ssod', 'finetune_vanilla',
             '0.95', '1.0', 'lwb'}
    assert [a for a in argv['ssod'] if a not in strip] == [a for a in argv['vanilla'] if a not in strip]
    assert record['stage1']['checkpoint'] in argv['ssod'] and record['stage1']['checkpoint'] in argv['vanilla']
    # stage 1 at its own input size (the demo's: the render size), the fine-tunes at img_size
    size_of = lambda a: a[a.index('--img-size') + 1]  # noqa: E731
    assert size_of(record['stage1']['argv']) == '32' and size_of(argv['ssod']) == size_of(argv['vanilla']) == '64'

    ssod, vanilla = record['eval']['ssod'], record['eval']['vanilla']
    assert list(ssod['results']) == list(DEFAULT_DETECTORS)
    assert list(vanilla['results']) == list(BASELINES)  # no SSOD score without an OOD head
    for result in (ssod, vanilla):
        assert 0.0 <= result['id_accuracy'] <= 1.0
        for by_set in result['results'].values():
            assert list(by_set) == list(OOD_SETS)
            for m in by_set.values():
                assert 0.0 <= m['fpr95'] <= 1.0 and 0.0 <= m['auroc'] <= 1.0

    rows = list(record['table']['results'])
    assert rows[:len(SSOD_DETECTORS)] == [f'{d} (SSOD model)' for d in SSOD_DETECTORS]
    assert {f'{d} (vanilla model)' for d in BASELINES} | {f'{d} (SSOD model)' for d in BASELINES} <= set(rows)
    table = (out / 'table.md').read_text()
    for s in OOD_SETS + ('average',):
        assert f'{s} FPR95' in table and f'{s} AUROC' in table
    assert 'ssod fine-tune' in table and 'vanilla fine-tune' in table
    assert table.strip() in printed and 'Wall time' in printed
    assert 'ETA: about' in printed.split(table.strip())[0]  # the estimate comes before the work
    for kind in ('ssod', 'vanilla'):
        assert json.loads((out / 'eval' / kind / 'results.json').read_text())['results']
