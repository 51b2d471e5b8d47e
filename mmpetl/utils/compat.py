"""Environment checks that must run before MMDetection is imported.

:func:`check_versions` only reads. :func:`guard_mmpretrain_multimodal` is
the one change ``import mmpetl`` makes in another library (it must come
before MMDetection first imports MMPretrain, so it cannot wait for an
explicit call); it is listed with mmpetl's other, explicit patches in
:mod:`mmpetl.patches` and warns when it acts.
"""
import importlib.metadata as metadata
import importlib.util
import os
import sys
import warnings
from typing import Dict, Optional, Tuple

__all__ = ['SUPPORTED', 'check_versions', 'guard_mmpretrain_multimodal',
           'unguard_mmpretrain_multimodal', 'mmpretrain_multimodal_guarded',
           'IncompatibleVersionError']

# package: (minimum inclusive, maximum exclusive); None = no bound
SUPPORTED: Dict[str, Tuple[str, Optional[str]]] = {
    'torch': ('2.4.0', None),  # torch.library.custom_op (mmpetl.ops)
    'mmengine': ('0.10.0', '1.0.0'),
    'mmcv': ('2.0.0', '2.2.0'),  # mmdet 3.3 refuses mmcv 2.2
    'mmdet': ('3.0.0', '3.4.0'),
}
OPTIONAL = {'mmpretrain': ('1.0.0', '1.3.0')}


class IncompatibleVersionError(ImportError):
    pass


class MultimodalDisabledWarning(UserWarning):
    pass


def _parse(version: str) -> Tuple[int, ...]:
    parts = []
    for piece in version.split('+')[0].split('.')[:3]:
        digits = ''.join(c for c in piece if c.isdigit())
        parts.append(int(digits) if digits else 0)
    return tuple(parts + [0] * (3 - len(parts)))


def _installed(package: str) -> Optional[str]:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return None


def check_versions() -> None:
    """Stop with a message naming installed vs supported versions."""
    problems = []
    for package, (low, high) in {**SUPPORTED, **OPTIONAL}.items():
        version = _installed(package)
        wanted = f'>={low}' + (f',<{high}' if high else '')
        if version is None:
            if package in SUPPORTED:
                problems.append(f'{package}: not installed (need {wanted})')
            continue
        if _parse(version) < _parse(low) or (high and
                                             _parse(version) >= _parse(high)):
            problems.append(f'{package}: {version} installed, mmpetl '
                            f'supports {wanted}')
    if problems:
        raise IncompatibleVersionError(
            'mmpetl cannot run with this environment:\n  ' +
            '\n  '.join(problems) +
            '\nRun `make install` (creates .venv with the supported stack) '
            'or install the versions above.')


def guard_mmpretrain_multimodal() -> bool:
    """Keep a user's ``transformers`` from breaking ``import mmdet.models``.

    MMDetection imports MMPretrain, which imports its BLIP/LLaVA/... models
    whenever ``transformers>=4.28`` is installed; with a recent
    ``transformers`` those modules crash on import, taking every mmdet
    model down with them. mmpetl uses none of them: before MMPretrain is
    first imported, its dependency flag is set so that it registers
    placeholders for the multimodal models instead (using one then says
    what is missing). Set ``MMPETL_KEEP_MMPRETRAIN_MULTIMODAL=1`` to skip
    this.

    Returns:
        True if the multimodal imports were disabled.
    """
    if os.environ.get('MMPETL_KEEP_MMPRETRAIN_MULTIMODAL') == '1':
        return False
    if 'mmpretrain' in sys.modules or _installed('transformers') is None:
        return False
    spec = importlib.util.find_spec('mmpretrain')
    if spec is None or not spec.submodule_search_locations:
        return False
    path = os.path.join(spec.submodule_search_locations[0], 'utils',
                        'dependency.py')
    name = 'mmpretrain.utils.dependency'
    dep_spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(dep_spec)
    dep_spec.loader.exec_module(module)
    module.mmpetl_guard = True
    if module.WITH_MULTIMODAL:
        module.WITH_MULTIMODAL = False
        warnings.warn(
            'mmpetl: MMPretrain multimodal models disabled (their imports '
            'break with this transformers); '
            'MMPETL_KEEP_MMPRETRAIN_MULTIMODAL=1 keeps them',
            MultimodalDisabledWarning, stacklevel=2)
    sys.modules[name] = module
    return True


_DEPENDENCY = 'mmpretrain.utils.dependency'


def mmpretrain_multimodal_guarded() -> bool:
    """Whether :func:`guard_mmpretrain_multimodal` put its module in
    ``sys.modules``."""
    return getattr(sys.modules.get(_DEPENDENCY), 'mmpetl_guard', False)


def unguard_mmpretrain_multimodal() -> bool:
    """Take the guard's module out of ``sys.modules`` again.

    Possible only before MMPretrain is imported (it then reads its own
    flag); once MMPretrain has registered placeholders for its multimodal
    models that cannot be undone in the process.

    Returns:
        bool: True if the guard was taken out.
    """
    if not mmpretrain_multimodal_guarded() or 'mmpretrain' in sys.modules:
        return False
    del sys.modules[_DEPENDENCY]
    return True
