"""A ``PETLModel`` serving several tasks: switching and mixed-task batches.

A *task* is what one tuner checkpoint holds: the tensors of every tuner
plus the parts ``trainable`` selected (the heads, possibly with another
class count). :class:`TaskRouter` is the model's side of several tasks on
one live ``PETLModel`` whose base was loaded once; registering tasks
(checking their files, class names) is :class:`mmpetl.apis.TaskBank`'s.

Switching (:meth:`TaskRouter.load`) copies a task's tensors into the live
model's tuner and head tensors (``copy_``; a head tensor of another shape
is replaced by a copy of the task's) and sets the head's ``num_classes``
(``cls_out_channels``): time proportional to the task's size, no rebuild,
no base reload. No other tensor is written, so every frozen base tensor
stays bit-identical through any number of switches. LoRA must stay
unmerged while tasks are registered (a merged delta lives in the base
weights): :meth:`TaskRouter.load` refuses a merged model.

Mixed batches (:meth:`TaskRouter.predict_mixed`, one task per sample), for
the DETR family (``extract_feat`` -> ``forward_transformer`` ->
``bbox_head.predict``):

* backbone, neck and transformer run once for the batch; every tuner in
  them computes its part per task group with that task's tensors
  (:mod:`mmpetl.tuners.routing`);
* head modules the transformer itself calls (Deformable DETR's box
  refinement calls ``bbox_head.reg_branches`` in every decoder layer) are
  routed the same way, batch-first;
* then each task's head (its tensors and class count) runs on its own
  samples of the decoder output: ``hidden_states`` ``(L, B, Q, d)`` and
  ``references`` ``(B, Q, k)``, what DETR, Deformable, Conditional, DAB
  DETR and DINO hand their heads at inference (tested: DETR, Deformable
  DETR).

Each sample's detections are then those of that task alone on the same
batch: bit-identical on one thread; on several, equal up to float
rounding (the routed branches run on fewer rows, and torch splits their
reductions between threads differently). Tested on Deformable DETR and
DETR.

Limits (refused with :class:`~mmpetl.tuners.routing.RoutingError`):
merged LoRA; tuners that do not route (UniPT, VPT); task tensors outside
the tuners and ``bbox_head`` (BitFit biases in the backbone, a trained
``query_embedding``: used as whole tensors, they cannot differ per
sample); detectors outside the DETR family; heads whose outputs the
transformer uses with other shapes per task (two-stage proposals from
classifiers with other class counts). Such tasks still switch
(:meth:`TaskRouter.load`); predict them one task per batch.
"""
import contextlib
import functools
from collections import OrderedDict
from dataclasses import dataclass
from typing import Dict, Iterator, List, Optional, Sequence, Tuple

import torch
import torch.nn as nn

from mmpetl.tuners.routing import (RoutingError, TaskGroups, route_call,
                                   swapped, take_samples)

__all__ = ['Task', 'TaskRouter', 'RoutingError', 'background_slots']

#: batch dimension of the DETR family's head inputs at inference
_HEAD_INPUT_DIMS = {'hidden_states': 1, 'references': 0}


@dataclass
class Task:
    """One registered task.

    Attributes:
        name (str): the task's name.
        tensors (dict): its tensors by model key, on the model's device.
        num_classes (int | None): classes of its head (None: no head).
        classes (tuple | None): class names, when known.
        source (str): where the tensors came from (a tuner checkpoint).
    """
    name: str
    tensors: Dict[str, torch.Tensor]
    num_classes: Optional[int]
    classes: Optional[Tuple[str, ...]]
    source: str

    @property
    def nbytes(self) -> int:
        """Bytes of the task's tensors (what registering it costs)."""
        return sum(t.numel() * t.element_size()
                   for t in self.tensors.values())


def background_slots(head) -> int:
    """Classifier outputs a detection head has beyond its classes.

    Softmax heads have one more output than classes (the background slot),
    sigmoid heads none. The one place mmpetl decides it, for a built head
    and for a head's config alike.

    Args:
        head (nn.Module | dict): a built head (its ``cls_out_channels``
            less its ``num_classes``; 0 for a head without
            ``cls_out_channels``), or a head config (0 when its
            ``loss_cls`` has ``use_sigmoid=True``, else 1: how MMDetection's
            DETR heads size their classifiers when built).

    Returns:
        int: 1 for a softmax head, 0 for a sigmoid head.
    """
    if isinstance(head, nn.Module):
        classes = getattr(head, 'num_classes', None) or 0
        return (getattr(head, 'cls_out_channels', None) or classes) - classes
    sigmoid = head.get('loss_cls', {}).get('use_sigmoid', False)
    return 0 if sigmoid else 1


def _head_name(model: nn.Module) -> Optional[str]:
    for name in ('bbox_head', 'head'):
        if isinstance(getattr(model, name, None), nn.Module):
            return name
    return None


def _routed_forward(module: nn.Module, original, groups: TaskGroups,
                    name: str, *args, **kwargs):
    """A head module's forward during a mixed batch: per task group. What
    the transformer hands such a module (Deformable DETR's
    ``reg_branches[i](query)``) is per sample, batch-first."""
    return route_call(original, args, kwargs, groups, module, 0, name,
                      in_dims=0, kwarg_dims=0)


def _relative(task: Task, prefix: str) -> Dict[str, torch.Tensor]:
    return {k[len(prefix):]: v for k, v in task.tensors.items()
            if k.startswith(prefix)}


class TaskRouter:
    """The tensors tasks write in one live ``PETLModel``; switching them
    in and one forward for a batch of several tasks (module doc).

    Args:
        model: a ``PETLModel`` with its base loaded (eval mode).

    Attributes:
        model: the live model.
        tuners (OrderedDict): its tuners by name.
        head (str | None): the head's attribute (``bbox_head``), if any.
        base_classes (int | None): the built head's ``num_classes``.
        class_offset (int): :func:`background_slots` of the built head.
        slots (dict): the live tensors tasks write, by model key (empty
            until :meth:`bind`).
    """

    def __init__(self, model: nn.Module) -> None:
        self.model = model
        self.tuners = OrderedDict(model.tuner_modules())
        self._tuner_prefixes = tuple(n + '.' for n in self.tuners)
        self.slots: Dict[str, torch.Tensor] = {}
        self.head = _head_name(model)
        head = getattr(model, self.head) if self.head else None
        self.base_classes = getattr(head, 'num_classes', None)
        self.class_offset = (background_slots(head) if head is not None
                             else 0)

    # -- which tensors tasks write ----------------------------------------
    def is_tuner_key(self, key: str) -> bool:
        """Whether model key ``key`` belongs to a tuner (not a head or
        another trained part)."""
        return key.startswith(self._tuner_prefixes)

    def bind(self, keys: Sequence[str]) -> None:
        """Make the model's tensors ``keys`` the ones tasks write (the keys
        of the first task registered).

        Args:
            keys: model keys (a task's ``state_dict`` keys).
        """
        live = self.model.state_dict(keep_vars=True)
        self.slots = {k: live[k] for k in keys}

    def unbind(self) -> None:
        """No tensor is written by tasks any more (the last one left)."""
        self.slots = {}

    def frozen_keys(self) -> List[str]:
        """Model keys no task writes: the frozen base."""
        return [k for k in self.model.state_dict() if k not in self.slots]

    def head_classes(self, outputs: Optional[int]) -> Optional[int]:
        """Classes of a task's head whose classifier has ``outputs`` rows.

        Args:
            outputs: rows of its classifier Linears (background slot
                included for softmax heads); None when the task does not
                train the classifier.

        Returns:
            int | None: ``outputs`` less the background slot; the built
            head's class count for None; None for a model without head.
        """
        if self.head is None:
            return None
        if outputs is None:
            return self.base_classes
        return outputs - self.class_offset

    # -- switching --------------------------------------------------------
    def check_unmerged(self) -> None:
        """Raise :class:`RoutingError` if LoRA is merged into the base
        weights (tasks need the base as loaded)."""
        merged = [n for n, t in self.tuners.items()
                  if getattr(t, 'merged', False)]
        if merged:
            raise RoutingError(
                f'{len(merged)} LoRA tuners are merged into the base weights '
                f'(first: {merged[:3]}): with several tasks the base must '
                f'stay as loaded. Call model.unmerge() (or do not call '
                f'merge_for_deploy) while tasks are registered; export a '
                f'merged model per task instead.')

    def set_classes(self, num_classes: Optional[int]) -> None:
        """Set the head's ``num_classes`` (and ``cls_out_channels``, the
        background slot added); nothing for None or a model without head.

        Args:
            num_classes: the task's class count.
        """
        if num_classes is None or self.head is None:
            return
        head = getattr(self.model, self.head)
        head.num_classes = num_classes
        if hasattr(head, 'cls_out_channels'):
            head.cls_out_channels = num_classes + self.class_offset

    @torch.no_grad()
    def load(self, task: Task) -> None:
        """Make ``task`` live: copy its tensors into the model.

        Only the task's tensors are written (``copy_``, or the data
        replaced when a head's shape differs); frozen tensors are never
        touched.

        Args:
            task: a task whose keys are the bound ones (:meth:`bind`).

        Raises:
            RoutingError: merged LoRA in the model.
        """
        self.check_unmerged()
        for key, value in task.tensors.items():
            slot = self.slots[key]
            if slot.shape == value.shape:
                slot.copy_(value)
            else:
                slot.data = value.clone()
        self.set_classes(task.num_classes)

    # -- mixed batches ----------------------------------------------------
    def check_routable(self) -> None:
        """Raise :class:`RoutingError` if this model cannot serve a batch
        of several tasks in one forward (see the module doc)."""
        model = self.model
        self.check_unmerged()
        if not all(hasattr(model, a) for a in
                   ('extract_feat', 'forward_transformer', 'bbox_head')):
            raise RoutingError(
                f'mixed-task batches need a DETR-family detector '
                f'(extract_feat -> forward_transformer -> bbox_head); this '
                f'is {type(getattr(model, "inner", model)).__name__}. '
                f'Predict one task per batch.')
        fixed = sorted({type(t).__name__ for t in self.tuners.values()
                        if not t.routable})
        if fixed:
            raise RoutingError(
                f'{", ".join(fixed)} cannot compute per sample of a mixed-'
                f'task batch (they change the whole model\'s computation); '
                f'predict one task per batch (set_task) with these tuners.')
        outside = [k for k in self.slots
                   if not k.startswith(self._tuner_prefixes + (
                       'bbox_head.', ))]
        if outside:
            raise RoutingError(
                f'{len(outside)} task tensors lie outside the tuners and '
                f'bbox_head (first: {outside[:3]}); they are used as whole '
                f'tensors (biases, embeddings) and cannot differ per sample '
                f'of one batch. Predict one task per batch (set_task).')

    @contextlib.contextmanager
    def _routing(self, groups: Sequence[Tuple[torch.Tensor, Task]],
                 batch_size: int) -> Iterator[None]:
        """Tuners and the head modules with task tensors compute per task
        group inside the block."""

        def per_task(prefix):
            return TaskGroups(batch_size, [
                (idx, _relative(t, prefix), t.name) for idx, t in groups])

        owners = sorted({k.rpartition('.')[0] for k in self.slots
                         if k.startswith('bbox_head.')})
        patched = []
        try:
            for name, tuner in self.tuners.items():
                tuner.routing = per_task(name + '.')
            for owner in owners:
                module = self.model.get_submodule(owner)
                own = module.__dict__.get('forward')
                module.forward = functools.partial(
                    _routed_forward, module, module.forward,
                    per_task(owner + '.'), owner)
                patched.append((module, own))
            yield
        finally:
            for tuner in self.tuners.values():
                tuner.routing = None
            for module, own in patched:
                if own is None:
                    del module.forward
                else:
                    module.forward = own

    @contextlib.contextmanager
    def _head_of(self, task: Task) -> Iterator[None]:
        """The head computes with ``task``'s tensors and class count."""
        head = self.model.bbox_head
        saved = (head.num_classes, getattr(head, 'cls_out_channels', None))
        try:
            with swapped(head, _relative(task, 'bbox_head.')):
                self.set_classes(task.num_classes)
                yield
        finally:
            head.num_classes = saved[0]
            if saved[1] is not None:
                head.cls_out_channels = saved[1]

    @torch.no_grad()
    def predict_mixed(self, inputs: torch.Tensor, data_samples: List,
                      tasks: Sequence[Task], rescale: bool = True) -> List:
        """Detections of a preprocessed batch, sample ``i`` by
        ``tasks[i]``, in one routed forward (module doc).

        Args:
            inputs: ``(B, 3, H, W)`` batch from the data preprocessor.
            data_samples: its B ``DetDataSample``.
            tasks: B tasks (bound keys, :meth:`bind`).
            rescale: boxes in original image coordinates.

        Returns:
            list: the data samples with ``pred_instances``.

        Raises:
            RoutingError: a model or tasks that cannot route (module doc).
        """
        order = OrderedDict()
        for index, task in enumerate(tasks):
            order.setdefault(task.name, (task, []))[1].append(index)
        groups = [(torch.tensor(idx, dtype=torch.long), task)
                  for task, idx in order.values()]
        self.check_routable()
        model = self.model
        with self._routing(groups, len(tasks)):
            feats = model.extract_feat(inputs)
            head_inputs = model.forward_transformer(feats, data_samples)
        unknown = sorted(k for k, v in head_inputs.items()
                         if k not in _HEAD_INPUT_DIMS and v is not None)
        if unknown:
            raise RoutingError(
                f'{type(model.inner).__name__} hands its head inputs '
                f'{unknown} whose batch layout mmpetl does not know '
                f'(known: {sorted(_HEAD_INPUT_DIMS)}); predict one task '
                f'per batch.')
        results = [None] * len(tasks)
        for idx, task in groups:
            inputs_g = {k: take_samples(v, idx, _HEAD_INPUT_DIMS[k],
                                        len(tasks)) if v is not None else v
                        for k, v in head_inputs.items()}
            with self._head_of(task):
                found = model.bbox_head.predict(
                    **inputs_g, rescale=rescale,
                    batch_data_samples=[data_samples[i]
                                        for i in idx.tolist()])
            for i, result in zip(idx.tolist(), found):
                results[i] = result
        return model.add_pred_to_datasample(data_samples, results)
