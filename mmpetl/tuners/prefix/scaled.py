"""The prefix forms on attentions with keys: :class:`ScaledPrefix` (the
``joint`` and ``parallel`` forms, the MLP re-parametrisation) and
:class:`PrefixTuning` (``s = 1``); the formulas are in
:mod:`mmpetl.tuners.prefix`.

``from_host`` on a ``MultiScaleDeformableAttention`` builds a
:class:`~mmpetl.tuners.prefix.deformable.DeformablePrefix` instead (this
module imports it; it imports nothing from here).
"""
import math
from typing import Optional, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F

from mmpetl.registry import TUNERS
from ..attention import install_tuned_forward, msda_type
from ..base import BaseTuner, TunerHostError
from ..common import check_positive_int
from .base import PrefixBase
from .deformable import DeformablePrefix
from .hosts import attention_hosts, embed_dims_of, prefix_widths
from .inits import scaled_key_std

__all__ = ['ScaledPrefix', 'PrefixTuning']


@TUNERS.register_module()
class ScaledPrefix(PrefixBase):
    """Scaled prefix tuning for multi-head attention (see
    :mod:`mmpetl.tuners.prefix`).

    Args (beyond :class:`PrefixBase`'s):
        reparam_hidden (int, optional): hidden width of the MLP
            re-parametrisation used in training (``init='random'`` only);
            ``None`` learns ``P_k, P_v`` directly.
    """

    def __init__(self, dims: int, num_heads: int, num_prefix: int = 50,
                 form: str = 'parallel', init: str = 'scaled',
                 scale: float = 1.0, learnable_scale: bool = True,
                 reparam_hidden: Optional[int] = None,
                 init_std: float = 0.02, key_std: float = 1.0,
                 key_dims: Optional[int] = None) -> None:
        super().__init__(dims, num_heads, num_prefix, form, init, scale,
                         learnable_scale, init_std, key_std, key_dims)
        self.reparam_hidden = reparam_hidden
        if reparam_hidden is not None:
            check_positive_int('reparam_hidden', reparam_hidden,
                               type(self).__name__)
            if init != 'random':
                raise ValueError(
                    f"{type(self).__name__}: reparam_hidden needs "
                    f"init='random' (got init={init!r}); the MLP produces "
                    f'the prefixes, so they cannot be set directly')
            del self.prefix_k, self.prefix_v
            self.embedding = nn.Parameter(torch.randn(num_prefix, dims) *
                                          init_std)
            self.reparam = nn.Sequential(
                nn.Linear(dims, reparam_hidden), nn.Tanh(),
                nn.Linear(reparam_hidden, self.key_dims + dims))

    @classmethod
    def resolve_hosts(cls, name, module, **tuner_kwargs):
        return attention_hosts(name, module, cls.__name__)

    @classmethod
    def from_host(cls, host: nn.Module, **kwargs) -> BaseTuner:
        dims, num_heads = embed_dims_of(host)
        if isinstance(host, msda_type()):
            if kwargs.get('reparam_hidden') is not None:
                raise TunerHostError(
                    f'{cls.__name__}: reparam_hidden does not apply to '
                    f'MultiScaleDeformableAttention hosts (their prefix '
                    f'branch learns P_k, P_v directly)')
            kwargs.pop('reparam_hidden', None)
            return DeformablePrefix.from_host(host, **kwargs)
        cls.check_options(kwargs.get('form', 'parallel'),
                          kwargs.get('init', 'scaled'), host)
        kwargs.setdefault('key_std', scaled_key_std(host))
        return cls(dims, num_heads, key_dims=prefix_widths(host)[0],
                   **kwargs)

    def _install(self, host: nn.Module) -> None:
        if getattr(host, 'v_shortcut', False):
            raise TunerHostError('prefix tuning does not support '
                                 'MultiheadAttention with v_shortcut=True')
        install_tuned_forward(host)

    def key_values(self) -> Tuple[torch.Tensor, torch.Tensor]:
        if self.reparam_hidden is None:
            return self.prefix_k, self.prefix_v
        p_k, p_v = self.reparam(self.embedding).split(
            [self.key_dims, self.dims], dim=-1)
        return p_k, p_v

    def attend(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
               attn_mask: Optional[torch.Tensor] = None,
               dropout_p: float = 0.0) -> torch.Tensor:
        """Attention of ``(B, H, L, d_h)`` queries over the real keys and
        the prefixes, in this tuner's form.

        Args:
            q, k, v: ``(B, H, L|S, d_h)`` projected queries, keys, values.
            attn_mask: additive mask broadcastable to ``(B, H, L, S)`` over
                the real keys (prefix slots are never masked), or None.
            dropout_p: attention dropout.

        Returns:
            Tensor: ``(B, H, L, d_h)``.
        """
        if self.routing is not None:  # a batch of several tasks
            # q, k, v: (B, H, L|S, d_h); the mask holds samples only as a
            # 4-d (B|1, H|1, L, S) tensor, an (L, S) one is passed whole
            return self.route(self.attend, (q, k, v, attn_mask, dropout_p),
                              0, in_dims=(0, 0, 0, -4, None))
        if self.is_collecting:  # activation init: frozen host
            valid = None
            if attn_mask is not None and attn_mask.shape[0] == q.shape[0]:
                valid = torch.isfinite(attn_mask[:, 0, 0, :]) & (
                    attn_mask[:, 0, 0, :] > -1e4)
            self.collect(k, v, valid)
            return F.scaled_dot_product_attention(q, k, v, attn_mask,
                                                  dropout_p)
        self._check_ready()
        bsz = q.shape[0]
        p_k, p_v = (self.heads(p, bsz, q.dtype) for p in self.key_values())
        scale = self.scale.to(q.dtype) if torch.is_tensor(
            self.scale) else self.scale
        if self.form == 'joint':
            mask = None if attn_mask is None else F.pad(
                attn_mask, (self.num_prefix, 0))  # prefixes: never masked
            out = F.scaled_dot_product_attention(
                q, torch.cat([p_k, k], dim=2),
                torch.cat([scale * p_v, v], dim=2), mask, dropout_p)
            if self.recording:
                self._record_joint(q, k, v, p_k, attn_mask, out)
            return out
        frozen = F.scaled_dot_product_attention(q, k, v, attn_mask,
                                                dropout_p)
        branch = scale * F.scaled_dot_product_attention(q, p_k, p_v,
                                                        None, dropout_p)
        if self.recording:
            self.record_share(frozen, branch)
        return frozen + branch

    @torch.no_grad()
    def _record_joint(self, q, k, v, p_k, attn_mask, out) -> None:
        """lam = softmax mass on the prefixes; change vs. the frozen one."""
        scale = 1.0 / math.sqrt(q.shape[-1])
        real = (q @ k.transpose(-1, -2)) * scale
        if attn_mask is not None:
            real = real + attn_mask
        pre = (q @ p_k.transpose(-1, -2)) * scale
        lse_real, lse_pre = real.logsumexp(-1), pre.logsumexp(-1)
        share = torch.sigmoid(lse_pre - lse_real).mean()
        frozen = F.scaled_dot_product_attention(q, k, v, attn_mask)
        self.record_share(frozen, out - frozen, share)

    @torch.no_grad()
    def fold_reparam(self) -> bool:
        """For deployment: replace the embedding + MLP by the prefixes
        they produce (``2*l*d`` direct parameters); outputs are unchanged."""
        if self.reparam_hidden is None:
            return False
        p_k, p_v = self.key_values()
        del self.embedding, self.reparam
        self.prefix_k = nn.Parameter(p_k.clone())
        self.prefix_v = nn.Parameter(p_v.clone())
        self.reparam_hidden = None
        return True


@TUNERS.register_module()
class PrefixTuning(ScaledPrefix):
    """Standard prefix tuning: :class:`ScaledPrefix` with ``s = 1`` fixed
    (Li & Liang: the joint form, random init, by default)."""

    def __init__(self, dims: int, num_heads: int, num_prefix: int = 50,
                 form: str = 'joint', init: str = 'random',
                 reparam_hidden: Optional[int] = None,
                 init_std: float = 0.02, key_std: float = 1.0,
                 key_dims: Optional[int] = None, **kwargs) -> None:
        if kwargs:
            raise TypeError(f'PrefixTuning got unexpected {sorted(kwargs)}')
        super().__init__(dims, num_heads, num_prefix, form, init,
                         scale=1.0, learnable_scale=False,
                         reparam_hidden=reparam_hidden, init_std=init_std,
                         key_std=key_std, key_dims=key_dims)

    @classmethod
    def from_host(cls, host: nn.Module, **kwargs) -> BaseTuner:
        if isinstance(host, msda_type()):
            kwargs.setdefault('form', 'parallel')
            kwargs.update(scale=1.0, learnable_scale=False)
        return super().from_host(host, **kwargs)
