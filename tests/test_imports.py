"""The import contract: one-way imports between the layers of ``timm_ssod/_layers.py``, no cycle.

Every module is parsed with ``ast`` (imports at module level and inside functions). An import of
a package in a higher layer, or between two packages of the same layer, fails, except the
call-time facades listed in ``_layers.FACADES``; a cycle between packages fails; a module-level
import cycle between modules fails. A synthetic bad graph checks that the checks do fail.
"""
import ast
import os
from typing import Dict, Iterable, List, Set, Tuple

import pytest

from timm_ssod._layers import FACADES, LAYERS

ROOT = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), 'timm_ssod')


def _module_name(path: str) -> Tuple[str, bool]:
    rel = os.path.relpath(path, os.path.dirname(ROOT))[:-3].replace(os.sep, '.')
    is_pkg = rel.endswith('.__init__')
    return (rel[:-len('.__init__')] if is_pkg else rel), is_pkg


def import_graph(root: str = ROOT) -> Dict[str, Set[Tuple[str, bool]]]:
    """module -> {(imported timm_ssod module, at module level)} of every module under ``root``."""
    graph = {}
    for folder, _, files in os.walk(root):
        for name in files:
            if not name.endswith('.py'):
                continue
            path = os.path.join(folder, name)
            module, is_pkg = _module_name(path)
            tree = ast.parse(open(path, encoding='utf-8').read(), path)
            top = {id(n) for n in tree.body}
            edges = set()
            for node in ast.walk(tree):
                targets = []  # candidates: (module, submodule names that may be modules themselves)
                if isinstance(node, ast.ImportFrom):
                    if node.level:
                        base = (module if is_pkg else module.rsplit('.', 1)[0]).split('.')
                        base = base[:len(base) - node.level + 1]
                        target = '.'.join(base + ([node.module] if node.module else []))
                    else:
                        target = node.module or ''
                    targets = [(target, tuple(f'{target}.{a.name}' for a in node.names))]
                elif isinstance(node, ast.Import):
                    targets = [(a.name, ()) for a in node.names]
                for t, subs in targets:
                    if t == 'timm_ssod' or t.startswith('timm_ssod.'):
                        edges.add((t, subs, id(node) in top))
            graph[module] = edges
    # ``from .x import y``: the module y when it is one, else the module x
    modules, out = set(graph), {}
    for m, edges in graph.items():
        out[m] = set()
        for t, subs, top in edges:
            found = [s for s in subs if s in modules]
            out[m].update((s, top) for s in found)
            if len(found) < len(subs) or not subs:
                if t in modules:
                    out[m].add((t, top))
    return out


def unit_of(module: str) -> str:
    """The layer unit of a module: its first-level name under timm_ssod; ``__main__`` modules are
    entry points and belong to the ``cli`` layer; ``timm_ssod`` itself is the public API (top)."""
    parts = module.split('.')
    if parts[-1] == '__main__':
        return 'cli'
    return parts[1] if len(parts) > 1 else '<api>'


def rank_of(layers=LAYERS) -> Dict[str, int]:
    return {unit: i for i, units in enumerate(layers) for unit in units}


def violations(graph, layers=LAYERS, facades=FACADES) -> List[str]:
    """Imports that go up (or sideways within a layer), outside the declared facades."""
    rank, bad = rank_of(layers), []
    for module, edges in graph.items():
        src = unit_of(module)
        if src == '<api>':
            continue
        if src not in rank:
            bad.append(f'{module}: package {src!r} is in no layer of timm_ssod/_layers.py')
            continue
        for target, _ in edges:
            dst = unit_of(target)
            if dst == src or any(module == a and (target == b or target.startswith(b + '.')) for a, b in facades):
                continue
            if dst == '<api>' or dst not in rank or rank[dst] >= rank[src]:
                bad.append(f'{module} imports {target} ({src!r} may not import {dst!r})')
    return sorted(bad)


def _find_cycle(nodes: Iterable[str], edges: Dict[str, Set[str]]) -> List[str]:
    state, stack = {}, []

    def visit(n):
        state[n] = 1
        stack.append(n)
        for m in sorted(edges.get(n, ())):
            if state.get(m) == 1:
                return stack[stack.index(m):] + [m]
            if m not in state:
                found = visit(m)
                if found:
                    return found
        stack.pop()
        state[n] = 2
        return []

    for n in sorted(nodes):
        if n not in state:
            found = visit(n)
            if found:
                return found
    return []


def package_cycle(graph, facades=FACADES) -> List[str]:
    edges = {}
    for module, targets in graph.items():
        for target, _ in targets:
            if any(module == a and (target == b or target.startswith(b + '.')) for a, b in facades):
                continue
            a, b = unit_of(module), unit_of(target)
            if a != b:
                edges.setdefault(a, set()).add(b)
    return _find_cycle({unit_of(m) for m in graph}, edges)


def module_cycle(graph) -> List[str]:
    """A cycle of module-level imports between modules (a package's ``__init__`` importing its own
    submodules is not a cycle with them)."""
    edges = {}
    for module, targets in graph.items():
        for target, top in targets:
            if top and target != module and not module.startswith(target + '.'):
                edges.setdefault(module, set()).add(target)
    return _find_cycle(graph, edges)


def test_imports_go_down_the_layers():
    graph = import_graph()
    assert len(graph) > 40
    assert violations(graph) == []


def test_no_cycle_between_packages_nor_modules():
    graph = import_graph()
    assert package_cycle(graph) == []
    assert module_cycle(graph) == []


def test_core_imports_nothing_of_the_rest_but_util_and_its_facades():
    """core (the paper) imports only its own modules and the layer below it (``_util``), plus the
    call-time facades of ``_layers.FACADES``."""
    graph = import_graph()
    below = {'_util', '_version', '_layers'}
    for module, targets in graph.items():
        if unit_of(module) == 'core':
            up = {t for t, _ in targets if unit_of(t) not in below | {'core'}}
            assert up <= {b for a, b in FACADES if a == module}, (module, up)
            assert all(unit_of(t) in below | {'core'} for t, top in targets if top), module


def test_every_package_is_in_a_layer():
    units = {unit_of(m) for m in import_graph()} - {'<api>'}
    assert units <= set(rank_of())


def test_the_checks_catch_a_bad_graph():
    """An upward import, a sideways one, a package cycle and a module cycle are all reported."""
    bad = {
        'timm_ssod.core._loss': {('timm_ssod.evaluate._report', False)},  # up, even inside a function
        'timm_ssod.metrics': {('timm_ssod.conformal', True)},              # sideways within a layer
        'timm_ssod.evaluate._report': {('timm_ssod.core._loss', True)},
        'timm_ssod.hub._a': {('timm_ssod.hub._b', True)},
        'timm_ssod.hub._b': {('timm_ssod.hub._a', True)},
        'timm_ssod.conformal': set(),
    }
    found = violations(bad)
    assert any('core._loss imports timm_ssod.evaluate._report' in v for v in found)
    assert any('metrics imports timm_ssod.conformal' in v for v in found)
    assert package_cycle(bad) in (['core', 'evaluate', 'core'], ['evaluate', 'core', 'evaluate'])
    assert module_cycle(bad) in (['timm_ssod.hub._a', 'timm_ssod.hub._b', 'timm_ssod.hub._a'],
                                 ['timm_ssod.hub._b', 'timm_ssod.hub._a', 'timm_ssod.hub._b'])
    assert violations(bad, facades=(('timm_ssod.core._loss', 'timm_ssod.evaluate'),)) == \
        [v for v in found if 'core._loss' not in v]


@pytest.mark.parametrize('module', ['timm_ssod', 'timm_ssod.core'])
def test_public_names(module):
    import importlib
    m = importlib.import_module(module)
    for name in ('create_model', 'attach_ssod', 'SSODLoss', 'save_pretrained', 'push_to_hub') if module == 'timm_ssod' \
            else ('SSODLoss', 'attach_ssod', 'sample_patches', 'unified_posterior', 'OODHead', 'merge_heads'):
        assert hasattr(m, name), name


def test_detectors_have_no_import_cycle_even_at_call_time():
    """Inside ``detectors`` even a function-level import may not close a cycle (``ssod_fused``
    finds its components in ``catalog``, not in the ``registry`` that imports it)."""
    graph = import_graph()
    inside = {m for m in graph if m.startswith('timm_ssod.detectors.')}
    edges = {m: {t for t, _ in graph[m] if t in inside and t != m} for m in inside}
    assert _find_cycle(inside, edges) == []
    # the check sees a call-time cycle
    assert _find_cycle({'a', 'b'}, {'a': {'b'}, 'b': {'a'}}) in (['a', 'b', 'a'], ['b', 'a', 'b'])
