"""``timm-ssod demo --quick``: every step of the protocol runs and the outputs have the
documented structure (no accuracy assertions: the quick sizes learn nothing)."""
import importlib.util
import json
from pathlib import Path

import pytest
import torch

from timm_ssod.cli import main as cli_main
from timm_ssod.data import OOD_SETS
from timm_ssod.evaluate import DEFAULT_DETECTORS, SSOD_DETECTORS
from lib import BASELINES

REPO = Path(__file__).resolve().parents[1]


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
    # paths relative to the run's output folder: nothing says where the run was made
    assert record['stage1']['checkpoint'] == 'stage1_vanilla/last.pth.tar'
    assert argv['ssod'][argv['ssod'].index('--output') + 1] == '.'
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

    # benchmarks/sampler.py reads the run's sizes from the checkpoint and writes per gamma
    spec = importlib.util.spec_from_file_location('measure_sampler', REPO / 'benchmarks' / 'sampler.py')
    measure = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(measure)
    measure.main(str(out / record['finetune']['ssod']['checkpoint']), str(tmp_path / 'sampler.json'), [0.95, 0.6],
                 num_images=16)
    sampler = json.loads((tmp_path / 'sampler.json').read_text())
    assert (sampler['img_size'], sampler['render_size'], sampler['background']) == (64, 64, 'natural')  # QUICK's fine-tune size
    assert list(sampler['by_gamma']) == ['0.95', '0.6']
    assert sampler['by_gamma']['0.6']['share']['ignored'] <= sampler['by_gamma']['0.95']['share']['ignored']


def test_alignment_stats_by_hand():
    """Two images of four locations. Image 0: ID, OOD, OOD, ignored; image 1 (no ID location:
    the classifier found no object): OOD, OOD, ignored, ignored."""
    import torch
    from timm_ssod.demo import alignment_stats
    labels = torch.tensor([[1, 0, 0, -1], [0, 0, -1, -1]])
    cover = torch.tensor([[0.9, 0.0, 0.2, 0.6], [0.8, 0.0, 0.0, 1.0]])
    p_id = torch.tensor([[0.8, 0.1, 0.3, 0.5], [0.4, 0.2, 0.6, 0.7]])
    s = alignment_stats(labels, cover, p_id)
    assert s['share'] == {'id': 1 / 8, 'ood': 4 / 8, 'ignored': 3 / 8}
    assert s['object_coverage']['ood'] == pytest.approx((0.0 + 0.2 + 0.8 + 0.0) / 4)
    # pure background (< 5%): three cells, all OOD but the ignored (1, 2); objects (> 50%): four cells
    assert s['background_cells']['share_of_cells'] == 3 / 8
    assert s['background_cells']['labelled_ood'] == pytest.approx(2 / 3)
    assert s['object_cells']['labelled_id'] == 1 / 4 and s['object_cells']['labelled_ood'] == 1 / 4
    assert s['p_id']['object_cells'] == pytest.approx((0.8 + 0.5 + 0.4 + 0.7) / 4)
    # what 'dr' drops: image 1 holds 2 of the 4 OOD locations, one of them on the object
    assert s['images_without_id'] == {'share_of_images': 0.5, 'share_of_ood_locations': 0.5,
                                      'object_coverage_of_their_ood': pytest.approx(0.4),
                                      'object_coverage_of_other_ood': pytest.approx(0.1)}


def test_alignment_stats_without_any_ood_location_gives_none_not_nan():
    import torch
    from timm_ssod.demo import alignment_stats
    s = alignment_stats(torch.tensor([[1, -1]]), torch.tensor([[0.9, 0.0]]), torch.tensor([[0.7, 0.2]]))
    assert s['object_coverage']['ood'] is None and s['images_without_id']['share_of_ood_locations'] is None
    assert s['images_without_id']['share_of_images'] == 0.0
