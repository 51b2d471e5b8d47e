"""Safe loading of MMEngine checkpoints under torch's ``weights_only=True``.

Since torch 2.6 ``torch.load`` only unpickles tensors and allow-listed
classes by default, and MMEngine 0.10.7's ``--resume`` of its own
checkpoints fails: they hold its ``MessageHub`` state, ``HistoryBuffer``
objects with numpy arrays, whose pickled state also carries references to
``HistoryBuffer.min/max/current/mean`` (written as ``getattr(...)`` calls).

mmpetl fixes this narrowly, and safe loading stays on:

* it allow-lists exactly the classes MMEngine writes (``HistoryBuffer``,
  numpy arrays, dtypes and scalars) - never ``getattr``;
* it writes ``HistoryBuffer`` without the four default statistics methods,
  which ``HistoryBuffer.__setstate__`` re-registers on load anyway (methods
  a user registered are still written, as before).
"""
from typing import List

import numpy as np
import torch

__all__ = ['mmengine_checkpoint_globals', 'allow_mmengine_checkpoints']

_DEFAULT_STATISTICS = ('min', 'max', 'current', 'mean')


def mmengine_checkpoint_globals() -> List:
    from mmengine.logging.history_buffer import HistoryBuffer
    try:  # numpy 2
        from numpy._core.multiarray import _reconstruct, scalar
    except ImportError:  # numpy 1
        from numpy.core.multiarray import _reconstruct, scalar
    dtypes = [type(np.dtype(t)) for t in (
        np.float64, np.float32, np.float16, np.int64, np.int32, np.int8,
        np.uint8, np.bool_)]
    return [HistoryBuffer, _reconstruct, scalar, np.ndarray, np.dtype] + \
        dtypes


def _history_buffer_getstate(self) -> dict:
    """``HistoryBuffer.__getstate__`` without the default method refs (and
    without mutating the live object, as MMEngine's version does)."""
    state = dict(self.__dict__)
    state.pop('statistics_methods', None)
    custom = {name: method for name, method in
              type(self)._statistics_methods.items()
              if name not in _DEFAULT_STATISTICS}
    if custom:
        state['statistics_methods'] = custom
    return state


def allow_mmengine_checkpoints() -> None:
    from mmengine.logging.history_buffer import HistoryBuffer
    HistoryBuffer.__getstate__ = _history_buffer_getstate
    add = getattr(torch.serialization, 'add_safe_globals', None)
    if add is not None:
        add(mmengine_checkpoint_globals())
