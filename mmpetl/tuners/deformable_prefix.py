"""Prefix branch for multi-scale deformable attention (ET-Deformable-DETR).

MSDA samples values at learned offsets; it has no keys to prepend
prefixes to. ETTA's prefix keeps its unified additive form instead (the
``parallel`` form of :mod:`mmpetl.tuners.prefix`):

    out = MSDA(q) + s * W_o * concat_h( softmax(q_h P_k,h^T / sqrt(d_h)) P_v,h )

``q`` is the query plus its positional embedding, split over the heads
like MSDA's values; ``W_o`` is MSDA's frozen ``output_proj`` weight (its
bias is already in ``MSDA(q)``).

Initialisations (``init``, as for :class:`~mmpetl.tuners.ScaledPrefix`):

* ``'scaled'`` (default): ``s`` learnable from ``scale`` (1), ``P_v = 0``
  (exact at init, and ``P_v`` gets a first-order gradient at step 0),
  ``P_k ~ N(0, key_std^2)`` with ``key_std = 1``: for queries of unit rms
  (they leave a LayerNorm) the prefix logits spread at order 1, so the
  branch starts query-dependent rather than as a constant bias.
* ``'activations'``: ``P_k`` are query tokens the frozen model computes on a
  few training batches, ``P_v = 0``.
* ``'random'``: ``P_k, P_v ~ N(0, init_std^2)``; with ``scale=0`` this is
  mmpetl's first default, under which every prefix gets a zero gradient at
  step 0 (each path runs through ``s = 0``) and the branch barely moves.

Parameters: ``2*l*d`` (+1 for a learnable ``s``).
"""
import torch
import torch.nn as nn
import torch.nn.functional as F

from .prefix import PrefixBase

__all__ = ['DeformablePrefix']


class DeformablePrefix(PrefixBase):
    """Additive prefix-attention branch beside an MSDA module.

    Built by :class:`~mmpetl.tuners.ScaledPrefix` (and ``PrefixTuning``)
    for ``MultiScaleDeformableAttention`` hosts; same arguments as
    :class:`~mmpetl.tuners.prefix.PrefixBase`, with ``form='parallel'`` the
    only form (deformable attention has no keys for a joint softmax).
    """

    forms = ('parallel', )
    routed_kwargs = ('query', 'query_pos')  # what _hook reads per sample

    @classmethod
    def from_host(cls, host: nn.Module, **kwargs) -> 'DeformablePrefix':
        cls.check_options(kwargs.get('form', 'parallel'),
                          kwargs.get('init', 'scaled'), host)
        return cls(host.embed_dims, host.num_heads, **kwargs)

    def _install(self, host: nn.Module) -> None:
        host.register_forward_hook(self.routed_hook, with_kwargs=True)

    def _hook(self, host, args, kwargs, output):
        query = args[0] if args else kwargs['query']
        query_pos = kwargs.get('query_pos')
        if query_pos is not None:
            query = query + query_pos
        if not host.batch_first:
            query = query.transpose(0, 1)
        if self._collected is not None:  # activation init: frozen host
            bsz, length, _ = query.shape
            pad = kwargs.get('key_padding_mask')
            valid = ~pad if pad is not None and pad.shape[1] == length \
                else None
            self.collect(self.split(query), None, valid)
            return output
        branch = self.forward(query, host.output_proj.weight)
        if not host.batch_first:
            branch = branch.transpose(0, 1)
        if self.recording:
            self.record_share(output, branch)
        return output + branch

    def split(self, query: torch.Tensor) -> torch.Tensor:
        """``(B, N, d)`` -> ``(B, heads, N, d_h)``."""
        bsz, length, _ = query.shape
        return query.view(bsz, length, self.num_heads, -1).transpose(1, 2)

    def forward(self, query: torch.Tensor,
                out_weight: torch.Tensor) -> torch.Tensor:
        """``s * W_o * Attn(q, P_k, P_v)`` for a ``(bs, n, d)`` query."""
        self._check_ready()
        bsz, length, dims = query.shape
        q = self.split(query)
        attn = F.scaled_dot_product_attention(
            q, self.heads(self.prefix_k, bsz, q.dtype),
            self.heads(self.prefix_v, bsz, q.dtype))
        attn = attn.transpose(1, 2).reshape(bsz, length, dims)
        return self.scale * F.linear(attn, out_weight.to(attn.dtype))
