"""Which activations a training forward keeps for backward, and where.

:func:`saved_tensors_by_module` runs one forward (with the loss) under
``torch.autograd.graph.saved_tensors_hooks`` and records every tensor
autograd saves for backward, attributed to the module that was running
when it was saved (module forward pre-hooks and hooks keep a stack):

* ``by_module``: per top-level child of the model (``backbone``, ``neck``,
  ``encoder``, ``decoder``, ``bbox_head``...); tensors saved while a
  tuner module (or a part of one) runs its own call count as ``tuners``;
  code of the model
  outside any child (the detector's loss glue) as ``(outside modules)``;
* ``by_layer``: the same per module path of up to three components
  (``encoder.layers.0``);
* ``checkpoint_inputs``: what layers run under activation checkpointing
  (:mod:`mmpetl.models.checkpointing`) hold until backward: their inputs
  and what they keep for the recomputation (dropout masks, deformable
  attention outputs). Heard of through
  :func:`mmpetl.models.observe_checkpoint_inputs` and counted, under the
  running module, like saved tensors (a storage once, also where torch's
  checkpoint saves its inputs through autograd's hooks).

Each storage counts once, at its first save, in MiB of its whole storage
(a saved view keeps all of it alive); parameters and buffers are not
activations and are left out. Limits: a tensor saved for a graph that is
dropped before backward (a result computed and discarded) still counts;
tensors saved inside a checkpointed layer during the *recomputation* in
backward are not seen (they live one layer at a time); tensors computed by
a tuner inside its host's forward (prefix attention, LoRA) count with the
host.
"""
from collections import defaultdict
from typing import Callable, Dict, List

import torch
import torch.nn as nn

from mmpetl.models import observe_checkpoint_inputs
from mmpetl.tuners import iter_tuners

__all__ = ['saved_tensors_by_module', 'OUTSIDE', 'TUNERS']

OUTSIDE = '(outside modules)'
TUNERS = 'tuners'
_MIB = 2**20


class _Recorder:
    """Module stack + per-storage accounting during one forward."""

    def __init__(self, model: nn.Module, layer_depth: int):
        self.stack: List[str] = []
        self.tuner_depth = 0
        self.layer_depth = layer_depth
        self.seen = {t.untyped_storage().data_ptr()
                     for t in list(model.parameters()) + list(model.buffers())
                     }
        self.keep: List[torch.Tensor] = []  # no storage is freed and reused
        self.by_module: Dict[str, int] = defaultdict(int)
        self.by_layer: Dict[str, int] = defaultdict(int)
        self.counts: Dict[str, int] = defaultdict(int)
        self.checkpoint_inputs = 0
        self.held_ptrs = set()

    def where(self):
        if not self.stack:
            return OUTSIDE, OUTSIDE
        name = self.stack[-1]
        top = TUNERS if self.tuner_depth else name.split('.', 1)[0]
        return top, '.'.join(name.split('.')[:self.layer_depth])

    def add(self, tensor: torch.Tensor) -> int:
        if tensor.device.type == 'meta':
            return 0
        storage = tensor.untyped_storage()
        ptr = storage.data_ptr()
        if ptr in self.seen or storage.nbytes() == 0:
            return 0
        self.seen.add(ptr)
        self.keep.append(tensor)
        top, layer = self.where()
        self.by_module[top] += storage.nbytes()
        self.by_layer[layer] += storage.nbytes()
        self.counts[top] += 1
        return storage.nbytes()

    def pack(self, tensor: torch.Tensor) -> torch.Tensor:
        self.add(tensor)
        return tensor

    def held(self, name: str, tensors: List[torch.Tensor]) -> None:
        # torch's checkpoint may already have saved its inputs through the
        # hooks (counted there, under the same module): count each held
        # storage once here as well
        for tensor in tensors:
            self.add(tensor)
            storage = tensor.untyped_storage()
            if tensor.device.type != 'meta' and \
                    storage.data_ptr() not in self.held_ptrs:
                self.held_ptrs.add(storage.data_ptr())
                self.checkpoint_inputs += storage.nbytes()


def saved_tensors_by_module(model: nn.Module, fn: Callable[[], object],
                            layer_depth: int = 3) -> Dict:
    """Record what autograd keeps for backward during ``fn()``.

    Args:
        model (nn.Module): the model whose modules attribute the tensors
            (a PETL model, a vanilla detector, or a module wrapper).
        fn (callable): runs one training forward and the loss, e.g.
            ``lambda: model(inputs, samples, mode='loss')``; what it returns
            is dropped when the call ends (no backward is run).
        layer_depth (int): components of the module path in ``by_layer``.

    Returns:
        dict: ``by_module`` and ``by_layer`` (MiB per name, largest first),
        ``count_by_module`` (tensors per name), ``checkpoint_inputs_mib``
        and ``total_mib`` (all of it, checkpoint inputs included).
    """
    rec = _Recorder(model, layer_depth)
    tuners = {id(sub) for _, m in iter_tuners(model)
              for sub in m.modules()}  # a tuner and its parts
    handles = []
    for name, module in model.named_modules():
        if not name:
            continue

        def enter(mod, args, name=name, tuner=id(module) in tuners):
            rec.stack.append(name)
            rec.tuner_depth += tuner

        def leave(mod, args, out, tuner=id(module) in tuners):
            rec.stack.pop()
            rec.tuner_depth -= tuner

        handles.append(module.register_forward_pre_hook(enter))
        handles.append(module.register_forward_hook(leave, always_call=True))
    try:
        with torch.autograd.graph.saved_tensors_hooks(rec.pack, _unpack), \
                observe_checkpoint_inputs(rec.held):
            fn()
    finally:
        for handle in handles:
            handle.remove()

    def mib(table):
        return {k: v / _MIB for k, v in sorted(table.items(),
                                                key=lambda kv: -kv[1])}

    return dict(by_module=mib(rec.by_module), by_layer=mib(rec.by_layer),
                count_by_module=dict(rec.counts),
                checkpoint_inputs_mib=rec.checkpoint_inputs / _MIB,
                total_mib=sum(rec.by_module.values()) / _MIB)


def _unpack(tensor: torch.Tensor) -> torch.Tensor:
    return tensor
