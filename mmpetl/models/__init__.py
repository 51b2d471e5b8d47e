from .backbones import TorchvisionMobileNetV2  # noqa: F401
from .checkpointing import (apply_activation_checkpointing,
                            checkpointing_table, observe_checkpoint_inputs,
                            parse_checkpoint_spec, resolve_checkpoint_targets)
from .multitask import RoutingError, Task, TaskRouter, background_slots
from .petl_model import PETLModel, build_inner_model
from .prefix_init import init_prefixes_from_activations, pending_prefixes

__all__ = [
    'PETLModel', 'build_inner_model', 'TorchvisionMobileNetV2',
    'apply_activation_checkpointing', 'resolve_checkpoint_targets',
    'observe_checkpoint_inputs', 'checkpointing_table',
    'parse_checkpoint_spec',
    'init_prefixes_from_activations', 'pending_prefixes',
    'Task', 'TaskRouter', 'RoutingError', 'background_slots'
]
