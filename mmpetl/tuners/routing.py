"""Per-sample task routing: one forward serves samples of several tasks.

Tasks that share one frozen base differ only in their tuner (and head)
tensors. For a batch whose samples belong to different tasks, the frozen
computation runs once for the whole batch and every tuned module computes
its own part per *task group* (the samples of one task) with that task's
tensors::

    out[rows of g] = f_{theta_g}(x[rows of g])      for every group g

and the results are put back in sample order. ``f`` is what the tuner adds
(an adapter branch, a LoRA delta, the attention over a task's prefixes),
``theta_g`` the task's tensors; the module's own tensors are pointed at
them for the call (``param.data`` swapped, nothing copied) and restored
after it. This is exactly what a model loaded with task g alone computes
on those samples, because every routed function acts on each sample
independently (position-wise branches, attention within a sample).

Layouts. A tensor's *batch dimension* holds the B samples, or ``k * B``
rows with each sample's k rows contiguous (sample-major: e.g. Swin's
``(B * windows, N, d)``). Which arguments hold samples, and along which
dimension, is declared by the caller, never guessed from sizes
(``in_dims`` of :func:`route_call`, like ``torch.func.vmap``'s: a
dimension, or None for an argument passed whole, such as
``spatial_shapes``, ``level_start_index`` or an ``(L, S)`` attention
mask). Tuners declare what their forward hook reads per sample
(:attr:`~mmpetl.tuners.BaseTuner.routed_args`, ``routed_kwargs``); the
hosts' batch dimension is :func:`batch_dim_of` (0 for batch-first hosts,
1 for ``batch_first=False`` hosts and for torch ``nn.MultiheadAttention``,
whose tuned forward computes in ``(L, B, d)``, out_proj included). A
negative dimension counts from the last one: ``-4`` for a mask
broadcastable to ``(B, H, L, S)``, which holds samples only when it has 4
dimensions. A declared tensor of size 1 along its dimension broadcasts
and is passed whole; any other size that is not a multiple of B is an
error, and so is a routed output whose rows do not match its group (an
input that holds samples was not declared).

Limits (refused by the callers, see :mod:`mmpetl.models.multitask`):
routing is for inference (the swaps run under ``torch.no_grad``); a tuner
folded into its host's weights (merged LoRA) has no branch left to route;
tuners whose class does not set ``routable`` (VPT, UniPT) are refused.
"""
import contextlib
from dataclasses import dataclass
from typing import Callable, Dict, Iterator, List, Optional, Sequence, Tuple

import torch
import torch.nn as nn

__all__ = ['RoutingError', 'TaskGroups', 'swapped', 'route_call',
           'batch_dim_of', 'take_samples', 'take_dims']


class RoutingError(RuntimeError):
    """A batch of several tasks cannot be routed through this model."""


@dataclass
class TaskGroups:
    """The task groups of one routed forward, for one module.

    Attributes:
        batch_size (int): B, the samples in the batch.
        groups (list): ``(samples, tensors, task)`` per task: ``samples`` a
            LongTensor of sample indices (ascending), ``tensors`` the
            task's tensors by name relative to the module (as in its
            ``state_dict``), ``task`` the task name (for messages).
    """
    batch_size: int
    groups: List[Tuple[torch.Tensor, Dict[str, torch.Tensor], str]]


def batch_dim_of(host: nn.Module) -> int:
    """The batch dimension of the tensors a hook on ``host`` receives.

    torch's ``nn.MultiheadAttention`` (and its ``out_proj``, a
    ``NonDynamicallyQuantizableLinear``) run mmpetl's tuned forward, which
    computes in ``(L, B, d)``: 1. Hosts with ``batch_first=False``: 1.
    Everything else (FFNs, Linears, MSDA internals, ViT blocks): 0.

    Args:
        host: the module a tuner hooks into.

    Returns:
        int: 0 or 1.
    """
    if isinstance(host, (nn.MultiheadAttention,
                         nn.modules.linear.NonDynamicallyQuantizableLinear)):
        return 1
    return 0 if getattr(host, 'batch_first', True) else 1


@contextlib.contextmanager
def swapped(module: nn.Module,
            tensors: Dict[str, torch.Tensor]) -> Iterator[None]:
    """Point ``module``'s parameters/buffers named in ``tensors`` at those
    tensors for the block (``.data`` swapped: no copy), then restore them.

    Shapes may differ (a head with other classes). Use under
    ``torch.no_grad``: autograd does not see the swap.

    Args:
        module: whose tensors are swapped.
        tensors: new tensors by name relative to ``module``
            (``'branch.down.weight'``).
    """
    saved = []
    try:
        for name, value in tensors.items():
            owner, _, attr = name.rpartition('.')
            target = module.get_submodule(owner) if owner else module
            current = getattr(target, attr)
            saved.append((current, current.data))
            current.data = value
        yield
    finally:
        for current, data in reversed(saved):
            current.data = data


def _rows(samples: torch.Tensor, rows: int, batch_size: int,
          device: torch.device) -> torch.Tensor:
    """Indices along a batch dimension of ``rows = k * B`` rows (each
    sample's k rows contiguous) that belong to ``samples``."""
    per = rows // batch_size
    samples = samples.to(device)
    if per == 1:
        return samples
    return (samples[:, None] * per + torch.arange(
        per, device=device)).reshape(-1)


def take_samples(obj, samples: torch.Tensor, dim: Optional[int],
                 batch_size: int, what: str = 'argument',
                 seen: Optional[set] = None):
    """``obj``, declared to hold samples along ``dim``, cut to ``samples``.

    Args:
        obj: a tensor, or nested tuples/lists/dicts of them (other values
            are returned as they are).
        samples: LongTensor of the sample indices to keep.
        dim: the batch dimension of every tensor in ``obj``; negative:
            counted from the last dimension, and a tensor with fewer
            dimensions broadcasts over the batch (passed whole). None:
            ``obj`` holds no samples and is passed whole.
        batch_size: B.
        what: the argument's name, for errors.
        seen: if given, collects the sizes along ``dim`` of the tensors
            cut (``k * B``).

    Returns:
        ``obj`` with the rows of ``samples`` only; a tensor of size 1
        along ``dim`` broadcasts and is passed whole.

    Raises:
        RoutingError: a tensor without that dimension (``dim >= 0``), or
            whose size along it is neither 1 nor a multiple of B.
    """
    if dim is None:
        return obj
    if torch.is_tensor(obj):
        if dim < 0 and obj.dim() < -dim:
            return obj  # broadcasts over the batch
        if obj.dim() <= dim:
            raise RoutingError(
                f'{what}: declared to hold the samples along dimension '
                f'{dim}, but it has shape {tuple(obj.shape)}')
        rows = obj.shape[dim]
        if rows == 1 or batch_size == 1:
            return obj
        if rows % batch_size:
            raise RoutingError(
                f'{what}: declared to hold the {batch_size} samples along '
                f'dimension {dim}, but it has shape {tuple(obj.shape)} (not '
                f'a multiple of {batch_size}): declare it None (passed '
                f'whole) if it is not per sample')
        dim = dim % obj.dim()
        if seen is not None:
            seen.add(rows)
        return obj.index_select(dim, _rows(samples, rows, batch_size,
                                           obj.device))
    if isinstance(obj, (tuple, list)):
        return type(obj)(take_samples(o, samples, dim, batch_size,
                                      f'{what}[{i}]', seen)
                         for i, o in enumerate(obj))
    if isinstance(obj, dict):
        return {k: take_samples(v, samples, dim, batch_size,
                                f'{what}[{k!r}]', seen)
                for k, v in obj.items()}
    return obj


def take_dims(obj, samples: torch.Tensor, dims, batch_size: int,
              what: str = 'argument', seen: Optional[set] = None):
    """``obj`` cut to ``samples`` as ``dims`` declares, like
    ``torch.func.vmap``'s ``in_dims``.

    Args:
        obj: arguments (a tuple, a dict of keyword arguments, a tensor...).
        samples: LongTensor of the sample indices to keep.
        dims: a prefix of ``obj``'s structure: an int (or None) applies to
            everything under it (:func:`take_samples`); a tuple/list gives
            one entry per element of a tuple/list ``obj`` (elements past
            its end: None); a dict one per key of a dict ``obj`` (keys it
            does not name: None, passed whole).
        batch_size: B.
        what: names ``obj`` in errors.
        seen: as in :func:`take_samples`.

    Returns:
        ``obj`` with the declared tensors cut to ``samples``.
    """
    if dims is None or isinstance(dims, int):
        return take_samples(obj, samples, dims, batch_size, what, seen)
    if isinstance(dims, (tuple, list)) and isinstance(obj, (tuple, list)):
        return type(obj)(
            take_dims(o, samples, dims[i] if i < len(dims) else None,
                      batch_size, f'{what}[{i}]', seen)
            for i, o in enumerate(obj))
    if isinstance(dims, dict) and isinstance(obj, dict):
        return {k: take_dims(v, samples, dims.get(k), batch_size,
                             f'{what}[{k!r}]', seen) for k, v in obj.items()}
    raise RoutingError(f'{what}: in_dims {dims!r} do not fit its structure '
                       f'({type(obj).__name__})')


def _stitch(outputs: Sequence, groups: TaskGroups, dim: int, what: str,
            rows: Optional[int] = None):
    """One output in sample order from the groups' outputs (``rows``: the
    size along ``dim`` the inputs had, when they agree on one)."""
    first = outputs[0]
    if isinstance(first, (tuple, list)):
        return type(first)(
            _stitch([o[i] for o in outputs], groups, dim, what, rows)
            for i in range(len(first)))
    if not torch.is_tensor(first):
        return first
    shapes = {tuple(o.shape[:dim]) + tuple(o.shape[dim + 1:])
              for o in outputs}
    if len(shapes) > 1:
        raise RoutingError(
            f'{what}: the tasks of this batch give outputs of different '
            f'shapes ({sorted(shapes)}) that cannot be stitched into one '
            f'batch (e.g. class scores of heads with other class counts '
            f'used inside the transformer, as two-stage detectors do). '
            f'Predict these tasks in separate batches.')
    batch = groups.batch_size
    per = first.shape[dim] // len(groups.groups[0][0])
    if rows is not None and per * batch != rows:
        per = rows // batch
    for (samples, _, task), value in zip(groups.groups, outputs):
        if value.shape[dim] != per * len(samples):
            raise RoutingError(
                f'{what}: task {task!r} has {len(samples)} of the '
                f'{batch} samples but its routed output has '
                f'{value.shape[dim]} rows along dimension {dim} ({per} '
                f'per sample expected): an input that holds samples was '
                f'passed whole. Declare it (in_dims; a tuner\'s '
                f'routed_args / routed_kwargs).')
    shape = list(first.shape)
    shape[dim] = per * batch
    out = first.new_empty(shape)
    for (samples, _, _), value in zip(groups.groups, outputs):
        out.index_copy_(dim, _rows(samples, per * batch, batch, out.device),
                        value)
    return out


def route_call(fn: Callable, args: Tuple, kwargs: Optional[Dict],
               groups: TaskGroups, module: nn.Module, dim: int,
               what: str = 'routed module', *, in_dims,
               kwarg_dims=None):
    """``fn(*args, **kwargs)`` per task group, stitched in sample order.

    Args:
        fn: computes with ``module``'s tensors; its tensor outputs hold the
            samples along ``dim``, in the layout of its inputs.
        args, kwargs: ``fn``'s arguments.
        groups: the task groups (tensors by name relative to ``module``).
        module: whose tensors each group's call swaps in.
        dim: the batch dimension of ``fn``'s outputs (see
            :func:`batch_dim_of`).
        what: the module's name, for errors.
        in_dims: which of ``args`` hold samples, and along which dimension
            (:func:`take_dims`): e.g. ``(0, 0, 0, -4, None)``; an int for
            all of them. Undeclared arguments are passed whole.
        kwarg_dims: the same for ``kwargs`` (a dict by name, or an int for
            all); None: every keyword argument is passed whole.

    Returns:
        ``fn``'s output (a tensor or a tuple of tensors) for the whole
        batch.
    """
    kwargs = kwargs or {}
    outputs = []
    seen = set()
    with torch.no_grad():
        for samples, tensors, _ in groups.groups:
            with swapped(module, tensors):
                outputs.append(fn(
                    *take_dims(tuple(args), samples, in_dims,
                               groups.batch_size, f'{what} args', seen),
                    **take_dims(kwargs, samples, kwarg_dims,
                                groups.batch_size, f'{what} kwargs', seen)))
    return _stitch(outputs, groups, dim, what,
                   seen.pop() if len(seen) == 1 else None)
