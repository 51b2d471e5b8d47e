"""Safe loading of MMEngine checkpoints under torch's ``weights_only=True``.

Since torch 2.6 ``torch.load`` only unpickles tensors and allow-listed
classes by default. MMEngine 0.10.7 writes its ``MessageHub`` state
(``HistoryBuffer`` objects holding numpy arrays) into every checkpoint, so
``--resume`` of its own checkpoints fails. mmpetl allow-lists exactly the
classes MMEngine writes: nothing else, and safe loading stays on.
"""
from typing import List

import numpy as np
import torch

__all__ = ['mmengine_checkpoint_globals', 'allow_mmengine_checkpoints']


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


def allow_mmengine_checkpoints() -> None:
    add = getattr(torch.serialization, 'add_safe_globals', None)
    if add is not None:
        add(mmengine_checkpoint_globals())
