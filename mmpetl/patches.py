"""mmpetl's changes to other libraries: named, documented, undone.

``import mmpetl`` changes nothing in MMCV, MMEngine or torch except one
thing that cannot wait (``mmpretrain_multimodal_guard`` below). The other
patches take effect when :func:`apply_patches` is called, which mmpetl does
where it needs them: building a ``PETLModel``, and the entry points of
``tools/`` (train, test, infer, benchmarks). Each is logged once when it
is applied (``mmpetl: patched X for Y``). Plain MMCV/MMDetection code in a
process that imports mmpetl but builds no PETL model runs unchanged.

    import mmpetl
    mmpetl.apply_patches()            # all of them (idempotent)
    mmpetl.remove_patches()           # MMCV/MMEngine/torch as they were
    with mmpetl.patched(['msda_fp32']):
        ...                           # applied inside the block only
    mmpetl.applied_patches()          # names in effect now
    mmpetl.is_patched('msda_fp32')    # whether one is in effect

Every patch keeps the caller's dtype and device: ``msda_fp32`` computes
deformable attention in fp32 only inside autocast and returns the dtype
of its ``value``, as MMCV does; outside autocast the op sees the tensors
as they are. One exception, a loss: ``focal_loss_fp32`` returns the focal
loss of fp16/bf16 logits in fp32 (no later layer reads it).

The patches (name: what changes, and why):

* ``msda_fp32``: ``MultiScaleDeformableAttnFunction`` and
  ``multi_scale_deformable_attn_pytorch`` in
  ``mmcv.ops.multi_scale_deform_attn``: fp32 inside autocast (``--amp``),
  and off CUDA mmpetl's fallback that keeps only its inputs for backward
  (:mod:`mmpetl.ops.msda_fp32`).
* ``focal_loss_fp32``: ``sigmoid_focal_loss`` in
  ``mmdet.models.losses.focal_loss`` (MMCV's CUDA op, what MMDetection's
  ``FocalLoss`` calls on CUDA): fp32 logits when they come in fp16/bf16,
  the loss in fp32 (MMCV 2.1 has no bf16 kernel; :mod:`mmpetl.ops.
  focal_loss_fp32`).
* ``atomic_checkpoint_save``: ``mmengine.runner.runner.save_checkpoint``:
  local checkpoints are written to a temporary file and renamed
  (:mod:`mmpetl.utils.io`).
* ``history_buffer_state``: ``HistoryBuffer.__getstate__``: MMEngine's
  message hub pickles without references to its statistics methods, so
  ``--resume`` loads with ``weights_only=True``
  (:mod:`mmpetl.utils.safe_load`).
* ``mmengine_safe_globals``: torch's ``weights_only`` allow-list gets the
  classes MMEngine writes (never ``getattr``), for ``--resume``.
* ``mmpretrain_multimodal_guard``: ``sys.modules['mmpretrain.utils.
  dependency']``: MMPretrain skips its multimodal models, whose imports
  break ``import mmdet.models`` with a recent ``transformers``. Applied at
  ``import mmpetl`` (it must precede MMDetection's import of MMPretrain);
  warns when it acts; ``MMPETL_KEEP_MMPRETRAIN_MULTIMODAL=1`` skips it
  (:mod:`mmpetl.utils.compat`).
"""
import contextlib
from dataclasses import dataclass
from typing import Callable, Dict, Iterator, List, Optional, Sequence

from .ops.focal_loss_fp32 import (focal_loss_fp32_patched,
                                  patch_focal_loss_fp32,
                                  unpatch_focal_loss_fp32)
from .ops.msda_fp32 import (msda_fp32_patched, patch_msda_fp32,
                            unpatch_msda_fp32)
from .utils.compat import (guard_mmpretrain_multimodal,
                           mmpretrain_multimodal_guarded,
                           unguard_mmpretrain_multimodal)
from .utils.io import (mmengine_atomic_save_patched,
                       patch_mmengine_atomic_save,
                       unpatch_mmengine_atomic_save)
from .utils.safe_load import (allow_mmengine_checkpoints,
                              disallow_mmengine_checkpoints,
                              history_buffer_state_patched,
                              mmengine_checkpoints_allowed,
                              patch_history_buffer_state,
                              unpatch_history_buffer_state)

__all__ = ['Patch', 'PATCHES', 'apply_patches', 'remove_patches', 'patched',
           'applied_patches', 'is_patched']


@dataclass(frozen=True)
class Patch:
    """One change mmpetl makes in another library.

    Attributes:
        name (str): how :func:`apply_patches` and friends name it.
        target (str): what is changed (the dotted name).
        why (str): what mmpetl needs it for (logged when applied).
        apply (callable): installs it; returns True if it changed anything.
        remove (callable): undoes it; returns True if it changed anything.
        is_applied (callable): whether it is in effect now (read from the
            patched object itself).
    """
    name: str
    target: str
    why: str
    apply: Callable[[], bool]
    remove: Callable[[], bool]
    is_applied: Callable[[], bool]


def _guard() -> bool:
    """:func:`~mmpetl.utils.compat.guard_mmpretrain_multimodal` (what
    ``import mmpetl`` runs); True if its module is in place."""
    guard_mmpretrain_multimodal()
    return mmpretrain_multimodal_guarded()


PATCHES: Dict[str, Patch] = {p.name: p for p in (
    Patch('msda_fp32',
          'mmcv.ops.multi_scale_deform_attn.MultiScaleDeformableAttnFunction'
          ' and multi_scale_deformable_attn_pytorch',
          'deformable attention in fp32 under autocast (--amp) and a '
          'PyTorch fallback that keeps only its inputs; the dtype of the '
          'values is returned', patch_msda_fp32, unpatch_msda_fp32,
          msda_fp32_patched),
    Patch('focal_loss_fp32',
          'mmdet.models.losses.focal_loss.sigmoid_focal_loss',
          "MMCV's sigmoid focal loss on fp32 logits when they come in "
          'fp16/bf16 (its CUDA kernel has no bf16: --amp bfloat16 '
          'failed)', patch_focal_loss_fp32, unpatch_focal_loss_fp32,
          focal_loss_fp32_patched),
    Patch('atomic_checkpoint_save',
          'mmengine.runner.runner.save_checkpoint',
          'atomic checkpoint writes (a killed job never leaves half a '
          'checkpoint)', patch_mmengine_atomic_save,
          unpatch_mmengine_atomic_save, mmengine_atomic_save_patched),
    Patch('history_buffer_state',
          'mmengine.logging.HistoryBuffer.__getstate__',
          '--resume under torch.load(weights_only=True): no getattr '
          'references in the message hub', patch_history_buffer_state,
          unpatch_history_buffer_state, history_buffer_state_patched),
    Patch('mmengine_safe_globals',
          'torch.serialization safe globals (+ HistoryBuffer, numpy arrays, '
          'dtypes, scalars)',
          '--resume of MMEngine checkpoints under weights_only=True',
          allow_mmengine_checkpoints, disallow_mmengine_checkpoints,
          mmengine_checkpoints_allowed),
    Patch('mmpretrain_multimodal_guard',
          "sys.modules['mmpretrain.utils.dependency'] (WITH_MULTIMODAL "
          '= False)',
          'import mmdet.models with a recent transformers (applied at '
          'import mmpetl; MMPETL_KEEP_MMPRETRAIN_MULTIMODAL=1 skips it)',
          _guard, unguard_mmpretrain_multimodal,
          mmpretrain_multimodal_guarded),
)}


def _selected(names: Optional[Sequence[str]]) -> List[Patch]:
    if names is None:
        return list(PATCHES.values())
    if isinstance(names, str):
        names = [names]
    unknown = [n for n in names if n not in PATCHES]
    if unknown:
        raise KeyError(f'unknown mmpetl patch(es) {unknown}; the patches '
                       f'are {sorted(PATCHES)}')
    return [PATCHES[n] for n in names]


def is_patched(name: str) -> bool:
    """Whether the patch ``name`` is in effect now: the one check, read
    from the patched object itself (its :attr:`Patch.is_applied`), that
    :func:`apply_patches`, :func:`remove_patches` and
    :func:`applied_patches` make.

    Args:
        name: a patch name (see :data:`PATCHES`).

    Raises:
        KeyError: an unknown name (the message lists the patches).
    """
    patch, = _selected([name])
    return patch.is_applied()


def _log(text: str) -> None:
    from mmengine.logging import print_log
    print_log(text, logger='current')


def apply_patches(names: Optional[Sequence[str]] = None) -> List[str]:
    """Apply mmpetl's patches (all, or those named); idempotent.

    Args:
        names: patch names (see :data:`PATCHES`); None: all.

    Returns:
        list[str]: the names this call applied (those not in effect yet);
        each is logged: ``mmpetl: patched <target> for <why>``.
    """
    done = []
    for patch in _selected(names):
        if not is_patched(patch.name) and patch.apply():
            done.append(patch.name)
            _log(f'mmpetl: patched {patch.target} for {patch.why} '
                 f'(mmpetl.remove_patches([{patch.name!r}]) undoes it)')
    return done


def remove_patches(names: Optional[Sequence[str]] = None) -> List[str]:
    """Undo mmpetl's patches (all, or those named): the patched objects are
    the libraries' own again.

    Args:
        names: patch names; None: all.

    Returns:
        list[str]: the names this call removed.
    """
    return [p.name for p in _selected(names)
            if is_patched(p.name) and p.remove()]


def applied_patches() -> List[str]:
    """Names of the patches in effect now."""
    return [name for name in PATCHES if is_patched(name)]


@contextlib.contextmanager
def patched(names: Optional[Sequence[str]] = None) -> Iterator[List[str]]:
    """Patches in effect inside the block; on exit those this block applied
    are removed (those already in effect stay).

    Args:
        names: patch names; None: all.

    Yields:
        list[str]: the names the block applied.
    """
    done = apply_patches(names)
    try:
        yield done
    finally:
        remove_patches(done)
