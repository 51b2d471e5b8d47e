"""mmpetl: parameter-efficient transfer learning for OpenMMLab detection.

Importing mmpetl checks the versions it runs with, keeps a user's
``transformers`` from breaking MMDetection's imports, and lets MMEngine's
own checkpoints load under torch's safe ``weights_only`` loading.
"""
from .utils.compat import check_versions, guard_mmpretrain_multimodal
from .version import __version__

check_versions()
guard_mmpretrain_multimodal()

from .utils.safe_load import allow_mmengine_checkpoints  # noqa: E402

allow_mmengine_checkpoints()

__all__ = ['__version__']
