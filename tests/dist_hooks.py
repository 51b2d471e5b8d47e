"""Test support hooks for multi-process runs: each rank writes its trainable
tensors after training; one rank can be made to produce a NaN loss."""
import os.path as osp

import torch
from mmengine.dist import get_rank
from mmengine.hooks import Hook

from mmpetl.registry import HOOKS
from mmpetl.utils import unwrap_model


@HOOKS.register_module()
class DumpTrainableHook(Hook):

    def __init__(self, out_dir):
        self.out_dir = out_dir

    def after_train(self, runner):
        model = unwrap_model(runner.model)
        state = {n: p.detach().cpu().clone()
                 for n, p in model.named_parameters() if p.requires_grad}
        torch.save(state, osp.join(self.out_dir,
                                   f'trainable_rank{get_rank()}.pth'))


@HOOKS.register_module()
class NaNOnOneRankHook(Hook):
    """Make one rank's losses NaN at one iteration (no weight is touched:
    the detector's ``loss`` is wrapped for that step only)."""

    def __init__(self, rank=1, at_iter=1):
        self.rank, self.at_iter = rank, at_iter
        self._detector = None

    def before_train_iter(self, runner, batch_idx, data_batch=None):
        if get_rank() == self.rank and runner.iter == self.at_iter:
            detector = unwrap_model(runner.model).inner
            loss = detector.loss

            def nan_loss(*args, **kwargs):
                return {k: v * float('nan') if 'loss' in k else v
                        for k, v in loss(*args, **kwargs).items()}

            detector.loss = nan_loss
            self._detector = detector

    def after_train_iter(self, runner, batch_idx, data_batch=None,
                         outputs=None):
        if self._detector is not None:
            del self._detector.loss  # the class's method again
            self._detector = None
