"""An optimizer-wrapper constructor that optimises only what PETL trains.

The policy, in order:

* Only parameters with ``requires_grad=True`` enter the optimizer, whatever
  MMEngine's default constructor does with frozen ones; building with none
  is refused.
* Trainable *base* parameters (the heads, BitFit's biases) follow
  ``paramwise_cfg`` exactly as MMEngine applies it (``custom_keys``,
  ``norm_decay_mult``, ``bias_decay_mult``...).
* Tuner parameters never go through ``custom_keys`` by substring: a key
  such as ``backbone`` would catch every tuner living in the backbone. A
  tuner gets, multiplied together:

  - lr: the base lr x the tuner config's ``lr_mult`` x
    ``paramwise_cfg['tuner_lr_mult']`` (default 1) x the ``lr_mult`` of a
    ``custom_keys`` key listed in ``paramwise_cfg['tuner_follow_keys']``
    (default ``('sampling_offsets', 'reference_points')``) that its host's
    name contains. MMDetection trains Deformable DETR's sampling offsets
    and reference points at 0.1x; a LoRA on ``sampling_offsets`` changes
    that same weight, so it follows the same multiplier.
  - weight decay: the base decay x the tuner's ``decay_mult`` x the
    followed key's ``decay_mult`` x a factor by parameter kind: matrices
    1; biases ``bias_decay_mult``; LayerNorm parameters and learnable
    scalar scales ``norm_decay_mult``; prefix/prompt tokens
    ``tuner_token_decay_mult``. The last three default to **0** for tuners
    (no decay pulls a scale, a gain or a prefix toward zero) where
    MMEngine's default would be 1. Every tuner param group states its
    ``weight_decay`` explicitly, so a 0 stays 0 whatever the optimizer's
    own default.

* The base decay is the optimizer config's ``weight_decay`` or, when the
  config has none, the optimizer class's own default (AdamW: 0.01), read
  from its signature and logged: the policy does not depend on whether
  the config spells the decay out.

* Parameters whose settings agree share one param group (MMEngine makes
  one group per tensor), so the optimizer's multi-tensor (``foreach``)
  path handles them together.
"""
import contextlib
import inspect
import logging
from typing import Dict, List, Optional, Sequence, Tuple

import torch.nn as nn
from mmengine.logging import MMLogger, print_log
from mmengine.optim import DefaultOptimWrapperConstructor, OptimWrapper
from mmengine.registry import OPTIM_WRAPPERS, OPTIMIZERS
from torch.nn.modules.batchnorm import _BatchNorm

from mmpetl.registry import OPTIM_WRAPPER_CONSTRUCTORS
from mmpetl.tuners import BaseTuner, iter_tuners
from mmpetl.utils import unwrap_model

__all__ = ['PETLOptimWrapperConstructor', 'merge_param_groups',
           'tuner_param_kind']

FOLLOW_KEYS = ('sampling_offsets', 'reference_points')
_NORMS = (nn.LayerNorm, nn.GroupNorm, _BatchNorm)


def tuner_param_kind(tuner: BaseTuner, name: str, param) -> str:
    """``'weight'``, ``'bias'``, ``'norm'``, ``'scale'`` or ``'token'``.

    Args:
        tuner: the tuner holding the parameter.
        name: the parameter's name inside the tuner (``branch.up.bias``).
        param: the parameter.
    """
    owner_name, _, leaf = name.rpartition('.')
    if isinstance(tuner.get_submodule(owner_name), _NORMS):
        return 'norm'
    if leaf in tuner.token_params:
        return 'token'
    if param.ndim == 0:
        return 'scale'
    if leaf == 'bias' or param.ndim == 1:
        return 'bias'
    return 'weight'


def optimizer_default_decay(optimizer_type) -> Optional[float]:
    """The ``weight_decay`` default of an optimizer class (a class or its
    registered name); None when it takes no ``weight_decay``.

    Raises:
        ValueError: an optimizer name no registry knows.
    """
    cls = optimizer_type
    if isinstance(cls, str):
        cls = OPTIMIZERS.get(cls)
        if cls is None:
            raise ValueError(
                f'unknown optimizer type {optimizer_type!r}: not in '
                f'MMEngine\'s OPTIMIZERS registry. Use a torch.optim class '
                f'name (AdamW, SGD...) or register yours.')
    try:
        param = inspect.signature(cls).parameters.get('weight_decay')
    except (TypeError, ValueError):  # no introspectable signature
        return None
    if param is None or param.default is inspect.Parameter.empty:
        return None
    return float(param.default)


class _FrozenSkipFilter(logging.Filter):
    """Drops MMEngine's per-parameter warning ``<name> is skipped since its
    requires_grad=False`` (one line per frozen tensor: hundreds in PETL,
    where freezing is the point); nothing else."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not (record.levelno == logging.WARNING and
                    record.getMessage().endswith(
                        ' is skipped since its requires_grad=False'))


@contextlib.contextmanager
def _without_frozen_skip_warnings():
    """Within the block, the current MMLogger drops only that warning."""
    logger = MMLogger.get_current_instance()
    quiet = _FrozenSkipFilter()
    logger.addFilter(quiet)
    try:
        yield
    finally:
        logger.removeFilter(quiet)


def merge_param_groups(groups: Sequence[Dict]) -> List[Dict]:
    """One group per distinct setting, in first-seen order."""
    merged: Dict[Tuple, Dict] = {}
    for group in groups:
        key = tuple(sorted((k, v) for k, v in group.items()
                           if k != 'params'))
        if key in merged:
            merged[key]['params'].extend(group['params'])
        else:
            merged[key] = dict(group, params=list(group['params']))
    return list(merged.values())


@OPTIM_WRAPPER_CONSTRUCTORS.register_module()
class PETLOptimWrapperConstructor(DefaultOptimWrapperConstructor):
    """See the module docstring for the policy.

    Extra ``paramwise_cfg`` keys: ``tuner_lr_mult`` (float, default 1),
    ``tuner_follow_keys`` (sequence of ``custom_keys`` names, default
    ``('sampling_offsets', 'reference_points')``) and
    ``tuner_token_decay_mult`` (float, default 0).
    """

    def __init__(self, optim_wrapper_cfg: dict, paramwise_cfg=None) -> None:
        paramwise_cfg = dict(paramwise_cfg or {})
        self.tuner_lr_mult = float(paramwise_cfg.pop('tuner_lr_mult', 1.0))
        self.tuner_follow_keys = tuple(
            paramwise_cfg.pop('tuner_follow_keys', FOLLOW_KEYS))
        self.tuner_token_decay_mult = float(
            paramwise_cfg.pop('tuner_token_decay_mult', 0.0))
        optimizer = dict(optim_wrapper_cfg.get('optimizer') or {})
        self.decay_from_default = False
        if optimizer and optimizer.get('weight_decay') is None:
            # what the optimizer applies anyway: made explicit so that the
            # tuner policy (and MMEngine's rules for base parameters) use it
            default = optimizer_default_decay(optimizer.get('type'))
            if default is not None:
                optimizer['weight_decay'] = default
                optim_wrapper_cfg = dict(optim_wrapper_cfg,
                                         optimizer=optimizer)
                self.decay_from_default = True
        super().__init__(optim_wrapper_cfg, paramwise_cfg)

    def __call__(self, model: nn.Module) -> OptimWrapper:
        # MMEngine skips add_params when paramwise_cfg is empty and hands
        # model.parameters() (frozen ones included) to the optimizer; here
        # every build goes through add_params.
        model = unwrap_model(model)
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
        tuner_of = {}
        for name, tuner in iter_tuners(module):
            host = name.rpartition('.')[0]
            for pname, param in tuner.named_parameters():
                tuner_of[id(param)] = (host, tuner, pname)
        if not any(p.requires_grad for p in module.parameters()):
            raise ValueError(
                'no trainable parameter to optimise: every parameter is '
                'frozen. Add tuners or `trainable` patterns to the model '
                'config.')
        per_tensor: List[dict] = []
        # MMEngine leaves frozen parameters out (older versions keep them in
        # a group of their own, dropped below) with a warning per tensor;
        # one summary line below replaces those
        with _without_frozen_skip_warnings():
            super().add_params(per_tensor, module, prefix, is_dcn_module)
        frozen = sum(1 for p in module.parameters() if not p.requires_grad)
        groups = []
        for group in per_tensor:
            (param, ) = group['params']
            if not param.requires_grad:
                continue
            if id(param) in tuner_of:
                group = self._tuner_group(param, *tuner_of[id(param)])
            groups.append(group)
        merged = merge_param_groups(groups)
        params.extend(merged)
        count = sum(p.numel() for g in merged for p in g['params'])
        tensors = sum(len(g['params']) for g in merged)
        print_log(f'mmpetl: optimizer holds {tensors} tensors ({count:,} '
                  f'parameters, {len(tuner_of)} tuner tensors) in '
                  f'{len(merged)} param groups; {frozen} frozen tensors left '
                  f'out', logger='current')
        if self.decay_from_default:
            print_log(f'mmpetl: the optimizer config sets no weight_decay: '
                      f'the base decay is {self.optimizer_cfg["type"]}\'s '
                      f'default {self.base_wd:g} (tuner biases, norms, '
                      f'scales and tokens: 0 unless their *_decay_mult is '
                      f'set)', logger='current')

    def _followed(self, host: str) -> Tuple[float, float]:
        """lr/decay multipliers of the followed custom key in ``host``."""
        custom = self.paramwise_cfg.get('custom_keys', {})
        for key in self.tuner_follow_keys:
            if key in host and key in custom:
                return (float(custom[key].get('lr_mult', 1.0)),
                        float(custom[key].get('decay_mult', 1.0)))
        return 1.0, 1.0

    def _tuner_group(self, param, host: str, tuner: BaseTuner,
                     name: str) -> dict:
        lr_mult, decay_mult = self._followed(host)
        group = {'params': [param]}
        if self.base_lr is not None:
            group['lr'] = (self.base_lr * tuner.lr_mult * self.tuner_lr_mult
                           * lr_mult)
        if self.base_wd is not None:
            kind = tuner_param_kind(tuner, name, param)
            cfg = self.paramwise_cfg
            kind_mult = {
                'weight': 1.0,
                'bias': cfg.get('bias_decay_mult'),
                'norm': cfg.get('norm_decay_mult'),
                'scale': cfg.get('norm_decay_mult'),
                'token': self.tuner_token_decay_mult,
            }[kind]
            group['weight_decay'] = (self.base_wd * tuner.decay_mult *
                                     decay_mult * (kind_mult or 0.0))
        return group
