"""PETLModel: a frozen MMDetection/MMPretrain model carrying tuners.

    model = dict(
        type='mmpetl.PETLModel',
        model=<the detector or classifier config>,
        tuners=[dict(type='ParallelAdapter', presets=['ffn'], bottleneck=64),
                dict(type='ScaledPrefix', presets=['attn'], num_prefix=50)],
        trainable=['bbox_head'])

``activation_checkpointing=['encoder_layers', 'decoder_layers']``
recomputes those layers (tuners inside included) in backward instead of
keeping their activations (:mod:`mmpetl.models.checkpointing`).

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
from importlib import import_module
from typing import Dict, List, Optional, Sequence, Union

import torch.nn as nn
from mmengine.logging import MMLogger, print_log
from mmengine.model import BaseModel
from mmengine.registry import DefaultScope
from mmengine.registry import MODELS as ROOT_MODELS
from torch.nn.modules.batchnorm import _BatchNorm

from mmpetl.injection import (InjectedTuner, Targets, count_trainable, inject,
                              select_parameters)
from mmpetl.patches import apply_patches
from mmpetl.registry import MODELS
from mmpetl.tuners import (iter_tuners, tuner_key_prefixes,
                           tuner_parameter_ids)
from mmpetl.utils import quiet_init_weights
from .checkpointing import (CheckpointSpec, apply_activation_checkpointing,
                            parse_checkpoint_spec)
from .parallel import attach_parallel, check_parallel_trainable

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


def _as_targets(value) -> Targets:
    """``trainable`` as given: a regex string, or a list of names."""
    if value is None:
        return []
    return value if isinstance(value, str) else list(value)


@MODELS.register_module()
class PETLModel(BaseModel):
    r"""Freeze an MMDetection/MMPretrain model and train injected tuners.

    Args:
        model (dict): config of the inner model (a detector or classifier).
        tuners (list[dict]): tuner configs, see :func:`mmpetl.injection.inject`.
        trainable (str | list[str]): base-model parts that train too (e.g.
            the heads). The rule of :mod:`mmpetl.utils.matching`: a
            string is a regex that must match a whole module or parameter
            name (``r'.*\.bias'``); a list holds names matched exactly or
            as dotted suffixes (``['bbox_head', 'bias']``). A parameter
            trains when its name or a module containing it matches. Each
            list item (or the regex) must match something. This set stays
            trainable: backbones whose ``train()`` re-freezes their
            ``frozen_stages`` do not take parameters out of it.
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
        activation_checkpointing (str | list[str] | dict, optional):
            layers whose activations are recomputed in backward instead of
            kept: presets (``'encoder_layers'``, ``'decoder_layers'``,
            ``'backbone_stages'``) and/or module names, see
            :func:`mmpetl.models.checkpointing.resolve_checkpoint_targets`;
            or ``dict(layers=..., keep=[...])`` to choose what their forward
            keeps for the recomputation (default: dropout masks and
            deformable attention outputs; ``[]``: nothing), see
            :mod:`mmpetl.models.checkpointing`. The chosen names are in
            ``checkpointed_layers``, what they keep in ``checkpoint_keep``.
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
                 data_preprocessor: Optional[Dict] = None,
                 activation_checkpointing: CheckpointSpec = None) -> None:
        apply_patches()  # MMCV/MMEngine as mmpetl runs them (logged once)
        if data_preprocessor is not None:  # the Runner's top-level one
            model = dict(model)
            model.setdefault('data_preprocessor', data_preprocessor)
        inner = build_inner_model(model, scope)
        quiet_init_weights(inner)
        records = inject(inner, _as_list(tuners), arch)
        if parallel is not None:
            records.append(attach_parallel(inner, parallel))
        super().__init__(init_cfg=init_cfg)
        self._share_inner_members(inner)
        # set last: attribute lookups fall back to `inner` (see __getattr__)
        object.__setattr__(self, 'inner', inner)
        self.freeze_bn = freeze_bn
        self.injected: List[InjectedTuner] = records
        self.tuner_cfgs = [_plain(c) for c in _as_list(tuners) +
                           _as_list(parallel)]  # all recorded in checkpoints
        self.trainable_patterns = _as_targets(trainable)
        self._freeze(self.trainable_patterns)
        if parallel is not None:  # e.g. UniPT: only it and the heads train
            check_parallel_trainable(self, records[-1].tuner)
        self.register_load_state_dict_post_hook(_report_missing_tuner_keys)
        tuner_params = sum(r.num_params for r in records)
        trainable, total = count_trainable(self)
        print_log(
            f'mmpetl: {len(records)} tuners injected ({tuner_params:,} '
            f'params); trainable {trainable:,} of {total:,} '
            f'({100.0 * trainable / max(total, 1):.2f}%)',
            logger='current')
        self.activation_checkpointing = _plain(activation_checkpointing)
        self.checkpointed_layers = apply_activation_checkpointing(
            inner, activation_checkpointing, arch)
        self.checkpoint_keep = list(parse_checkpoint_spec(
            activation_checkpointing)[1]) if self.checkpointed_layers else []

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
        """``(name, tuner)`` for every injected tuner, found structurally
        (:func:`mmpetl.tuners.iter_tuners`)."""
        return list(iter_tuners(self))

    def tuner_parameter_ids(self) -> set:
        """``id()`` of every tuner parameter
        (:func:`mmpetl.tuners.tuner_parameter_ids`)."""
        return tuner_parameter_ids(self)

    def _freeze(self, patterns: Targets) -> None:
        """Freeze all but the tuners and what ``patterns`` select."""
        names = [n for n, _ in self.named_parameters()]
        keep = set(select_parameters(names, patterns)) if patterns else set()
        tuner_ids = self.tuner_parameter_ids()
        keep |= {n for n, p in self.named_parameters() if id(p) in tuner_ids}
        if not keep:
            raise ValueError(
                'PETLModel has no trainable parameter: add `tuners` or '
                '`trainable` patterns.')
        self.trainable_names = frozenset(keep)
        self._apply_trainable()

    def _apply_trainable(self) -> None:
        for name, param in self.named_parameters():
            param.requires_grad = name in self.trainable_names

    def train(self, mode: bool = True) -> 'PETLModel':
        """Set the mode, keeping the trainable set as built.

        Backbones with ``frozen_stages`` (mmdet's ResNet, the demo's
        MobileNetV2...) set ``requires_grad=False`` on those stages inside
        every ``train()`` call. A parameter that ``trainable`` selected
        (BitFit's biases in a frozen stage, say) stays trainable here:
        otherwise the parameter report would list it, DDP would wait for its
        gradient and the optimizer would step it no more. BatchNorm layers
        without trainable parameters stay in eval mode (``freeze_bn``).
        """
        super().train(mode)
        self.inner.training = mode
        self._apply_trainable()
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
        prefixes = _tuner_prefixes(self)
        return {
            k: v
            for k, v in self.state_dict(keep_vars=True).items()
            if id(v) in trainable or _is_tuner_key(k, prefixes)
        }

    # -- deployment ----------------------------------------------------------
    def merge_for_deploy(self) -> Dict[str, List[str]]:
        """Fold every tuner that can be folded, for inference.

        LoRA is added into its host's frozen weight (no extra latency) and
        prefix MLP re-parametrisations are replaced by the prefixes they
        produce. Outputs do not change, up to float rounding: no tuner
        reads a host weight a merge rewrites other than as the tuned
        weight (the deformable prefix branch is projected by
        ``output_proj``'s weight plus its LoRA's delta, merged or not).
        Tested for every tuner alone and every pair that shares a host, on
        every host type, with every tuner tensor off its init
        (``tests/test_tuners/test_property_matrix.py``). :meth:`unmerge`
        takes LoRA out of the weights again (the base stays bit-identical
        only up to float rounding; keep a copy where that matters).

        Returns:
            dict: tuner names ``merged`` into host weights, ``folded``
            re-parametrisations, and ``unmerged``: tuners that still add
            computation beside the base model.
        """
        report = dict(merged=[], folded=[], unmerged=[])
        for name, tuner in self.tuner_modules():
            if tuner.fold_reparam():
                report['folded'].append(name)
            report['merged' if tuner.merge() else 'unmerged'].append(name)
        return report

    def unmerge(self) -> None:
        """Take merged LoRA out of the host weights (training again)."""
        for _, tuner in self.tuner_modules():
            tuner.unmerge()


def _tuner_prefixes(model: PETLModel) -> tuple:
    """``'<tuner name>.'`` of every tuner (one walk over the modules)."""
    return tuner_key_prefixes(model)


def _is_tuner_key(key: str, prefixes: tuple) -> bool:
    """Whether a state-dict key belongs to a tuner (``prefixes`` from
    :func:`_tuner_prefixes`, computed once per state dict)."""
    return key.startswith(prefixes)


def _report_missing_tuner_keys(module: PETLModel, incompatible) -> None:
    """Loading a base checkpoint: tuner keys are expected to be missing."""
    prefixes = tuner_key_prefixes(module)
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
