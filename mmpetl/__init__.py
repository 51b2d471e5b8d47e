"""mmpetl: parameter-efficient transfer learning for OpenMMLab detection.

Importing mmpetl checks the versions it runs with and keeps a user's
``transformers`` from breaking MMDetection's imports (the one change in
another library that cannot wait: it must come before MMDetection imports
MMPretrain; it warns when it acts). Every other change to MMCV, MMEngine
or torch is a named patch in :mod:`mmpetl.patches`, applied by
:func:`apply_patches` where mmpetl needs it (building a ``PETLModel``,
mmpetl's tools), logged, and undone by :func:`remove_patches`.
"""
from .utils.compat import check_versions, guard_mmpretrain_multimodal
from .version import __version__

check_versions()
guard_mmpretrain_multimodal()  # named patch `mmpretrain_multimodal_guard`

from .patches import (PATCHES, applied_patches, apply_patches,  # noqa: E402
                      is_patched, patched, remove_patches)

__all__ = ['__version__', 'PATCHES', 'apply_patches', 'remove_patches',
           'patched', 'applied_patches', 'is_patched']
