"""Safe loading of checkpoints under torch's ``weights_only=True``.

:func:`load_checkpoint_file` is how mmpetl reads every checkpoint: torch's
safe loader, and an error that names the file and the reason (missing,
truncated, corrupt, or carrying pickled code, which is never run).

Since torch 2.6 ``torch.load`` only unpickles tensors and allow-listed
classes by default, and MMEngine 0.10.7's ``--resume`` of its own
checkpoints fails: they hold its ``MessageHub`` state, ``HistoryBuffer``
objects with numpy arrays, whose pickled state also carries references to
``HistoryBuffer.min/max/current/mean`` (written as ``getattr(...)`` calls).

mmpetl fixes this narrowly, and safe loading stays on:

* :func:`load_checkpoint_file` allow-lists exactly the classes MMEngine
  writes (``HistoryBuffer``, numpy arrays, dtypes and scalars; never
  ``getattr``) for its own load only (``torch.serialization.safe_globals``);
* :func:`allow_mmengine_checkpoints` adds them to torch's process-wide
  allow-list, for the Runner's own ``--resume`` (undone by
  :func:`disallow_mmengine_checkpoints`);
* :func:`patch_history_buffer_state` makes MMEngine write ``HistoryBuffer``
  without the four default statistics methods, which
  ``HistoryBuffer.__setstate__`` re-registers on load anyway (methods a
  user registered are still written, as before); undone by
  :func:`unpatch_history_buffer_state`.

The last two change other libraries: they run only when called, by
:func:`mmpetl.apply_patches` (``PETLModel`` and mmpetl's tools call it).
"""
import contextlib
import os
import re
from typing import Dict, List

import numpy as np
import torch

from .mmengine_private import history_buffer_statistics

__all__ = ['mmengine_checkpoint_globals', 'allow_mmengine_checkpoints',
           'disallow_mmengine_checkpoints', 'mmengine_checkpoints_allowed',
           'patch_history_buffer_state', 'unpatch_history_buffer_state',
           'history_buffer_state_patched', 'CheckpointError',
           'load_checkpoint_file']


class CheckpointError(RuntimeError):
    """A checkpoint file that cannot be used; the message says why."""

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
              history_buffer_statistics(type(self)).items()
              if name not in _DEFAULT_STATISTICS}
    if custom:
        state['statistics_methods'] = custom
    return state


_HISTORY_BUFFER_ORIGINAL = {}


def history_buffer_state_patched() -> bool:
    """Whether ``HistoryBuffer.__getstate__`` is mmpetl's."""
    from mmengine.logging.history_buffer import HistoryBuffer
    return HistoryBuffer.__dict__.get('__getstate__') is \
        _history_buffer_getstate


def patch_history_buffer_state() -> bool:
    """MMEngine's ``HistoryBuffer`` pickles without the default statistics
    methods (what torch's safe loader refuses); see the module doc.

    Returns:
        bool: True if this call installed it.
    """
    from mmengine.logging.history_buffer import HistoryBuffer
    if history_buffer_state_patched():
        return False
    _HISTORY_BUFFER_ORIGINAL['__getstate__'] = HistoryBuffer.__dict__.get(
        '__getstate__')
    HistoryBuffer.__getstate__ = _history_buffer_getstate
    return True


def unpatch_history_buffer_state() -> bool:
    """Give ``HistoryBuffer`` MMEngine's own ``__getstate__`` back.

    Returns:
        bool: True if this call removed mmpetl's.
    """
    from mmengine.logging.history_buffer import HistoryBuffer
    if not history_buffer_state_patched():
        return False
    original = _HISTORY_BUFFER_ORIGINAL.pop('__getstate__', None)
    if original is None:
        del HistoryBuffer.__getstate__
    else:
        HistoryBuffer.__getstate__ = original
    return True


_SAFE_GLOBALS_BEFORE = {}


def mmengine_checkpoints_allowed() -> bool:
    """Whether torch's process-wide allow-list holds MMEngine's classes
    (:func:`allow_mmengine_checkpoints`)."""
    return 'before' in _SAFE_GLOBALS_BEFORE


def allow_mmengine_checkpoints() -> bool:
    """Add the classes MMEngine writes into its checkpoints to torch's
    process-wide ``weights_only`` allow-list (for the Runner's
    ``--resume``; never ``getattr``).

    Returns:
        bool: True if this call added them.
    """
    serialization = torch.serialization
    if not hasattr(serialization, 'get_safe_globals') or \
            mmengine_checkpoints_allowed():
        return False  # torch < 2.5 loads with weights_only=False by default
    _SAFE_GLOBALS_BEFORE['before'] = list(serialization.get_safe_globals())
    serialization.add_safe_globals(mmengine_checkpoint_globals())
    return True


def disallow_mmengine_checkpoints() -> bool:
    """Torch's allow-list as it was before
    :func:`allow_mmengine_checkpoints`.

    Returns:
        bool: True if this call restored it.
    """
    if not mmengine_checkpoints_allowed():
        return False
    before = _SAFE_GLOBALS_BEFORE.pop('before')
    torch.serialization.clear_safe_globals()
    if before:
        torch.serialization.add_safe_globals(before)
    return True


@contextlib.contextmanager
def _mmengine_globals_allowed():
    """MMEngine's classes allowed for the loads inside the block only."""
    scoped = getattr(torch.serialization, 'safe_globals', None)
    if scoped is None:  # torch 2.4: no scoped form, only the global list
        torch.serialization.add_safe_globals(mmengine_checkpoint_globals())
    if scoped is None or mmengine_checkpoints_allowed():
        yield
        return
    with scoped(mmengine_checkpoint_globals()):
        yield


def _torch_reason(err: Exception) -> str:
    """The informative part of torch.load's error, without its advice
    (torch's weights-only message suggests ``weights_only=False``)."""
    lines = [line.strip() for line in str(err).splitlines() if line.strip()]
    if lines and lines[0].startswith('Weights only load failed'):
        keep = [line.split('WeightsUnpickler error:')[-1].strip()
                for line in lines[1:]
                if not line.startswith('Check the documentation')]
        text = ' '.join(k for k in keep if k) or 'weights-only load failed'
    else:
        text = lines[0].split('. ')[0] if lines else ''
    return text[:200]


def load_checkpoint_file(path: str) -> Dict:
    """Load a checkpoint with torch's safe loader and a clear error."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f'checkpoint not found: {path}')
    try:
        with _mmengine_globals_allowed():  # a Runner's own checkpoints
            ckpt = torch.load(path, map_location='cpu', weights_only=True)
    except Exception as err:  # corrupt, truncated, or unsafe content
        found = re.search(r'GLOBAL ([\w.]+)', str(err))
        if found:  # the unpickler refused a callable/class before running it
            raise CheckpointError(
                f'refused to load {path}: unpickling it would call or '
                f'create `{found.group(1)}`, which safe loading (torch.load '
                f'weights_only=True) does not allow. The file carries '
                f'pickled code or objects of a class that is not '
                f'allow-listed; mmpetl never unpickles code, and nothing '
                f'from the file was run. Use a checkpoint that holds only '
                f'tensors and plain containers (re-save its state_dict where '
                f'you trust its source).') from err
        raise CheckpointError(
            f'cannot load {path} with safe loading ({type(err).__name__}: '
            f'{_torch_reason(err)}). The file is truncated, '
            f'corrupt, not a torch checkpoint, or carries pickled code; '
            f'mmpetl never unpickles code. Re-download or re-save it.'
        ) from err
    if not isinstance(ckpt, dict):
        raise CheckpointError(f'{path} holds a {type(ckpt).__name__}, not a '
                              f'checkpoint dict')
    return ckpt
