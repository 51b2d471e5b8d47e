"""Serving is a thin layer: ``mmpetl.apis`` reaches routing through
``mmpetl.models`` (mmpetl.models.multitask) and imports nothing from
``mmpetl.tuners``; the model-level routing imports nothing from the rooms
above it (checkpoints, apis)."""
import ast
from pathlib import Path
from typing import Set

ROOT = Path(__file__).resolve().parents[2]


def imported(path: Path) -> Set[str]:
    """Absolute names of every module a file imports (nested imports
    included; relative ones resolved against its package)."""
    package = '.'.join(path.relative_to(ROOT).parent.parts)
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = package.rsplit('.', node.level - 1)[0] if node.level \
                else ''
            module = '.'.join(p for p in (base, node.module) if p)
            names.add(module)
            names |= {f'{module}.{alias.name}' for alias in node.names}
    return names


def test_imported_reads_nested_and_relative_imports():
    folder = ROOT / 'mmpetl' / 'apis'
    names = imported(folder / '__init__.py')
    assert 'mmpetl.apis.tasks.TaskBank' in names
    assert 'mmpetl.models.RoutingError' in names


def test_apis_imports_nothing_from_tuners():
    found = {str(p.relative_to(ROOT)): sorted(
        n for n in imported(p) if n.startswith('mmpetl.tuners'))
        for p in (ROOT / 'mmpetl' / 'apis').rglob('*.py')}
    assert len(found) >= 4  # __init__, inference, outputs, tasks
    assert not {p: n for p, n in found.items() if n}


def test_model_level_routing_imports_no_room_above_models():
    names = imported(ROOT / 'mmpetl' / 'models' / 'multitask.py')
    assert 'mmpetl.tuners.routing' in names
    assert not [n for n in names if n.startswith(
        ('mmpetl.apis', 'mmpetl.checkpoints', 'mmpetl.engine'))]
