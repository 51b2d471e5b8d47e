from .amp import AmpOptimWrapper
from .petl_constructor import (PETLOptimWrapperConstructor,
                               merge_param_groups, tuner_param_kind)

__all__ = ['PETLOptimWrapperConstructor', 'AmpOptimWrapper',
           'merge_param_groups', 'tuner_param_kind']
