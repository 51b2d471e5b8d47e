"""PETLModel: a frozen MMDetection/MMPretrain model carrying tuners.

    model = dict(
        type='mmpetl.PETLModel',
        model=<the detector or classifier config>,
        tuners=[dict(type='ParallelAdapter', presets=['ffn'], bottleneck=64),
                dict(type='ScaledPrefix', presets=['attn'], num_prefix=50)],
        trainable=['bbox_head'])

A parallel network that runs beside the whole frozen model instead of
inside its modules (UniPT) is configured apart from the per-module tuners:
``parallel=dict(type='UniPT', bottleneck=64)``. It is a ``BaseTuner`` too
(trained, reported and optimised like the tuners), under the new key
prefix ``unipt.``.

Build order (the order matters): build the inner model -> run its
``init_weights()`` (DETR's xavier-inits every encoder/decoder matrix and
would wipe the tuners' zero init) -> inject the tuners -> freeze everything
that is neither a tuner nor declared ``trainable``.

State-dict keys stay exactly the vanilla model's: the PETL model registers
the inner model's children (and direct parameters) as its own instead of
holding the inner model under an attribute, so ``load_from`` a model-zoo
checkpoint works unchanged and the only missing keys are tuner keys. It
is a plain ``BaseModel`` (not a model wrapper), so MMEngine still wraps it
in DDP. Methods and attributes it does not define are looked up on the
inner model (``model.with_box_refine``, ``model.predict``...).
"""
import copy
import logging
from importlib import import_module
from typing import Dict, List, Optional, Sequence, Union

import torch.nn as nn
from mmengine.logging import MMLogger, print_log
from mmengine.model import BaseModel
from mmengine.registry import DefaultScope
from mmengine.registry import MODELS as ROOT_MODELS
from torch.nn.modules.batchnorm import _BatchNorm

from mmpetl.injection import (InjectedTuner, count_trainable, get_tuner_cls,
                              inject, name_matches, nearest_names)
from mmpetl.registry import MODELS
from mmpetl.tuners import BaseTuner

__all__ = ['PETLModel', 'build_inner_model']

_SCOPES = ('mmdet', 'mmpretrain')


def _infer_scope(type_name: str) -> str:
    """The scope (current default scope first) whose registry has the type."""
    current = DefaultScope.get_current_instance()
    order = list(_SCOPES)
    if current is not None and current.scope_name in _SCOPES:
        order.remove(current.scope_name)
        order.insert(0, current.scope_name)
    for scope in order:
        registry = import_module(f'{scope}.registry').MODELS
        if registry.get(type_name) is not None:
            return scope
    raise KeyError(
        f'unknown model type `{type_name}` in {list(_SCOPES)}. Check the '
        f'spelling, or write it with its scope (e.g. `mmdet.DETR`).')


def build_inner_model(cfg: Dict, scope: Optional[str] = None) -> nn.Module:
    """Build an mmdet/mmpretrain model config in its own default scope."""
    cfg = copy.deepcopy(dict(cfg))
    type_name = cfg.get('type')
    if isinstance(type_name, str) and '.' in type_name:
        scope, cfg['type'] = type_name.split('.', 1)
    elif isinstance(type_name, str):
        scope = scope or _infer_scope(type_name)
    cfg.setdefault('_scope_', scope)
    return ROOT_MODELS.build(cfg)


def _plain(obj):
    """ConfigDicts -> plain dicts/lists (safe to store in checkpoints)."""
    if isinstance(obj, dict):
        return {str(k): _plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_plain(v) for v in obj]
    return obj


def _as_list(value) -> List:
    if value is None:
        return []
    return [value] if isinstance(value, (str, dict)) else list(value)


@MODELS.register_module()
class PETLModel(BaseModel):
    """Freeze an MMDetection/MMPretrain model and train injected tuners.

    Args:
        model (dict): config of the inner model (a detector or classifier).
        tuners (list[dict]): tuner configs, see :func:`mmpetl.injection.inject`.
        trainable (str | list[str]): base-model parts that train too (e.g.
            the heads): a string is a full-name regex, list items match
            module or parameter names exactly or as dotted suffixes. Each
            item must match something.
        arch (str, optional): architecture for presets; detected if None.
        scope (str, optional): ``'mmdet'`` or ``'mmpretrain'`` for the inner
            model; inferred if None.
        freeze_bn (bool): keep BatchNorm layers with frozen parameters in
            eval mode (running statistics frozen too).
        parallel (dict, optional): a parallel network beside the whole
            model, e.g. ``dict(type='UniPT', bottleneck=64)`` (see
            :mod:`mmpetl.tuners.unipt`); ``lr_mult``/``decay_mult`` as in
            tuner configs.
        data_preprocessor (dict, optional): used by the inner model when its
            config has none (MMEngine's Runner passes a config's top-level
            ``data_preprocessor`` here).
    """

    def __init__(self,
                 model: Dict,
                 tuners: Sequence[Dict] = (),
                 trainable: Union[str, Sequence[str], None] = (),
                 arch: Optional[str] = None,
                 scope: Optional[str] = None,
                 freeze_bn: bool = True,
                 init_cfg: Optional[Dict] = None,
                 parallel: Optional[Dict] = None,
                 data_preprocessor: Optional[Dict] = None) -> None:
        if data_preprocessor is not None:  # the Runner's top-level one
            model = dict(model)
            model.setdefault('data_preprocessor', data_preprocessor)
        inner = build_inner_model(model, scope)
        _quiet_init_weights(inner)
        records = inject(inner, _as_list(tuners), arch)
        if parallel is not None:
            records.append(_attach_parallel(inner, parallel))
        super().__init__(init_cfg=init_cfg)
        self._share_inner_members(inner)
        # set last: attribute lookups fall back to `inner` (see __getattr__)
        object.__setattr__(self, 'inner', inner)
        self.freeze_bn = freeze_bn
        self.injected: List[InjectedTuner] = records
        self.tuner_cfgs = [_plain(c) for c in _as_list(tuners) +
                           _as_list(parallel)]  # all recorded in checkpoints
        self.trainable_patterns = _as_list(trainable)
        self._freeze(self.trainable_patterns)
        if parallel is not None:  # e.g. UniPT: only it and the heads train
            records[-1].tuner.check_trainable(self)
        self.register_load_state_dict_post_hook(_report_missing_tuner_keys)
        tuner_params = sum(r.num_params for r in records)
        trainable, total = count_trainable(self)
        print_log(
            f'mmpetl: {len(records)} tuners injected ({tuner_params:,} '
            f'params); trainable {trainable:,} of {total:,} '
            f'({100.0 * trainable / max(total, 1):.2f}%)',
            logger='current')

    # -- the inner model's members become ours (same objects) -------------
    def _share_inner_members(self, inner: nn.Module) -> None:
        for name, child in inner.named_children():
            self.add_module(name, child)
        for name, param in inner._parameters.items():
            self.register_parameter(name, param)
        for name, buf in inner._buffers.items():
            self.register_buffer(
                name, buf,
                persistent=name not in inner._non_persistent_buffers_set)

    def _apply(self, fn, *args, **kwargs):
        super()._apply(fn, *args, **kwargs)
        # conversions may create new Parameter objects for our direct
        # members: point the inner model at them again
        inner = self.inner
        for name in inner._parameters:
            inner._parameters[name] = self._parameters[name]
        for name in inner._buffers:
            inner._buffers[name] = self._buffers[name]
        return self

    def __getattr__(self, name: str):
        try:
            return super().__getattr__(name)
        except AttributeError:
            inner = self.__dict__.get('inner')
            if inner is None:
                raise
            return getattr(inner, name)

    # -- freezing ----------------------------------------------------------
    def tuner_modules(self):
        """``(name, tuner)`` for every injected tuner, found structurally."""
        return [(n, m) for n, m in self.named_modules()
                if isinstance(m, BaseTuner)]

    def tuner_parameter_ids(self) -> set:
        return {id(p) for _, t in self.tuner_modules()
                for p in t.parameters()}

    def _freeze(self, patterns: Sequence[str]) -> None:
        keep = self.tuner_parameter_ids()
        modules = dict(self.named_modules())
        params = dict(self.named_parameters())
        for pattern in patterns:
            hits = [m for n, m in modules.items() if n and
                    name_matches(n, [pattern] if not _is_regex(pattern)
                                 else pattern)]
            hits_p = [p for n, p in params.items() if name_matches(
                n, [pattern] if not _is_regex(pattern) else pattern)]
            if not hits and not hits_p:
                raise ValueError(
                    f'trainable pattern {pattern!r} matches no module or '
                    f'parameter. Nearest names: '
                    f'{nearest_names(pattern, list(modules) + list(params))}')
            keep |= {id(p) for m in hits for p in m.parameters()}
            keep |= {id(p) for p in hits_p}
        for param in self.parameters():
            param.requires_grad = id(param) in keep
        if not keep:
            raise ValueError(
                'PETLModel has no trainable parameter: add `tuners` or '
                '`trainable` patterns.')

    def train(self, mode: bool = True) -> 'PETLModel':
        super().train(mode)
        self.inner.training = mode
        if mode and self.freeze_bn:
            for module in self.modules():
                if isinstance(module, _BatchNorm) and not any(
                        p.requires_grad for p in module.parameters()):
                    module.eval()
        return self

    # -- the model interface ----------------------------------------------
    def init_weights(self) -> None:
        """Nothing to do: the inner model was initialised before injection
        (calling DETR's ``init_weights`` now would wipe the tuners)."""

    def forward(self, inputs, data_samples=None, mode: str = 'tensor'):
        return self.inner(inputs, data_samples, mode)

    def tuner_state_dict(self) -> Dict:
        """Only the trainable tensors (tuners + declared parts)."""
        trainable = {id(p) for p in self.parameters() if p.requires_grad}
        return {
            k: v
            for k, v in self.state_dict(keep_vars=True).items()
            if id(v) in trainable or _is_tuner_key(k, self)
        }


def _quiet_init_weights(model: nn.Module) -> None:
    """``init_weights()``; MMEngine logs one line per parameter to the
    console when the logger has no file: keep those for log files only."""
    logger = MMLogger.get_current_instance()
    to_file = any(isinstance(h, logging.FileHandler) for h in logger.handlers)
    level = logger.level
    if not to_file:
        logger.setLevel(logging.WARNING)
    try:
        model.init_weights()
    finally:
        logger.setLevel(level)


def _attach_parallel(model: nn.Module, cfg: Dict) -> InjectedTuner:
    """Build a parallel network (e.g. UniPT) and attach it to ``model``."""
    cfg = dict(cfg)
    type_name = cfg.pop('type', None)
    cls = get_tuner_cls(type_name)
    if not getattr(cls, 'is_parallel_network', False):
        raise TypeError(
            f'`parallel` takes a network beside the whole model (UniPT); '
            f'{type_name} attaches to modules: list it in `tuners`.')
    lr_mult, decay_mult = cfg.pop('lr_mult', 1.0), cfg.pop('decay_mult', 1.0)
    tuner = cls.from_host(model, **cfg)
    tuner.lr_mult, tuner.decay_mult = float(lr_mult), float(decay_mult)
    tuner.attach(model)
    return InjectedTuner('(model)', type(model).__name__, type_name, tuner)


def _is_regex(pattern: str) -> bool:
    return any(c in pattern for c in '\\*+?[]()|^$')


def _is_tuner_key(key: str, model: PETLModel) -> bool:
    prefixes = [n + '.' for n, _ in model.tuner_modules()]
    return any(key.startswith(p) for p in prefixes)


def _report_missing_tuner_keys(module: PETLModel, incompatible) -> None:
    """Loading a base checkpoint: tuner keys are expected to be missing."""
    prefixes = tuple(n + '.' for n, _ in module.tuner_modules())
    tuner_keys = [k for k in incompatible.missing_keys
                  if k.startswith(prefixes)]
    if not tuner_keys:
        return
    for key in tuner_keys:
        incompatible.missing_keys.remove(key)
    logger = MMLogger.get_current_instance()
    logger.info(f'mmpetl: {len(tuner_keys)} tuner tensors are not in the '
                f'loaded checkpoint (expected for a base checkpoint: they '
                f'keep their init); other missing keys: '
                f'{len(incompatible.missing_keys)}')
