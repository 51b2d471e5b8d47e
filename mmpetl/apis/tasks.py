"""Several tasks on one frozen base: switching and mixed-task batches.

A *task* is what one tuner checkpoint holds: the tensors of every tuner
plus the parts ``trainable`` selected (the heads, possibly with another
class count). :class:`TaskBank` keeps each registered task's tensors beside
one live ``PETLModel`` whose base was loaded once.

Switching (:meth:`TaskBank.switch`) copies the task's tensors into the live
model's tuner and head tensors (``copy_``; a head tensor of another shape
is replaced by a copy of the task's) and sets the head's ``num_classes``
(``cls_out_channels``): time proportional to the task's size, no rebuild,
no base reload. No other tensor is written, so every frozen base tensor
stays bit-identical through any number of switches. LoRA must stay
unmerged while tasks are registered (a merged delta lives in the base
weights): :meth:`switch` refuses a merged model.

Mixed batches (:meth:`TaskBank.predict`, tasks given per sample), for the
DETR family (``extract_feat`` -> ``forward_transformer`` ->
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
(:meth:`switch`); predict them one task per batch.
"""
import contextlib
import functools
from collections import OrderedDict
from dataclasses import dataclass
from typing import Dict, Iterator, List, Optional, Sequence, Tuple

import torch
import torch.nn as nn

from mmpetl.checkpoints import check_tuner_fits
from mmpetl.tuners.routing import (RoutingError, TaskGroups, route_call,
                                   swapped, take_samples)

__all__ = ['TaskBank', 'Task', 'TaskError', 'unknown_task',
           'classifier_outputs']


class TaskError(ValueError):
    """An unknown task, or a task that does not fit the registered ones."""


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


def unknown_task(name: str, known: Sequence[str]) -> TaskError:
    """The error for a task name that is not registered.

    Args:
        name: the name asked for.
        known: the registered names (listed in the message).

    Returns:
        TaskError: to raise.
    """
    listed = ', '.join(map(repr, known)) or 'none registered'
    return TaskError(f'unknown task {name!r}; known tasks: {listed}. '
                     f'Register it first (add_task / --tuner '
                     f'{name}=TUNER.pth).')


def classifier_outputs(state: Dict[str, torch.Tensor],
                       head: str = 'bbox_head',
                       source: str = 'tuner checkpoint') -> Optional[int]:
    """Outputs of the classifier Linears of a head in a tuner state.

    Args:
        state: tensors by model key (a tuner checkpoint's ``state_dict``).
        head: the head's attribute (``bbox_head``).
        source: the file, for messages.

    Returns:
        int | None: rows of its ``*cls*.weight`` tensors (``fc_cls``,
        ``cls_branches.N``, all ``(outputs, d)``): the class count, plus
        one for softmax heads (a background slot); None when the state
        holds no classifier.

    Raises:
        TaskError: classifiers of different sizes.
    """
    prefix = head + '.'
    sizes = {int(v.shape[0]) for k, v in state.items()
             if k.startswith(prefix) and k.endswith('.weight')
             and 'cls' in k[len(prefix):] and v.dim() == 2}
    if len(sizes) > 1:
        raise TaskError(f'{source}: its head\'s classifiers disagree on '
                        f'the class count ({sorted(sizes)}); the file is '
                        f'inconsistent: re-export it from training.')
    return sizes.pop() if sizes else None


def _head_name(model: nn.Module) -> Optional[str]:
    for name in ('bbox_head', 'head'):
        if isinstance(getattr(model, name, None), nn.Module):
            return name
    return None


#: batch dimension of the DETR family's head inputs at inference
_HEAD_INPUT_DIMS = {'hidden_states': 1, 'references': 0}


def _routed_forward(module: nn.Module, original, groups: TaskGroups,
                    name: str, *args, **kwargs):
    """A head module's forward during a mixed batch: per task group. What
    the transformer hands such a module (Deformable DETR's
    ``reg_branches[i](query)``) is per sample, batch-first."""
    return route_call(original, args, kwargs, groups, module, 0, name,
                      in_dims=0, kwarg_dims=0)


class TaskBank:
    """Task tensors beside one live ``PETLModel``; switching and routing.

    Args:
        model: a ``PETLModel`` with its base loaded (eval mode).
    """

    def __init__(self, model: nn.Module) -> None:
        self.model = model
        self.tasks: 'OrderedDict[str, Task]' = OrderedDict()
        self.active: Optional[str] = None
        self._tuners = OrderedDict(model.tuner_modules())
        self._tuner_prefixes = tuple(n + '.' for n in self._tuners)
        self._slots: Dict[str, torch.Tensor] = {}
        self._head = _head_name(model)
        head = getattr(model, self._head) if self._head else None
        self._base_classes = getattr(head, 'num_classes', None)
        # sigmoid heads have num_classes outputs, softmax heads one more
        self._class_offset = (getattr(head, 'cls_out_channels', None) or
                              self._base_classes or 0) - (
                                  self._base_classes or 0)

    # -- registry ---------------------------------------------------------
    @property
    def names(self) -> List[str]:
        return list(self.tasks)

    def get(self, name: str) -> Task:
        """The task ``name``; a clear error listing the known ones."""
        if name not in self.tasks:
            raise unknown_task(name, self.tasks)
        return self.tasks[name]

    def frozen_keys(self) -> List[str]:
        """Model keys no task writes: the frozen base."""
        return [k for k in self.model.state_dict() if k not in self._slots]

    def add(self, name: str, state: Dict[str, torch.Tensor],
            classes: Optional[Sequence[str]] = None,
            source: str = 'tuner checkpoint') -> Task:
        """Register a task's tensors (copied to the model's device).

        Args:
            name: the task's name (unique).
            state: tuner + head tensors by model key (a tuner checkpoint's
                ``state_dict``).
            classes: class names of its head, checked against its size.
            source: where ``state`` came from, for messages.

        Returns:
            Task: the registered task (its ``num_classes`` read from its
            head's classifier).

        Raises:
            TaskError: a taken name, tensors other tasks do not have (or
                lack), a class list that does not fit the head.
            KeyError, ShapeMismatchError: tensors the model does not have,
                tuner tensors of other shapes.
        """
        if not isinstance(name, str) or not name or '=' in name:
            raise TaskError(f'task names are non-empty strings without '
                            f'"=", got {name!r}')
        if name in self.tasks:
            raise TaskError(f'task {name!r} is already registered (from '
                            f'{self.tasks[name].source}); remove_task('
                            f'{name!r}) first or pick another name.')
        live = self.model.state_dict(keep_vars=True)
        resizable = [k for k in state if not k.startswith(
            self._tuner_prefixes)]
        check_tuner_fits(live, {'state_dict': state}, source, resizable)
        if self._slots and set(state) != set(self._slots):
            self._refuse_structure(name, state, source)
        num_classes = self._num_classes(state, source)
        if classes is not None:
            classes = tuple(str(c) for c in classes)
            if num_classes is not None and len(classes) != num_classes:
                raise TaskError(
                    f'task {name!r}: its head ({source}) predicts '
                    f'{num_classes} classes but {len(classes)} class names '
                    f'were given ({list(classes)[:6]}...). Give the classes '
                    f'the tuner was trained on, or the tuner checkpoint of '
                    f'that dataset.')
        device = next(iter(live.values())).device
        with torch.no_grad():
            tensors = {k: v.detach().to(device=device,
                                        dtype=live[k].dtype).clone()
                       for k, v in state.items()}
        if not self._slots:
            self._slots = {k: live[k] for k in state}
        task = Task(name, tensors, num_classes, classes, source)
        self.tasks[name] = task
        return task

    def _refuse_structure(self, name, state, source) -> None:
        first = next(iter(self.tasks.values()))
        missing = sorted(set(self._slots) - set(state))
        extra = sorted(set(state) - set(self._slots))
        raise TaskError(
            f'task {name!r} ({source}) has another tuner structure than the '
            f'registered tasks (first: {first.name!r} from {first.source}): '
            f'{len(missing)} of their tensors missing (first: '
            f'{missing[:3]}), {len(extra)} extra (first: {extra[:3]}). '
            f'Tasks on one model need the same tuners and trainable parts; '
            f'serve this one from a model built with its own config.')

    def _num_classes(self, state, source) -> Optional[int]:
        """Classes of the head in ``state``: the outputs of its classifier
        Linears (``*cls*.weight``, e.g. ``fc_cls``, ``cls_branches.N``)
        less the background slot of softmax heads; the base head's when
        the task does not train the classifier."""
        if self._head is None:
            return None
        outputs = classifier_outputs(state, self._head, source)
        if outputs is None:
            return self._base_classes
        return outputs - self._class_offset

    def remove(self, name: str) -> None:
        """Forget a task (its tensors are freed). Removing the active task
        leaves no task active: predict then names one.

        Args:
            name: a registered task.
        """
        self.get(name)
        del self.tasks[name]
        if self.active == name:
            self.active = None
        if not self.tasks:
            self._slots = {}

    # -- switching --------------------------------------------------------
    def _check_unmerged(self) -> None:
        merged = [n for n, t in self._tuners.items()
                  if getattr(t, 'merged', False)]
        if merged:
            raise RoutingError(
                f'{len(merged)} LoRA tuners are merged into the base weights '
                f'(first: {merged[:3]}): with several tasks the base must '
                f'stay as loaded. Call model.unmerge() (or do not call '
                f'merge_for_deploy) while tasks are registered; export a '
                f'merged model per task instead.')

    def _set_classes(self, num_classes: Optional[int]) -> None:
        if num_classes is None or self._head is None:
            return
        head = getattr(self.model, self._head)
        head.num_classes = num_classes
        if hasattr(head, 'cls_out_channels'):
            head.cls_out_channels = num_classes + self._class_offset

    @torch.no_grad()
    def switch(self, name: str) -> Task:
        """Make ``name`` the live task: copy its tensors into the model.

        Only the task's tensors are written (``copy_``, or the data
        replaced when a head's shape differs); frozen tensors are never
        touched.

        Args:
            name: a registered task.

        Returns:
            Task: the task now live.

        Raises:
            TaskError: an unknown task (the known ones listed).
            RoutingError: merged LoRA in the model.
        """
        task = self.get(name)
        self._check_unmerged()
        if self.active == name:
            return task
        for key, value in task.tensors.items():
            slot = self._slots[key]
            if slot.shape == value.shape:
                slot.copy_(value)
            else:
                slot.data = value.clone()
        self._set_classes(task.num_classes)
        self.active = name
        return task

    # -- mixed batches ----------------------------------------------------
    def check_routable(self) -> None:
        """Raise :class:`RoutingError` if this model cannot serve a batch
        of several tasks in one forward (see the module doc)."""
        model = self.model
        self._check_unmerged()
        if not all(hasattr(model, a) for a in
                   ('extract_feat', 'forward_transformer', 'bbox_head')):
            raise RoutingError(
                f'mixed-task batches need a DETR-family detector '
                f'(extract_feat -> forward_transformer -> bbox_head); this '
                f'is {type(getattr(model, "inner", model)).__name__}. '
                f'Predict one task per batch.')
        fixed = sorted({type(t).__name__ for t in self._tuners.values()
                        if not t.routable})
        if fixed:
            raise RoutingError(
                f'{", ".join(fixed)} cannot compute per sample of a mixed-'
                f'task batch (they change the whole model\'s computation); '
                f'predict one task per batch (set_task) with these tuners.')
        outside = [k for k in self._slots
                   if not k.startswith(self._tuner_prefixes + (
                       'bbox_head.', ))]
        if outside:
            raise RoutingError(
                f'{len(outside)} task tensors lie outside the tuners and '
                f'bbox_head (first: {outside[:3]}); they are used as whole '
                f'tensors (biases, embeddings) and cannot differ per sample '
                f'of one batch. Predict one task per batch (set_task).')

    def _groups(self, tasks: Sequence[str]) -> 'OrderedDict':
        order = OrderedDict()
        for index, name in enumerate(tasks):
            order.setdefault(name, []).append(index)
        return OrderedDict((n, torch.tensor(i, dtype=torch.long))
                           for n, i in order.items())

    def _relative(self, task: Task, prefix: str) -> Dict[str, torch.Tensor]:
        return {k[len(prefix):]: v for k, v in task.tensors.items()
                if k.startswith(prefix)}

    @contextlib.contextmanager
    def _routing(self, groups: 'OrderedDict',
                 batch_size: int) -> Iterator[None]:
        """Tuners and the head modules with task tensors compute per task
        group inside the block."""
        tasks = [(idx, self.tasks[n]) for n, idx in groups.items()]

        def per_task(prefix):
            return TaskGroups(batch_size, [
                (idx, self._relative(t, prefix), t.name) for idx, t in tasks])

        owners = sorted({k.rpartition('.')[0] for k in self._slots
                         if k.startswith('bbox_head.')})
        patched = []
        try:
            for name, tuner in self._tuners.items():
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
            for tuner in self._tuners.values():
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
            with swapped(head, self._relative(task, 'bbox_head.')):
                self._set_classes(task.num_classes)
                yield
        finally:
            head.num_classes = saved[0]
            if saved[1] is not None:
                head.cls_out_channels = saved[1]

    @torch.no_grad()
    def predict(self, inputs: torch.Tensor, data_samples: List,
                tasks: Sequence[str], rescale: bool = True) -> List:
        """Detections of a preprocessed batch, sample ``i`` by task
        ``tasks[i]``.

        One task: that task is switched in and the detector's own
        ``predict`` runs. Several: one routed forward (module doc).

        Args:
            inputs: ``(B, 3, H, W)`` batch from the data preprocessor.
            data_samples: its B ``DetDataSample``.
            tasks: B task names.
            rescale: boxes in original image coordinates.

        Returns:
            list: the data samples with ``pred_instances``.
        """
        if len(tasks) != len(data_samples):
            raise ValueError(f'{len(tasks)} task names for '
                             f'{len(data_samples)} samples')
        groups = self._groups(tasks)
        for name in groups:
            self.get(name)
        if len(groups) == 1:
            self.switch(next(iter(groups)))
            return self.model.predict(inputs, data_samples, rescale=rescale)
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
        for name, idx in groups.items():
            inputs_g = {k: take_samples(v, idx, _HEAD_INPUT_DIMS[k],
                                        len(tasks)) if v is not None else v
                        for k, v in head_inputs.items()}
            with self._head_of(self.tasks[name]):
                found = model.bbox_head.predict(
                    **inputs_g, rescale=rescale,
                    batch_data_samples=[data_samples[i]
                                        for i in idx.tolist()])
            for i, result in zip(idx.tolist(), found):
                results[i] = result
        return model.add_pred_to_datasample(data_samples, results)
