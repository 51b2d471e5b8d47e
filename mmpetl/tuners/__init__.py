"""Tuners: plain torch modules that attach to a frozen host module.

Each file holds one method and its formula (prefix tuning, with its
forms, inits and hosts, is the package ``prefix/``). Nothing here imports
MMDetection.
"""
from .adapter import ParallelAdapter
from .base import BaseTuner, TunerHostError
from .lora import (LoRA, LoRAConditionalAttention, LoRAFusedAttention,
                   LoRALinear)
from .prefix import (PREFIX_FORMS, PREFIX_INITS, DeformablePrefix,
                     PrefixBase, PrefixTuning, ScaledPrefix)
from .routing import RoutingError, TaskGroups
from .serial_adapter import SerialAdapter
from .unipt import UniPT
from .utuner import UTuner
from .vpt import VPT
from .walk import iter_tuners, tuner_key_prefixes, tuner_parameter_ids

__all__ = [
    'BaseTuner', 'TunerHostError', 'ParallelAdapter', 'ScaledPrefix',
    'PrefixTuning', 'PrefixBase', 'PREFIX_FORMS', 'PREFIX_INITS',
    'DeformablePrefix', 'LoRA', 'LoRALinear',
    'LoRAFusedAttention', 'LoRAConditionalAttention', 'SerialAdapter',
    'UTuner', 'VPT', 'UniPT', 'RoutingError', 'TaskGroups', 'iter_tuners',
    'tuner_parameter_ids', 'tuner_key_prefixes'
]
