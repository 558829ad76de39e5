"""``timm-ssod demo``'s engine: the paper's fine-tuning protocol on the built-in benchmark
(``_protocol``: a stage 1 when no stand-in weights are found, vanilla and SSOD fine-tunes,
evaluation, the sampler's alignment with the objects), the demo's settings and ETA
(``_settings``), where the stand-in weights are looked for (``_weights``), and the relative paths
of what it records (``_record``). The study built on it lives in ``benchmarks/`` (``benchmarks/lib``)."""
from ._protocol import (BASELINES, ROW_LABELS, alignment_line, alignment_stats, evaluate_checkpoint, merge_results,
                        protocol_table, remove_checkpoints, run_protocol, sampler_alignment, ssod_only, train_stage,
                        trained_benchmark)
from ._record import command_line, relative_paths, results_text
from ._settings import DEMO, DEMO_SCRATCH, QUICK, SHIPPED, estimate_seconds, settings
from ._weights import WEIGHTS_DIR, recipe_path, standin_file

__all__ = ['BASELINES', 'ROW_LABELS', 'alignment_line', 'alignment_stats', 'evaluate_checkpoint', 'merge_results',
           'protocol_table', 'remove_checkpoints', 'run_protocol', 'sampler_alignment', 'ssod_only', 'train_stage',
           'trained_benchmark', 'command_line', 'relative_paths', 'results_text', 'DEMO', 'DEMO_SCRATCH', 'QUICK',
           'SHIPPED', 'estimate_seconds', 'settings', 'WEIGHTS_DIR', 'recipe_path', 'standin_file']
