"""Which rooms ``checkpoints`` and ``utils`` import, read from the source
(every import statement, including those inside functions).

``checkpoints`` selects tensors with the pure target matching of
``mmpetl.utils.matching`` and imports nothing of ``injection``; ``utils``
imports no other room of mmpetl.
"""
import ast
from pathlib import Path
from typing import List, Tuple

import mmpetl

PACKAGE = Path(mmpetl.__file__).resolve().parent


def imported_modules(path: Path, module: str) -> List[Tuple[int, str]]:
    """``(line, absolute module name)`` of every import in the file
    ``path`` of the module ``module``; ``from X import y`` gives ``X.y``
    (``y`` may be a module)."""
    package = module.split('.')
    if path.name != '__init__.py':
        package = package[:-1]
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ''
            if node.level:
                parent = package[:len(package) - node.level + 1]
                base = '.'.join(parent + ([base] if base else []))
            found += [(node.lineno, f'{base}.{alias.name}')
                      for alias in node.names]
    return found


def imports_of_room(room: str) -> List[Tuple[str, int, str]]:
    found = []
    for path in sorted((PACKAGE / room).rglob('*.py')):
        parts = path.relative_to(PACKAGE.parent).with_suffix('').parts
        if parts[-1] == '__init__':
            parts = parts[:-1]
        found += [(str(path.relative_to(PACKAGE.parent)), line, name)
                  for line, name in imported_modules(path, '.'.join(parts))]
    return found


def test_imported_modules_sees_every_kind_of_import(tmp_path):
    """Absolute, relative (one and two levels) and function-level imports
    are all resolved to absolute names."""
    path = tmp_path / 'fake.py'
    path.write_text('import os.path\n'
                    'from mmpetl.utils import atomic_save\n'
                    'from .format import MARKER\n'
                    'from .. import injection\n'
                    'def f():\n'
                    '    from ..injection.matching import name_matches\n')
    assert [name for _, name in imported_modules(
        path, 'mmpetl.checkpoints.fake')] == [
            'os.path', 'mmpetl.utils.atomic_save',
            'mmpetl.checkpoints.format.MARKER', 'mmpetl.injection',
            'mmpetl.injection.matching.name_matches']
    names = [name for _, _, name in imports_of_room('checkpoints')]
    assert 'mmpetl.utils.matching.parameter_matches' in names
    assert 'mmpetl.checkpoints.apply.apply_tuner_checkpoint' in names


def test_checkpoints_do_not_import_injection():
    bad = [(path, line, name)
           for path, line, name in imports_of_room('checkpoints')
           if name == 'mmpetl.injection' or
           name.startswith('mmpetl.injection.')]
    assert not bad, (
        f'checkpoints imports injection: {bad}; pure target matching is in '
        f'mmpetl.utils.matching')


def test_utils_import_no_other_room():
    bad = [(path, line, name) for path, line, name in imports_of_room('utils')
           if name.startswith('mmpetl.') and
           not name.startswith('mmpetl.utils.')]
    assert not bad, f'utils imports other rooms of mmpetl: {bad}'
