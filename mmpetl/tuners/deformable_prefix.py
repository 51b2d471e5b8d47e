"""Prefix branch for multi-scale deformable attention (ET-Deformable-DETR).

MSDA samples values at learned offsets; it has no keys to prepend
prefixes to. ETTA's prefix keeps its unified additive form instead:

    out = MSDA(q) + s * W_o * concat_h( softmax(q_h P_k,h^T / sqrt(d_h)) P_v,h )

``q`` is the query plus its positional embedding, split over the heads
like MSDA's values; ``W_o`` is MSDA's frozen ``output_proj`` weight (its
bias is already in ``MSDA(q)``); ``s`` starts at 0, so the tuned model is
exact at init, and is learned with ``P_k, P_v``.

Parameters: ``2*l*d + 1``.
"""
from typing import Dict

import torch
import torch.nn as nn
import torch.nn.functional as F

from .common import check_positive_int
from .base import BaseTuner

__all__ = ['DeformablePrefix']


class DeformablePrefix(BaseTuner):
    """Additive prefix-attention branch beside an MSDA module.

    Built by :class:`~mmpetl.tuners.ScaledPrefix` (and ``PrefixTuning``)
    for ``MultiScaleDeformableAttention`` hosts.

    Args:
        dims (int): embedding width d.
        num_heads (int): heads of the MSDA module.
        num_prefix (int): prefix length l.
        init_std (float): std of the normal init of the prefixes.
    """

    attr_name = 'prefix'
    #: learned tokens (no weight decay by default, see the optimizer)
    token_params = ('prefix_k', 'prefix_v')

    def __init__(self, dims: int, num_heads: int, num_prefix: int = 50,
                 init_std: float = 0.02) -> None:
        super().__init__()
        check_positive_int('num_prefix', num_prefix, 'DeformablePrefix')
        self.dims, self.num_heads, self.num_prefix = dims, num_heads, \
            num_prefix
        self.prefix_k = nn.Parameter(torch.randn(num_prefix, dims) * init_std)
        self.prefix_v = nn.Parameter(torch.randn(num_prefix, dims) * init_std)
        self.scale = nn.Parameter(torch.zeros(()))

    def _install(self, host: nn.Module) -> None:
        host.register_forward_hook(self._hook, with_kwargs=True)

    def _hook(self, host, args, kwargs, output):
        query = args[0] if args else kwargs['query']
        query_pos = kwargs.get('query_pos')
        if query_pos is not None:
            query = query + query_pos
        if not host.batch_first:
            query = query.transpose(0, 1)
        branch = self.forward(query, host.output_proj.weight)
        if not host.batch_first:
            branch = branch.transpose(0, 1)
        return output + branch

    def forward(self, query: torch.Tensor,
                out_weight: torch.Tensor) -> torch.Tensor:
        """``s * W_o * Attn(q, P_k, P_v)`` for a ``(bs, n, d)`` query."""
        bsz, length, dims = query.shape
        heads = self.num_heads
        q = query.view(bsz, length, heads, -1).transpose(1, 2)

        def split(p):
            return p.to(q.dtype).view(self.num_prefix, heads, -1).transpose(
                0, 1).unsqueeze(0).expand(bsz, -1, -1, -1)

        attn = F.scaled_dot_product_attention(q, split(self.prefix_k),
                                              split(self.prefix_v))
        attn = attn.transpose(1, 2).reshape(bsz, length, dims)
        return self.scale * F.linear(attn, out_weight.to(attn.dtype))

    def describe(self) -> Dict[str, object]:
        return dict(num_prefix=self.num_prefix)
