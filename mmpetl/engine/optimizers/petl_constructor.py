"""An optimizer-wrapper constructor that optimises only what PETL trains.

* Only parameters with ``requires_grad=True`` enter the optimizer, whatever
  MMEngine's default constructor does with frozen ones.
* ``paramwise_cfg`` (``custom_keys``, ``norm_decay_mult``...) applies to
  the trainable *base* parameters (e.g. the heads) as MMEngine applies it.
  Tuner parameters never go through ``custom_keys``: its substring keys
  would catch a tuner named after the module it sits in (an adapter in
  ``backbone.layers.3.ffn`` would get ``backbone``'s ``lr_mult=0.1``).
  Tuner parameters get the tuner's own ``lr_mult``/``decay_mult`` from its
  config instead, and ``paramwise_cfg['tuner_lr_mult']`` (default 1)
  multiplies all of them.
* It refuses to build an optimizer with no trainable parameter.
"""
from typing import List

import torch.nn as nn
from mmengine.logging import print_log
from mmengine.model import is_model_wrapper
from mmengine.optim import DefaultOptimWrapperConstructor, OptimWrapper
from mmengine.registry import OPTIM_WRAPPERS, OPTIMIZERS

from mmpetl.registry import OPTIM_WRAPPER_CONSTRUCTORS
from mmpetl.tuners import BaseTuner

__all__ = ['PETLOptimWrapperConstructor']


@OPTIM_WRAPPER_CONSTRUCTORS.register_module()
class PETLOptimWrapperConstructor(DefaultOptimWrapperConstructor):

    def __init__(self, optim_wrapper_cfg: dict, paramwise_cfg=None) -> None:
        paramwise_cfg = dict(paramwise_cfg or {})
        self.tuner_lr_mult = float(paramwise_cfg.pop('tuner_lr_mult', 1.0))
        super().__init__(optim_wrapper_cfg, paramwise_cfg)

    def __call__(self, model: nn.Module) -> OptimWrapper:
        # MMEngine skips add_params when paramwise_cfg is empty and hands
        # model.parameters() (frozen ones included) to the optimizer; here
        # every build goes through add_params.
        if is_model_wrapper(model):
            model = model.module
        optim_wrapper_cfg = self.optim_wrapper_cfg.copy()
        optim_wrapper_cfg.setdefault('type', 'OptimWrapper')
        optimizer_cfg = self.optimizer_cfg.copy()
        params: List[dict] = []
        self.add_params(params, model)
        optimizer_cfg['params'] = params
        optimizer = OPTIMIZERS.build(optimizer_cfg)
        return OPTIM_WRAPPERS.build(
            optim_wrapper_cfg, default_args=dict(optimizer=optimizer))

    def add_params(self, params: List[dict], module: nn.Module,
                   prefix: str = '', is_dcn_module=None) -> None:
        if prefix:  # only the top-level call does the work
            return super().add_params(params, module, prefix, is_dcn_module)
        tuners = [m for m in module.modules() if isinstance(m, BaseTuner)]
        tuner_of = {id(p): t for t in tuners for p in t.parameters()}
        trainable = [p for p in module.parameters() if p.requires_grad]
        if not trainable:
            raise ValueError(
                'no trainable parameter to optimise: every parameter is '
                'frozen. Add tuners or `trainable` patterns to the model '
                'config.')
        base_groups: List[dict] = []
        super().add_params(base_groups, module, prefix, is_dcn_module)
        base_lr = self.base_lr
        base_wd = self.base_wd
        for group in base_groups:
            (param, ) = group['params']
            if not param.requires_grad:
                continue
            tuner = tuner_of.get(id(param))
            if tuner is not None:
                group = {'params': [param]}
                if base_lr is not None:
                    group['lr'] = base_lr * tuner.lr_mult * self.tuner_lr_mult
                if base_wd is not None:
                    group['weight_decay'] = base_wd * tuner.decay_mult
            params.append(group)
        count = sum(p.numel() for g in params for p in g['params'])
        print_log(f'mmpetl: optimizer holds {len(params)} tensors, '
                  f'{count:,} parameters ({len(tuner_of)} tuner tensors)',
                  logger='current')
