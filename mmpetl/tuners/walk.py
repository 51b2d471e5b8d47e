"""Finding the tuners in a model: the one walk every room uses.

Tuners are found structurally (every :class:`~mmpetl.tuners.BaseTuner`
submodule), never by parameter names.
"""
from typing import Iterator, Set, Tuple

import torch.nn as nn

from .base import BaseTuner

__all__ = ['iter_tuners', 'tuner_parameter_ids', 'tuner_key_prefixes']


def iter_tuners(module: nn.Module) -> Iterator[Tuple[str, BaseTuner]]:
    """``(name, tuner)`` for every tuner inside ``module`` (``module``
    itself included), in ``named_modules`` order; a tuner shared by two
    parents is listed once.

    Args:
        module: any module (a PETL model, a detector, one layer).

    Yields:
        tuple[str, BaseTuner]: the tuner's dotted name in ``module`` and
        the tuner.
    """
    for name, sub in module.named_modules():
        if isinstance(sub, BaseTuner):
            yield name, sub


def tuner_parameter_ids(module: nn.Module) -> Set[int]:
    """``id()`` of every parameter of the tuners inside ``module``.

    Args:
        module: any module.

    Returns:
        set[int]: the ids (compare with ``id(p)`` of ``module.parameters()``).
    """
    return {id(p) for _, tuner in iter_tuners(module)
            for p in tuner.parameters()}


def tuner_key_prefixes(module: nn.Module) -> Tuple[str, ...]:
    """``'<tuner name>.'`` of every tuner inside ``module``: a state-dict
    key of ``module`` belongs to a tuner iff it starts with one of them
    (``key.startswith(prefixes)``; compute them once per state dict).

    Args:
        module: any module.

    Returns:
        tuple[str, ...]: the prefixes (empty without tuners).
    """
    return tuple(name + '.' for name, _ in iter_tuners(module))
