"""Target matching, re-exported from :mod:`mmpetl.utils.matching`.

Matching is pure (names in, names out; it knows no tuner and no model), so
it lives in ``utils`` where ``checkpoints`` can use it without importing
``injection``. This module keeps ``mmpetl.injection.matching`` working.
"""
from mmpetl.utils.matching import (Targets, name_matches, nearest_names,
                                   parameter_matches, select_names,
                                   select_parameters)

__all__ = ['name_matches', 'select_names', 'nearest_names', 'Targets',
           'parameter_matches', 'select_parameters']
