"""What knows nothing of tuners or models: environment checks, atomic I/O,
safe loading, config checks, small module helpers."""
from .compat import check_versions, guard_mmpretrain_multimodal
from .datasets import dataset_leaves, metainfo_classes
from .dist import on_rank0, ranks_where
from .io import atomic_save, atomic_write, sha256_file
from .misc import class_names, quiet_init_weights, unwrap_model
from .safe_load import (CheckpointError, allow_mmengine_checkpoints,
                        load_checkpoint_file)

__all__ = ['check_versions', 'guard_mmpretrain_multimodal',
           'allow_mmengine_checkpoints', 'atomic_save', 'atomic_write',
           'sha256_file', 'class_names', 'quiet_init_weights',
           'unwrap_model', 'CheckpointError', 'load_checkpoint_file', 'on_rank0',
           'ranks_where', 'dataset_leaves', 'metainfo_classes']
