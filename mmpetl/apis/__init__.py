"""Using tuner checkpoints: one frozen base, many tasks.

:class:`MultiTaskDetector` loads a base once, registers tuner checkpoints
as tasks, switches between them and predicts, also for batches whose
images belong to different tasks; :class:`TaskBank` is the model-level
mechanism (switching, per-sample routing).
"""
from .inference import (IMAGE_EXTENSIONS, ImageReadError, MultiTaskDetector,
                        list_images, read_image)
from .outputs import PredictionWriter, prediction_dict
from mmpetl.tuners.routing import RoutingError
from .tasks import (Task, TaskBank, TaskError, classifier_outputs,
                    unknown_task)

__all__ = ['MultiTaskDetector', 'ImageReadError', 'read_image',
           'list_images', 'IMAGE_EXTENSIONS', 'PredictionWriter',
           'prediction_dict', 'Task', 'TaskBank', 'TaskError', 'RoutingError',
           'unknown_task', 'classifier_outputs']
