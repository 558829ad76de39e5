"""Stand-ins for pretrained weights: plain classifiers of the built-in benchmark trained to
convergence once, with ``timm-ssod train`` and a recipe in ``weights/<backbone>.yaml``, and shipped
in the repository as ``weights/<backbone>.safetensors`` (fp16) with a JSON beside it.

The paper fine-tunes converged classifiers (ImageNet-pretrained ResNet-50, a ResNet-18 trained
100 epochs on CIFAR-10); weights can't be downloaded here, so the project trains its own at the
input size its fine-tunes use. They load through timm's own offline path, as a user's would:
``create_model(name, pretrained=True, pretrained_cfg_overlay=dict(file=FILE))`` or
``timm-ssod train --pretrained-path FILE``. ``benchmarks/standin.py`` runs the recipes.
"""
import json
import os
import subprocess
import sys
import threading
import time
from typing import Dict, List, Optional, Sequence

import torch

from timm_ssod.demo import _weights
from timm_ssod._util import atomic_write, atomic_write_text, sha256_of

__all__ = ['WEIGHTS_DIR', 'recipe_path', 'standin_file', 'train_standin', 'export_standin', 'learning_curve',
           'sha256_of']

# the repository's weights/ folder (this file is benchmarks/lib/standin.py)
WEIGHTS_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))), 'weights')
RUN_RECORD = 'standin_run.json'


def recipe_path(backbone: str, weights_dir: str = WEIGHTS_DIR) -> str:
    return _weights.recipe_path(backbone, weights_dir)


def standin_file(backbone: str, weights_dir: str = WEIGHTS_DIR) -> Optional[str]:
    """``weights/<backbone>.safetensors`` of the repository when it is there, else None."""
    return _weights.standin_file(backbone, weights_dir)


def _git_commit(cwd: str) -> Optional[str]:
    try:
        out = subprocess.run(['git', 'rev-parse', 'HEAD'], cwd=cwd, capture_output=True, text=True, timeout=10)
        dirty = subprocess.run(['git', 'status', '--porcelain', '--untracked-files=no'], cwd=cwd,
                               capture_output=True, text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    return (out.stdout.strip() + ('-dirty' if dirty else '')) if out.returncode == 0 else None


def _read_json(path: str) -> Dict:
    if not os.path.exists(path):
        return {}
    with open(path) as f:
        return json.load(f)


def train_standin(backbone: str, output: str = 'output/standin', extra_args: Sequence[str] = (),
                  weights_dir: str = WEIGHTS_DIR, record_every: float = 30.0) -> Dict:
    """Train (or go on training) the stand-in of ``backbone``: ``timm-ssod train -c <recipe>
    --output <output> --experiment <backbone> --resume auto [extra_args]`` in this process.
    ``<output>/<backbone>/standin_run.json`` records the command, the commit and the wall time
    summed over invocations (rewritten every ``record_every`` s, so a killed run loses little).
    Returns ``dict(run_dir, finished, epochs_done, epochs)``."""
    from timm_ssod.train import main as train_main
    recipe = recipe_path(backbone, weights_dir)
    if not os.path.isfile(recipe):
        raise FileNotFoundError(f'no recipe for {backbone!r}: {recipe} is missing')
    argv = ['-c', recipe, '--output', output, '--experiment', backbone, '--resume', 'auto', *extra_args]
    run_dir = os.path.join(output, backbone)
    os.makedirs(run_dir, exist_ok=True)
    record_path = os.path.join(run_dir, RUN_RECORD)
    record = _read_json(record_path)
    # the command as run from the repository root (no absolute path of this machine in what is shipped)
    shown = os.path.relpath(recipe, os.path.dirname(weights_dir)) if os.path.isabs(recipe) else recipe
    command = ' '.join(['timm-ssod train', '-c', shown, *argv[2:]])
    if record and record.get('command') != command:
        raise SystemExit(f'{record_path}: this run was started with "{record["command"]}", not "{command}"; '
                         'use another --output to train another recipe')
    before = float(record.get('wall_seconds', 0.0))
    commit = _git_commit(os.path.dirname(os.path.abspath(recipe)))
    record = dict(record, backbone=backbone, command=command, recipe=os.path.basename(recipe),
                  commits=sorted(set(record.get('commits', [])) | {commit or 'unknown'}),
                  invocations=int(record.get('invocations', 0)) + 1, torch_threads=torch.get_num_threads())
    start, done = time.time(), threading.Event()

    def write():
        record['wall_seconds'] = round(before + time.time() - start, 1)
        atomic_write_text(record_path, json.dumps(record, indent=2) + '\n')

    def keep_writing():
        while not done.wait(record_every):
            write()

    writer = threading.Thread(target=keep_writing, daemon=True)
    writer.start()
    try:
        train_main(argv, prog='timm-ssod train')
    finally:
        done.set()
        writer.join()
        write()
    curve = learning_curve(run_dir)
    import yaml
    with open(os.path.join(run_dir, 'args.yaml')) as f:
        epochs = int(yaml.safe_load(f)['epochs'])
    return dict(run_dir=run_dir, finished=len(curve) >= epochs, epochs_done=len(curve), epochs=epochs)


def learning_curve(run_dir: str) -> List[Dict]:
    """``summary.csv`` of a run as a list of rows (epoch, train_loss, eval_loss, eval_top1, lr ...)."""
    import csv
    path = os.path.join(run_dir, 'summary.csv')
    if not os.path.exists(path):
        return []
    with open(path, newline='') as f:
        rows = list(csv.DictReader(f))
    out = []
    for row in rows:
        parsed = {}
        for k, v in row.items():
            try:
                parsed[k] = int(v) if k == 'epoch' else round(float(v), 6)
            except (TypeError, ValueError):
                parsed[k] = v
        out.append(parsed)
    return out


def _id_test_accuracy(model, train_args: Dict, num_test: int) -> float:
    """Top-1 of ``model`` on the benchmark's ID test split, preprocessed as the run validated."""
    from timm.data import create_transform, resolve_data_config
    from timm_ssod.data import SyntheticDataset
    rendered = dict(train_args.get('dataset_kwargs') or {})
    ds = SyntheticDataset('id', 'test', num_images=num_test, img_size=rendered.get('img_size', train_args['img_size']),
                          background=rendered.get('background', 'natural'),
                          transform=create_transform(**resolve_data_config(train_args, model=model)))
    loader = torch.utils.data.DataLoader(ds, batch_size=64, shuffle=False, num_workers=0)
    correct = total = 0
    model.eval()
    with torch.inference_mode():
        for x, y in loader:
            correct += int((model(x).argmax(1) == y).sum())
            total += len(y)
    return correct / total


def _in_repository(path: str) -> str:
    """``path`` relative to the repository that holds ``weights/`` when it lies inside it, else as given."""
    rel = os.path.relpath(os.path.abspath(path), os.path.dirname(os.path.abspath(WEIGHTS_DIR)))
    return path if rel.startswith('..') else rel


def export_standin(run_dir: str, weights_dir: str = WEIGHTS_DIR, num_test: int = 600,
                   checkpoint: str = 'model_best.pth.tar') -> Dict:
    """Write ``<weights_dir>/<backbone>.safetensors`` (the run's best-validation weights, plain
    timm keys, fp16) and ``<backbone>.json`` beside it: the command, the commit(s) it was trained
    at, images, epochs, wall time, ID test accuracy (``num_test`` images of the benchmark's test
    split), the learning curve and the file's sha256. Both written atomically; returns the JSON."""
    import yaml
    from safetensors.torch import save
    from timm_ssod.hub import create_model
    from timm_ssod.checkpoints import load_training_state
    record = _read_json(os.path.join(run_dir, RUN_RECORD))
    with open(os.path.join(run_dir, 'args.yaml')) as f:
        train_args = yaml.safe_load(f)
    backbone = train_args['model']
    path = os.path.join(run_dir, checkpoint)
    ckpt = load_training_state(path)
    state = {k: v for k, v in ckpt['state_dict'].items() if not k.startswith('ood_head.')}
    model = create_model(backbone, ssod=False, num_classes=train_args['num_classes'],
                         **(train_args.get('model_kwargs') or {}))
    model.load_state_dict(state)  # the plain timm model takes every key: nothing SSOD-specific is shipped
    half = {k: (v.half() if v.is_floating_point() else v).contiguous() for k, v in model.state_dict().items()}
    model.load_state_dict(half)  # the accuracy reported is the shipped fp16 weights'
    accuracy = _id_test_accuracy(model, train_args, num_test)
    os.makedirs(weights_dir, exist_ok=True)
    out = os.path.join(weights_dir, f'{backbone}.safetensors')
    data = save(half, metadata={'format': 'pt'})
    atomic_write(out, lambda f: f.write(data))
    curve = learning_curve(run_dir)
    rendered = train_args.get('dataset_kwargs') or {}
    words = (record.get('command') or '').split()
    recipe = words[words.index('-c') + 1] if '-c' in words[:-1] else f'weights/{backbone}.yaml'  # the recipe run
    shown = _in_repository(out)
    info = dict(
        file=os.path.basename(out), sha256=sha256_of(out), bytes=os.path.getsize(out), dtype='float16',
        model=backbone, model_kwargs=train_args.get('model_kwargs') or {}, num_classes=train_args['num_classes'],
        label_names=list(ckpt.get('label_names') or []), input_size=train_args['img_size'],
        render_size=rendered.get('img_size'), background=rendered.get('background', 'natural'),
        images=rendered.get('num_images'), val_images=(train_args.get('val_dataset_kwargs') or {}).get('num_images'),
        epochs=train_args['epochs'], epochs_done=len(curve), best_epoch=ckpt.get('epoch'),
        command=record.get('command'), commits=record.get('commits'), wall_seconds=record.get('wall_seconds'),
        torch_threads=record.get('torch_threads'), id_test_accuracy=round(accuracy, 4), num_test=num_test,
        learning_curve=curve, recipe=recipe,
        load=dict(python=f"timm_ssod.create_model('{backbone}', pretrained=True, num_classes="
                         f"{train_args['num_classes']}, pretrained_cfg_overlay=dict(file='{shown}'))",
                  cli=f'timm-ssod train --model {backbone} --pretrained-path {shown} ...'))
    atomic_write_text(os.path.join(weights_dir, f'{backbone}.json'), json.dumps(info, indent=1) + '\n')
    print(f'{out}: {backbone}, ID test accuracy {accuracy:.2%} ({num_test} images), '
          f'{info["bytes"] / 2 ** 20:.1f} MiB, sha256 {info["sha256"][:12]}...', file=sys.stderr)
    return info
