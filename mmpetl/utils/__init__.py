from .compat import check_versions, guard_mmpretrain_multimodal
from .safe_load import allow_mmengine_checkpoints

__all__ = ['check_versions', 'guard_mmpretrain_multimodal',
           'allow_mmengine_checkpoints']
