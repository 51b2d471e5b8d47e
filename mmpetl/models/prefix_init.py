"""``init='activations'``: prefixes from the frozen model's own activations.

Li & Liang initialise prefixes with activations of real words; here every
prefix tuner waiting for it (``needs_data_init``) records, during a few
forwards of the frozen model in eval mode with the prefix branches off,
the projected keys (and values) its host computes - for deformable
attention, the queries its branch attends with - and then draws ``l`` of
those tokens as ``P_k`` (joint form: also ``P_v``; parallel form: ``P_v``
stays 0, exact at init). It drives the tuners through their public
collection protocol (:class:`mmpetl.tuners.prefix.ActivationInit`).
"""
from typing import Iterable, List, Sequence

import torch
import torch.nn as nn

from mmpetl.tuners.prefix import PrefixBase
from mmpetl.utils.mmengine_private import run_forward

__all__ = ['pending_prefixes', 'init_prefixes_from_activations']


def pending_prefixes(model: nn.Module) -> List:
    """``(name, tuner)`` of the prefix tuners still waiting for data."""
    return [(n, m) for n, m in model.named_modules()
            if isinstance(m, PrefixBase) and m.needs_data_init]


@torch.no_grad()
def init_prefixes_from_activations(model: nn.Module,
                                   batches: Iterable,
                                   seed: int = 0) -> Sequence[str]:
    """Initialise every pending ``init='activations'`` prefix.

    Args:
        model: a ``PETLModel`` (or any model whose ``data_preprocessor``
            and ``_run_forward`` MMEngine's ``BaseModel`` provides).
        batches: data batches as a dataloader yields them (at least one).
        seed: seed of the draw of prefix tokens.

    Returns:
        The names of the initialised tuners.

    Raises:
        ValueError: no batch was given.
    """
    pending = pending_prefixes(model)
    if not pending:
        return []
    was_training = model.training
    model.eval()
    for _, tuner in pending:
        tuner.start_collecting()
    seen = 0
    try:
        for batch in batches:
            data = model.data_preprocessor(batch, False)
            run_forward(model, data, mode='tensor')
            seen += 1
        if not seen:
            raise ValueError(
                "init='activations' needs training batches: none were "
                'given (a train dataloader must be configured; the '
                'TunerInitHook takes its first batches)')
        generator = torch.Generator().manual_seed(seed)
        for _, tuner in pending:
            tuner.finish_collecting(generator)
    finally:
        for _, tuner in pending:
            tuner.stop_collecting()
        model.train(was_training)
    return [name for name, _ in pending]
