"""The experiments: the stand-ins for pretrained weights (``_standin``), the paper's protocol on
the built-in benchmark (``_protocol``: stage 1, vanilla and SSOD fine-tunes, evaluation), the
demo's settings (``_demo``), the calibrated decisions' measurement (``_decisions``), the ID-only
evidence for the fused score's components against real OOD performance (``_evidence``) and the
relative paths of what they record (``_record``). Run by ``timm-ssod demo`` and ``benchmarks/``."""
from ._decisions import format_decisions, measure_decisions
from ._evidence import cost_checkpoint, evidence_checkpoint, summarize_evidence
from ._protocol import (BASELINES, SSOD_ONLY, alignment_line, decisions_checkpoint, evaluate_checkpoint,
                        location_probe, merge_results, protocol_table, read_result, remove_checkpoints, run_protocol,
                        sampler_alignment, train_stage, train_stage_once, trained_benchmark)
from ._record import command_line, relative_paths, results_text
from ._demo import DEMO, DEMO_SCRATCH, QUICK, estimate_seconds, settings
from ._standin import WEIGHTS_DIR, export_standin, learning_curve, sha256_of, standin_file, train_standin

__all__ = ['format_decisions', 'measure_decisions', 'evidence_checkpoint', 'cost_checkpoint', 'summarize_evidence', 'BASELINES', 'SSOD_ONLY', 'alignment_line', 'decisions_checkpoint',
           'evaluate_checkpoint', 'location_probe', 'merge_results', 'protocol_table', 'read_result',
           'remove_checkpoints', 'run_protocol', 'sampler_alignment', 'train_stage', 'train_stage_once',
           'trained_benchmark', 'DEMO', 'DEMO_SCRATCH', 'QUICK', 'estimate_seconds', 'settings', 'WEIGHTS_DIR',
           'export_standin', 'learning_curve', 'sha256_of', 'standin_file', 'train_standin', 'command_line',
           'relative_paths', 'results_text']
