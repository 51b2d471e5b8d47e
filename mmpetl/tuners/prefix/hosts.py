"""Where a prefix attaches and how wide its prefixes are.

A prefix tuner matched to an attention module tunes that module, or the
attention inside it (mmcv's ``MultiheadAttention`` wraps torch's in
``.attn``; Swin's ``ShiftWindowMSA`` its ``WindowMSA`` in ``.w_msa``).
The widths and the key projection read here feed the prefixes' shapes and
the ``'scaled'`` init (:mod:`mmpetl.tuners.prefix.inits`).
"""
from typing import List, Optional, Tuple

import torch
import torch.nn as nn

from ..attention import (is_conditional_attention, is_shift_window_msa,
                         is_window_msa, mmcv_attention_type, msda_type,
                         vit_attention_type)
from ..base import TunerHostError

__all__ = ['attention_hosts', 'PREFIX_HOSTS', 'prefix_widths',
           'embed_dims_of', 'key_weight_of']

#: the attention types prefix tuners attach to, for error messages
PREFIX_HOSTS = ('torch/mmcv/mmpretrain MultiheadAttention, mmcv '
                'MultiScaleDeformableAttention, mmdet ConditionalAttention '
                '(Conditional DETR, DAB-DETR) and mmdet Swin '
                'ShiftWindowMSA/WindowMSA')


def attention_hosts(name: str, module: nn.Module,
                    tuner: str) -> List[Tuple[str, nn.Module]]:
    """Resolve a matched attention module to the module a prefix tunes.

    Args:
        name: the matched module's name in the model.
        module: the matched module.
        tuner: the tuner's class name, for the error message.

    Returns:
        list: one ``(name, host)`` pair.

    Raises:
        TunerHostError: ``module`` is no attention a prefix tunes; the
            message lists those and the presets that target them.
    """
    if isinstance(module, mmcv_attention_type()):
        return [(f'{name}.attn', module.attn)]
    if is_shift_window_msa(module):
        return [(f'{name}.w_msa', module.w_msa)]
    if isinstance(module, (nn.MultiheadAttention, vit_attention_type(),
                           msda_type())) or is_conditional_attention(
                               module) or is_window_msa(module):
        return [(name, module)]
    raise TunerHostError(
        f'{tuner} cannot tune `{name}` of type {type(module).__name__}; it '
        f'tunes attention: {PREFIX_HOSTS}. Point its `targets`/`presets` '
        f'at attention modules (presets: *_attn).')


def prefix_widths(host: nn.Module) -> Tuple[int, int]:
    """``(key width, value width)`` of a host's prefixes: ``(d, d)``, and
    ``(2d, d)`` for conditional cross-attention (see
    :mod:`mmpetl.tuners.prefix`)."""
    dims, _ = embed_dims_of(host)
    if is_conditional_attention(host) and host.cross_attn:
        return 2 * dims, dims
    return dims, dims


def embed_dims_of(host: nn.Module) -> Tuple[int, int]:
    """(embed_dims, num_heads) of an attention host."""
    dims = getattr(host, 'embed_dim', None) or host.embed_dims
    return dims, host.num_heads


def key_weight_of(host: nn.Module) -> Optional[torch.Tensor]:
    """The host's key projection ``W_k`` (``d x d``; conditional
    cross-attention: ``[W_kc; W_kp]``, ``2d x d``), None if it has none."""
    if isinstance(host, nn.MultiheadAttention):
        if host._qkv_same_embed_dim:
            return host.in_proj_weight.chunk(3)[1]
        return host.k_proj_weight
    if isinstance(host, vit_attention_type()) or is_window_msa(host):
        return host.qkv.weight.chunk(3)[1]
    if is_conditional_attention(host):
        if host.cross_attn:
            return torch.cat([host.kcontent_proj.weight,
                              host.kpos_proj.weight])
        return host.kcontent_proj.weight
    return None
