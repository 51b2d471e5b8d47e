"""Using tuner checkpoints: one frozen base, many tasks.

:class:`MultiTaskDetector` loads a base once, registers tuner checkpoints
as tasks, switches between them and predicts, also for batches whose
images belong to different tasks; :class:`TaskBank` registers tasks on a
model and hands switching and per-sample routing to the model-level
:class:`mmpetl.models.TaskRouter` (``Task`` and ``RoutingError`` come from
:mod:`mmpetl.models`, re-exported here).
"""
from mmpetl.models import RoutingError
from .inference import (IMAGE_EXTENSIONS, ImageReadError, MultiTaskDetector,
                        list_images, read_image)
from .outputs import PredictionWriter, prediction_dict
from .tasks import (Task, TaskBank, TaskError, classifier_outputs,
                    unknown_task)

__all__ = ['MultiTaskDetector', 'ImageReadError', 'read_image',
           'list_images', 'IMAGE_EXTENSIONS', 'PredictionWriter',
           'prediction_dict', 'Task', 'TaskBank', 'TaskError', 'RoutingError',
           'unknown_task', 'classifier_outputs']
