from .frozen_check_hook import (FrozenCheckHook, FrozenParamsChanged,
                                fingerprint_frozen)
from .param_report_hook import ParamReportHook

__all__ = ['ParamReportHook', 'FrozenCheckHook', 'FrozenParamsChanged',
           'fingerprint_frozen']
