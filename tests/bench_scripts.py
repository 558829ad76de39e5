"""``load_script(name)``: a benchmark script of ``benchmarks/`` imported as a module (they are
scripts, not a package), for the tests that run their ``--quick`` modes or call their functions."""
import importlib.util
from pathlib import Path

BENCH = Path(__file__).resolve().parents[1] / 'benchmarks'


def load_script(name):
    spec = importlib.util.spec_from_file_location(f'bench_{name}', BENCH / f'{name}.py')
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
