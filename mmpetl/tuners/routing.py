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
``(B * windows, N, d)``); the caller names the dimension
(:func:`batch_dim_of`: 0 for batch-first hosts, 1 for ``batch_first=False``
hosts and for torch ``nn.MultiheadAttention``, whose tuned forward computes
in ``(L, B, d)``, out_proj included). A tensor whose size along it is 1
broadcasts and is passed whole; so is one whose size is not a multiple of
B (an argument the routed function does not use, e.g. ``spatial_shapes``).

Limits (refused by the callers, see :mod:`mmpetl.apis.tasks`): routing
is for inference (the swaps run under ``torch.no_grad``); a tuner folded
into its host's weights (merged LoRA) has no branch left to route; tuners
whose class does not set ``routable`` (VPT, UniPT) are refused.
"""
import contextlib
from dataclasses import dataclass
from typing import Callable, Dict, Iterator, List, Optional, Sequence, Tuple

import torch
import torch.nn as nn

__all__ = ['RoutingError', 'TaskGroups', 'swapped', 'route_call',
           'batch_dim_of', 'take_samples']


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


def take_samples(obj, samples: torch.Tensor, dim: int, batch_size: int):
    """``obj`` with every batch tensor cut to ``samples``.

    Args:
        obj: a tensor, or nested tuples/lists/dicts of them (other values
            are returned as they are).
        samples: LongTensor of the sample indices to keep.
        dim: the batch dimension.
        batch_size: B; a tensor whose size along ``dim`` is not a multiple
            of B (a broadcast size 1, a non-batch argument) stays whole.

    Returns:
        ``obj`` with the rows of ``samples`` only.
    """
    if torch.is_tensor(obj):
        if obj.dim() <= dim or batch_size == 1:
            return obj
        rows = obj.shape[dim]
        if rows % batch_size or rows < batch_size:
            return obj  # broadcasts (size 1) or is not per sample
        return obj.index_select(dim, _rows(samples, rows, batch_size,
                                           obj.device))
    if isinstance(obj, (tuple, list)):
        return type(obj)(take_samples(o, samples, dim, batch_size) for o in obj)
    if isinstance(obj, dict):
        return {k: take_samples(v, samples, dim, batch_size) for k, v in obj.items()}
    return obj


def _stitch(outputs: Sequence, groups: TaskGroups, dim: int, what: str):
    """One output in sample order from the groups' outputs."""
    first = outputs[0]
    if isinstance(first, (tuple, list)):
        return type(first)(
            _stitch([o[i] for o in outputs], groups, dim, what)
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
    shape = list(first.shape)
    shape[dim] = per * batch
    out = first.new_empty(shape)
    for (samples, _, _), value in zip(groups.groups, outputs):
        out.index_copy_(dim, _rows(samples, per * batch, batch, out.device),
                        value)
    return out


def route_call(fn: Callable, args: Tuple, kwargs: Optional[Dict],
               groups: TaskGroups, module: nn.Module, dim: int,
               what: str = 'routed module'):
    """``fn(*args, **kwargs)`` per task group, stitched in sample order.

    Args:
        fn: computes with ``module``'s tensors; its tensor outputs keep the
            batch layout of its inputs along ``dim``.
        args, kwargs: ``fn``'s arguments; batch tensors (size along ``dim``
            a multiple of B) are cut to each group's rows.
        groups: the task groups (tensors by name relative to ``module``).
        module: whose tensors each group's call swaps in.
        dim: the batch dimension (see :func:`batch_dim_of`).
        what: the module's name, for errors.

    Returns:
        ``fn``'s output (a tensor or a tuple of tensors) for the whole
        batch.
    """
    kwargs = kwargs or {}
    outputs = []
    with torch.no_grad():
        for samples, tensors, _ in groups.groups:
            with swapped(module, tensors):
                outputs.append(fn(*take_samples(args, samples, dim,
                                         groups.batch_size),
                                  **take_samples(kwargs, samples, dim,
                                          groups.batch_size)))
    return _stitch(outputs, groups, dim, what)
