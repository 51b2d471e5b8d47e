"""Stop training at the first non-finite loss, before anything is saved.

Every rank takes part in the decision: one rank's NaN reaches every rank's
weights through DDP's gradient all-reduce, so all ranks stop together (one
all-reduced flag per iteration), and rank 0 never checkpoints that step.
"""
import math

import torch
from mmengine.hooks import Hook

from mmpetl.registry import HOOKS
from mmpetl.utils import ranks_where

__all__ = ['NonFiniteLossHook', 'NonFiniteLossError']


class NonFiniteLossError(FloatingPointError):
    pass


@HOOKS.register_module()
class NonFiniteLossHook(Hook):
    """Raise on every rank, naming the iteration, the ranks and the loss
    terms, when any rank's loss is NaN or infinite. It runs before
    ``CheckpointHook`` (priority ABOVE_NORMAL vs VERY_LOW), so the step that
    produced it is never written to a checkpoint: the last checkpoint on
    disk is the last good one."""

    priority = 'ABOVE_NORMAL'

    def after_train_iter(self, runner, batch_idx, data_batch=None,
                         outputs=None) -> None:
        terms = {k: float(v.detach() if torch.is_tensor(v) else v)
                 for k, v in (outputs or {}).items()}
        bad = {k: v for k, v in terms.items()
               if 'loss' in k and not math.isfinite(v)}
        ranks = ranks_where(bool(bad))
        if not ranks:
            return
        last = runner.message_hub.get_info('last_ckpt')
        here = (f'on this rank ({runner.rank}): {bad} (all terms: {terms})'
                if bad else f'this rank ({runner.rank}) was finite, but the '
                f'gradients all ranks share are not')
        raise NonFiniteLossError(
            f'non-finite loss at iteration {runner.iter + 1} on rank(s) '
            f'{ranks}; {here}. Training stopped on every rank before this '
            f'step was checkpointed; the last checkpoint is '
            f'{last or "none yet"}. Lower the lr, enable clip_grad, or check '
            f'the data near this iteration, then resume from it.')
