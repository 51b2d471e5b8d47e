from .frozen_check_hook import (FrozenCheckHook, FrozenParamsChanged,
                                fingerprint_frozen)
from .param_report_hook import ParamReportHook
from .tuner_checkpoint_hook import LoadTunerHook, TunerCheckpointHook

__all__ = ['ParamReportHook', 'TunerCheckpointHook', 'LoadTunerHook', 'FrozenCheckHook', 'FrozenParamsChanged',
           'fingerprint_frozen']
