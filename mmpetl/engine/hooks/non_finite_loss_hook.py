"""Stop training at the first non-finite loss, before anything is saved."""
import math

from mmengine.hooks import Hook

from mmpetl.registry import HOOKS

__all__ = ['NonFiniteLossHook', 'NonFiniteLossError']


class NonFiniteLossError(FloatingPointError):
    pass


@HOOKS.register_module()
class NonFiniteLossHook(Hook):
    """Raise, naming the iteration and the loss terms, when a loss is NaN or
    infinite. It runs before ``CheckpointHook`` (priority ABOVE_NORMAL vs
    VERY_LOW), so the step that produced it is never written to a
    checkpoint: the last checkpoint on disk is the last good one."""

    priority = 'ABOVE_NORMAL'

    def after_train_iter(self, runner, batch_idx, data_batch=None,
                         outputs=None) -> None:
        if not outputs:
            return
        bad = {k: float(v) for k, v in outputs.items()
               if 'loss' in k and not math.isfinite(float(v))}
        if bad:
            last = runner.message_hub.get_info('last_ckpt')
            raise NonFiniteLossError(
                f'non-finite loss at iteration {runner.iter + 1}: {bad} '
                f'(all terms: {dict((k, float(v)) for k, v in outputs.items())}'
                f'). Training stopped before this step was checkpointed; '
                f'the last checkpoint is {last or "none yet"}. Lower the lr, '
                f'enable clip_grad, or check the data near this iteration, '
                f'then resume from it.')
