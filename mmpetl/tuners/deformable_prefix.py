"""Kept so ``mmpetl.tuners.deformable_prefix.DeformablePrefix`` still
imports: the class lives in :mod:`mmpetl.tuners.prefix.deformable`."""
from .prefix.deformable import DeformablePrefix

__all__ = ['DeformablePrefix']
