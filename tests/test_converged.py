"""``benchmarks/converged.py`` (the study's decisive cell): the quick mode runs end to end (its own tiny
stand-ins, natural and smooth, then every cell), records what the README's two questions need,
resumes without retraining, and its summary and table read the JSON. No accuracy assertions (the
quick sizes learn nothing: the quick SSOD fine-tune labels no location, so both arms coincide)."""
import json
import os

import pytest
import yaml

from bench_scripts import load_script

pytestmark = pytest.mark.tiny_fits  # detectors fitted on tens of images (tests/conftest.py)



def _script(name):
    return load_script(name)


@pytest.fixture(scope='module')
def converged():
    return _script('converged')


def _strings(x):
    if isinstance(x, str):
        yield x
    elif isinstance(x, dict):
        for k, v in x.items():
            yield k
            yield from _strings(v)
    elif isinstance(x, list):
        for v in x:
            yield from _strings(v)


def test_quick_study_records_both_questions_and_resumes(converged, tmp_path, capsys):
    out, runs = tmp_path / 'converged.json', tmp_path / 'runs'
    argv = ['--quick', '--out', str(out), '--runs-dir', str(runs)]
    converged.main(argv)
    d = json.loads(out.read_text())
    sets = d['ood_sets'] + ['average']
    assert len(d['cells']) == 4  # 2 backgrounds x 1 backbone x 2 seeds
    assert set(d['logit_baselines']) | set(d['feature_baselines']) == set(d['baselines'])
    assert {'ssod_patch_max', 'ssod_fused', 'ssod', 'odin'} <= set(d['detectors'])
    # the stand-ins: one per background, the smooth one trained with the recipe's dataset_kwargs, background=smooth
    for key, w in d['starting_weights'].items():
        background = key.split('/')[0]
        assert w['background'] == background and w['file'] == f'<runs-dir>/{background}_standin/weights/test_resnet.safetensors'
        assert (w['render_size'], w['input_size']) == (16, 56) and len(w['sha256']) == 64
    assert 'background=smooth' in d['starting_weights']['smooth/test_resnet']['command']
    for key, c in d['cells'].items():
        assert key == f"{c['background']}/{c['backbone']}/seed{c['seed']}"
        assert c['starting_weights'] == d['starting_weights'][f"{c['background']}/{c['backbone']}"]
        assert set(c['id_accuracy']) == {'ssod', 'vanilla'} and c['grid'] and c['render_size'] < c['input_size']
        assert {'object_cells', 'background_cells'} == set(c['sampler_alignment']['p_id'])
        assert set(c['ssod_model']) == set(d['detectors']) and set(c['vanilla']) == set(d['baselines'])
        # the choices are made on the vanilla model's validation scores, and reported on the test splits
        assert set(c['vanilla_val']) == set(d['baselines'])
        for group, names in (('logit', d['logit_baselines']), ('feature', d['feature_baselines']),
                             ('any', d['baselines'])):
            chosen = c['chosen_on_val'][group]
            assert chosen['detector'] == min(names, key=lambda n: c['vanilla_val'][n]['average']['fpr95'])
            assert all(chosen[s] == c['vanilla'][chosen['detector']][s] for s in sets)
        for group in ('logit', 'feature'):
            for s in sets:
                e = c['score_vs_best'][group][s]['fpr95']
                assert e['a'] == c['ssod_model']['ssod'][s]['fpr95'] == c['ssod'][s]['fpr95']
                assert e['difference'] == pytest.approx(e['a'] - c['chosen_on_val'][group][s]['fpr95'])
        assert set(c['paired']) == set(d['baselines'])
        for det, by_set in c['paired'].items():
            for s in sets:
                for m in ('fpr95', 'auroc'):
                    assert by_set[s][m] == pytest.approx(c['ssod_model'][det][s][m] - c['vanilla'][det][s][m])
        dv = c['default_vs_best_vanilla']
        assert dv['detector'] == c['chosen_on_val']['any']['detector']
        assert dv['average']['fpr95']['a'] == c['ssod_model']['ssod_fused']['average']['fpr95']
        assert set(c['best_logit_oracle']) == set(sets)  # best-on-test, labelled as the oracle it is
        assert set(c['probe']['ood']) == set(d['ood_sets'])
        assert {'eval_vanilla_val', 'probe', 'cell'} <= set(c['seconds'])
    # nothing of this machine's paths in the JSON (a test scans committed files for absolute paths)
    text = out.read_text()
    assert str(tmp_path) not in text and not any(s.startswith('/') for s in _strings(d))

    # a rerun skips every finished cell, trains nothing and leaves the file as it was
    capsys.readouterr()
    converged.main(argv)
    printed = capsys.readouterr().out
    assert printed.count('all seeds done, skipped') == 2 and 'stand-in' not in printed and 'fine-tunes' not in printed
    assert out.read_text() == text
    # an interrupted study resumes at the missing cell, from the stand-in already exported
    del d['cells']['smooth/test_resnet/seed1']
    out.write_text(json.dumps(d))
    converged.main(argv)
    printed = capsys.readouterr().out
    assert 'natural/test_resnet: all seeds done' in printed and 'smooth/test_resnet/seed1: fine-tunes' in printed
    assert 'stand-in' not in printed and 'seed0: fine-tunes' not in printed
    assert set(json.loads(out.read_text())['cells']) == set(json.loads(text)['cells'])
    # another size of study into the same file is refused
    out.write_text(json.dumps(dict(d, sizes=dict(d['sizes'], num_images=1))))
    with pytest.raises(SystemExit, match='other sizes'):
        converged.main(argv)
    out.write_text(text)

    # the two answers as data, and the table (make_tables renders the same)
    summary = converged.summarize(d)
    e = summary['natural']['test_resnet']
    assert e['seeds'] == [0, 1] and set(e['score']) == {'logit', 'feature'}
    for g in ('logit', 'feature'):
        for s in converged.HEADLINE:
            assert e['score'][g][s]['verdict'] in ('better', 'worse', 'mixed')
            assert e['score'][g][s]['fpr95']['difference']['n'] == 2
    assert set(e['paired']) == set(d['baselines']) and set(e['every_detector_better']) == set(sets)
    assert set(e['default_decision']['detectors']) <= set(d['baselines'])
    table = converged.table(d)
    assert '### The decisive cell' in table and '#### natural / test_resnet' in table and '#### smooth / test_resnet' in table
    assert 'every detector better (all seeds)' in table and '`ssod_fused` (SSOD model) vs best vanilla detector' in table
    assert _script('make_tables').converged_tables(d) == table


def _cell(paired_fpr95, score_diff, seed):
    sets = ('backgrounds', 'average')
    side = {s: {m: {'a': 0.5 + score_diff, 'b': 0.5, 'difference': score_diff} for m in ('fpr95', 'auroc')}
            for s in sets}
    return {'background': 'natural', 'backbone': 'b', 'seed': seed, 'grid': [7, 7], 'starting_weights': {'file': 'w'},
            'id_accuracy': {'ssod': 0.9, 'vanilla': 0.9},
            'sampler_alignment': {'background_cells': {'labelled_ood': 0.8},
                                  'p_id': {'object_cells': 0.9, 'background_cells': 0.2}},
            'score_vs_best': {'logit': side, 'feature': side},
            'chosen_on_val': {'logit': {'detector': 'msp'}, 'feature': {'detector': 'knn'}},
            'paired': {'msp': {s: {'fpr95': paired_fpr95, 'auroc': -paired_fpr95} for s in sets}},
            'default_vs_best_vanilla': dict(side, detector='knn')}


def test_summary_mean_spread_and_verdicts(converged):
    """Known per-seed numbers: the mean, the sample std, the seeds on the SSOD side and the verdict."""
    d = {'ood_sets': ['backgrounds'], 'cells': {f'natural/b/seed{i}': _cell(p, s, i) for i, (p, s) in
                                                enumerate([(-0.1, 0.1), (-0.2, -0.1), (-0.3, 0.1)])}}
    e = converged.summarize(d)['natural']['b']
    p = e['paired']['msp']['backgrounds']
    assert p['fpr95']['mean'] == pytest.approx(-0.2) and p['fpr95']['std'] == pytest.approx(0.1)  # ddof 1
    assert p['seeds_better'] == 3 and p['verdict'] == 'better' and e['every_detector_better']['average']
    q = e['score']['logit']['average']
    assert q['seeds_better'] == 1 and q['verdict'] == 'mixed' and e['score']['logit']['detectors'] == ['msp'] * 3
    assert e['sampler']['p_id_gap']['mean'] == pytest.approx(0.7)
    assert converged.verdict([0.1, 0.2, 0.0]) == 'mixed' and converged.verdict([0.1, 0.2]) == 'worse'
    assert converged.verdict([-0.1]) == 'one seed'
    assert '(3/3)' in converged.table(dict(d, sizes=converged.SIZES))


def test_full_study_plan(converged, monkeypatch, tmp_path):
    """The full-size configurations match the recipes their stand-ins are trained with; the shards
    cover every configuration once; a missing shipped stand-in stops the run in one line."""
    from lib import WEIGHTS_DIR
    for backbone, (render, size, kwargs) in converged.BACKBONES.items():
        recipe = yaml.safe_load(open(os.path.join(WEIGHTS_DIR, f'{backbone}.yaml')))
        assert (recipe['dataset_kwargs']['img_size'], recipe['img_size']) == (render, size)
        assert (recipe.get('model_kwargs') or {}) == kwargs and recipe['dataset_kwargs']['background'] == 'natural'
        args = converged.smooth_args(recipe)
        assert args[0] == '--dataset-kwargs' and sorted(args[1:]) == sorted(
            f'{k}={v}' for k, v in dict(recipe['dataset_kwargs'], background='smooth').items())
    plans = [converged.parse_args(['--shard', f'{i}/2']).mine for i in range(2)]
    assert sorted(plans[0] + plans[1]) == sorted((b, m) for b in converged.BACKGROUNDS for m in converged.BACKBONES)
    assert converged.parse_args(['--only', 'smooth/resnet18']).mine == [('smooth', 'resnet18')]
    monkeypatch.setattr(converged, 'standin_file', lambda backbone: None)
    with pytest.raises(SystemExit, match=r'run `python benchmarks/standin.py resnet18` first'):
        converged.main(['--only', 'natural/resnet18', '--out', str(tmp_path / 'c.json')])
    assert not (tmp_path / 'c.json').exists()
