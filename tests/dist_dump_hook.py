"""Test support: each rank writes its trainable tensors after training, so a
test can check that DDP kept the ranks' tuners equal."""
import os.path as osp

import torch
from mmengine.dist import get_rank
from mmengine.hooks import Hook
from mmengine.model import is_model_wrapper

from mmpetl.registry import HOOKS


@HOOKS.register_module()
class DumpTrainableHook(Hook):

    def __init__(self, out_dir):
        self.out_dir = out_dir

    def after_train(self, runner):
        model = runner.model.module if is_model_wrapper(
            runner.model) else runner.model
        state = {n: p.detach().cpu().clone()
                 for n, p in model.named_parameters() if p.requires_grad}
        torch.save(state, osp.join(self.out_dir,
                                   f'trainable_rank{get_rank()}.pth'))
