"""Scaled prefix tuning (ETTA's attention tuner; Li & Liang's at s = 1).

``l`` learned prefixes ``P_k, P_v`` (each ``l x d``, split over the heads
like projected keys/values) are prepended to the projected keys and values
of every head, the prefix values scaled by a learnable ``s``:

    h = softmax(Q [P_k; K]^T / sqrt(d_h)) [s * P_v; V]
      = (1 - lam) * Attn(Q, K, V) + s * lam * Attn(Q, P_k, P_v)

with ``lam`` the share of the softmax mass that falls on the prefixes.
``s = 1`` fixed is standard prefix tuning. Masks apply to the real keys
only; prefix slots are always attended. Not exact at init (``lam > 0``).

Parameters, direct: ``2*l*d`` (+1 for a learnable ``s``). With the MLP
reparametrisation (``reparam_hidden=h``) training holds an embedding and an
MLP, ``l*d + d*h + h + 2*d*h + 2*d`` (+1), and deployment only the
resulting ``2*l*d`` (+1).

On MMCV's ``MultiScaleDeformableAttention``, which has no keys, the same
config builds a :class:`~mmpetl.tuners.DeformablePrefix` instead.
"""
from typing import Dict, List, Optional, Tuple

import torch
import torch.nn as nn

from mmpetl.registry import TUNERS
from .common import check_positive_int
from .attention import (install_tuned_forward, mmcv_attention_type,
                        msda_type, vit_attention_type)
from .base import BaseTuner, TunerHostError

__all__ = ['ScaledPrefix', 'PrefixTuning', 'attention_hosts']


def attention_hosts(name: str, module: nn.Module,
                    tuner: str) -> List[Tuple[str, nn.Module]]:
    """Resolve a matched attention module to the module a prefix tunes."""
    if isinstance(module, mmcv_attention_type()):
        return [(f'{name}.attn', module.attn)]
    if isinstance(module, (nn.MultiheadAttention, vit_attention_type(),
                           msda_type())):
        return [(name, module)]
    raise TunerHostError(
        f'{tuner} cannot tune `{name}` of type {type(module).__name__}; it '
        f'tunes attention: torch/mmcv/mmpretrain MultiheadAttention and '
        f'mmcv MultiScaleDeformableAttention. Point its `targets`/`presets` '
        f'at attention modules (presets: *_attn).')


def embed_dims_of(host: nn.Module) -> Tuple[int, int]:
    """(embed_dims, num_heads) of an attention host."""
    dims = getattr(host, 'embed_dim', None) or host.embed_dims
    return dims, host.num_heads


@TUNERS.register_module()
class ScaledPrefix(BaseTuner):
    """Scaled prefix tuning for multi-head attention.

    Args:
        dims (int): embedding width d of the attention.
        num_heads (int): heads; ``d`` must divide evenly.
        num_prefix (int): prefix length l (ETTA: ~50).
        scale (float): initial ``s``.
        learnable_scale (bool): learn ``s``; ``False`` with ``scale=1`` is
            standard prefix tuning.
        reparam_hidden (int, optional): hidden width of the MLP
            reparametrisation used in training; ``None`` learns ``P_k, P_v``
            directly.
        init_std (float): std of the normal init of the prefixes.
    """

    attr_name = 'prefix'
    #: learned tokens (no weight decay by default, see the optimizer)
    token_params = ('prefix_k', 'prefix_v', 'embedding')

    def __init__(self, dims: int, num_heads: int, num_prefix: int = 50,
                 scale: float = 1.0, learnable_scale: bool = True,
                 reparam_hidden: Optional[int] = None,
                 init_std: float = 0.02) -> None:
        super().__init__()
        check_positive_int('num_prefix', num_prefix, type(self).__name__)
        if reparam_hidden is not None:
            check_positive_int('reparam_hidden', reparam_hidden,
                               type(self).__name__)
        self.dims, self.num_heads, self.num_prefix = dims, num_heads, \
            num_prefix
        self.reparam_hidden = reparam_hidden
        if reparam_hidden is None:
            self.prefix_k = nn.Parameter(torch.randn(num_prefix, dims) *
                                         init_std)
            self.prefix_v = nn.Parameter(torch.randn(num_prefix, dims) *
                                         init_std)
        else:
            self.embedding = nn.Parameter(torch.randn(num_prefix, dims) *
                                          init_std)
            self.reparam = nn.Sequential(
                nn.Linear(dims, reparam_hidden), nn.Tanh(),
                nn.Linear(reparam_hidden, 2 * dims))
        self._init_scale(scale, learnable_scale)

    @classmethod
    def resolve_hosts(cls, name, module, **tuner_kwargs):
        return attention_hosts(name, module, cls.__name__)

    @classmethod
    def from_host(cls, host: nn.Module, **kwargs) -> BaseTuner:
        dims, num_heads = embed_dims_of(host)
        if isinstance(host, msda_type()):
            from .deformable_prefix import DeformablePrefix
            # MSDA's branch is additive with s starting at 0 (exact at
            # init); the MHA-only options do not apply to it.
            for key in ('reparam_hidden', 'learnable_scale', 'scale'):
                kwargs.pop(key, None)
            return DeformablePrefix(dims, num_heads, **kwargs)
        return cls(dims, num_heads, **kwargs)

    def _install(self, host: nn.Module) -> None:
        if getattr(host, 'v_shortcut', False):
            raise TunerHostError('prefix tuning does not support '
                                 'MultiheadAttention with v_shortcut=True')
        install_tuned_forward(host)

    def key_values(self) -> Tuple[torch.Tensor, torch.Tensor]:
        """``(P_k, s * P_v)``, each ``(l, d)``."""
        if self.reparam_hidden is None:
            p_k, p_v = self.prefix_k, self.prefix_v
        else:
            p_k, p_v = self.reparam(self.embedding).chunk(2, dim=-1)
        return p_k, self.scale * p_v

    @torch.no_grad()
    def fold_reparam(self) -> bool:
        """For deployment: replace the embedding + MLP by the prefixes
        they produce (``2*l*d`` direct parameters); outputs are unchanged."""
        if self.reparam_hidden is None:
            return False
        p_k, p_v = self.reparam(self.embedding).chunk(2, dim=-1)
        del self.embedding, self.reparam
        self.prefix_k = nn.Parameter(p_k.clone())
        self.prefix_v = nn.Parameter(p_v.clone())
        self.reparam_hidden = None
        return True

    def num_deploy_params(self) -> int:
        return 2 * self.num_prefix * self.dims + int(
            isinstance(self.scale, nn.Parameter))

    def describe(self) -> Dict[str, object]:
        return dict(num_prefix=self.num_prefix)


@TUNERS.register_module()
class PrefixTuning(ScaledPrefix):
    """Standard prefix tuning: :class:`ScaledPrefix` with ``s = 1`` fixed."""

    def __init__(self, dims: int, num_heads: int, num_prefix: int = 50,
                 reparam_hidden: Optional[int] = None,
                 init_std: float = 0.02, **kwargs) -> None:
        if kwargs:
            raise TypeError(f'PrefixTuning got unexpected {sorted(kwargs)}')
        super().__init__(dims, num_heads, num_prefix, scale=1.0,
                         learnable_scale=False,
                         reparam_hidden=reparam_hidden, init_std=init_std)
