"""Private names stay where they are defined (read from the source).

* No module of ``mmpetl/`` or ``tools/`` imports a private name (``_x``)
  of another mmpetl or tools module, or reads one as ``module._x``: what
  another room or a tool needs is public API.
* MMEngine's private attributes (``runner._load_from``,
  ``model._run_forward`` ...) are read in one adapter,
  :mod:`mmpetl.utils.mmengine_private`; every other ``obj._x`` read of
  another object is one of the torch internals or mmpetl's own markers
  listed below, each with its reason.
"""
import ast
from pathlib import Path
from typing import List, Set

ROOT = Path(__file__).resolve().parents[1]
SOURCES = sorted(p for folder in ('mmpetl', 'tools')
                 for p in (ROOT / folder).rglob('*.py'))
ADAPTER = ROOT / 'mmpetl' / 'utils' / 'mmengine_private.py'

# Modules importable by their bare name from a tool (tools put their own
# folder on sys.path): tool_utils, run_demo, ...
TOOL_MODULES = {p.stem for p in (ROOT / 'tools').rglob('*.py')}

# ``obj._x`` reads of objects that are not ``self``/``cls``/``super()``,
# allowed outside the adapter: not MMEngine, and why they are read.
ALLOWED_ATTRIBUTES = {
    '_version': "torch.Tensor's in-place version counter (ops.replay "
                'checks a kept output was not modified)',
    '_parameters': "torch nn.Module's own tensors (PETLModel shares the "
                   "inner model's)",
    '_buffers': "torch nn.Module's own buffers (as _parameters)",
    '_non_persistent_buffers_set': 'torch nn.Module: which buffers stay '
                                   'out of the state dict',
    '_qkv_same_embed_dim': 'torch nn.MultiheadAttention: fused or separate '
                           'q/k/v projection weights',
    '_mmpetl_ckpt_told': "mmpetl's own once-per-module marker "
                         '(models/checkpointing.py)',
}


def _is_private(name: str) -> bool:
    return name.startswith('_') and not name.startswith('__')


def _first_party(module: str, level: int) -> bool:
    top = module.split('.')[0] if module else ''
    return level > 0 or top in ('mmpetl', 'tools') or top in TOOL_MODULES


def _own_object(node: ast.AST) -> bool:
    """``self``, ``cls``, ``super()``, ``type(self)``: the object's own
    attributes, not another module's."""
    if isinstance(node, ast.Name):
        return node.id in ('self', 'cls')
    if isinstance(node, ast.Call) and isinstance(node.func, ast.Name):
        if node.func.id == 'super':
            return True
        return node.func.id == 'type' and len(node.args) == 1 and \
            _own_object(node.args[0])
    return False


def private_uses(source: str, filename: str = '<source>') -> List[str]:
    """The private names ``source`` takes from elsewhere.

    Args:
        source: Python source code.
        filename: for the messages.

    Returns:
        list[str]: ``'file:line: what'`` for each private import from a
        first-party module, each ``module._x`` of an imported first-party
        module, and each ``obj._x`` / ``getattr(obj, '_x')`` read of an
        object other than ``self``/``cls``/``super()`` whose attribute is
        not in :data:`ALLOWED_ATTRIBUTES` nor defined in ``source``
        itself.
    """
    tree = ast.parse(source, filename)
    modules: Set[str] = set()  # names bound to first-party modules
    found = []
    # private names this file defines: its own helpers and classes may use
    # them on other objects (a record's _start_run from the module's
    # function)
    own = {n.name for n in ast.walk(tree) if isinstance(
        n, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef))}
    own |= {n.attr for n in ast.walk(tree) if isinstance(
        n, ast.Attribute) and isinstance(n.ctx, ast.Store) and
        _own_object(n.value)}
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if _first_party(alias.name, 0):
                    modules.add(alias.asname or alias.name.split('.')[0])
        elif isinstance(node, ast.ImportFrom) and _first_party(
                node.module or '', node.level):
            for alias in node.names:
                if _is_private(alias.name):
                    found.append(f'{filename}:{node.lineno}: imports '
                                 f'{alias.name} from {node.module}')
                else:  # may be a module (from mmpetl import analysis)
                    modules.add(alias.asname or alias.name)
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and _is_private(node.attr):
            target, attr = node.value, node.attr
        elif isinstance(node, ast.Call) and isinstance(
                node.func, ast.Name) and node.func.id in (
                    'getattr', 'hasattr', 'setattr') and len(
                        node.args) >= 2 and isinstance(
                            node.args[1], ast.Constant) and isinstance(
                                node.args[1].value, str) and _is_private(
                                    node.args[1].value):
            target, attr = node.args[0], node.args[1].value
        else:
            continue
        if _own_object(target):
            continue
        if isinstance(target, ast.Name) and target.id in modules:
            found.append(f'{filename}:{node.lineno}: reads {target.id}.'
                         f'{attr} (a private name of another module)')
        elif attr not in ALLOWED_ATTRIBUTES and attr not in own:
            found.append(f'{filename}:{node.lineno}: reads .{attr} of '
                         f'another object (an MMEngine private belongs in '
                         f'mmpetl/utils/mmengine_private.py)')
    return sorted(found, key=lambda f: int(f.split(':')[1]))


def test_private_uses_finds_each_kind():
    """The checker itself: each kind of use is found, own attributes and
    the allowed torch internals are not."""
    source = '\n'.join([
        'import run_demo',
        'from mmpetl.analysis import measure',
        'from mmpetl.analysis.measure import _task_of, deploy',
        'from .base import _helper',
        'from torch.nn.modules.batchnorm import _BatchNorm',
        'run_demo._cfg("x")',
        'measure._num_classes(model)',
        'base = runner._load_from',
        "base = getattr(runner, '_resume', False)",
        'model._run_forward(data, mode="tensor")',
        'self._x = cls._y = super()._apply(fn)',
        'type(self)._z',
        'tensor._version',
        "getattr(self, '_frozen', None)",
        'def _start(): pass',
        'record._start()',
    ])
    found = private_uses(source, 'f.py')
    assert [f.split(': ', 1)[0] for f in found] == [
        f'f.py:{n}' for n in (3, 4, 6, 7, 8, 9, 10)], found
    assert 'imports _task_of from mmpetl.analysis.measure' in found[0]
    assert 'run_demo._cfg' in found[2] and 'measure._num_classes' in found[3]
    assert '.' + '_load_from of another object' in found[4]


def test_no_private_name_crosses_a_module():
    assert len(SOURCES) > 100
    found = []
    for path in SOURCES:
        if path == ADAPTER:
            continue
        found += private_uses(path.read_text(),
                              str(path.relative_to(ROOT)))
    assert not found, '\n'.join(found)


def test_the_adapter_names_the_mmengine_version_and_reads_the_privates():
    from mmpetl.utils import mmengine_private
    text = ADAPTER.read_text()
    assert 'MMEngine 0.10.7' in text
    assert mmengine_private.MMENGINE_CHECKED == '0.10.7'
    reads = private_uses(text, 'adapter')
    for name in ('_load_from', '_resume', '_train_dataloader',
                 '_run_forward', '_statistics_methods'):
        assert any(f'.{name} of another object' in r for r in reads), name
