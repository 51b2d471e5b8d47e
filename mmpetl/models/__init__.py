from .petl_model import PETLModel, build_inner_model

__all__ = ['PETLModel', 'build_inner_model']
