"""Activation checkpointing of chosen layers, the tuners inside included.

    model = dict(type='mmpetl.PETLModel', ...,
                 activation_checkpointing=['encoder_layers', 'decoder_layers'])

Why: a tuner inside a layer gives everything after it a gradient path, so
autograd keeps the activations of every frozen op downstream of the first
tuner (Deformable DETR's multi-scale encoder and the decoder) until
backward. A checkpointed layer keeps only its inputs; in backward its
forward runs again, with autograd, to rebuild what its backward needs, one
layer at a time.

Mechanism: the chosen module's ``forward`` becomes a partial that calls
``torch.utils.checkpoint.checkpoint(forward, ..., use_reentrant=False,
preserve_rng_state=True)``. No wrapper module is inserted, so every
state-dict key stays the vanilla model's; a deepcopy of the model (an EMA
copy) checkpoints its own copies of the layers.

What the forward keeps for the recomputation (``keep``, default both;
:mod:`mmpetl.ops.replay`): ``'dropout_masks'``, the masks of the layer's
``nn.Dropout`` on CPU tensors (a CPU draws random numbers slowly; the
recomputation replays them, bit-identical), and ``'ms_deform_attn'``, the
output of mmpetl's PyTorch deformable attention (the costliest op of a
Deformable DETR layer on a CPU; its own backward samples again from the
recomputed inputs). ``keep=[]`` recomputes everything::

    activation_checkpointing=dict(layers=['encoder_layers'], keep=[])

Memory and time, per checkpointed layer and step:

* kept until backward: the layer's input tensors (held by the checkpoint,
  often shared between layers: positions, masks, reference points) and
  what ``keep`` names (a byte per dropped element, one output per
  deformable attention), instead of every tensor autograd saves inside it;
  during backward, in addition, the saved tensors of the one layer being
  recomputed;
* time: one more forward of the layer, less what is kept (non-reentrant
  checkpointing stops the recomputation once the tensors backward needs
  are rebuilt).

What stays exact (tested: the gradient of every trainable tensor equals
the one without checkpointing):

* dropout: the RNG state at the forward is restored for the recomputation
  (and kept CPU masks are replayed, the RNG state after them set where a
  later op draws random numbers). torch stashes the CPU RNG and that of
  the devices of the *positional* tensor arguments only; MMDetection calls
  its layers with keyword arguments, so the wrapper passes every argument
  positionally (else the CUDA RNG, i.e. a GPU's dropout masks, would not
  be restored);
* autocast: torch re-enters the forward's autocast state for the
  recomputation;
* BatchNorm in eval mode (frozen, ``norm_eval``) computes the same thing
  twice. A BatchNorm in *training* mode inside a checkpointed layer would
  update its running statistics twice: that raises an error naming it.

A layer in which nothing needs a gradient (no trainable parameter inside
and no input carrying one: frozen layers before the first tuner, or any
layer under ``torch.no_grad``, as in UniPT's frozen path) runs as is:
autograd saves nothing there, so there is nothing to recompute. Training
logs this once per layer.

Limits:

* forward pre-hooks and hooks of the chosen module *itself* run outside the
  checkpoint (those of its children, where tuners hook in, run inside):
  choose the layer that contains a tuner, not the tuner's host;
* a forward that changes other state (counters, caches) does it twice; a
  recomputation that runs more dropouts or deformable attentions than the
  forward did (a forward branching on such state) stops with an error
  naming the ``keep`` entry to drop;
* a chosen module inside another chosen module is left to the outer one.
"""
import contextlib
import difflib
import functools
from typing import Callable, Dict, Iterator, List, Optional, Sequence, Union

import torch
import torch.nn as nn
from mmengine.logging import print_log
from torch.nn.modules.batchnorm import _BatchNorm
from torch.utils.checkpoint import checkpoint

from mmpetl.injection import (CHECKPOINT_PRESETS, detect_arch, format_table,
                              name_matches, nearest_names)
from mmpetl.tuners import iter_tuners
from mmpetl.ops.replay import (REPLAYABLE, ReplayRecord, activated,
                               active_record)

__all__ = ['apply_activation_checkpointing', 'resolve_checkpoint_targets',
           'parse_checkpoint_spec',
           'observe_checkpoint_inputs', 'checkpointing_table',
           'CheckpointSpec', 'DEFAULT_KEEP']

CheckpointSpec = Union[str, Sequence[str], Dict, None]

#: what a checkpointed layer keeps for its recomputation by default (a
#: list spec); the choices are :data:`mmpetl.ops.replay.REPLAYABLE`
DEFAULT_KEEP = ('dropout_masks', 'ms_deform_attn')

#: callbacks ``(layer_name, tensors)`` told what each checkpoint holds
_OBSERVERS: List[Callable[[str, List[torch.Tensor]], None]] = []


@contextlib.contextmanager
def observe_checkpoint_inputs(
        callback: Callable[[str, List[torch.Tensor]], None]) -> Iterator:
    """Tell ``callback`` what every checkpoint taken inside keeps.

    A checkpointed layer's inputs, and what it keeps for its
    recomputation (dropout masks, deformable attention outputs: ``keep``),
    stay alive until backward, held by the checkpoint rather than saved
    through autograd's saved-tensor hooks; memory accounting
    (:mod:`mmpetl.analysis.saved_tensors`) hears of them here.

    Args:
        callback: called as ``callback(layer_name, tensors)`` each time a
            layer has run under a checkpoint, with the tensors among its
            arguments (nested lists/tuples/dicts included) and those it
            keeps.
    """
    _OBSERVERS.append(callback)
    try:
        yield
    finally:
        _OBSERVERS.remove(callback)


def _tensors(value) -> List[torch.Tensor]:
    """The tensors in an argument (nested lists, tuples and dicts)."""
    if isinstance(value, torch.Tensor):
        return [value]
    if isinstance(value, (list, tuple)):
        return [t for v in value for t in _tensors(v)]
    if isinstance(value, dict):
        return [t for v in value.values() for t in _tensors(v)]
    return []


def _arch_presets(model: nn.Module, arch: Optional[str]) -> Dict[str, str]:
    if arch is None:
        try:
            arch = detect_arch(model)
        except ValueError:  # no presets for this model: names only
            return {}
    return CHECKPOINT_PRESETS.get(arch, {})


def _no_match_error(item: str, presets: Dict[str, str],
                    names: List[str]) -> ValueError:
    if item in presets:
        tops = [n for n in names if '.' not in n]
        return ValueError(
            f'activation_checkpointing preset {item!r} matches no module of '
            f'this model (it stands for {presets[item]!r}). Name the layers '
            f'instead (module names in a list, or a regex); the model\'s '
            f'top-level modules: {tops}.')
    close = [] if '.' in item else difflib.get_close_matches(  # a path
        item, list(presets), n=1, cutoff=0.8)
    hint = f' Did you mean the preset {close}?' if close else ''
    return ValueError(
        f'activation_checkpointing item {item!r} is no preset and matches no '
        f'module.{hint} Presets: {sorted(presets) or "none for this model"}'
        f'; nearest module names: {nearest_names(item, names)}. Give '
        f'presets, module names (exact or dotted suffix) in a list, or one '
        f'string regex over whole module names.')


def parse_checkpoint_spec(spec: CheckpointSpec):
    """``(layers, keep)`` of an ``activation_checkpointing`` value.

    Args:
        spec: the layers (a preset, module names in a list, or one regex
            string), or ``dict(layers=..., keep=[names])``; ``keep``
            defaults to :data:`DEFAULT_KEEP` (choices:
            :data:`mmpetl.ops.replay.REPLAYABLE`).

    Returns:
        tuple: the layers' spec (as :func:`resolve_checkpoint_targets`
        takes it) and the tuple of ``keep`` names.

    Raises:
        ValueError: a dict with other keys, no ``layers``, or a ``keep``
            name that is none of :data:`mmpetl.ops.replay.REPLAYABLE`.
    """
    if not isinstance(spec, dict):
        return spec, DEFAULT_KEEP
    unknown = sorted(set(spec) - {'layers', 'keep'})
    if unknown or 'layers' not in spec:
        raise ValueError(
            f'activation_checkpointing as a dict takes `layers` (presets or '
            f'module names) and optionally `keep` (any of {list(REPLAYABLE)}'
            f'); got keys {sorted(spec)}. Example: '
            f"dict(layers=['encoder_layers'], keep=[]).")
    keep = spec.get('keep', DEFAULT_KEEP)
    keep = (keep, ) if isinstance(keep, str) else tuple(keep or ())
    bad = [k for k in keep if k not in REPLAYABLE]
    if bad:
        raise ValueError(
            f'activation_checkpointing keep={list(keep)}: {bad} is nothing '
            f'mmpetl can keep; choose from {list(REPLAYABLE)}, or [] to '
            f'recompute everything.')
    return spec['layers'], keep


def _replayable_dropout(module: nn.Dropout, forward: Callable,
                        input: torch.Tensor) -> torch.Tensor:
    """``nn.Dropout.forward``, its mask kept or replayed inside a
    checkpointed layer that keeps ``'dropout_masks'``."""
    record = active_record('dropout_masks')
    if record is None or not module.training or not 0 < module.p < 1 or \
            input.device.type != 'cpu':
        return forward(input)
    return record.dropout(input, module.p, module.inplace)


def _attach_dropout_replay(layer: nn.Module) -> None:
    for module in layer.modules():
        forward = module.__dict__.get('forward')
        if type(module) is nn.Dropout and not (
                isinstance(forward, functools.partial)
                and forward.func is _replayable_dropout):
            module.forward = functools.partial(_replayable_dropout, module,
                                               module.forward)


def resolve_checkpoint_targets(model: nn.Module, spec: CheckpointSpec,
                               arch: Optional[str] = None) -> List[str]:
    """The names of the modules ``spec`` chooses, outermost only.

    Args:
        model (nn.Module): the model (names as its ``named_modules``).
        spec (str | list[str] | dict | None): presets of
            :data:`~mmpetl.injection.CHECKPOINT_PRESETS` (``'encoder_layers'``,
            ``'decoder_layers'``, ``'backbone_stages'``) and/or module names
            in a list (exact or dotted suffix, as tuner ``targets``), or one
            string: a preset name or a regex over whole module names; or
            ``dict(layers=<one of those>, keep=...)``.
        arch (str, optional): the presets' architecture; detected if None.

    Returns:
        list[str]: module names in model order; a module inside another
        chosen one is left out (the outer one recomputes it).

    Raises:
        ValueError: an item that is no preset and matches no module, or a
            preset that matches no module, naming the nearest module
            names and the valid presets.
    """
    spec, _ = parse_checkpoint_spec(spec)
    if spec is None:
        return []
    items = [spec] if isinstance(spec, str) else list(spec)
    names = [n for n, _ in model.named_modules() if n]
    presets = _arch_presets(model, arch)
    chosen = set()
    for item in items:
        if not isinstance(item, str):
            raise TypeError(
                f'activation_checkpointing takes preset or module names '
                f'(str), got {item!r}')
        if item in presets:
            pattern = presets[item]
        else:
            pattern = item if isinstance(spec, str) else [item]
        hits = [n for n in names if name_matches(n, pattern)]
        if not hits:
            raise _no_match_error(item, presets, names)
        chosen.update(hits)
    return [n for n in names if n in chosen and not any(
        n.startswith(other + '.') for other in chosen)]


def _needs_grad(module: nn.Module, tensors: List[torch.Tensor]) -> bool:
    return any(p.requires_grad for p in module.parameters()) or any(
        t.requires_grad for t in tensors)


def _check_batchnorm(module: nn.Module, name: str) -> None:
    for sub_name, sub in module.named_modules():
        if isinstance(sub, _BatchNorm) and sub.training and \
                sub.track_running_stats:
            full = f'{name}.{sub_name}' if sub_name else name
            raise RuntimeError(
                f'activation checkpointing: BatchNorm `{full}` is in '
                f'training mode inside the checkpointed layer `{name}`; the '
                f'recomputation in backward would update its running '
                f'statistics a second time. Keep it frozen in eval mode '
                f'(PETLModel(freeze_bn=True) with its parameters frozen, or '
                f'the backbone\'s norm_eval=True), or leave `{name}` out of '
                f'activation_checkpointing.')


def _checkpointed_forward(module: nn.Module, forward: Callable, name: str,
                          keep: Sequence[str], *args, **kwargs):
    """``forward(*args, **kwargs)``, under a checkpoint when it saves."""
    keys = tuple(kwargs)
    flat = args + tuple(kwargs[k] for k in keys)
    if not torch.is_grad_enabled():
        return forward(*args, **kwargs)
    tensors = _tensors(flat)
    if not _needs_grad(module, tensors):
        if module.training and not getattr(module, '_mmpetl_ckpt_told',
                                           False):
            module._mmpetl_ckpt_told = True
            print_log(
                f'mmpetl: `{name}` runs without activation checkpointing: '
                f'no parameter in it trains and no input carries a gradient, '
                f'so autograd keeps nothing of it to recompute',
                logger='current')
        return forward(*args, **kwargs)
    _check_batchnorm(module, name)
    num_args = len(args)
    record = ReplayRecord(keep) if keep else None

    def run(*inputs):
        with activated(record):
            return forward(*inputs[:num_args],
                           **dict(zip(keys, inputs[num_args:])))

    # every argument positional: torch stashes the RNG state of the devices
    # of positional tensors only (see the module docstring)
    out = checkpoint(run, *flat, use_reentrant=False, preserve_rng_state=True)
    held = tensors + (record.tensors() if record is not None else [])
    for callback in list(_OBSERVERS):  # what stays alive until backward
        callback(name, held)
    return out


def _is_checkpointed(module: nn.Module) -> bool:
    forward = module.__dict__.get('forward')
    return isinstance(forward, functools.partial) and \
        forward.func is _checkpointed_forward


def apply_activation_checkpointing(model: nn.Module, spec: CheckpointSpec,
                                   arch: Optional[str] = None) -> List[str]:
    """Checkpoint the modules ``spec`` chooses (see the module docstring).

    Call it after the tuners are injected and the model is frozen (the log
    says which chosen layers hold no trainable parameter).

    Args:
        model (nn.Module): the inner model (tuners injected).
        spec (str | list[str] | dict | None): see
            :func:`resolve_checkpoint_targets` and
            :func:`parse_checkpoint_spec`.
        arch (str, optional): the presets' architecture; detected if None.

    Returns:
        list[str]: the names of the checkpointed modules.
    """
    names = resolve_checkpoint_targets(model, spec, arch)
    if not names:
        return []
    _, keep = parse_checkpoint_spec(spec)
    modules = dict(model.named_modules())
    frozen = []
    for name in names:
        module = modules[name]
        if _is_checkpointed(module):
            raise ValueError(
                f'`{name}` is checkpointed already: apply activation '
                f'checkpointing once per model (PETLModel does it when '
                f'built with `activation_checkpointing`).')
        if 'dropout_masks' in keep:
            _attach_dropout_replay(module)
        module.forward = functools.partial(_checkpointed_forward, module,
                                           module.forward, name, keep)
        if not any(p.requires_grad for p in module.parameters()):
            frozen.append(name)
    print_log(
        f'mmpetl: activation checkpointing on {len(names)} modules '
        f'({_summary(names)}), recomputed in backward; kept for the '
        f'recomputation: {list(keep) or "nothing"}', logger='current')
    if frozen:
        print_log(
            f'mmpetl: {len(frozen)} checkpointed modules hold no trainable '
            f'parameter ({_summary(frozen)}): they are recomputed only when '
            f'an input carries a gradient (a trainable tensor upstream), and '
            f'otherwise run as is', logger='current')
    return names


def _summary(names: Sequence[str], num: int = 4) -> str:
    shown = ', '.join(names[:num])
    return shown + (f', ... ({len(names) - num} more)'
                    if len(names) > num else '')


def checkpointing_table(model: nn.Module, names: Sequence[str],
                        keep: Optional[Sequence[str]] = None) -> str:
    """One row per checkpointed module: its class, the trainable
    parameters and the tuners inside it.

    Args:
        model (nn.Module): the model the names belong to.
        names (Sequence[str]): checkpointed module names (as recorded in
            ``PETLModel.checkpointed_layers``).
        keep (Sequence[str], optional): what they keep for the
            recomputation (``PETLModel.checkpoint_keep``), said in the
            title.

    Returns:
        str: the table, or a line saying that nothing is checkpointed.
    """
    if not names:
        return 'activation checkpointing: off'
    modules = dict(model.named_modules())
    rows = []
    for name in names:
        module = modules[name]
        trainable = sum(p.numel() for p in module.parameters()
                        if p.requires_grad)
        tuners = sum(1 for _ in iter_tuners(module))
        rows.append([name, type(module).__name__, f'{trainable:,}',
                     str(tuners)])
    kept = '' if keep is None else \
        f'; kept for the recomputation: {", ".join(keep) or "nothing"}'
    return (f'activation checkpointing: {len(names)} modules, recomputed in '
            f'backward{kept}\n' + format_table(
                ['checkpointed module', 'type', 'trainable params',
                 'tuners inside'], rows))
