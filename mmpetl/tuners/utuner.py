"""U-Tuner (U-Tuning, Jiang et al.): a frozen operation plus a unified tuner.

Every tuned block is ``OP(x)`` with frozen parameters plus a light adapter
``U`` (``up(act(down(x)))``, up and biases zero-initialised, so exact at
init) in one of two forms:

    parallel:    out = OP(x) + s * U(x)
    sequential:  out = OP(x) + s * U(OP(x))

The operation is an attention block (MHA-U-Tuner), an FFN (FFN-U-Tuner) or
both (Dual-U-Tuner, the paper's best); the paper's "first layer only"
variant puts a Dual-U-Tuner in the first layer alone. ``x`` is the block's
input (the query for attention, without its positional embedding) and
``OP(x)`` its output as the host returns it (MMCV's attention and FFN
blocks and MMDetection's ``ConditionalAttention`` include their residual;
Swin's ``ShiftWindowMSA`` does not, its block adds it).

Parameters: ``2*d*b + b + d`` (+1 for a learnable ``s``).
"""
from typing import Dict

import torch.nn as nn
from mmcv.cnn.bricks.transformer import FFN

from mmpetl.registry import TUNERS
from .adapter import AdapterBranch
from .common import check_positive_int
from .attention import (is_conditional_attention, is_shift_window_msa,
                        mmcv_attention_type, msda_type, vit_attention_type)
from .base import BaseTuner, TunerHostError

__all__ = ['UTuner']


def _block_width(host: nn.Module) -> int:
    if isinstance(host, FFN):
        return host.embed_dims
    if is_shift_window_msa(host):
        return host.w_msa.embed_dims
    width = getattr(host, 'embed_dims', None)
    if isinstance(host, vit_attention_type()) and host.input_dims != width:
        raise TunerHostError('U-Tuner needs an attention whose input and '
                             'output widths match')
    return width


@TUNERS.register_module()
class UTuner(BaseTuner):
    """Unified tuner beside (parallel) or after (sequential) a block.

    Args:
        dims (int): block width d.
        bottleneck (int): hidden width b.
        form (str): ``'parallel'`` or ``'sequential'``.
        scale (float): ``s``; learnable with ``learnable_scale``.
        learnable_scale (bool): learn ``s``.
        act (str): ``'relu'``, ``'gelu'`` or ``'silu'``.
    """

    attr_name = 'utuner'
    routed_kwargs = ('query', 'x')  # what _hook reads per sample
    routable = True

    def __init__(self, dims: int, bottleneck: int = 64,
                 form: str = 'parallel', scale: float = 1.0,
                 learnable_scale: bool = False, act: str = 'relu') -> None:
        super().__init__()
        check_positive_int('bottleneck', bottleneck, 'UTuner')
        if form not in ('parallel', 'sequential'):
            raise ValueError(f"UTuner: `form` must be 'parallel' or "
                             f"'sequential', got {form!r}")
        self.dims, self.bottleneck, self.form = dims, bottleneck, form
        self.branch = AdapterBranch(dims, bottleneck, act)
        self._init_scale(scale, learnable_scale)

    @classmethod
    def resolve_hosts(cls, name, module, **tuner_kwargs):
        if isinstance(module, (FFN, mmcv_attention_type(), msda_type(),
                               vit_attention_type())) or \
                is_conditional_attention(module) or \
                is_shift_window_msa(module):
            return [(name, module)]
        raise TunerHostError(
            f'UTuner cannot tune `{name}` of type {type(module).__name__}; '
            f'it tunes mmcv FFN, mmcv MultiheadAttention, mmcv '
            f'MultiScaleDeformableAttention, mmpretrain MultiheadAttention, '
            f'mmdet ConditionalAttention and Swin ShiftWindowMSA blocks '
            f'(presets attn/ffn, backbone_attn/backbone_ffn).')

    @classmethod
    def from_host(cls, host: nn.Module, **kwargs) -> 'UTuner':
        return cls(_block_width(host), **kwargs)

    def _install(self, host: nn.Module) -> None:
        host.register_forward_hook(self.routed_hook, with_kwargs=True)

    def _hook(self, host, args, kwargs, output):
        if self.form == 'sequential':
            source = output
        elif args:
            source = args[0]
        else:
            source = kwargs['query' if 'query' in kwargs else 'x']
        return self.add_change(output, self.scale * self.branch(source))

    def describe(self) -> Dict[str, object]:
        return dict(bottleneck=self.bottleneck, form=self.form)
