"""Small helpers about torch/MMEngine modules that know nothing of tuners."""
import logging
from typing import List

import torch.nn as nn
from mmengine.logging import MMLogger
from mmengine.model import BaseTTAModel, is_model_wrapper

__all__ = ['unwrap_model', 'class_names', 'quiet_init_weights']


def unwrap_model(model: nn.Module) -> nn.Module:
    """The model inside an MMEngine/torch wrapper (DDP, FSDP...) and a
    test-time-augmentation model (``BaseTTAModel``, ``tools/test.py
    --tta``), or itself."""
    if is_model_wrapper(model):
        model = model.module
    return model.module if isinstance(model, BaseTTAModel) else model


def class_names(obj, qualified: bool = False) -> List[str]:
    """Names of the classes in ``type(obj)``'s MRO (``module.Name`` when
    ``qualified``): lets mmpetl recognise mmdet/mmpretrain classes without
    importing them."""
    mro = type(obj).__mro__
    if qualified:
        return [f'{c.__module__}.{c.__name__}' for c in mro]
    return [c.__name__ for c in mro]


def quiet_init_weights(model: nn.Module) -> None:
    """``model.init_weights()``; MMEngine logs one line per parameter to the
    console when the logger has no file: keep those for log files only."""
    logger = MMLogger.get_current_instance()
    to_file = any(isinstance(h, logging.FileHandler) for h in logger.handlers)
    level = logger.level
    if not to_file:
        logger.setLevel(logging.WARNING)
    try:
        model.init_weights()
    finally:
        logger.setLevel(level)
