"""Injection: target matching (pure), presets per architecture, inject()."""
from .inject import InjectedTuner, get_tuner_cls, inject
from .matching import (Targets, name_matches, nearest_names,
                       parameter_matches, select_names, select_parameters)
from .presets import CHECKPOINT_PRESETS, PRESETS, detect_arch, preset_regex
from .report import (count_trainable, format_table, injection_table,
                     parameter_groups_table)

__all__ = [
    'inject', 'InjectedTuner', 'get_tuner_cls', 'name_matches', 'Targets',
    'parameter_matches', 'select_parameters',
    'select_names', 'nearest_names', 'PRESETS', 'CHECKPOINT_PRESETS',
    'detect_arch',
    'preset_regex', 'injection_table', 'parameter_groups_table',
    'count_trainable', 'format_table'
]
