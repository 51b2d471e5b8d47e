"""mmpetl: parameter-efficient transfer learning for OpenMMLab detection.

Importing mmpetl checks the versions it runs with, keeps a user's
``transformers`` from breaking MMDetection's imports, and lets MMEngine's
own checkpoints load under torch's safe ``weights_only`` loading, and
runs MMCV's deformable attention in fp32 under autocast, and makes the
Runner's checkpoint writes atomic.
"""
from .utils.compat import check_versions, guard_mmpretrain_multimodal
from .version import __version__

check_versions()
guard_mmpretrain_multimodal()

from .ops import patch_msda_fp32  # noqa: E402
from .utils.io import patch_mmengine_atomic_save  # noqa: E402
from .utils.safe_load import allow_mmengine_checkpoints  # noqa: E402

allow_mmengine_checkpoints()
patch_mmengine_atomic_save()  # a killed job never leaves half a checkpoint
patch_msda_fp32()  # deformable attention in fp32 under --amp

__all__ = ['__version__']
