"""``timm-ssod export``: the model and its calibrated OOD decision as one ONNX file.

    timm-ssod export local-dir:out/model --output model.onnx
    timm-ssod predict model.onnx photos/

MODEL is a saved model (``local-dir:PATH`` / ``hf-hub:org/name``) or a training checkpoint,
calibrated or not. The file's input is a batch of preprocessed images (dynamic batch axis, the
calibration's input size); its outputs are ``logits``, ``class_probs``, ``id_prob`` (P(ID),
Eq. 15) and ``posterior`` (Eq. 7, M + 1 columns), and on a calibrated model the decision's
``score``, ``p_value`` and ``is_ood`` (p_value <= alpha). Beside it, ``OUTPUT.json`` holds the
preprocessing (input_size, mean, std, interpolation, crop_pct, crop_mode, as timm's
pretrained_cfg), the class names, the output names and the decision. A detector that cannot be
exported is refused in one line naming it. Needs ``pip install timm-ssod[onnx]``.
"""
import argparse
import sys
from typing import List, Optional

from ._common import add_command, parse_and_run, report_errors


def add_arguments(p: argparse.ArgumentParser) -> argparse.ArgumentParser:
    p.add_argument('model', metavar='MODEL', help='local-dir:PATH / hf-hub:org/name, or a training checkpoint')
    p.add_argument('--output', '-o', metavar='FILE', required=True, help='the ONNX file to write (e.g. model.onnx)')
    p.add_argument('--alpha', type=float, default=None,
                   help="the level of is_ood (default: the calibration's alpha); p_value is an output either way")
    p.add_argument('--opset', type=int, default=None, help='ONNX opset (default: 17)')
    return p


def add_parser(subparsers) -> argparse.ArgumentParser:
    """Register ``export`` on the ``timm-ssod`` subparsers (``timm_ssod.cli``)."""
    return add_command(subparsers, 'export', 'export the model and its OOD decision to ONNX', __doc__,
                       add_arguments, run)


def _export(args) -> int:
    from ..export import DEFAULT_OPSET, export_onnx, large_banks, sidecar_path
    from ._common import load_ssod_model
    model, _, save_kwargs = load_ssod_model(args.model)
    info = export_onnx(model, args.output, alpha=args.alpha, data_config=save_kwargs.get('data_config'),
                       opset=args.opset or DEFAULT_OPSET)
    decision = info['decision']
    print(f"Exported {args.model} to {args.output} ({info['size_mb']:.1f} MB) and {sidecar_path(args.output)}")
    print(f"outputs: {', '.join(info['output_names'])}; input: {info['input_name']} (N x "
          f"{'x'.join(map(str, info['input_size']))})")
    if decision:
        parts = f" [{', '.join(decision['components'])}]" if decision.get('components') else ''
        print(f"decision: {decision['detector']}{parts} score, is_ood when p_value <= alpha = {decision['alpha']:g} "
              f"({decision['n']} ID calibration images)")
    else:
        print('This model is not calibrated: no score, p_value or is_ood outputs. Calibrate it first with '
              '`timm-ssod calibrate` to export the OOD decision.')
    note = large_banks(info)
    if note:
        print(f'note: {note}')
    return 0


def run(args: argparse.Namespace, prog: str = 'timm-ssod export') -> int:
    """Export the model of parsed arguments; 0 on success, 1 with a message on bad input."""
    return report_errors(_export, args, prog)


def main(argv: Optional[List[str]] = None, prog: str = 'timm-ssod export') -> int:
    return parse_and_run(argv, prog, __doc__, add_arguments, run)


if __name__ == '__main__':
    sys.exit(main())
