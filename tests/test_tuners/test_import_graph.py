"""The tuners (and ops) import one another one way: the graph of their
module-level *and* function-level imports, read from the source with
``ast`` (a lazy import inside a function hides a cycle from Python, not
from this graph), has no cycle."""
import ast
from pathlib import Path
from typing import Dict, List, Optional, Set

import pytest

ROOT = Path(__file__).resolve().parents[2]


def module_name(path: Path, root: Path = ROOT) -> str:
    parts = list(path.relative_to(root).with_suffix('').parts)
    if parts[-1] == '__init__':
        parts.pop()
    return '.'.join(parts)


def import_graph(package: str, root: Path = ROOT) -> Dict[str, Set[str]]:
    """``module -> modules it imports`` inside ``package`` (dotted name
    under ``root``), every ``import``/``from ... import`` in the file
    counted, nested ones included; ``from pkg import sub`` counts the
    submodule ``pkg.sub``."""
    folder = root.joinpath(*package.split('.'))
    files = {module_name(p, root): p for p in folder.rglob('*.py')}
    graph = {}
    for name, path in files.items():
        is_package = path.name == '__init__.py'
        base = name if is_package else name.rpartition('.')[0]
        edges = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                if node.level:
                    anchor = base.split('.')
                    anchor = anchor[:len(anchor) - node.level + 1]
                    source = '.'.join(anchor + ([node.module]
                                                if node.module else []))
                else:
                    source = node.module
                targets = [source] + [f'{source}.{alias.name}'
                                      for alias in node.names]
            else:
                continue
            edges |= {t for t in targets if t in files and t != name}
        graph[name] = edges
    return graph


def find_cycle(graph: Dict[str, Set[str]]) -> Optional[List[str]]:
    """A cycle of ``graph`` as a list of nodes (first == last), or None."""
    state: Dict[str, int] = {}  # 1: on the current path, 2: done
    path: List[str] = []

    def visit(node):
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return path[path.index(nxt):] + [nxt]
            if nxt not in state:
                found = visit(nxt)
                if found:
                    return found
        state[node] = 2
        path.pop()
        return None

    for node in sorted(graph):
        if node not in state:
            found = visit(node)
            if found:
                return found
    return None


def test_the_cycle_finder_finds_cycles():
    assert find_cycle({'a': {'b'}, 'b': {'c'}, 'c': {'a'}}) == [
        'a', 'b', 'c', 'a']
    assert find_cycle({'a': {'b', 'c'}, 'b': {'c'}, 'c': set()}) is None


def test_a_lazy_import_back_is_a_cycle(tmp_path):
    """What prefix.py and deformable_prefix.py did before the split: one
    imports the other at the top, the other imports it back inside a
    function."""
    pkg = tmp_path / 'pkg'
    pkg.mkdir()
    (pkg / '__init__.py').write_text('')
    (pkg / 'a.py').write_text('def build():\n    from .b import B\n'
                              '    return B\n')
    (pkg / 'b.py').write_text('from .a import build\nB = build\n')
    graph = import_graph('pkg', tmp_path)
    assert graph == {'pkg': set(), 'pkg.a': {'pkg.b'}, 'pkg.b': {'pkg.a'}}
    assert find_cycle(graph) == ['pkg.a', 'pkg.b', 'pkg.a']


@pytest.mark.parametrize('package', ['mmpetl.tuners', 'mmpetl.ops'])
def test_package_import_graph_is_acyclic(package):
    graph = import_graph(package)
    cycle = find_cycle(graph)
    assert cycle is None, 'import cycle: ' + ' -> '.join(cycle)


def test_the_graph_sees_the_prefix_dispatch_and_lazy_imports():
    """Not vacuous: the edges the prefix split relies on are in it
    (ScaledPrefix.from_host builds a DeformablePrefix: scaled imports
    deformable, which imports only base)."""
    graph = import_graph('mmpetl.tuners')
    prefix = 'mmpetl.tuners.prefix'
    assert f'{prefix}.deformable' in graph[f'{prefix}.scaled']
    assert f'{prefix}.base' in graph[f'{prefix}.deformable']
    assert f'{prefix}.scaled' not in graph[f'{prefix}.deformable']
    assert graph[f'{prefix}.hosts'] >= {'mmpetl.tuners.attention',
                                        'mmpetl.tuners.base'}

