"""The benchmark scripts' ``--quick`` modes run and write valid JSON, and make_tables turns that
JSON into markdown. No timing or accuracy assertions (the quick sizes learn nothing)."""
import json
from pathlib import Path

import pytest
import torch

from bench_scripts import load_script

pytestmark = pytest.mark.tiny_fits  # detectors fitted on tens of images (tests/conftest.py)

BENCH = Path(__file__).resolve().parents[1] / 'benchmarks'


def _script(name):
    return load_script(name)


@pytest.fixture(scope='module')
def outputs(tmp_path_factory):
    """Run each benchmark once in quick mode; {name: path of its JSON}."""
    tmp = tmp_path_factory.mktemp('bench')
    paths = {name: tmp / f'{name}.json' for name in ('overhead', 'quality', 'ablations')}
    _script('overhead').main(['--quick', '--out', str(paths['overhead'])])
    for name in ('quality', 'ablations'):
        _script(name).main(['--quick', '--out', str(paths[name]), '--runs-dir', str(tmp / f'{name}_runs')])
    return paths


def test_overhead_quick_writes_json(outputs):
    d = json.loads(outputs['overhead'].read_text())
    assert d['models'] and all('train_time_ratio' in r for r in d['models'].values())


def test_quality_quick_writes_json(outputs):
    d = json.loads(outputs['quality'].read_text())
    (name, b), = d['backbones'].items()
    assert len(b['runs']) == 1 and b['stage1']['checkpoint'].endswith('last.pth.tar')
    rows = b['summary']['rows']
    for label in ('ssod (SSOD model)', 'ssod_msp (SSOD model)', 'energy_ssod (SSOD model)',
                  'ssod_patch_max (SSOD model)', 'ssod_energy_rank (SSOD model)', 'energy (vanilla model)',
                  'energy (SSOD model)'):
        assert set(rows[label]) == set(d['ood_sets']) | {'average'}
        assert set(rows[label]['average']['fpr95']) == {'mean', 'std', 'n'}
    choice = b['runs'][0]['energy_ssod']
    assert choice['chosen_weight'] in d['weights'] and set(choice['test_mean_by_weight']) == set(map(str, d['weights']))
    assert set(b['summary']['id_accuracy']) == {'ssod', 'vanilla'}
    # calibrated decisions: calibrated on the 20 val images (alpha 1% needs 99: not measured), tested on the test split
    dec = b['runs'][0]['decisions']
    assert dec['alphas'] == [0.05, 0.1] and dec['n_calibration'] == 20 and dec['n_test'] == 32
    assert set(dec['detectors']) == {'ssod', 'mahalanobis', 'energy', 'ssod_fused'}
    check = dec['detectors']['ssod_fused']['id_rejection']['0.05']
    assert check['expected'] == 1 / 21 and check['rejected'] == round(check['rate'] * 32)


def test_quality_rerun_skips_finished_runs_and_refuses_other_settings(outputs, tmp_path):
    before = json.loads(outputs['quality'].read_text())
    runs_dir = str(outputs['quality'].parent / 'quality_runs')
    _script('quality').main(['--quick', '--out', str(outputs['quality']), '--runs-dir', runs_dir])
    after = json.loads(outputs['quality'].read_text())
    assert after['backbones']['test_resnet']['runs'] == before['backbones']['test_resnet']['runs']  # nothing retrained
    with pytest.raises(SystemExit, match='other settings.*background'):
        _script('quality').main(['--quick', '--background', 'smooth', '--out', str(outputs['quality']),
                                 '--runs-dir', runs_dir])


def test_ablations_quick_writes_json(outputs):
    d = json.loads(outputs['ablations'].read_text())
    assert list(d['settings'])[0] == 'default' and len(d['settings']) >= 2
    for e in d['settings'].values():
        assert set(e['scores']) == {'ssod', 'ssod_msp'} and 'average' in e['scores']['ssod']
        assert 0.0 <= e['id_accuracy'] <= 1.0 and set(e['sampler']) == {'id', 'ood', 'ignored'}
    assert 'energy' in d['vanilla_reference']['scores']


def test_ablations_rerun_skips_finished_settings_and_refuses_other_runs(outputs, tmp_path, capsys):
    before = json.loads(outputs['ablations'].read_text())
    runs_dir = str(outputs['ablations'].parent / 'ablations_runs')
    capsys.readouterr()
    _script('ablations').main(['--quick', '--out', str(outputs['ablations']), '--runs-dir', runs_dir])
    printed = capsys.readouterr().out
    after = json.loads(outputs['ablations'].read_text())
    assert after['settings'] == before['settings'] and after['vanilla_reference'] == before['vanilla_reference']
    assert printed.count('skipped') == len(before['settings']) and 'Train:' not in printed  # nothing retrained
    with pytest.raises(SystemExit, match='another protocol or seed'):
        _script('ablations').main(['--quick', '--seed', '1', '--out', str(outputs['ablations']), '--runs-dir', runs_dir])
    with pytest.raises(SystemExit, match='holds settings this run does not'):
        _script('ablations').main(['--quick', '--only', 'gamma', '--out', str(outputs['ablations']),
                                   '--runs-dir', runs_dir])
    assert json.loads(outputs['ablations'].read_text()) == after  # neither refusal touched the file


def test_a_rerun_over_an_unreadable_result_stops_and_keeps_the_file(tmp_path):
    """A half-written or hand-edited JSON is never overwritten by a rerun of any of the benchmarks."""
    from lib import read_result
    assert read_result(str(tmp_path / 'missing.json')) is None
    bad = tmp_path / 'bad.json'
    bad.write_text('{"settings": {')
    for name in ('quality', 'ablations'):
        with pytest.raises(SystemExit, match='bad.json: not valid JSON'):
            _script(name).main(['--quick', '--out', str(bad), '--runs-dir', str(tmp_path / 'runs')])
    assert bad.read_text() == '{"settings": {'


def test_make_tables_from_the_json(outputs, tmp_path):
    out = tmp_path / 'tables.md'
    text = _script('make_tables').main([*(f'--{k}={v}' for k, v in outputs.items()), '--out', str(out)])
    assert out.read_text() == text
    for heading in ('### Cost of SSOD', '### Detection quality', '### Ablations of SSOD', 'energy_ssod (SSOD model)',
                    'fused vs single', 'Calibrated decisions of `ssod_fused`'):
        assert heading in text


def test_quality_merge_combines_parallel_runs_and_refuses_mismatched_settings(outputs, tmp_path):
    part = json.loads(outputs['quality'].read_text())
    (name, entry), = part['backbones'].items()
    other = dict(part, command='python benchmarks/quality.py --backbones other', backbones={'other': entry})
    (tmp_path / 'b.json').write_text(json.dumps(other))
    out = tmp_path / 'merged.json'
    merged = _script('quality').main(['--merge', str(outputs['quality']), str(tmp_path / 'b.json'), '--out', str(out)])
    assert list(json.loads(out.read_text())['backbones']) == [name, 'other'] == list(merged['backbones'])
    assert merged['command'].endswith('--backbones other') and len(merged['environment']) == 2
    (tmp_path / 'c.json').write_text(json.dumps(dict(other, seeds=[5, 6])))
    with pytest.raises(SystemExit, match='seeds'):
        _script('quality').main(['--merge', str(outputs['quality']), str(tmp_path / 'c.json'), '--out', str(out)])
    with pytest.raises(SystemExit, match='more than one file'):
        _script('quality').main(['--merge', str(outputs['quality']), str(outputs['quality']), '--out', str(out)])
    # one seed per process: the same backbone's other seed in another file joins its runs, summary recomputed
    (seed0,) = entry['runs']
    seed7 = dict(seed0, seed=7, seconds=1.0)
    (tmp_path / 'd.json').write_text(json.dumps(dict(part, seeds=[7], backbones={name: dict(entry, runs=[seed7])})))
    both = _script('quality').main(['--merge', str(outputs['quality']), str(tmp_path / 'd.json'), '--out', str(out)])
    assert both['seeds'] == sorted([seed0['seed'], 7]) and [r['seed'] for r in both['backbones'][name]['runs']] == \
        both['seeds']
    assert both['backbones'][name]['summary'] == _script('quality').summarize([seed0, seed7])


def test_regime_quick_runs_the_grid_and_from_scratch_then_resumes_without_retraining(tmp_path, capsys):
    """The study writes each cell as it finishes, records its factors, and a rerun skips finished cells."""
    regime, out, runs = _script('regime'), tmp_path / 'regime.json', tmp_path / 'runs'
    regime.main(['--quick', '--out', str(out), '--runs-dir', str(runs), '--wait', '0'])
    d = json.loads(out.read_text())
    assert len(d['cells']) == 4  # 2 backgrounds x 2 scales x 1 backbone x 1 seed
    for key, c in d['cells'].items():
        assert key == f"{c['background']}/{c['scale']}/{c['backbone']}/seed{c['seed']}"
        assert c['render_size'] and c['input_size'] and c['grid']
        assert {'labelled_ood', 'labelled_id'} <= set(c['sampler_alignment']['background_cells'])
        assert 'labelled_id' in c['sampler_alignment']['object_cells']
        assert c['best_logit']['average']['detector'] in d['logit_baselines']
        assert c['best_feature']['average']['detector'] in d['feature_baselines']
    paper = [c for c in d['cells'].values() if c['scale'] == 'paper']
    assert all(c['render_size'] < c['input_size'] for c in paper)  # rendered small, resized up
    assert {e['kind'] for e in d['from_scratch'].values()} == {'ssod', 'vanilla'}
    capsys.readouterr()
    regime.main(['--quick', '--out', str(out), '--runs-dir', str(runs), '--wait', '0'])
    printed = capsys.readouterr().out
    assert printed.count('all seeds done, skipped') == 4 and 'stage 1' not in printed and 'epochs' not in printed
    mt = _script('make_tables')
    text = mt.regime_tables(d)
    assert '### SSOD in its own regime' in text and 'Main effects' in text and "Table-2 protocol" in text
    mt.regime_figure(d, tmp_path / 'regime.png')
    assert (tmp_path / 'regime.png').stat().st_size > 1000
    # the probe repeats a cell's SSOD fine-tune on the same stage 1 (not retrained) and probes it location by location
    probe_out = tmp_path / 'probe.json'
    _script('regime_probe').main(['natural/native/test_resnet', '--quick', '--num-images', '16',
                                  '--out', str(probe_out), '--runs-dir', str(runs)])
    captured = capsys.readouterr()
    assert '[probe] natural/native/test_resnet/seed0' in captured.out and ': stage 1 (' not in captured.out + captured.err
    p = json.loads(probe_out.read_text())['cells']['natural/native/test_resnet/seed0']['probe']
    assert set(p['ood']) == set(d['ood_sets']) and 0.0 <= p['id']['p_id_all_cells'] <= 1.0
    for v in p['ood'].values():
        assert set(v['auroc']) == {'pooled head (Eq. 15)', 'mean of locations', 'most-ID location'}
    assert '### Probe of the OOD head' in mt.probe_tables(json.loads(probe_out.read_text()))
    # runs of other seeds are joined with their commands; a cell in two files is refused
    first = json.loads(probe_out.read_text())
    other = dict(first, command='python benchmarks/regime_probe.py ... --seed 1',
                 cells={'natural/native/test_resnet/seed1': dict(first['cells']['natural/native/test_resnet/seed0'], seed=1)})
    (tmp_path / 'probe1.json').write_text(json.dumps(other))
    merged = _script('regime_probe').main(['--merge', str(probe_out), str(tmp_path / 'probe1.json'),
                                           '--out', str(tmp_path / 'merged.json')])
    assert list(merged['cells']) == ['natural/native/test_resnet/seed0', 'natural/native/test_resnet/seed1']
    assert merged['command'] == first['command'] + '; ' + other['command']
    assert json.loads((tmp_path / 'merged.json').read_text()) == merged
    with pytest.raises(SystemExit, match='in more than one file'):
        _script('regime_probe').main(['--merge', str(probe_out), str(probe_out), '--out', str(tmp_path / 'x.json')])
    # a later run that adds cells to the same file is named in it too, once
    probe = _script('regime_probe')
    for _ in range(2):
        probe.add_command(str(tmp_path / 'probe1.json'), 'python benchmarks/regime_probe.py X --seed 2')
    assert json.loads((tmp_path / 'probe1.json').read_text())['command'] == \
        other['command'] + '; python benchmarks/regime_probe.py X --seed 2'


def test_generated_blocks_are_the_committed_json():
    """Every table of README.md and docs/**/*.md (docs/study/ too) between make_tables markers is generated from the
    committed JSON (numbers are never typed by hand), each section once, and every section whose
    JSON is committed has its block: rerun ``python benchmarks/make_tables.py --docs`` after a run."""
    mt = _script('make_tables')
    root = BENCH.parent
    data = mt.load_sources({name: str(root / path) for name, path in mt.SOURCES.items()})
    expected = mt.build_tables(data)
    where = {}
    for page in mt.pages(str(root)):
        for name, content in mt.page_blocks((root / page).read_text()).items():
            assert name not in where, f'block {name!r} is in both {where[name]} and {page}'
            where[name] = page
            assert name in expected, f'{page}: block {name!r} has no committed JSON to generate it from'
            assert content == expected[name], \
                f'{page}: table {name!r} differs from its JSON: run python benchmarks/make_tables.py --docs'
    assert set(expected) <= set(where), f'no page holds the blocks {set(expected) - set(where)}'
    assert {'overhead', 'quality', 'ablations', 'regime', 'regime_probe', 'demo'} <= set(where)
    # the README keeps one short table; the other glance tables sit on the page of what they summarize
    assert {n: where[n] for n in where if n.startswith('glance_')} == {
        'glance_demo': 'README.md', 'glance_cost': 'README.md', 'glance_deploy': 'docs/decisions.md',
        'glance_help': 'docs/study/README.md'}
    assert {'converged', 'quality', 'evidence', 'standin'} <= {n for n in where if where[n].startswith('docs/study/')}


def test_generated_blocks_are_found_empty_or_filled():
    mt = _script('make_tables')
    page = 'a\n<!-- make_tables:demo -->\n<!-- /make_tables:demo -->\nb\n'
    assert mt.page_blocks(page) == {'demo': ''}
    filled = mt.fill_blocks(page, {'demo': '| x |\n|---|'})
    assert filled == 'a\n<!-- make_tables:demo -->\n| x |\n|---|\n<!-- /make_tables:demo -->\nb\n'
    assert mt.page_blocks(filled) == {'demo': '| x |\n|---|'}
    assert mt.fill_blocks(filled, {'demo': '| x |\n|---|'}) == filled  # idempotent


def test_ablations_merge_reports_mean_and_spread_over_seeds(outputs, tmp_path):
    run = json.loads(outputs['ablations'].read_text())
    other = json.loads(json.dumps(run))
    other['protocol']['seed'] = 1
    key = next(iter(other['settings']))
    run_bg = run['settings'][key]['scores']['ssod']['backgrounds']['fpr95']
    other['settings'][key]['scores']['ssod']['backgrounds']['fpr95'] = run_bg + 0.2  # a known spread: std 10 points
    (tmp_path / 's1.json').write_text(json.dumps(other))
    out = tmp_path / 'merged.json'
    merged = _script('ablations').main(['--merge', str(outputs['ablations']), str(tmp_path / 's1.json'), '--out', str(out)])
    assert merged['seeds'] == [0, 1] and json.loads(out.read_text())['seeds'] == [0, 1]
    table = _script('make_tables').ablation_tables(merged)
    assert 'seeds 0, 1; mean ± std' in table
    assert f'{100 * (run_bg + 0.1):.1f} ± 10.0 /' in table.split('\n')[6]  # the first setting's row
    with pytest.raises(SystemExit, match='repeat'):
        _script('ablations').main(['--merge', str(outputs['ablations']), str(outputs['ablations']), '--out', str(out)])
    other['protocol']['img_size'] = 32
    (tmp_path / 's2.json').write_text(json.dumps(other))
    with pytest.raises(SystemExit, match='another protocol'):
        _script('ablations').main(['--merge', str(outputs['ablations']), str(tmp_path / 's2.json'), '--out', str(out)])


def test_every_quality_backbone_config_builds_with_a_spatial_map():
    """The full run's configurations (not trained by the quick test) build and give >= 2x2 maps."""
    import timm_ssod
    for name, cfg in _script('quality').BACKBONES.items():
        model = timm_ssod.create_model(name, num_classes=6, **cfg['model_kwargs']).eval()
        with torch.no_grad():
            out = model.forward_ssod(torch.randn(1, 3, cfg['img_size'], cfg['img_size']))
        assert min(out.grid) >= 2, (name, out.grid)


@pytest.mark.parametrize('quick', [True, False])
def test_ablations_call_the_protocol_with_the_demo_settings(quick):
    """The full-size run is too long for a test: check that its run_protocol call binds (the
    demo's settings once carried a ``detectors`` key that the ablations pass themselves)."""
    import inspect
    from lib import run_protocol
    ablations = _script('ablations')
    base = ablations.protocol_base(quick)
    inspect.signature(run_protocol).bind(**{k: v for k, v in base.items() if k != 'num_fit'}, seed=0, gamma=0.95,
                                         lam=1.0, balance='lwb', detectors=('ssod',), out_dir='x',
                                         stage1_checkpoint='x', vanilla=True, num_fit=0, progress=False)


def _tiny_standin(folder, background='natural'):
    """A stand-in file of the quick backbone (untrained weights, the JSON keys quality.py reads)."""
    import timm
    from safetensors.torch import save_file

    from timm_ssod._util import sha256_of
    folder.mkdir(exist_ok=True)
    model = timm.create_model('test_resnet', num_classes=6, output_stride=16)
    file = folder / 'test_resnet.safetensors'
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(file))
    (folder / 'test_resnet.json').write_text(json.dumps(dict(
        model='test_resnet', model_kwargs={'output_stride': 16}, input_size=48, render_size=16, background=background,
        images=32, epochs=1, id_test_accuracy=0.5, sha256=sha256_of(file))))
    return file


def test_quality_from_standins_fine_tunes_the_file_at_its_own_size_and_keeps_the_kept_epochs(tmp_path):
    _tiny_standin(tmp_path / 'weights')
    out, runs = tmp_path / 'q.json', tmp_path / 'runs'
    common = ['--quick', '--from-standins', '--weights-dir', str(tmp_path / 'weights'), '--runs-dir', str(runs)]
    _script('quality').main(common + ['--keep-checkpoints', '--out', str(out)])
    d = json.loads(out.read_text())
    assert d['start'] == 'standins' and d['sizes']['stage1_epochs'] == 0 and d['sizes']['finetune_lr'] == 1e-4
    b = d['backbones']['test_resnet']
    assert b['config'] == {'model_kwargs': {'output_stride': 16}, 'img_size': 48, 'render_size': 16}
    assert b['stage1']['file'] == 'test_resnet.safetensors' and b['stage1']['id_test_accuracy'] == 0.5
    args = (runs / 'test_resnet' / 'seed0' / 'finetune_ssod' / 'args.yaml').read_text()
    assert 'test_resnet.safetensors' in args and 'stage1' not in args  # the file, not a stage 1
    assert sorted(p.name for p in runs.rglob('*.pth.tar')) == ['model_best.pth.tar'] * 2  # one per arm
    with pytest.raises(SystemExit, match='other settings.*start'):  # the from-scratch run's JSON is another study
        _script('quality').main(['--quick', '--out', str(out), '--runs-dir', str(tmp_path / 'scratch')])
    with pytest.raises(SystemExit, match='trained on natural backgrounds'):
        _script('quality').main(common + ['--background', 'smooth', '--out', str(tmp_path / 's.json')])
    with pytest.raises(SystemExit, match='no .*resnet18.safetensors'):
        _script('quality').main(common + ['--backbones', 'resnet18', '--out', str(tmp_path / 'r.json')])


def test_step_cost_measures_a_step_and_sizes_a_recipe_from_it(tmp_path):
    out, threads = tmp_path / 'cost.json', torch.get_num_threads()
    d = _script('step_cost').main(['--models', 'test_resnet:32:16', '--steps', '1', '--warmup', '0',
                                   '--batch-size', '2', '--out', str(out)])
    assert json.loads(out.read_text())['models'] == d['models'] and torch.get_num_threads() == threads  # restored
    (key, row), = d['models'].items()
    assert key == 'test_resnet@32/os16/1t' and row['grid'] == [2, 2] and row['ms_per_image'] > 0
    # 16 epochs x (6000 + 600 / 3) images, and two arms x 3 epochs x 4000 images, at the measured ms per image
    assert row['standin_min'] == pytest.approx(16 * 6200 * row['ms_per_image'] / 60000, abs=0.06)
    assert row['quality_seed_finetunes_min'] == pytest.approx(24000 * row['ms_per_image'] / 60000, abs=0.06)
    with pytest.raises(SystemExit):
        _script('step_cost').main(['--models', 'resnet18:big', '--out', str(out)])


def test_calibrate_cost_times_each_decision_as_its_own_command(tmp_path):
    """benchmarks/calibrate_cost.py: one process per variant of ``timm-ssod calibrate``, the ratio to the first,
    the components the default kept, a pasteable command; a failing variant or a missing checkpoint stops it."""
    import timm_ssod
    torch.manual_seed(0)
    model = timm_ssod.create_model('test_resnet', num_classes=3, output_stride=16)
    args = dict(model='test_resnet', num_classes=None, gp=None, in_chans=None, input_size=None, img_size=64,
                model_kwargs={'output_stride': 16}, ssod=True, gamma=0.6, ood_lambda=1.0, balance='lwb',
                dataset='synthetic/id', mean=None, std=None, crop_pct=None, interpolation='')
    ckpt = tmp_path / 'model_best.pth.tar'
    torch.save({'epoch': 1, 'arch': 'test_resnet', 'state_dict': model.state_dict(), 'args': args}, ckpt)
    common = [str(ckpt), '--data', '--dataset synthetic/id --dataset-kwargs num_images=48 img_size=64 num_classes=3',
              '--fit-samples', '40', '--calib-samples', '20']
    out = tmp_path / 'cost.json'
    _script('calibrate_cost').main([*common, '--variants', '--select all', '', '--out', str(out)])
    d = json.loads(out.read_text())
    assert list(d['variants']) == ['--select all', ''] and d['variants']['--select all']['ratio'] == 1.0
    assert d['variants']['']['median_seconds'] > 0 and d['variants']['']['kept'].startswith('Components kept')
    assert "--variants '--select all' ''" in d['command'] and ' /' not in d['command']  # relative paths
    with pytest.raises(SystemExit, match="calibrate '--select nope' failed"):
        _script('calibrate_cost').main([*common, '--variants', '--select nope', '--out', str(tmp_path / 'x.json')])
    with pytest.raises(SystemExit, match='no checkpoint'):
        _script('calibrate_cost').main([str(tmp_path / 'absent.pth.tar'), '--out', str(tmp_path / 'x.json')])


def test_onnx_latency_times_the_exported_decision_against_the_plain_model(tmp_path):
    """benchmarks/onnx_latency.py: every variant timed on each batch size, ratios to the plain model's (1 for it),
    the components of each decision, the command."""
    out = tmp_path / 'onnx.json'
    _script('onnx_latency').main(['--quick', '--repeats', '2', '--warmup', '0', '--batch-sizes', '2',
                                  '--fit-images', '40', '--calib-images', '20', '--out', str(out)])
    d = json.loads(out.read_text())
    assert list(d['results']) == ['2'] and set(d['results']['2']) == {'plain', 'ssod_default_decision',
                                                                      'ssod_all_components'}
    assert d['results']['2']['plain']['ratio'] == 1.0 and len(d['results']['2']['plain']['ms']) == 2
    assert d['decisions']['plain']['components'] is None
    assert d['decisions']['ssod_all_components']['components'] == ['ssod', 'mahalanobis', 'energy', 'knn', 'vim']
    assert d['command'].startswith('python benchmarks/onnx_latency.py --quick')
