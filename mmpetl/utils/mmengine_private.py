"""The one place mmpetl reads MMEngine's private attributes.

MMEngine keeps some facts only in private attributes: what the Runner was
asked to load and whether it resumes, whether it has a training dataloader
(reading the public property would build it), a model's forward without
the data preprocessor, and ``HistoryBuffer``'s registered statistics.
Every other mmpetl module calls these functions, so that a change in
MMEngine breaks one file, and ``tests/test_structure.py`` fails if a
private MMEngine attribute is read anywhere else.

Checked against MMEngine 0.10.7 (``mmengine/runner/runner.py``:
``Runner.__init__`` sets ``_load_from``, ``_resume``,
``_train_dataloader``; ``mmengine/model/base_model/base_model.py``:
``BaseModel._run_forward``; ``mmengine/logging/history_buffer.py``:
``HistoryBuffer._statistics_methods``).
"""
from typing import Any, Dict, Optional

__all__ = ['MMENGINE_CHECKED', 'runner_load_from', 'runner_resumes',
           'runner_has_train_dataloader', 'run_forward',
           'history_buffer_statistics']

#: The MMEngine release these reads were checked against.
MMENGINE_CHECKED = '0.10.7'


def runner_load_from(runner) -> Optional[str]:
    """The checkpoint the Runner was given to load (``load_from``; after
    ``resume=True`` found a checkpoint, the one it resumes from), or None.

    Args:
        runner: an MMEngine ``Runner`` (anything else: None).
    """
    return getattr(runner, '_load_from', None)


def runner_resumes(runner) -> bool:
    """Whether the Runner was built to resume training (``resume=True``).

    Args:
        runner: an MMEngine ``Runner`` (anything else: False).
    """
    return bool(getattr(runner, '_resume', False))


def runner_has_train_dataloader(runner) -> bool:
    """Whether the Runner was given a training dataloader, without building
    it (``runner.train_dataloader`` builds the dataset on first access).

    Args:
        runner: an MMEngine ``Runner``.
    """
    return getattr(runner, '_train_dataloader', None) is not None


def run_forward(model, data: Any, mode: str):
    """The model's forward on already preprocessed ``data`` (a dict of
    keyword arguments, or a sequence of positional ones), as
    ``BaseModel.train_step``/``val_step`` call it.

    Args:
        model: an MMEngine ``BaseModel``.
        data: the data preprocessor's output.
        mode: ``'tensor'``, ``'loss'`` or ``'predict'``.

    Returns:
        What the model's ``forward`` returns in that mode.
    """
    return model._run_forward(data, mode=mode)


def history_buffer_statistics(buffer_type) -> Dict[str, Any]:
    """The statistics methods registered on ``HistoryBuffer`` (a class
    attribute: name -> method; MMEngine's defaults are ``min``, ``max``,
    ``current``, ``mean``).

    Args:
        buffer_type: ``HistoryBuffer`` or a subclass.
    """
    return buffer_type._statistics_methods
