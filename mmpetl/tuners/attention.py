"""Attention forwards re-implemented with the host's own frozen weights.

``torch.nn.MultiheadAttention`` runs one fused kernel: it never calls
``out_proj.forward`` and keeps q/k/v in one ``in_proj_weight``, so neither
hooks nor submodule patches can put a prefix inside its softmax. The tuners
that need that (prefix, fused LoRA) set the host's ``forward`` to one of the
functions below. Each reads the tuners attached to the host:

* ``host.prefix`` -> its :meth:`~mmpetl.tuners.ScaledPrefix.attend` runs the
  softmax over the real keys and the prefixes, in the prefix's form (joint
  or parallel); prefix slots are never masked;
* ``host.lora`` -> low-rank deltas added to the q/k/v projections.

With no tuner attached they compute what the host computes (tested to
1e-6), with ``F.scaled_dot_product_attention``.

MMDetection's own attentions are recognised by their qualified class
names (this room imports no MMDetection module):

* ``ConditionalAttention`` (Conditional DETR and DAB-DETR decoders) builds
  its queries and keys from separate content and positional projections;
  in cross-attention each head's query is ``[q_c + q_p ; q_s]`` and its key
  ``[k_c + k_p ; k_p]`` (content/positional parts concatenated per head,
  ``2*d_h`` wide, logits scaled by ``1/sqrt(2*d_h)``), values ``d_h`` wide.
  :func:`conditional_attention_forward` rebuilds exactly that and attends
  through :func:`attend`, so prefix keys live in the ``2*d_h`` logit space.
* Swin's ``WindowMSA`` attends inside windows of ``Wh*Ww`` tokens with a
  relative position bias (and, in shifted blocks, a window mask):
  :func:`window_msa_forward` passes bias + mask as the additive mask, which
  therefore covers the real keys only; each window's queries see the same
  prefixes.
"""
import functools
from typing import Optional, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F

from mmpetl.utils import class_names

__all__ = ['install_tuned_forward', 'torch_mha_forward',
           'vit_attention_forward', 'merge_masks', 'attend',
           'vit_attention_type', 'mmcv_attention_type', 'msda_type',
           'conditional_attention_forward', 'window_msa_forward',
           'is_conditional_attention', 'is_window_msa',
           'is_shift_window_msa']

_CONDITIONAL = 'mmdet.models.layers.transformer.utils.ConditionalAttention'
_WINDOW_MSA = 'mmdet.models.backbones.swin.WindowMSA'
_SHIFT_WINDOW_MSA = 'mmdet.models.backbones.swin.ShiftWindowMSA'


def vit_attention_type():
    from mmpretrain.models.utils.attention import MultiheadAttention
    return MultiheadAttention


def mmcv_attention_type():
    from mmcv.cnn.bricks.transformer import MultiheadAttention
    return MultiheadAttention


def msda_type():
    from mmcv.ops import MultiScaleDeformableAttention
    return MultiScaleDeformableAttention


def is_conditional_attention(module: nn.Module) -> bool:
    """MMDetection's ``ConditionalAttention`` (or a subclass)."""
    return _CONDITIONAL in class_names(module, qualified=True)


def is_window_msa(module: nn.Module) -> bool:
    """MMDetection's Swin ``WindowMSA`` (or a subclass)."""
    return _WINDOW_MSA in class_names(module, qualified=True)


def is_shift_window_msa(module: nn.Module) -> bool:
    """MMDetection's Swin ``ShiftWindowMSA`` (holds a ``w_msa``)."""
    return _SHIFT_WINDOW_MSA in class_names(module, qualified=True)


def _additive(mask: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    if mask.dtype in (torch.bool, torch.uint8):
        return torch.zeros(mask.shape, dtype=dtype,
                           device=mask.device).masked_fill(
                               mask.bool(), float('-inf'))
    return mask.to(dtype)


def merge_masks(attn_mask: Optional[torch.Tensor],
                key_padding_mask: Optional[torch.Tensor], bsz: int,
                num_heads: int, tgt_len: int, src_len: int,
                dtype: torch.dtype,
                is_causal: bool = False) -> Optional[torch.Tensor]:
    """torch-MHA masks -> one additive SDPA mask over the keys.

    Follows ``nn.MultiheadAttention``: a bool ``True`` means "do not
    attend", a float mask is added to the logits. ``attn_mask`` is
    ``(L, S)`` or ``(N*H, L, S)``; ``key_padding_mask`` is ``(N, S)``;
    ``is_causal`` without ``attn_mask`` masks the future.

    Returns:
        Tensor | None: broadcastable to ``(N, H, L, S)``.
    """
    if attn_mask is None and is_causal:
        attn_mask = torch.ones(tgt_len, src_len, dtype=torch.bool).triu(1)
        if key_padding_mask is not None:
            attn_mask = attn_mask.to(key_padding_mask.device)
    mask = None
    if attn_mask is not None:
        mask = _additive(attn_mask, dtype)
        mask = (mask.view(1, 1, tgt_len, src_len) if mask.dim() == 2 else
                mask.view(bsz, num_heads, tgt_len, src_len))
    if key_padding_mask is not None:
        pad = _additive(key_padding_mask, dtype).view(bsz, 1, 1, src_len)
        mask = pad if mask is None else mask + pad
    return mask


def attend(host: nn.Module, q: torch.Tensor, k: torch.Tensor,
           v: torch.Tensor, mask: Optional[torch.Tensor],
           dropout_p: float) -> torch.Tensor:
    """SDPA of ``(B, H, L|S, d_h)`` tensors, through ``host.prefix`` when
    the host carries a prefix tuner."""
    prefix = getattr(host, 'prefix', None)
    if prefix is not None:
        return prefix.attend(q, k, v, mask, dropout_p)
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask,
                                          dropout_p=dropout_p)


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
        q, k, v = lora.add_to_projections(q, k, v, query, key, value)

    def heads(t, length):
        return t.view(length, bsz, num_heads, head_dim).permute(1, 2, 0, 3)

    q, k, v = heads(q, tgt_len), heads(k, src_len), heads(v, src_len)
    mask = merge_masks(attn_mask, key_padding_mask, bsz, num_heads, tgt_len,
                       src_len, q.dtype, is_causal)
    out = attend(host, q, k, v, mask,
                 host.dropout if host.training else 0.0)
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
    attn_drop = host.attn_drop if host.training else 0.
    x = attend(host, q, k, v, None, attn_drop)
    x = x.transpose(1, 2).reshape(bsz, length, host.embed_dims)
    x = host.proj(x)
    x = host.out_drop(host.gamma1(host.proj_drop(x)))
    if host.v_shortcut:
        x = v_in.squeeze(1) + x
    return x


def conditional_attention_forward(
        host: nn.Module, query: torch.Tensor, key: torch.Tensor,
        query_pos: Optional[torch.Tensor] = None,
        ref_sine_embed: Optional[torch.Tensor] = None,
        key_pos: Optional[torch.Tensor] = None,
        attn_mask: Optional[torch.Tensor] = None,
        key_padding_mask: Optional[torch.Tensor] = None,
        is_first: bool = False) -> torch.Tensor:
    """MMDetection ``ConditionalAttention.forward`` with prefix tuners.

    Same arguments as mmdet's (batch first: ``query`` ``(B, L, d)``,
    ``key`` ``(B, S, d)``; ``attn_mask`` ``(L, S)`` or ``(B*H, L, S)``,
    ``key_padding_mask`` ``(B, S)``, True = padded). Self-attention::

        q = W_qc x + W_qp pos,  k = W_kc x + W_kp pos,  v = W_v x

    (mmdet attends over the query itself: ``key`` is not read).
    Cross-attention, per head ``h`` (``d_h = d / H``)::

        q_h = [(W_qc x + W_qp pos)_h ; (W_qs sine)_h]    2*d_h wide
        k_h = [(W_kc m + W_kp kpos)_h ; (W_kp kpos)_h]   2*d_h wide
        v_h = (W_v m)_h                                    d_h wide

    where ``W_qp pos`` and ``W_kp kpos`` enter the first halves only in the
    first decoder layer or with ``keep_query_pos``. ``host.lora``
    (:class:`~mmpetl.tuners.LoRAConditionalAttention`) adds its deltas of
    ``x + pos`` to ``q`` and ``k`` and of ``x`` to ``v`` in self-attention,
    of ``x``, ``m``, ``m`` to the content ``q``, ``k`` and ``v`` in
    cross-attention. The output is
    ``query + proj_drop(W_o concat_h(attend(q_h, k_h, v_h)))``, residual
    included as in mmdet (``out_proj`` called as a module: LoRA on it
    works).

    Returns:
        Tensor: ``(B, L, d)``.
    """
    heads = host.num_heads
    bsz, tgt_len, dims = query.shape
    head_dims = dims // heads

    def split(t):  # (B, N, d) -> (B, N, H, d_h)
        return t.reshape(bsz, t.shape[1], heads, head_dims)

    lora = getattr(host, 'lora', None)
    if lora is not None and lora.merged:
        lora = None

    def with_lora(q, k, v, inputs):  # (B, N, d) tensors; LoRA's layout
        if lora is None:            # is (N, B, d)
            return q, k, v
        out = lora.add_to_projections(
            *(t.transpose(0, 1) for t in (q, k, v) + inputs))
        return tuple(t.transpose(0, 1) for t in out)

    if host.cross_attn:
        q, k, v = with_lora(host.qcontent_proj(query),
                            host.kcontent_proj(key), host.v_proj(key),
                            (query, key, key))
        k_pos = host.kpos_proj(key_pos)
        if is_first or host.keep_query_pos:
            q = q + host.qpos_proj(query_pos)
            k = k + k_pos
        sine = host.qpos_sine_proj(ref_sine_embed)
        q = torch.cat([split(q), split(sine)], dim=3)
        k = torch.cat([split(k), split(k_pos)], dim=3)
    else:
        mixed = query + query_pos
        q, k, v = with_lora(
            host.qcontent_proj(query) + host.qpos_proj(query_pos),
            host.kcontent_proj(query) + host.kpos_proj(query_pos),
            host.v_proj(query), (mixed, mixed, query))
        q, k = split(q), split(k)
    # contiguous: SDPA's math kernel (q/k wider than v here) sums strided
    # inputs in an order that depends on the batch, so a routed task group
    # would differ from the whole batch in the last bit
    q, k, v = (t.transpose(1, 2).contiguous() for t in (q, k, split(v)))
    if key_padding_mask is not None and \
            not key_padding_mask.dtype.is_floating_point:
        key_padding_mask = key_padding_mask.bool()  # mmdet: int -> bool
    mask = merge_masks(attn_mask, key_padding_mask, bsz, heads, tgt_len,
                       k.shape[2], q.dtype)
    out = attend(host, q, k, v, mask,
                 host.attn_drop.p if host.training else 0.0)
    out = out.transpose(1, 2).reshape(bsz, tgt_len, dims)
    return query + host.proj_drop(host.out_proj(out))


def window_msa_forward(host: nn.Module, x: torch.Tensor,
                       mask: Optional[torch.Tensor] = None) -> torch.Tensor:
    """MMDetection Swin ``WindowMSA.forward`` with prefix tuners.

    Args:
        x: ``(B*nW, N, C)`` tokens of ``nW`` windows of ``N = Wh*Ww``.
        mask: ``(nW, N, N)`` additive window mask of a shifted block
            (0 or -100), or None.

    The logits' additive term, relative position bias ``(H, N, N)`` plus
    the window mask, is the mask handed to :func:`attend`: a prefix tuner
    extends every window's keys with the same ``l`` prefixes, which get
    neither bias nor mask. A ``qk_scale`` other than ``d_h**-0.5`` is
    applied by rescaling ``q`` (prefix logits get the same scale).

    Returns:
        Tensor: ``(B*nW, N, C)``.
    """
    bsz, length, dims = x.shape
    heads = host.num_heads
    head_dims = dims // heads
    qkv = host.qkv(x).reshape(bsz, length, 3, heads,
                              head_dims).permute(2, 0, 3, 1, 4)
    q, k, v = qkv[0], qkv[1], qkv[2]
    if abs(host.scale * head_dims**0.5 - 1.0) > 1e-12:  # custom qk_scale
        q = q * (host.scale * head_dims**0.5)
    bias = host.relative_position_bias_table[
        host.relative_position_index.view(-1)].view(
            length, length, -1).permute(2, 0, 1)  # (H, N, N)
    if mask is None:
        additive = bias.unsqueeze(0)
    else:
        windows = mask.shape[0]
        additive = (bias.unsqueeze(0) + mask.unsqueeze(1)).unsqueeze(0)
        additive = additive.expand(bsz // windows, -1, -1, -1,
                                   -1).reshape(bsz, heads, length, length)
    out = attend(host, q, k, v, additive.to(q.dtype),
                 host.attn_drop.p if host.training else 0.0)
    out = out.transpose(1, 2).reshape(bsz, length, dims)
    return host.proj_drop(host.proj(out))


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
    elif is_conditional_attention(host):
        host.forward = functools.partial(conditional_attention_forward,
                                         host)
    elif is_window_msa(host):
        host.forward = functools.partial(window_msa_forward, host)
    else:
        raise TypeError(f'no tuned forward for {type(host).__name__}')
