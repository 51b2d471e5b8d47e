from .frozen_check_hook import (FrozenCheckHook, FrozenParamsChanged,
                                NonFiniteWeightsError, fingerprint_frozen,
                                non_finite_tensors)
from .non_finite_loss_hook import NonFiniteLossError, NonFiniteLossHook
from .param_report_hook import ParamReportHook
from .tuner_checkpoint_hook import LoadTunerHook, TunerCheckpointHook
from .tuner_health_hook import TunerHealthHook
from .tuner_init_hook import TunerInitHook

__all__ = [
    'ParamReportHook', 'NonFiniteLossHook', 'NonFiniteLossError',
    'TunerCheckpointHook', 'LoadTunerHook', 'FrozenCheckHook',
    'FrozenParamsChanged', 'fingerprint_frozen', 'NonFiniteWeightsError',
    'non_finite_tensors', 'TunerHealthHook', 'TunerInitHook'
]
