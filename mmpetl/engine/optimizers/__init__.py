from .petl_constructor import PETLOptimWrapperConstructor

__all__ = ['PETLOptimWrapperConstructor']
