#!/usr/bin/env python3
"""Fine-tune a timm backbone with SSOD, compare it with post-hoc OOD scores, save the model.

    python examples/finetune_and_evaluate.py              # the built-in benchmark (12 epochs of ResNet-18)
    python examples/finetune_and_evaluate.py --quick      # a smoke test of every step (seconds)

The paper fine-tunes ImageNet-pretrained backbones. Offline there are no pretrained weights,
so stage 1 trains the backbone itself (plain cross-entropy, ``--no-ssod``). Stage 2 then
fine-tunes it twice with the same budget and seed: with the SSOD objective, and with plain
cross-entropy (the fair baseline). The evaluation harness (``timm_ssod.evaluate``) then
scores the test split and every OOD set with the SSOD score on the SSOD model and with the
post-hoc detectors (MSP, Energy, KNN, ViM, ...) on both models, and prints FPR95 / AUROC per
set. The SSOD model is saved in timm's Hub format (``timm_ssod.hub.save_training_run``:
``model.safetensors``, ``config.json``, model card), the results as JSON / CSV / Markdown.

Each stage is one ``timm-ssod train`` run (``timm_ssod.train.main``), so the same steps work
from the shell, e.g. ``timm-ssod train --config examples/synthetic.yaml --no-ssod``.
"""
import argparse
import json
import os
import sys
from typing import Dict, List

from timm.data import create_loader, resolve_data_config

from timm_ssod.data import create_dataset
from timm_ssod.evaluate import load_eval_model
from timm_ssod.evaluate import DEFAULT_DETECTORS, evaluate
from timm_ssod.evaluate import format_table, write_results
from timm_ssod.train import main as train

HERE = os.path.dirname(os.path.abspath(__file__))
OOD_SETS = ('backgrounds', 'novel_objects', 'noise', 'textures')

FULL = dict(config=os.path.join(HERE, 'synthetic.yaml'), stage1_epochs=6, stage2_epochs=3, ood_sets=OOD_SETS,
            detectors=DEFAULT_DETECTORS, fit=True, extra=['--dataset-kwargs', 'num_images=2000', 'img_size=64'])
QUICK = dict(config=os.path.join(HERE, 'synthetic.yaml'), stage1_epochs=1, stage2_epochs=1,
             ood_sets=('backgrounds', 'novel_objects'), detectors=('ssod', 'msp', 'energy'), fit=False,
             extra=['--model', 'test_resnet', '--model-kwargs', '--dataset-kwargs', 'num_images=64', 'img_size=64',
                    '--val-dataset-kwargs', 'num_images=32', '-b', '16', '--workers', '0', '--log-interval', '4'])


def run_stage(name: str, out: str, setting: Dict, extra: List[str]) -> str:
    """One ``timm-ssod train`` run into ``<out>/<name>``; returns its best checkpoint."""
    argv = ['--config', setting['config'], '--output', out, '--experiment', name,
            '--ood-val', *[f'{s}=synthetic/{s}' for s in setting['ood_sets']], *setting['extra'], *extra]
    result = train(argv)
    return os.path.join(result['output_dir'], 'model_best.pth.tar')


def loader(model, dataset, img_size: int):
    """Evaluation transforms of the model at the training size, images in order."""
    cfg = resolve_data_config({'img_size': img_size}, model=model)
    return create_loader(dataset, input_size=cfg['input_size'], batch_size=64, is_training=False, use_prefetcher=False,
                         interpolation=cfg['interpolation'], mean=cfg['mean'], std=cfg['std'],
                         crop_pct=cfg['crop_pct'], num_workers=0)


def evaluate_checkpoint(checkpoint: str, setting: Dict) -> Dict:
    """The harness on the test split and the OOD sets; the detectors that fit (KNN, ViM, ...)
    fit on the training images."""
    model, info = load_eval_model(checkpoint=checkpoint)
    img_size = info['data_args'].get('img_size') or 64
    sizes = dict(test=32, train=64) if setting is QUICK else dict(test=600, train=2000)

    def data(name, split):
        return loader(model, create_dataset(name, split=split, img_size=64, num_images=sizes[split]), img_size)
    ood_loaders = {s: data(f'synthetic/{s}', 'test') for s in setting['ood_sets']}
    fit_loader = data('synthetic/id', 'train') if setting['fit'] else None
    return evaluate(model, data('synthetic/id', 'test'), ood_loaders, detectors=setting['detectors'],
                    fit_loader=fit_loader, progress=False)


def save(checkpoint: str, result: Dict, folder: str) -> str:
    """The SSOD model of a training checkpoint in timm's Hub format (model.safetensors,
    config.json with the SSOD settings, a model card with the evaluation table)."""
    from timm_ssod.hub import save_training_run
    return str(save_training_run(checkpoint, folder, eval_json=result))


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('--quick', action='store_true', help='tiny model and data, one epoch per stage')
    parser.add_argument('--output', default='./output/finetune_and_evaluate', help='folder for all runs')
    parser.add_argument('--seed', type=int, default=0)
    opts = parser.parse_args(argv)
    setting = QUICK if opts.quick else FULL
    out, seed = os.path.abspath(opts.output), ['--seed', str(opts.seed)]

    # stage 1: the backbone (a stand-in for pretrained weights), plain cross-entropy
    base = run_stage('stage1_vanilla', out, setting, ['--no-ssod', '--epochs', str(setting['stage1_epochs'])] + seed)
    # stage 2: the same fine-tuning budget and seed, with and without SSOD
    finetune = ['--initial-checkpoint', base, '--epochs', str(setting['stage2_epochs']), '--warmup-epochs', '0',
                '--lr', '3e-4'] + seed
    ssod_ckpt = run_stage('stage2_ssod', out, setting, ['--ssod'] + finetune)
    plain_ckpt = run_stage('stage2_vanilla', out, setting, ['--no-ssod'] + finetune)

    results = {}
    for name, checkpoint in (('ssod_finetune', ssod_ckpt), ('ce_finetune', plain_ckpt)):
        results[name] = evaluate_checkpoint(checkpoint, setting)
        write_results(results[name], os.path.join(out, 'eval', name))
        print(f'\n## {name} ({checkpoint})\n\n{format_table(results[name])}')
    folder = save(ssod_ckpt, results['ssod_finetune'], os.path.join(out, 'ssod_model'))
    with open(os.path.join(out, 'results.json'), 'w') as f:
        json.dump(results, f, indent=2)
    print(f'\nSaved the SSOD model to {folder}; all results in {os.path.join(out, "results.json")}')
    return 0


if __name__ == '__main__':
    sys.exit(main())
