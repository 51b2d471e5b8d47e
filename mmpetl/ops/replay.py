"""What a checkpointed layer keeps from its forward for its recomputation.

Activation checkpointing (:mod:`mmpetl.models.checkpointing`) runs a
layer's forward again in backward, with the RNG state of the forward, to
rebuild what its backward needs. Two parts of that second forward cost far
more on a CPU than what they produce:

* **dropout masks** (``'dropout_masks'``): drawing a mask (``bernoulli_``
  on the CPU generator) takes ~35x an elementwise multiply of the same
  tensor here. The forward draws it exactly as ``F.dropout`` does on a CPU
  (``empty_like(x).bernoulli_(1 - p)``, divided by ``1 - p``, multiplied
  in: bit-identical output) and keeps it as ``bool`` (1 byte an element);
  the recomputation multiplies by the kept mask. Where something else in
  the layer draws random numbers after a dropout (attention dropout inside
  an op), the forward also keeps the CPU RNG state after each draw and the
  recomputation sets it, so that op draws what it drew in the forward.
  Dropout on other devices (a GPU's Philox generator is cheap) is drawn
  again as usual.
* **deformable attention's output** (``'ms_deform_attn'``): mmpetl's
  PyTorch op (:func:`mmpetl.ops.ms_deform_attn`) samples every level with
  ``grid_sample``; its output is one (queries x channels) tensor. The
  forward keeps it; the recomputation returns it (a copy) with the
  recomputed inputs saved for the op's backward, which samples again
  anyway. MMCV's CUDA op is recomputed as usual.

Memory: one byte per dropped element and one output per deformable
attention, per checkpointed layer, from its forward to its backward.
Nothing changes outside a checkpointed layer (no record active).

The active record is this module's state (one per thread) and has two
public doors: the checkpointing wrapper
(:func:`mmpetl.models.checkpointing.apply_activation_checkpointing`) runs
each run of a layer's forward inside :func:`activated`, and what can keep
something asks :func:`active_record` for a record that keeps its kind:
mmpetl's deformable attention (:func:`mmpetl.ops.ms_deform_attn_pytorch`,
``'ms_deform_attn'``) and the checkpointed layers' ``nn.Dropout``
(``'dropout_masks'``). Nothing else reads or sets it.
"""
import contextlib
import threading
from typing import Callable, Iterator, List, Optional, Sequence, Tuple

import torch

__all__ = ['ReplayRecord', 'activated', 'active_record',
           'current_record', 'REPLAYABLE']

#: what a record can keep
REPLAYABLE = ('ms_deform_attn', 'dropout_masks')

#: the active record of each thread: set by :meth:`ReplayRecord.active`
#: only (:func:`activated`), read by :func:`active_record` only
_LOCAL = threading.local()


def active_record(kind: Optional[str] = None) -> Optional['ReplayRecord']:
    """The record of the checkpointed layer running now on this thread.

    Args:
        kind: one of :data:`REPLAYABLE`: only a record that keeps it is
            returned; None: any active record.

    Returns:
        ReplayRecord | None: None outside a checkpointed layer's forward
        (or when its record does not keep ``kind``).
    """
    record = getattr(_LOCAL, 'record', None)
    if record is None or (kind is not None and kind not in record.keep):
        return None
    return record


def current_record() -> Optional['ReplayRecord']:
    """The record of the checkpointed layer running now, if any
    (:func:`active_record` of any kind)."""
    return active_record()


@contextlib.contextmanager
def activated(record: Optional['ReplayRecord']) -> Iterator:
    """Run the body as one run of a checkpointed layer's forward with
    ``record`` active on this thread: its first run records, later runs
    (the recomputation in backward) replay. The record active before is
    active again after.

    Args:
        record: the layer's record; None: the body runs as is (the active
            record, if any, stays active).
    """
    if record is None:
        yield
        return
    with record.active():
        yield


class ReplayRecord:
    """One checkpointed call of one layer: what its forward kept, in call
    order, for every later run of it (the recomputation in backward, again
    for a second backward).

    Args:
        keep (Sequence[str]): names from :data:`REPLAYABLE`.
    """

    def __init__(self, keep: Sequence[str]) -> None:
        self.keep = frozenset(keep)
        self.masks: List[Tuple[torch.Tensor, Optional[torch.Tensor]]] = []
        self._states: List[torch.Tensor] = []  # before, after each draw
        self.outputs: List[Tuple[torch.Tensor, int]] = []
        self.runs = 0
        self._next = {'masks': 0, 'outputs': 0}

    @property
    def recording(self) -> bool:
        return self.runs == 0

    @contextlib.contextmanager
    def active(self) -> Iterator:
        """One run of the layer's forward with this record active on this
        thread: the first records, later ones replay (callers outside
        this module use :func:`activated`)."""
        before = active_record()
        _LOCAL.record = self
        self._next = {'masks': 0, 'outputs': 0}
        try:
            yield
        finally:
            if self.recording:
                self._drop_unneeded_states()
            self.runs += 1
            _LOCAL.record = before

    def _drop_unneeded_states(self) -> None:
        """The RNG states after the draws are needed only if something else
        drew random numbers after a dropout (the generator moved between
        one draw's end and the next one's start, or the layer's end)."""
        states = self._states[1:] + [torch.get_rng_state()]
        others = any(not torch.equal(end, start)
                     for end, start in zip(states[::2], states[1::2]))
        if not others:
            self.masks = [(mask, None) for mask, _ in self.masks]
        self._states = []

    def tensors(self) -> List[torch.Tensor]:
        """Everything kept (for memory accounting)."""
        return [t for pair in self.masks for t in pair if t is not None] + \
            [out for out, _ in self.outputs]

    def _take(self, kind: str, what: str):
        kept = getattr(self, kind)
        index = self._next[kind]
        if index >= len(kept):
            raise RuntimeError(
                f'mmpetl activation checkpointing: the recomputed layer ran '
                f'more {what} than its forward did (a forward that depends '
                f'on state changed in between); leave {what!r} out of '
                f'activation_checkpointing keep')
        self._next[kind] = index + 1
        return kept[index]

    # -- dropout -----------------------------------------------------------
    def dropout(self, input: torch.Tensor, p: float,
                inplace: bool) -> torch.Tensor:
        """``F.dropout(input, p, True, inplace)`` on a CPU tensor, its mask
        drawn in the forward and replayed after."""
        if self.recording:
            self._states.append(torch.get_rng_state())
            noise = torch.empty_like(input).bernoulli_(1 - p)
            self._states.append(torch.get_rng_state())
            self.masks.append((noise.bool(), self._states[-1]))
        else:
            mask, rng_state = self._take('masks', 'dropout_masks')
            noise = mask.to(input.dtype)
            if rng_state is not None:
                torch.set_rng_state(rng_state)
        noise.div_(1 - p)
        return input.mul_(noise) if inplace else input * noise

    # -- op outputs --------------------------------------------------------
    def output(self, compute: Callable[[], torch.Tensor],
               replay: Callable[[torch.Tensor], torch.Tensor]
               ) -> torch.Tensor:
        """``compute()`` in the forward, its result kept; later runs call
        ``replay(kept)``, which must give the same values with autograd
        wired to the recomputed inputs."""
        if self.recording:
            out = compute()
            self.outputs.append((out.detach(), out._version))
            return out
        kept, version = self._take('outputs', 'ms_deform_attn')
        if kept._version != version:
            raise RuntimeError(
                'mmpetl activation checkpointing: a kept deformable '
                'attention output was modified in place after the forward; '
                "leave 'ms_deform_attn' out of activation_checkpointing keep")
        return replay(kept)
