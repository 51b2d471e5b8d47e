"""Attention forwards re-implemented with the host's own frozen weights.

``torch.nn.MultiheadAttention`` runs one fused kernel: it never calls
``out_proj.forward`` and keeps q/k/v in one ``in_proj_weight``, so neither
hooks nor submodule patches can put a prefix inside its softmax. The tuners
that need that (prefix, fused LoRA) set the host's ``forward`` to one of the
functions below. Each reads the tuners attached to the host:

* ``host.prefix`` -> ``(P_k, s * P_v)``, prepended to every head's keys and
  values; prefix slots are never masked;
* ``host.lora`` -> low-rank deltas added to the q/k/v projections.

With no tuner attached they compute what the host computes (tested to
1e-6), with ``F.scaled_dot_product_attention``.
"""
import functools
from typing import Optional, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F

__all__ = ['install_tuned_forward', 'torch_mha_forward', 'vit_attention_forward',
           'merge_masks', 'vit_attention_type', 'mmcv_attention_type',
           'msda_type']


def vit_attention_type():
    from mmpretrain.models.utils.attention import MultiheadAttention
    return MultiheadAttention


def mmcv_attention_type():
    from mmcv.cnn.bricks.transformer import MultiheadAttention
    return MultiheadAttention


def msda_type():
    from mmcv.ops import MultiScaleDeformableAttention
    return MultiScaleDeformableAttention


def _additive(mask: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    if mask.dtype in (torch.bool, torch.uint8):
        return torch.zeros(mask.shape, dtype=dtype,
                           device=mask.device).masked_fill(
                               mask.bool(), float('-inf'))
    return mask.to(dtype)


def merge_masks(attn_mask: Optional[torch.Tensor],
                key_padding_mask: Optional[torch.Tensor], bsz: int,
                num_heads: int, tgt_len: int, src_len: int, num_prefix: int,
                dtype: torch.dtype) -> Optional[torch.Tensor]:
    """torch-MHA masks -> one additive SDPA mask over ``[prefix; keys]``.

    Follows ``nn.MultiheadAttention``: a bool ``True`` means "do not
    attend", a float mask is added to the logits. ``attn_mask`` is
    ``(L, S)`` or ``(N*H, L, S)``; ``key_padding_mask`` is ``(N, S)``.

    Returns:
        Tensor | None: broadcastable to ``(N, H, L, P + S)``; the ``P``
        prefix columns are 0 (always attended).
    """
    mask = None
    if attn_mask is not None:
        mask = _additive(attn_mask, dtype)
        mask = (mask.view(1, 1, tgt_len, src_len) if mask.dim() == 2 else
                mask.view(bsz, num_heads, tgt_len, src_len))
    if key_padding_mask is not None:
        pad = _additive(key_padding_mask, dtype).view(bsz, 1, 1, src_len)
        mask = pad if mask is None else mask + pad
    if mask is not None and num_prefix:
        mask = F.pad(mask, (num_prefix, 0))
    return mask


def _prefix_heads(host: nn.Module, bsz: int, num_heads: int,
                  dtype: torch.dtype):
    prefix = getattr(host, 'prefix', None)
    if prefix is None:
        return None, None
    p_k, p_v = prefix.key_values()  # (P, E) each, p_v already scaled by s

    def heads(p):
        return p.to(dtype).view(p.shape[0], num_heads, -1).transpose(
            0, 1).unsqueeze(0).expand(bsz, -1, -1, -1)

    return heads(p_k), heads(p_v)


def torch_mha_forward(host: nn.MultiheadAttention,
                      query: torch.Tensor,
                      key: torch.Tensor,
                      value: torch.Tensor,
                      key_padding_mask: Optional[torch.Tensor] = None,
                      need_weights: bool = True,
                      attn_mask: Optional[torch.Tensor] = None,
                      average_attn_weights: bool = True,
                      is_causal: bool = False
                      ) -> Tuple[torch.Tensor, None]:
    """``nn.MultiheadAttention.forward`` with prefix / LoRA tuners.

    Same arguments and layout as torch's. Attention weights are not
    materialised: the second output is always ``None`` (mmcv and mmdet
    only use the first).
    """
    if host.batch_first:
        query, key, value = (t.transpose(0, 1) for t in (query, key, value))
    tgt_len, bsz, embed_dim = query.shape
    src_len = key.shape[0]
    num_heads = host.num_heads
    head_dim = embed_dim // num_heads

    if host._qkv_same_embed_dim:
        w_q, w_k, w_v = host.in_proj_weight.chunk(3)
    else:
        w_q, w_k, w_v = (host.q_proj_weight, host.k_proj_weight,
                         host.v_proj_weight)
    b_q = b_k = b_v = None
    if host.in_proj_bias is not None:
        b_q, b_k, b_v = host.in_proj_bias.chunk(3)
    q = F.linear(query, w_q, b_q)
    k = F.linear(key, w_k, b_k)
    v = F.linear(value, w_v, b_v)
    lora = getattr(host, 'lora', None)
    if lora is not None and not lora.merged:
        d_q, d_k, d_v = lora.in_proj_deltas(query, key, value)
        q, k, v = q + d_q, k + d_k, v + d_v

    def heads(t, length):
        return t.view(length, bsz, num_heads, head_dim).permute(1, 2, 0, 3)

    q, k, v = heads(q, tgt_len), heads(k, src_len), heads(v, src_len)
    p_k, p_v = _prefix_heads(host, bsz, num_heads, q.dtype)
    num_prefix = 0
    if p_k is not None:
        num_prefix = p_k.shape[2]
        k, v = torch.cat([p_k, k], dim=2), torch.cat([p_v, v], dim=2)
    mask = merge_masks(attn_mask, key_padding_mask, bsz, num_heads, tgt_len,
                       src_len, num_prefix, q.dtype)
    out = F.scaled_dot_product_attention(
        q, k, v, attn_mask=mask,
        dropout_p=host.dropout if host.training else 0.0,
        is_causal=is_causal and mask is None and num_prefix == 0)
    out = out.permute(2, 0, 1, 3).reshape(tgt_len, bsz, embed_dim)
    out = host.out_proj(out)  # a real module call: LoRA on out_proj works
    if host.batch_first:
        out = out.transpose(0, 1)
    return out, None


def vit_attention_forward(host: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """MMPretrain ``MultiheadAttention.forward`` with a prefix tuner.

    ``host.qkv`` and ``host.proj`` are called as modules, so LoRA on them
    (plain Linear hosts) composes with the prefix.
    """
    bsz, length, _ = x.shape
    qkv = host.qkv(x).reshape(bsz, length, 3, host.num_heads,
                              host.head_dims).permute(2, 0, 3, 1, 4)
    q, k, v = qkv[0], qkv[1], qkv[2]
    v_in = v
    p_k, p_v = _prefix_heads(host, bsz, host.num_heads, q.dtype)
    if p_k is not None:
        k, v = torch.cat([p_k, k], dim=2), torch.cat([p_v, v], dim=2)
    attn_drop = host.attn_drop if host.training else 0.
    x = host.scaled_dot_product_attention(q, k, v, dropout_p=attn_drop)
    x = x.transpose(1, 2).reshape(bsz, length, host.embed_dims)
    x = host.proj(x)
    x = host.out_drop(host.gamma1(host.proj_drop(x)))
    if host.v_shortcut:
        x = v_in.squeeze(1) + x
    return x


def install_tuned_forward(host: nn.Module) -> None:
    """Point ``host.forward`` at the re-implementation for its type.

    Idempotent, so several tuners (prefix + LoRA) can share one host.
    """
    if isinstance(getattr(host, 'forward', None), functools.partial):
        return
    if isinstance(host, nn.MultiheadAttention):
        if host.bias_k is not None or host.add_zero_attn:
            raise TypeError(
                'attention tuners (prefix, LoRA) cannot tune an '
                'nn.MultiheadAttention built with add_bias_kv=True or '
                'add_zero_attn=True; exclude it from the targets')
        host.forward = functools.partial(torch_mha_forward, host)
    elif isinstance(host, vit_attention_type()):
        host.forward = functools.partial(vit_attention_forward, host)
    else:
        raise TypeError(f'no tuned forward for {type(host).__name__}')
