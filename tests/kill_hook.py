"""Test support: the training process sends SIGKILL to itself once
``kill_at`` iterations are done (at the start of the next one), so a test
can resume the run and compare it with an uninterrupted one. SIGKILL
cannot be caught: no hook, ``finally`` or ``atexit`` handler runs, as when
the OOM killer or a scheduler ends a job."""
import os
import signal

from mmengine.hooks import Hook

from mmpetl.registry import HOOKS


@HOOKS.register_module()
class SigkillHook(Hook):

    priority = 'LOWEST'

    def __init__(self, kill_at: int):
        self.kill_at = kill_at

    def before_train_iter(self, runner, batch_idx, data_batch=None):
        # runner.iter counts the iterations done; those iterations'
        # after_train_iter hooks (checkpoint, logger) have all run
        if runner.iter == self.kill_at:
            os.kill(os.getpid(), signal.SIGKILL)
