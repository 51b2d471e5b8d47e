"""Data-dependent tuner inits before the first step (``init='activations'``).
"""
import contextlib
import random

import numpy as np
import torch
from mmengine.dist import broadcast, get_world_size
from mmengine.hooks import Hook
from torch.utils.data import DataLoader

from mmpetl.models import init_prefixes_from_activations, pending_prefixes
from mmpetl.registry import HOOKS
from mmpetl.utils import unwrap_model
from mmpetl.utils.mmengine_private import runner_has_train_dataloader

__all__ = ['TunerInitHook']


@contextlib.contextmanager
def _rng_preserved():
    """Data pipelines draw from the global RNGs: leave them as they were,
    so a run with this init trains on exactly the batches it would have."""
    states = (random.getstate(), np.random.get_state(),
              torch.get_rng_state())
    try:
        yield
    finally:
        random.setstate(states[0])
        np.random.set_state(states[1])
        torch.set_rng_state(states[2])


@HOOKS.register_module()
class TunerInitHook(Hook):
    """Initialise ``init='activations'`` prefixes from training images.

    Runs in ``before_train`` after the base checkpoint is loaded (and after
    ``LoadTunerHook``): prefixes a checkpoint restored (a tuner checkpoint,
    ``--resume``) are left alone. The batches are drawn from the training
    set by a loader of its own (seeded, in-process) with the global RNGs
    restored afterwards, so the training batches are those of a run
    without it. Rank 0's prefixes are broadcast to every DDP rank.

    Args:
        num_batches (int): training batches to draw the tokens from.
        seed (int): seed of the batches and of the draw.
    """

    priority = 'HIGH'

    def __init__(self, num_batches: int = 2, seed: int = 0) -> None:
        self.num_batches, self.seed = num_batches, seed

    def before_train(self, runner) -> None:
        model = unwrap_model(runner.model)
        pending = pending_prefixes(model)
        if not pending:
            return
        if not runner_has_train_dataloader(runner):
            raise ValueError(
                f"init='activations' ({len(pending)} prefix tuners, first "
                f'{pending[0][0]}) needs training batches, and this runner '
                f'has no train_dataloader. Configure one, or choose '
                f"init='scaled'.")
        train = runner.train_dataloader
        loader = DataLoader(
            train.dataset, batch_size=train.batch_size or 1, shuffle=True,
            collate_fn=train.collate_fn,
            generator=torch.Generator().manual_seed(self.seed))
        with _rng_preserved():
            batches = []
            for batch in loader:
                batches.append(batch)
                if len(batches) == self.num_batches:
                    break
            done = init_prefixes_from_activations(model, batches, self.seed)
        if get_world_size() > 1:
            for _, tuner in pending:  # every prefix tensor this form has
                for name in tuner.token_params:
                    tensor = getattr(tuner, name, None)
                    if isinstance(tensor, torch.Tensor):
                        broadcast(tensor.data)
        runner.logger.info(
            f'mmpetl: {len(done)} prefix tuners initialised from the '
            f'activations of {len(batches)} training batches')
