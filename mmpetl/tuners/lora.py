"""LoRA (Hu et al., 2021) for Linear layers and fused attention projections.

    W' = W + (alpha / r) * B A,   A: r x in (Kaiming), B: out x r (zero)

so the tuned layer is exact at init. ``merge()`` folds ``(alpha/r) B A``
into the frozen weight for deployment (no extra latency) and ``unmerge()``
takes it out again.

A limit shared by DETR, Conditional DETR and DAB-DETR: their decoder starts
from zero content queries, so in the first decoder layer's self-attention
every value is the same vector and the output depends neither on q and k
nor on a delta of v (whose input is 0). LoRA on those maps stays at its
init there; the ``out_proj`` LoRA of that layer does learn.

Where it attaches (``LoRA`` in a config dispatches on the matched module):

* ``nn.Linear`` -> :class:`LoRALinear`, ``r*(in+out)`` parameters (not
  the ``out_proj`` of a torch ``nn.MultiheadAttention`` alone: its fused
  forward never calls it, so that is refused; target the attention);
* ``nn.MultiheadAttention`` (also inside mmcv's wrapper) ->
  :class:`LoRAFusedAttention` on the fused ``in_proj_weight`` (``A`` shared
  by q/k/v, ``B`` of ``3d x r``: ``4*d*r``) plus a :class:`LoRALinear` on
  ``out_proj`` (``2*d*r``). torch's fused kernel bypasses both, so the
  host's forward is re-implemented with its own weights;
* MMPretrain ``MultiheadAttention`` -> ``qkv`` and ``proj`` Linears;
* MMCV ``MultiScaleDeformableAttention`` -> its Linears named in
  ``msda_linears`` (default value/output projections and sampling offsets);
* MMCV ``FFN`` -> its two Linears;
* MMDetection ``ConditionalAttention`` (Conditional DETR, DAB-DETR) ->
  :class:`LoRAConditionalAttention` on its query, key and value maps (``A``
  shared, ``B`` of ``3d x r``: ``4*d*r``) plus a :class:`LoRALinear` on
  ``out_proj`` (``2*d*r``), the counts of torch MHA. Its self-attention
  projects content and position apart, ``q = W_qc x + W_qp p`` (``k``
  likewise): the delta acts on their sum, ``q' = q + (a/r) B_q A (x + p)``,
  as LoRA on DETR's fused ``in_proj`` (which sees ``x + p``) does, and
  merges into both weights. Its cross-attention adds the deltas to the
  content maps ``W_qc`` (decoder query), ``W_kc`` and ``W_v`` (memory);
  the positional projections stay frozen;
* MMDetection Swin ``ShiftWindowMSA``/``WindowMSA`` -> ``qkv`` and
  ``proj`` (the relative position bias stays frozen).
"""
import math
from typing import Dict, List, Sequence, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F
from mmcv.cnn.bricks.transformer import FFN

from mmpetl.registry import TUNERS
from .common import check_positive_int
from .attention import (install_tuned_forward, is_conditional_attention,
                        is_shift_window_msa, is_window_msa,
                        mmcv_attention_type, msda_type, vit_attention_type)
from .base import BaseTuner, TunerHostError

__all__ = ['LoRA', 'LoRALinear', 'LoRAFusedAttention',
           'LoRAConditionalAttention']

MSDA_LINEARS = ('value_proj', 'output_proj', 'sampling_offsets')


class _LoRAMixin:

    def _init_lora(self, in_features: int, out_features: int, rank: int,
                   alpha: float, dropout: float) -> None:
        check_positive_int('rank', rank, 'LoRA')
        self.rank, self.alpha = rank, alpha
        self.scaling = alpha / rank
        self.lora_A = nn.Parameter(torch.empty(rank, in_features))
        self.lora_B = nn.Parameter(torch.zeros(out_features, rank))
        nn.init.kaiming_uniform_(self.lora_A, a=math.sqrt(5))
        self.dropout = nn.Dropout(dropout)
        self.merged = False

    def delta_weight(self) -> torch.Tensor:
        return self.scaling * (self.lora_B @ self.lora_A)

    def low_rank(self, x: torch.Tensor, lora_B: torch.Tensor) -> torch.Tensor:
        return self.scaling * F.linear(F.linear(self.dropout(x), self.lora_A),
                                       lora_B)

    def describe(self) -> Dict[str, object]:
        return dict(rank=self.rank)


class LoRALinear(_LoRAMixin, BaseTuner):
    """LoRA beside a frozen ``nn.Linear``: ``y = W x + b + (a/r) B A x``."""

    attr_name = 'lora'
    host_types = (nn.Linear, )
    routable = True

    def __init__(self, in_features: int, out_features: int, rank: int = 8,
                 alpha: float = 8.0, dropout: float = 0.0) -> None:
        BaseTuner.__init__(self)
        self._init_lora(in_features, out_features, rank, alpha, dropout)
        self._host = None

    @classmethod
    def from_host(cls, host: nn.Linear, **kwargs) -> 'LoRALinear':
        return cls(host.in_features, host.out_features, **kwargs)

    def _install(self, host: nn.Linear) -> None:
        self._host = [host]  # a list: not registered as a submodule
        host.register_forward_hook(self.routed_hook)

    def _hook(self, host, args, output):
        if self.merged:
            return output
        return self.add_change(output, self.low_rank(args[0], self.lora_B))

    def delta(self, x: torch.Tensor, dim: int = 0) -> torch.Tensor:
        """``(a/r) B A x``: what this (unmerged) LoRA adds to its host's
        output for the input ``x``, per task group while routing.

        For a tuner that projects its own branch with the host's tuned
        weight ``W + (a/r) B A`` (:class:`~mmpetl.tuners.DeformablePrefix`
        on MSDA's ``output_proj``); no health stats are recorded.

        Args:
            x: ``(..., in_features)`` input.
            dim: the batch dimension of ``x`` (for routing).

        Returns:
            Tensor: ``(..., out_features)``.
        """
        if self.routing is not None:  # a batch of several tasks
            return self.route(self.delta, (x, dim), dim,
                              in_dims=(dim, None))
        return self.low_rank(x, self.lora_B)

    @torch.no_grad()
    def merge(self) -> bool:
        if not self.merged:
            self._host[0].weight += self.delta_weight().to(
                self._host[0].weight.dtype)
            self.merged = True
        return True

    @torch.no_grad()
    def unmerge(self) -> None:
        if self.merged:
            self._host[0].weight -= self.delta_weight().to(
                self._host[0].weight.dtype)
            self.merged = False


class LoRAFusedAttention(_LoRAMixin, BaseTuner):
    """LoRA on ``nn.MultiheadAttention.in_proj_weight`` (q, k and v)."""

    attr_name = 'lora'
    host_types = (nn.MultiheadAttention, )
    routable = True

    def __init__(self, embed_dim: int, rank: int = 8, alpha: float = 8.0,
                 dropout: float = 0.0) -> None:
        BaseTuner.__init__(self)
        self._init_lora(embed_dim, 3 * embed_dim, rank, alpha, dropout)
        self.embed_dim = embed_dim
        self._host = None

    @classmethod
    def from_host(cls, host: nn.MultiheadAttention,
                  **kwargs) -> 'LoRAFusedAttention':
        if not host._qkv_same_embed_dim:
            raise TunerHostError(
                'LoRA on nn.MultiheadAttention needs the fused in_proj '
                '(kdim == vdim == embed_dim)')
        return cls(host.embed_dim, **kwargs)

    def _install(self, host: nn.MultiheadAttention) -> None:
        self._host = [host]
        install_tuned_forward(host)

    def in_proj_deltas(self, query, key, value):
        b_q, b_k, b_v = self.lora_B.chunk(3)
        return (self.low_rank(query, b_q), self.low_rank(key, b_k),
                self.low_rank(value, b_v))

    def add_to_projections(self, q, k, v, query, key, value):
        """``(q, k, v) + deltas`` (health stats on the value path)."""
        if self.routing is not None:  # a batch of several tasks: (L, B, d)
            return self.route(self.add_to_projections,  # all (L, B, d)
                              (q, k, v, query, key, value), 1, in_dims=1)
        d_q, d_k, d_v = self.in_proj_deltas(query, key, value)
        if self.recording:
            self.record_change(torch.cat([q, k, v]).flatten(),
                               torch.cat([d_q, d_k, d_v]).flatten())
        return q + d_q, k + d_k, v + d_v

    @torch.no_grad()
    def merge(self) -> bool:
        if not self.merged:
            w = self._host[0].in_proj_weight
            w += self.delta_weight().to(w.dtype)
            self.merged = True
        return True

    @torch.no_grad()
    def unmerge(self) -> None:
        if self.merged:
            w = self._host[0].in_proj_weight
            w -= self.delta_weight().to(w.dtype)
            self.merged = False


class LoRAConditionalAttention(LoRAFusedAttention):
    """LoRA on MMDetection ``ConditionalAttention``'s q/k/v maps (see the
    module doc; ``host.forward`` becomes
    :func:`~mmpetl.tuners.attention.conditional_attention_forward`, which
    adds :meth:`add_to_projections` of the inputs named there)."""

    host_types = ()  # matched by qualified class name (no mmdet import)

    @classmethod
    def from_host(cls, host: nn.Module,
                  **kwargs) -> 'LoRAConditionalAttention':
        return cls(host.embed_dims, **kwargs)

    def _merge_targets(self) -> List[Tuple[nn.Linear, torch.Tensor]]:
        """``(Linear, delta)`` pairs a merge adds to."""
        host = self._host[0]
        d_q, d_k, d_v = self.delta_weight().chunk(3)
        pairs = [(host.qcontent_proj, d_q), (host.kcontent_proj, d_k),
                 (host.v_proj, d_v)]
        if not host.cross_attn:  # the delta acts on content + position
            pairs += [(host.qpos_proj, d_q), (host.kpos_proj, d_k)]
        return pairs

    @torch.no_grad()
    def merge(self) -> bool:
        if not self.merged:
            for linear, delta in self._merge_targets():
                linear.weight += delta.to(linear.weight.dtype)
            self.merged = True
        return True

    @torch.no_grad()
    def unmerge(self) -> None:
        if self.merged:
            for linear, delta in self._merge_targets():
                linear.weight -= delta.to(linear.weight.dtype)
            self.merged = False


@TUNERS.register_module()
class LoRA:
    """Config entry point: builds the right LoRA for each matched module.

    Args (in the tuner config):
        rank (int): r. alpha (float): scaling numerator. dropout (float).
        msda_linears (Sequence[str]): MSDA Linears to tune.
    """

    config_args_of = LoRALinear  # rank, alpha, dropout
    extra_config_args = ('msda_linears', )

    @classmethod
    def resolve_hosts(cls, name: str,
                      module: nn.Module,
                      msda_linears: Sequence[str] = MSDA_LINEARS,
                      **tuner_kwargs) -> List[Tuple[str, nn.Module]]:
        if isinstance(module, mmcv_attention_type()):
            module, name = module.attn, f'{name}.attn'
        if is_shift_window_msa(module):
            module, name = module.w_msa, f'{name}.w_msa'
        if isinstance(module, nn.MultiheadAttention) or \
                is_conditional_attention(module):
            return [(name, module), (f'{name}.out_proj', module.out_proj)]
        if type(module) is nn.modules.linear.NonDynamicallyQuantizableLinear:
            parent = name.rpartition('.')[0] or 'the attention'
            raise TunerHostError(
                f'LoRA cannot tune `{name}` alone: it is the out_proj of a '
                f'torch nn.MultiheadAttention, whose fused forward never '
                f'calls it (the LoRA would change nothing, and merging it '
                f'would change the outputs). Point LoRA at the attention '
                f'`{parent}` instead: it tunes its in_proj and out_proj.')
        if isinstance(module, nn.Linear):
            return [(name, module)]
        if isinstance(module, vit_attention_type()) or is_window_msa(module):
            return [(f'{name}.qkv', module.qkv), (f'{name}.proj', module.proj)]
        if isinstance(module, msda_type()):
            return [(f'{name}.{attr}', getattr(module, attr))
                    for attr in msda_linears]
        if isinstance(module, FFN):
            linears = [(n, m) for n, m in module.layers.named_modules()
                       if isinstance(m, nn.Linear)]
            return [(f'{name}.layers.{n}', m) for n, m in linears]
        raise TunerHostError(
            f'LoRA cannot tune `{name}` of type {type(module).__name__}; it '
            f'tunes nn.Linear, torch/mmcv/mmpretrain MultiheadAttention, '
            f'mmcv MultiScaleDeformableAttention, mmcv FFN, mmdet '
            f'ConditionalAttention and mmdet Swin ShiftWindowMSA/WindowMSA.')

    @classmethod
    def from_host(cls, host: nn.Module, msda_linears=MSDA_LINEARS,
                  **kwargs) -> BaseTuner:
        if isinstance(host, nn.MultiheadAttention):
            return LoRAFusedAttention.from_host(host, **kwargs)
        if is_conditional_attention(host):
            return LoRAConditionalAttention.from_host(host, **kwargs)
        return LoRALinear.from_host(host, **kwargs)
