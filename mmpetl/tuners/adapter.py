"""Parallel adapter (He et al., 2022; ETTA's FFN tuner).

    out = base(x) + s * up(act(down(LN(x))))

``down``: d -> b, ``up``: b -> d, ``LN`` optional. ``up`` and both biases
start at zero, so at step 0 the tuned model computes exactly what the base
model computes. ``s`` is a fixed float or a learnable scalar.

Parameters: ``2*d*b + b + d`` (+ ``2*d`` with LayerNorm, + 1 if ``s`` is
learnable).
"""
from typing import Dict

import torch
import torch.nn as nn
from mmcv.cnn.bricks.transformer import FFN

from mmpetl.registry import TUNERS
from .base import BaseTuner
from .common import build_activation, check_positive_int, host_width

__all__ = ['ParallelAdapter', 'AdapterBranch']


class AdapterBranch(nn.Module):
    """``up(act(down(LN(x))))``, the bottleneck MLP both adapters use."""

    def __init__(self, dims: int, bottleneck: int, act: str = 'relu',
                 layer_norm: bool = False, dropout: float = 0.0) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(dims) if layer_norm else nn.Identity()
        self.down = nn.Linear(dims, bottleneck)
        self.act = build_activation(act, 'adapter')
        self.dropout = nn.Dropout(dropout)
        self.up = nn.Linear(bottleneck, dims)
        # LoRA-style init: a random down projection, zero up projection
        # and biases, so the branch adds exactly 0 at step 0 but still
        # receives gradients through `up`.
        nn.init.kaiming_uniform_(self.down.weight, a=5 ** 0.5)
        nn.init.zeros_(self.down.bias)
        nn.init.zeros_(self.up.weight)
        nn.init.zeros_(self.up.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.up(self.dropout(self.act(self.down(self.norm(x)))))


@TUNERS.register_module()
class ParallelAdapter(BaseTuner):
    """Parallel adapter beside a d -> d module (an FFN or a Linear).

    Args:
        dims (int): feature width d of the host.
        bottleneck (int): hidden width b. ETTA uses ~400 on wide ViTs.
        scale (float): initial value of ``s``.
        learnable_scale (bool): learn ``s`` (one scalar) instead of fixing it.
        layer_norm (bool): LayerNorm on the adapter input.
        act (str): ``'relu'``, ``'gelu'`` or ``'silu'``.
        dropout (float): dropout inside the bottleneck.
    """

    attr_name = 'adapter'
    routed_kwargs = ('x', 'input')  # what _hook reads per sample
    host_types = (FFN, nn.Linear)
    routable = True

    def __init__(self, dims: int, bottleneck: int = 64, scale: float = 1.0,
                 learnable_scale: bool = False, layer_norm: bool = False,
                 act: str = 'relu', dropout: float = 0.0) -> None:
        super().__init__()
        check_positive_int('bottleneck', bottleneck, type(self).__name__)
        self.dims, self.bottleneck = dims, bottleneck
        self.branch = AdapterBranch(dims, bottleneck, act, layer_norm,
                                    dropout)
        self._init_scale(scale, learnable_scale)

    @classmethod
    def from_host(cls, host: nn.Module, **kwargs) -> 'ParallelAdapter':
        return cls(host_width(host), **kwargs)

    def _install(self, host: nn.Module) -> None:
        host.register_forward_hook(self.routed_hook, with_kwargs=True)

    def _hook(self, host, args, kwargs, output):
        x = args[0] if args else kwargs['x' if 'x' in kwargs else 'input']
        return self.add_change(output, self.scale * self.branch(x))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """The adapter's own contribution ``s * up(act(down(x)))``."""
        return self.scale * self.branch(x)

    def describe(self) -> Dict[str, object]:
        return dict(bottleneck=self.bottleneck)
