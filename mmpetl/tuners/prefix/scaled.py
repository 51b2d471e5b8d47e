"""The prefix forms on attentions with keys: :class:`ScaledPrefix` (the
``joint``, ``parallel``, ``reweight`` and ``reweight+parallel`` forms, the
MLP re-parametrisation) and :class:`PrefixTuning` (``s = 1``); the
formulas are in :mod:`mmpetl.tuners.prefix`.

The re-weighting forms, per head ``h`` (``d_h`` the width of the host's
query/key heads: ``2*d/H`` in conditional cross-attention)::

    a_h  = softmax(q_h P_k,h^T / sqrt(d_h))       over the l prefixes
    q'_h = q_h + s * a_h P_q,h
    h    = Attn_frozen(q', K, V)                   ('reweight')
    h    = Attn_frozen(q', K, V) + s_v * a_h P_v,h ('reweight+parallel')

``Attn_frozen`` is the host's own attention (its keys, values, masks,
position biases, scaling), so its logits become
``q.k + s (a P_q).k``: a query-conditioned change of *which frozen keys*
a query attends, where the parallel form can only add values. The shift
is read in the space of the logits, so it also retargets the positional
half of a conditional cross-attention query. Only queries are shifted:
shifting keys as well (``k' = k + b(k) P``) would add a second softmax
over every key of every window and a term of the same kind
(``q . b(k) P``: bilinear in query and key), at the cost of the keys'
length instead of the queries'; the query shift already gives every
query its own direction in key space, for ``2*l*d_k`` parameters and one
``L x l`` attention.

``reweight+parallel`` shares ``P_k`` (and so ``a``, up to the branch's
dropout) between the query shift and the value branch, and keeps two
scales: ``s`` (``scale``) multiplies a shift of the logits, which acts
through an exponential, ``s_v`` (``scale_v``) a value added linearly to
the output; one shared scalar would tie the step size of the two (its
gradient is the sum of two terms of different units), and a second one
costs one parameter. Both start at ``scale`` (1).

Initialisations of the re-weighting forms: ``'balanced'`` (default:
``P_k = 0``, ``P_q`` and ``P_v`` drawn ``N(0, init_std^2)`` and centred
over the prefixes; ``a`` is uniform, so ``a P_q = 0`` and ``a P_v = 0``
up to rounding: exact at init, and ``P_k``, ``P_q``, ``P_v`` all get a
gradient at step 0, ``P_k`` through the softmax because the rows of
``P_q``/``P_v`` differ), ``'scaled'`` and ``'activations'`` (``P_k``
drawn or taken from the frozen keys, ``P_q = P_v = 0``: exact at init,
``P_k`` gets its first gradient at step 1). ``'random'`` is refused
(its ``P_q`` would shift every query at init) and so is
``reparam_hidden`` (its MLP makes ``P_k, P_v`` only).

Parameters: ``'reweight'`` ``2*l*d_k`` (+1 learnable ``s``; there is no
``P_v``), ``'reweight+parallel'`` ``l*(2*d_k + d)`` (+2), with
``d_k = key_dims`` (``d``; ``2d`` in conditional cross-attention).

Merge rule: none. The query shift ``s * softmax(q P_k^T) P_q`` is a
non-linear function of each query, so no ``W_q'`` reproduces it
(``merge()`` returns False) and there is no re-parametrisation to fold.

Health statistics (``recording``): ``share`` = mean total variation
between the frozen and the re-weighted attention distributions over the
real keys (the fraction of attention mass moved; for the joint form the
same quantity is the prefix mass ``lam``), ``logit_change`` = rms of
the change of the logits / rms of the frozen logits, ``contribution``
= ||h - Attn(q, K, V)|| / ||Attn(q, K, V)||, ``scale`` (and
``scale_v``).

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
from ..base import BaseTuner, TunerHostError, count_params
from ..common import check_positive_int
from .base import PrefixBase
from .deformable import DeformablePrefix
from .hosts import attention_hosts, embed_dims_of, prefix_widths
from .inits import balanced_, scaled_key_std

__all__ = ['ScaledPrefix', 'PrefixTuning', 'KEY_FORMS', 'REWEIGHT_FORMS',
           'REWEIGHT_INITS', 'default_init']

#: the forms of an attention with keys (:attr:`ScaledPrefix.forms`)
KEY_FORMS = ('joint', 'parallel', 'reweight', 'reweight+parallel')
#: the forms that shift the queries (``P_q``)
REWEIGHT_FORMS = ('reweight', 'reweight+parallel')
#: the inits the re-weighting forms take (each exact at init)
REWEIGHT_INITS = ('balanced', 'scaled', 'activations')


def default_init(form: str, plain: str = 'scaled') -> str:
    """``init=None`` means ``'balanced'`` for the re-weighting forms and
    ``plain`` for the others."""
    return 'balanced' if form in REWEIGHT_FORMS else plain


def _where(cls, host: Optional[nn.Module]) -> str:
    return cls.__name__ if host is None else (
        f'{cls.__name__} on {type(host).__module__}.{type(host).__name__}')


@TUNERS.register_module()
class ScaledPrefix(PrefixBase):
    """Scaled prefix tuning for multi-head attention (see
    :mod:`mmpetl.tuners.prefix` and this module).

    Args (beyond :class:`PrefixBase`'s):
        form (str): one of :data:`KEY_FORMS`.
        init (str, optional): None: ``'balanced'`` for the re-weighting
            forms, ``'scaled'`` otherwise.
        reparam_hidden (int, optional): hidden width of the MLP
            re-parametrisation used in training (``init='random'``, forms
            ``joint``/``parallel`` only); ``None`` learns the prefixes
            directly.

    Tensors: ``prefix_k`` ``(l, key_dims)``; ``prefix_v`` ``(l, d)``
    (not in ``'reweight'``); ``prefix_q`` ``(l, key_dims)`` (re-weighting
    forms); ``scale`` ``s``; ``scale_v`` ``s_v`` (``'reweight+parallel'``).
    """

    forms = KEY_FORMS

    def __init__(self, dims: int, num_heads: int, num_prefix: int = 50,
                 form: str = 'parallel', init: Optional[str] = None,
                 scale: float = 1.0, learnable_scale: bool = True,
                 reparam_hidden: Optional[int] = None,
                 init_std: float = 0.02, key_std: float = 1.0,
                 key_dims: Optional[int] = None) -> None:
        init = self.default_init(form) if init is None else init
        if reparam_hidden is not None and form in REWEIGHT_FORMS:
            raise ValueError(
                f'{type(self).__name__}: reparam_hidden does not apply to '
                f'form={form!r} (its MLP produces P_k, P_v only); use '
                f"reparam_hidden=None, or form='joint'/'parallel'")
        super().__init__(dims, num_heads, num_prefix, form, init, scale,
                         learnable_scale, init_std, key_std, key_dims)
        self.reparam_hidden = reparam_hidden
        if form in REWEIGHT_FORMS:
            self.prefix_q = nn.Parameter(torch.zeros(num_prefix,
                                                     self.key_dims))
            if init == 'balanced':
                balanced_(self.prefix_q, init_std)
            if form == 'reweight':  # no value branch
                del self.prefix_v
            else:  # s_v: the value branch's own scale
                tensor = torch.tensor(float(scale))
                if learnable_scale:
                    self.scale_v = nn.Parameter(tensor)
                else:
                    self.register_buffer('scale_v', tensor)
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
    def check_options(cls, form: str, init: str,
                      host: Optional[nn.Module] = None) -> None:
        """:meth:`PrefixBase.check_options`, and the re-weighting forms
        take :data:`REWEIGHT_INITS` only."""
        super().check_options(form, init, host)
        if form in REWEIGHT_FORMS and init not in REWEIGHT_INITS:
            raise ValueError(
                f'{_where(cls, host)}: init={init!r} does not apply to '
                f'form={form!r} (the query shift must be 0 at init); valid '
                f'inits for it: {list(REWEIGHT_INITS)} (default '
                f"'balanced')")

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
            if kwargs.get('init', '') is None:
                del kwargs['init']
            return DeformablePrefix.from_host(host, **kwargs)
        form = kwargs.get('form', cls.default_form())
        if kwargs.get('init') is None:
            kwargs['init'] = cls.default_init(form)
        cls.check_options(form, kwargs['init'], host)
        kwargs.setdefault('key_std', scaled_key_std(host))
        return cls(dims, num_heads, key_dims=prefix_widths(host)[0],
                   **kwargs)

    def _install(self, host: nn.Module) -> None:
        if getattr(host, 'v_shortcut', False):
            raise TunerHostError('prefix tuning does not support '
                                 'MultiheadAttention with v_shortcut=True')
        install_tuned_forward(host)

    @classmethod
    def default_form(cls) -> str:
        return 'parallel'

    @classmethod
    def default_init(cls, form: str) -> str:
        """The init that ``init=None`` means for ``form``."""
        return default_init(form)

    def key_values(self) -> Tuple[torch.Tensor, Optional[torch.Tensor]]:
        """``(P_k, P_v)`` (``P_v`` None in ``'reweight'``)."""
        if self.reparam_hidden is None:
            return self.prefix_k, getattr(self, 'prefix_v', None)
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
        p_k, p_v = (None if p is None else self.heads(p, bsz, q.dtype)
                    for p in self.key_values())
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
        if self.form in REWEIGHT_FORMS:
            return self._reweight(q, k, v, attn_mask, dropout_p, p_k, p_v,
                                  scale)
        frozen = F.scaled_dot_product_attention(q, k, v, attn_mask,
                                                dropout_p)
        branch = scale * F.scaled_dot_product_attention(q, p_k, p_v,
                                                        None, dropout_p)
        if self.recording:
            self.record_share(frozen, branch)
        return frozen + branch

    def _reweight(self, q, k, v, attn_mask, dropout_p, p_k, p_v,
                  scale) -> torch.Tensor:
        """The re-weighting forms: ``q' = q + s * softmax(q P_k^T /
        sqrt(d_h)) P_q`` (no dropout on this softmax: it moves queries,
        it is no attention output), then the frozen attention with ``q'``;
        ``'reweight+parallel'`` adds ``s_v * Attn(q, P_k, P_v)`` (the
        original ``q``, the attention dropout as in ``'parallel'``)."""
        p_q = self.heads(self.prefix_q, q.shape[0], q.dtype)
        shifted = q + scale * F.scaled_dot_product_attention(q, p_k, p_q)
        out = F.scaled_dot_product_attention(shifted, k, v, attn_mask,
                                             dropout_p)
        if p_v is not None:
            scale_v = self.scale_v.to(q.dtype)
            out = out + scale_v * F.scaled_dot_product_attention(
                q, p_k, p_v, None, dropout_p)
        if self.recording:
            self._record_reweight(q, shifted, k, v, attn_mask, p_k, p_v)
        return out

    @torch.no_grad()
    def _record_reweight(self, q, shifted, k, v, attn_mask, p_k,
                         p_v) -> None:
        """``share``: mean total variation between the frozen and the
        re-weighted attention over the real keys; ``logit_change``: rms
        change of the logits / rms frozen logit; ``contribution`` of the
        whole change (without dropout); ``scale``, ``scale_v``."""
        q32, k32 = q.float(), k.float()
        factor = 1.0 / math.sqrt(q.shape[-1])
        logits = (q32 @ k32.transpose(-1, -2)) * factor
        delta = ((shifted.float() - q32) @ k32.transpose(-1, -2)) * factor
        masked = logits if attn_mask is None else logits + attn_mask.float()
        before = masked.softmax(-1)
        after = (masked + delta).softmax(-1)
        moved = 0.5 * (after - before).abs().sum(-1)
        moved = moved.nan_to_num(0.0).mean()  # fully masked rows: 0
        rel = delta.pow(2).mean().sqrt() / logits.pow(2).mean().sqrt(
        ).clamp_min(1e-12)
        frozen = F.scaled_dot_product_attention(q, k, v, attn_mask)
        change = F.scaled_dot_product_attention(shifted, k, v,
                                                attn_mask) - frozen
        extra = dict(logit_change=rel)
        if p_v is not None:
            change = change + self.scale_v.to(q.dtype) * \
                F.scaled_dot_product_attention(q, p_k, p_v)
            extra['scale_v'] = self.scale_v.detach().float()
        self.record_change(frozen, change, share=moved, **extra)

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

    def merge(self) -> bool:
        """No merge: the re-weighting forms' shift is a non-linear function
        of each query (no ``W_q'`` reproduces it), the other forms' prefixes
        are extra keys/values."""
        return False

    def num_deploy_params(self) -> int:
        if self.reparam_hidden is not None:  # what fold_reparam leaves
            return super().num_deploy_params()
        return count_params(self)


@TUNERS.register_module()
class PrefixTuning(ScaledPrefix):
    """Standard prefix tuning: :class:`ScaledPrefix` with ``s = 1`` fixed
    (Li & Liang: the joint form, random init, by default)."""

    def __init__(self, dims: int, num_heads: int, num_prefix: int = 50,
                 form: str = 'joint', init: Optional[str] = None,
                 reparam_hidden: Optional[int] = None,
                 init_std: float = 0.02, key_std: float = 1.0,
                 key_dims: Optional[int] = None, **kwargs) -> None:
        if kwargs:
            raise TypeError(f'PrefixTuning got unexpected {sorted(kwargs)}')
        super().__init__(dims, num_heads, num_prefix, form,
                         self.default_init(form) if init is None else init,
                         scale=1.0, learnable_scale=False,
                         reparam_hidden=reparam_hidden, init_std=init_std,
                         key_std=key_std, key_dims=key_dims)

    @classmethod
    def default_form(cls) -> str:
        return 'joint'

    @classmethod
    def default_init(cls, form: str) -> str:
        """Li & Liang's ``'random'``; ``'balanced'`` for the re-weighting
        forms."""
        return default_init(form, 'random')

    @classmethod
    def from_host(cls, host: nn.Module, **kwargs) -> BaseTuner:
        if isinstance(host, msda_type()):
            kwargs.setdefault('form', 'parallel')
            kwargs.update(scale=1.0, learnable_scale=False)
        return super().from_host(host, **kwargs)
