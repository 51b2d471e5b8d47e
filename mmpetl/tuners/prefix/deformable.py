"""Prefix branch for multi-scale deformable attention (ET-Deformable-DETR).

MSDA samples values at learned offsets; it has no keys to prepend
prefixes to. ETTA's prefix keeps its unified additive form instead (the
``parallel`` form of :mod:`mmpetl.tuners.prefix`):

    out = MSDA(q) + W_o' (s * concat_h(softmax(q_h P_k,h^T / sqrt(d_h)) P_v,h))

``q`` is the query plus its positional embedding, split over the heads
like MSDA's values. ``W_o'`` is the weight MSDA's ``output_proj`` applies:
its frozen weight ``W_o`` plus, when a LoRA sits on ``output_proj``, that
LoRA's ``(a/r) B A``, merged into ``W_o`` or not (the bias is already in
``MSDA(q)``). The branch is thus what the parallel prefix of a
``MultiheadAttention`` is: an attention over the prefixes added to the
heads' output before the output projection, the tuned projection
included (up to MSDA's output dropout, which acts on ``MSDA(q)`` only).
So :meth:`~mmpetl.tuners.LoRALinear.merge` of that LoRA changes no output
(tested: ``tests/test_tuners/test_property_matrix.py``), and in a
mixed-task batch each sample's branch is projected with its own task's
LoRA (the LoRA routes its term itself).

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

from .base import PrefixBase

__all__ = ['DeformablePrefix']


class DeformablePrefix(PrefixBase):
    """Additive prefix-attention branch beside an MSDA module.

    Built by :class:`~mmpetl.tuners.ScaledPrefix` (and ``PrefixTuning``)
    for ``MultiScaleDeformableAttention`` hosts; same arguments as
    :class:`~mmpetl.tuners.prefix.PrefixBase`, with ``form='parallel'`` the
    only form (deformable attention has no keys for a joint softmax).
    """

    forms = ('parallel', )

    @classmethod
    def from_host(cls, host: nn.Module, **kwargs) -> 'DeformablePrefix':
        cls.check_options(kwargs.get('form', 'parallel'),
                          kwargs.get('init', 'scaled'), host)
        return cls(host.embed_dims, host.num_heads, **kwargs)

    def _install(self, host: nn.Module) -> None:
        # not routed_hook: the prefix part routes itself (forward) and a
        # LoRA on output_proj routes its own term (project)
        host.register_forward_hook(self._hook, with_kwargs=True)

    def _hook(self, host, args, kwargs, output):
        query = args[0] if args else kwargs['query']
        query_pos = kwargs.get('query_pos')
        if query_pos is not None:
            query = query + query_pos
        if not host.batch_first:
            query = query.transpose(0, 1)
        if self.is_collecting:  # activation init: frozen host
            bsz, length, _ = query.shape
            pad = kwargs.get('key_padding_mask')
            valid = ~pad if pad is not None and pad.shape[1] == length \
                else None
            self.collect(self.split(query), None, valid)
            return output
        branch = self.project(host, self.forward(query))
        if not host.batch_first:
            branch = branch.transpose(0, 1)
        if self.recording:
            self.record_share(output, branch)
        return output + branch

    def split(self, query: torch.Tensor) -> torch.Tensor:
        """``(B, N, d)`` -> ``(B, heads, N, d_h)``."""
        bsz, length, _ = query.shape
        return query.view(bsz, length, self.num_heads, -1).transpose(1, 2)

    def forward(self, query: torch.Tensor) -> torch.Tensor:
        """``s * concat_h(Attn(q_h, P_k,h, P_v,h))``, before the output
        projection, per task group while routing.

        Args:
            query: ``(B, N, d)`` queries (positions added).

        Returns:
            Tensor: ``(B, N, d)``.
        """
        if self.routing is not None:  # a batch of several tasks
            return self.route(self.forward, (query, ), 0, in_dims=0)
        self._check_ready()
        bsz, length, dims = query.shape
        q = self.split(query)
        attn = F.scaled_dot_product_attention(
            q, self.heads(self.prefix_k, bsz, q.dtype),
            self.heads(self.prefix_v, bsz, q.dtype))
        return self.scale * attn.transpose(1, 2).reshape(bsz, length, dims)

    @staticmethod
    def project(host: nn.Module, heads: torch.Tensor) -> torch.Tensor:
        """``W_o' heads``: the host's ``output_proj`` weight, plus the
        delta of an unmerged LoRA on it (merged, it is in the weight),
        without the bias.

        Args:
            host: the ``MultiScaleDeformableAttention``.
            heads: ``(B, N, d)`` branch before the projection.

        Returns:
            Tensor: ``(B, N, d)``.
        """
        proj = host.output_proj
        out = F.linear(heads, proj.weight.to(heads.dtype))
        lora = getattr(proj, 'lora', None)
        if lora is not None and not lora.merged:
            out = out + lora.delta(heads, 0)
        return out
