"""UniPT: universal parallel tuning (Diao et al., 2023).

A light network *beside* the frozen model reads the frozen model's per-layer
outputs ``h_1..h_L`` (each ``(B, N, d)``), computed under ``torch.no_grad``,
so autograd keeps neither a graph nor activations of the frozen network,
and adds a correction to what the heads consume:

    z_l     = D_l(LN_l(h_l))                        (B, N, r)  down, per layer
    m_{k,l} = z_l + softmax(z_k z_l^T / sqrt(r)) z_l           interaction
    a_{k,l} = softmax_{l <= k}(w^T m_{k,l} + b_l)   (B, N)     confidence
    g_k     = sum_{l <= k} a_{k,l} m_{k,l}          (B, N, r)  aggregation
    out_k   = h_k + U(act(g_k))                     (B, N, d)  up, U = 0 init

``k`` is a layer whose output a head consumes. For ``k = L`` this is
UniPT's form: the final layer's tokens query every layer (interaction), a
per-token confidence weighs the layers (aggregation). ``U``'s weight and
bias start at zero, so the tuned model computes exactly the frozen model's
outputs at step 0.

This file holds the network alone, a plain module fed ``(L, B, N, d)``
tensors. Which layers feed it, where its corrections go and which forwards
run without autograd is model surgery: :mod:`mmpetl.models.parallel`
(``PETLModel(parallel=dict(type='UniPT'))``).

Parameters (``L`` layers read, width ``d``, bottleneck ``r``)::

    L*(d*r + r)  +  2*L*d  +  (r + L)  +  (r*d + d)
      down D_l      LN_l     conf w, b_l   up U
    = (L+1)*d*r + (L+1)*r + 2*L*d + d + L     (without LN: no 2*L*d)

Memory: the UniPT branch keeps the features it reads (``L*B*N*d``: its
LayerNorms need them; their outputs are recomputed in backward rather than
kept) and ``O(K*L*B*N*r)`` activations (``K`` outputs), nothing else of
the frozen network; the interaction runs as
``scaled_dot_product_attention`` over the layers ``l <= k`` of each output,
which keeps no ``(N, N)`` attention weights for backward.
"""
from typing import Dict, Optional, Sequence, Union

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

from mmpetl.registry import TUNERS
from .base import BaseTuner, TunerHostError
from .common import build_activation, check_positive_int

__all__ = ['UniPT']


@TUNERS.register_module()
class UniPT(BaseTuner):
    """UniPT's parallel network over L layers of width d.

    Built by ``PETLModel(parallel=dict(type='UniPT', bottleneck=64))``, not
    through ``tuners``: it attaches to the whole model.

    Args:
        dims (int): layer width d.
        num_layers (int): layers L whose outputs it reads.
        bottleneck (int): the low width r.
        layer_norm (bool): LayerNorm (affine) on each ``h_l`` before its
            down-projection; the layers' scales differ (ViT layers return
            the un-normalised residual stream).
        act (str): ``'relu'``, ``'gelu'`` or ``'silu'`` before ``U``.
        all_layers (bool): DETR family: correct every decoder layer's
            output (each with layers ``1..k``); ``False`` corrects only the
            last. Classifiers always correct the last layer only.
    """

    attr_name = 'unipt'
    #: ``PETLModel`` builds it from ``parallel=``, beside the whole model.
    is_parallel_network = True

    def __init__(self, dims: int, num_layers: int, bottleneck: int = 64,
                 layer_norm: bool = True, act: str = 'gelu',
                 all_layers: bool = True) -> None:
        super().__init__()
        check_positive_int('bottleneck', bottleneck, 'UniPT')
        check_positive_int('num_layers', num_layers, 'UniPT')
        self.dims, self.num_layers = dims, num_layers
        self.bottleneck, self.all_layers = bottleneck, all_layers
        self.norms = nn.ModuleList(
            nn.LayerNorm(dims) if layer_norm else nn.Identity()
            for _ in range(num_layers))
        self.downs = nn.ModuleList(
            nn.Linear(dims, bottleneck) for _ in range(num_layers))
        self.confidence = nn.Linear(bottleneck, 1, bias=False)
        self.layer_logits = nn.Parameter(torch.zeros(num_layers))
        self.act = build_activation(act, 'UniPT')
        self.up = nn.Linear(bottleneck, dims)
        for down in self.downs:
            nn.init.zeros_(down.bias)  # weight: nn.Linear's kaiming init
        # uniform confidences at init; the zero U makes the branch add 0
        nn.init.zeros_(self.confidence.weight)
        nn.init.zeros_(self.up.weight)
        nn.init.zeros_(self.up.bias)

    # -- construction -----------------------------------------------------
    @classmethod
    def resolve_hosts(cls, name, module, **tuner_kwargs):
        raise TunerHostError(
            'UniPT is a parallel network beside the whole model, not a '
            'tuner of one module: configure it with '
            "PETLModel(parallel=dict(type='UniPT', bottleneck=64)), not in "
            '`tuners`.')

    def _install(self, host: nn.Module) -> None:
        raise TunerHostError(
            'UniPT attaches to the whole model through '
            "PETLModel(parallel=dict(type='UniPT', ...)), which routes the "
            'frozen activations to it (mmpetl.models.parallel).')

    # -- the network ------------------------------------------------------
    def forward(self, feats: Union[torch.Tensor, Sequence[torch.Tensor]],
                outputs: Optional[Sequence[int]] = None) -> torch.Tensor:
        """The corrections ``U(act(g_k))`` for the layers ``k`` in outputs.

        Args:
            feats (Tensor | Sequence[Tensor]): per-layer outputs
                ``h_1..h_L`` of the frozen model, shape (L, B, N, d) or L
                tensors (B, N, d) (no stacked copy then), without autograd
                history.
            outputs (Sequence[int], optional): 0-based layers ``k`` to
                correct; all L layers if None.

        Returns:
            Tensor: shape (K, B, N, d), K = len(outputs); row i is what to
            add to ``h_{outputs[i]}``.
        """
        num_layers = len(feats)
        if num_layers != self.num_layers:
            raise ValueError(f'UniPT was built for {self.num_layers} layers, '
                             f'got features of {num_layers}')
        outputs = list(range(num_layers)) if outputs is None else list(
            outputs)
        z = torch.stack([
            self._down(h, norm, down)
            for h, norm, down in zip(feats, self.norms, self.downs)
        ])  # (L, B, N, r)
        aggs = []
        for k in outputs:  # only the layers l <= k enter output k
            keys = z[:k + 1]  # (k+1, B, N, r)
            query = z[k].expand_as(keys)
            # softmax(z_k z_l^T / sqrt(r)) z_l for every l <= k, without
            # keeping the (N, N) attention weights for backward
            mixed = keys + F.scaled_dot_product_attention(query, keys, keys)
            score = self.confidence(mixed).squeeze(-1) + \
                self.layer_logits[:k + 1].view(-1, 1, 1)  # (k+1, B, N)
            weight = score.softmax(dim=0)
            aggs.append((weight.unsqueeze(-1) * mixed).sum(dim=0))
        agg = torch.stack(aggs)  # (K, B, N, r)
        return self.up(self.act(agg))

    @staticmethod
    def _down(h: torch.Tensor, norm: nn.Module,
              down: nn.Module) -> torch.Tensor:
        """``D_l(LN_l(h_l))``. With autograd on, ``LN_l(h_l)`` (as large as
        the frozen features) is not kept for ``D_l``'s weight gradient but
        recomputed in backward from ``h_l``, which the LayerNorm keeps
        anyway: one ``(B, N, d)`` tensor per layer kept instead of two."""
        if not (torch.is_grad_enabled() and any(
                p.requires_grad for p in down.parameters())) or \
                isinstance(norm, nn.Identity):
            return down(norm(h))
        return checkpoint(lambda x: down(norm(x)), h, use_reentrant=False,
                          preserve_rng_state=False)

    def describe(self) -> Dict[str, object]:
        return dict(layers=self.num_layers, bottleneck=self.bottleneck,
                    outputs='all' if self.all_layers else 'last')
