"""Several tasks on one frozen base: registering and serving them.

A *task* is what one tuner checkpoint holds: the tensors of every tuner
plus the parts ``trainable`` selected (the heads, possibly with another
class count). :class:`TaskBank` registers tasks beside one live
``PETLModel`` whose base was loaded once: it checks their tensors against
the model and each other, reads their class counts, names the active
task, and hands switching and mixed-task batches to the model-level
:class:`~mmpetl.models.TaskRouter` (how they work and their limits:
:mod:`mmpetl.models.multitask`).
"""
from collections import OrderedDict
from typing import Dict, List, Optional, Sequence

import torch

from mmpetl.checkpoints import check_tuner_fits
from mmpetl.models import Task, TaskRouter

__all__ = ['TaskBank', 'Task', 'TaskError', 'unknown_task',
           'classifier_outputs']


class TaskError(ValueError):
    """An unknown task, or a task that does not fit the registered ones."""


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
        one for softmax heads (a background slot,
        :func:`mmpetl.models.background_slots`); None when the state
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


class TaskBank:
    """Task tensors beside one live ``PETLModel``; switching and routing
    (by its :class:`~mmpetl.models.TaskRouter`, ``router``).

    Args:
        model: a ``PETLModel`` with its base loaded (eval mode).
    """

    def __init__(self, model) -> None:
        self.router = TaskRouter(model)
        self.tasks: 'OrderedDict[str, Task]' = OrderedDict()
        self.active: Optional[str] = None

    @property
    def model(self):
        """The live model (the router's)."""
        return self.router.model

    @model.setter
    def model(self, model) -> None:
        self.router.model = model

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
        return self.router.frozen_keys()

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
        resizable = [k for k in state if not self.router.is_tuner_key(k)]
        check_tuner_fits(live, {'state_dict': state}, source, resizable)
        if self.router.slots and set(state) != set(self.router.slots):
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
        if not self.router.slots:
            self.router.bind(list(state))
        task = Task(name, tensors, num_classes, classes, source)
        self.tasks[name] = task
        return task

    def _refuse_structure(self, name, state, source) -> None:
        first = next(iter(self.tasks.values()))
        missing = sorted(set(self.router.slots) - set(state))
        extra = sorted(set(state) - set(self.router.slots))
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
        if self.router.head is None:
            return None
        return self.router.head_classes(
            classifier_outputs(state, self.router.head, source))

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
            self.router.unbind()

    # -- switching --------------------------------------------------------
    def switch(self, name: str) -> Task:
        """Make ``name`` the live task: copy its tensors into the model
        (:meth:`TaskRouter.load <mmpetl.models.TaskRouter.load>`).

        Only the task's tensors are written; frozen tensors are never
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
        if self.active == name:
            self.router.check_unmerged()
            return task
        self.router.load(task)
        self.active = name
        return task

    # -- mixed batches ----------------------------------------------------
    def check_routable(self) -> None:
        """Raise :class:`~mmpetl.models.RoutingError` if this model cannot
        serve a batch of several tasks in one forward (the limits:
        :mod:`mmpetl.models.multitask`)."""
        self.router.check_routable()

    @torch.no_grad()
    def predict(self, inputs: torch.Tensor, data_samples: List,
                tasks: Sequence[str], rescale: bool = True) -> List:
        """Detections of a preprocessed batch, sample ``i`` by task
        ``tasks[i]``.

        One task: that task is switched in and the detector's own
        ``predict`` runs. Several: one routed forward
        (:meth:`~mmpetl.models.TaskRouter.predict_mixed`).

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
        names = list(OrderedDict.fromkeys(tasks))
        for name in names:
            self.get(name)
        if len(names) == 1:
            self.switch(names[0])
            return self.model.predict(inputs, data_samples, rescale=rescale)
        return self.router.predict_mixed(
            inputs, data_samples, [self.tasks[n] for n in tasks], rescale)
