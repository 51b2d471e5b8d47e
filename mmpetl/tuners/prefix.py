"""Scaled prefix tuning (ETTA's attention tuner; Li & Liang's at s = 1).

``l`` learned prefixes ``P_k, P_v`` (each ``l x d``, split over the heads
like projected keys/values) extend every head's attention in one of two
forms (``form``):

* ``'joint'``, ETTA's formula and Li & Liang's prefix tuning: one softmax
  over the prefixes and the keys, the prefix values scaled by ``s``::

      h = softmax(Q [P_k; K]^T / sqrt(d_h)) [s * P_v; V]
        = (1 - lam) * Attn(Q, K, V) + s * lam * Attn(Q, P_k, P_v)

  ``lam`` is the softmax mass on the prefixes. Not exact at init: with
  prefix logits near the keys' ones about ``l / (l + N)`` of the mass leaves
  the N pretrained keys, shrinking the frozen attention's output at step 0.
* ``'parallel'``: the prefixes get a softmax of their own, added to the
  frozen attention::

      h = Attn(Q, K, V) + s * Attn(Q, P_k, P_v)

  With ``P_v = 0`` at init the tuned attention is exactly the frozen one,
  and ``P_v`` still gets a first-order gradient at step 0 (through ``s``,
  which starts non-zero). MMCV's deformable attention, which has no keys,
  takes this form (:class:`~mmpetl.tuners.DeformablePrefix`).

Initialisations (``init``):

* ``'random'``: ``P_k, P_v ~ N(0, init_std^2)`` (Li & Liang without
  re-parametrisation; mmpetl's first default).
* ``'scaled'``: ``P_v = 0``; ``P_k ~ N(0, sigma^2)`` with ``sigma`` the rms
  of the host's projected keys for unit-variance inputs
  (``||W_k||_F / sqrt(d)``), so that prefix logits spread like the real
  keys' ones instead of sitting near 0 (a uniform softmax makes the branch a
  constant bias).
* ``'activations'``: ``P_k`` (and, in the joint form, ``P_v``) are keys
  (values) the frozen model itself projects on a few training batches
  (Li & Liang found real-activation inits far better than random). The
  ``parallel`` form keeps ``P_v = 0`` (exact at init). Done before the first
  step by :class:`mmpetl.engine.hooks.TunerInitHook` (or
  :func:`mmpetl.models.init_prefixes_from_activations`); training without
  it is refused.

Masks apply to the real keys only; prefix slots are always attended.

Hosts: torch/mmcv/mmpretrain ``MultiheadAttention``, MMCV's deformable
attention (:class:`~mmpetl.tuners.DeformablePrefix`), and MMDetection's
``ConditionalAttention`` (Conditional DETR, DAB-DETR) and Swin
``WindowMSA`` (matched through its ``ShiftWindowMSA``). In Swin the
prefixes are attended per window: every window's queries see the same
``l`` prefixes, the relative position bias and the shifted-window mask
apply to the window's own keys only.

Conditional cross-attention scores ``q_h . k_h / sqrt(2*d_h)`` with
``q_h = [content_h ; positional_h]`` and ``k_h`` likewise ``2*d_h`` wide,
values ``d_h`` wide. Its ``P_k`` is ``l x 2d`` (per head ``[P_kc ; P_kp]``,
in the space of the logits: a prefix can answer the content part of a
query, its positional part or both), ``P_v`` is ``l x d``, so
``l*(2d + d)`` parameters there. The parallel form stays exact at init
(``P_v = 0`` zeroes the branch whatever ``P_k``); ``'scaled'`` draws
``P_k`` with the rms of the stacked content and positional key
projections ``[W_kc; W_kp]``.

Parameters, direct: ``2*l*d`` (+1 for a learnable ``s``; conditional
cross-attention ``3*l*d``). With the MLP re-parametrisation
(``reparam_hidden=h``, ``init='random'`` only) training holds an embedding
and an MLP, ``l*d + d*h + h + 2*d*h + 2*d`` (+1; its output layer is
``d_k + d`` wide), and deployment only the resulting ``2*l*d`` (+1).
"""
import math
from typing import Dict, List, Optional, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F

from mmpetl.registry import TUNERS
from .attention import (is_conditional_attention, is_shift_window_msa,
                        is_window_msa, mmcv_attention_type, msda_type,
                        vit_attention_type)
from .base import BaseTuner, TunerHostError
from .common import check_positive_int

__all__ = ['ScaledPrefix', 'PrefixTuning', 'PrefixBase', 'attention_hosts',
           'PREFIX_FORMS', 'PREFIX_INITS', 'prefix_widths',
           'PREFIX_HOSTS']

PREFIX_FORMS = ('joint', 'parallel')
PREFIX_INITS = ('random', 'scaled', 'activations')


def attention_hosts(name: str, module: nn.Module,
                    tuner: str) -> List[Tuple[str, nn.Module]]:
    """Resolve a matched attention module to the module a prefix tunes."""
    if isinstance(module, mmcv_attention_type()):
        return [(f'{name}.attn', module.attn)]
    if is_shift_window_msa(module):
        return [(f'{name}.w_msa', module.w_msa)]
    if isinstance(module, (nn.MultiheadAttention, vit_attention_type(),
                           msda_type())) or is_conditional_attention(
                               module) or is_window_msa(module):
        return [(name, module)]
    raise TunerHostError(
        f'{tuner} cannot tune `{name}` of type {type(module).__name__}; it '
        f'tunes attention: {PREFIX_HOSTS}. Point its `targets`/`presets` '
        f'at attention modules (presets: *_attn).')


#: the attention types prefix tuners attach to, for error messages
PREFIX_HOSTS = ('torch/mmcv/mmpretrain MultiheadAttention, mmcv '
                'MultiScaleDeformableAttention, mmdet ConditionalAttention '
                '(Conditional DETR, DAB-DETR) and mmdet Swin '
                'ShiftWindowMSA/WindowMSA')


def prefix_widths(host: nn.Module) -> Tuple[int, int]:
    """``(key width, value width)`` of a host's prefixes: ``(d, d)``, and
    ``(2d, d)`` for conditional cross-attention (see the module doc)."""
    dims, _ = embed_dims_of(host)
    if is_conditional_attention(host) and host.cross_attn:
        return 2 * dims, dims
    return dims, dims


def embed_dims_of(host: nn.Module) -> Tuple[int, int]:
    """(embed_dims, num_heads) of an attention host."""
    dims = getattr(host, 'embed_dim', None) or host.embed_dims
    return dims, host.num_heads


def key_weight_of(host: nn.Module) -> Optional[torch.Tensor]:
    """The host's key projection ``W_k`` (``d x d``; conditional
    cross-attention: ``[W_kc; W_kp]``, ``2d x d``), None if it has none."""
    if isinstance(host, nn.MultiheadAttention):
        if host._qkv_same_embed_dim:
            return host.in_proj_weight.chunk(3)[1]
        return host.k_proj_weight
    if isinstance(host, vit_attention_type()) or is_window_msa(host):
        return host.qkv.weight.chunk(3)[1]
    if is_conditional_attention(host):
        if host.cross_attn:
            return torch.cat([host.kcontent_proj.weight,
                              host.kpos_proj.weight])
        return host.kcontent_proj.weight
    return None


class PrefixBase(BaseTuner):
    """Prefixes ``P_k, P_v``, their init and the scale ``s``; the host-side
    computation is the subclass's.

    Args:
        dims (int): embedding width d of the attention.
        num_heads (int): heads; ``d`` must divide evenly.
        num_prefix (int): prefix length l (ETTA: ~50).
        form (str): ``'joint'`` or ``'parallel'`` (see the module doc).
        init (str): ``'random'``, ``'scaled'`` or ``'activations'``.
        scale (float): initial ``s``.
        learnable_scale (bool): learn ``s``; ``False`` with ``scale=1`` is
            standard prefix tuning.
        init_std (float): std of ``'random'``'s normal init.
        key_std (float): std of ``P_k`` under ``'scaled'`` (the host's
            ``from_host`` derives it from the key projection).
        key_dims (int, optional): width of ``P_k`` when the host's logits
            are not ``d`` wide (conditional cross-attention: ``2d``);
            None: ``dims``.
    """

    attr_name = 'prefix'
    #: learned tokens (no weight decay by default, see the optimizer)
    token_params = ('prefix_k', 'prefix_v', 'embedding')
    forms: Tuple[str, ...] = PREFIX_FORMS
    routable = True

    def __init__(self, dims: int, num_heads: int, num_prefix: int = 50,
                 form: str = 'parallel', init: str = 'scaled',
                 scale: float = 1.0, learnable_scale: bool = True,
                 init_std: float = 0.02, key_std: float = 1.0,
                 key_dims: Optional[int] = None) -> None:
        super().__init__()
        name = type(self).__name__
        check_positive_int('num_prefix', num_prefix, name)
        self.check_options(form, init)
        key_dims = dims if key_dims is None else key_dims
        for width in (dims, key_dims):
            if width % num_heads:
                raise ValueError(f'{name}: {width} dims do not split over '
                                 f'{num_heads} heads')
        self.dims, self.num_heads, self.num_prefix = dims, num_heads, \
            num_prefix
        self.key_dims = key_dims
        self.form, self.init = form, init
        self.prefix_k = nn.Parameter(torch.empty(num_prefix, key_dims))
        self.prefix_v = nn.Parameter(torch.empty(num_prefix, dims))
        if init == 'random':
            nn.init.normal_(self.prefix_k, std=init_std)
            nn.init.normal_(self.prefix_v, std=init_std)
        else:  # 'scaled', and the placeholder until activations arrive
            nn.init.normal_(self.prefix_k, std=key_std)
            nn.init.zeros_(self.prefix_v)
        self._init_scale(scale, learnable_scale)
        #: True until init='activations' has its data (TunerInitHook)
        self.needs_data_init = init == 'activations'
        self._collected: Optional[List[Tuple[torch.Tensor, ...]]] = None

    @classmethod
    def check_options(cls, form: str, init: str,
                      host: Optional[nn.Module] = None) -> None:
        """Refuse an unknown ``form``/``init``, naming the valid choices
        (and the host type when known)."""
        where = cls.__name__ if host is None else (
            f'{cls.__name__} on {type(host).__module__}.'
            f'{type(host).__name__}')
        if form not in PREFIX_FORMS:
            raise ValueError(f'{where}: unknown form={form!r}; valid forms: '
                             f'{list(PREFIX_FORMS)}')
        if init not in PREFIX_INITS:
            raise ValueError(f'{where}: unknown init={init!r}; valid inits: '
                             f'{list(PREFIX_INITS)}')
        if form not in cls.forms:
            raise TunerHostError(
                f"prefix form={form!r} does not apply to {where} "
                f'(deformable attention samples values at offsets and has '
                f'no keys to share a softmax with); valid forms there: '
                f"{list(cls.forms)}. Use form='parallel', or point the "
                f"joint-form tuner at MultiheadAttention only (e.g. presets="
                f"['decoder_self_attn']).")

    # -- prefixes -----------------------------------------------------------
    def key_values(self) -> Tuple[torch.Tensor, torch.Tensor]:
        """``(P_k, P_v)``: ``(l, key_dims)`` and ``(l, d)`` (``s`` not
        applied)."""
        return self.prefix_k, self.prefix_v

    def heads(self, prefix: torch.Tensor, bsz: int,
              dtype: torch.dtype) -> torch.Tensor:
        """``(l, d)`` -> ``(bsz, heads, l, d_h)`` (a view)."""
        return prefix.to(dtype).view(self.num_prefix, self.num_heads,
                                     -1).transpose(0, 1).unsqueeze(0).expand(
                                         bsz, -1, -1, -1)

    def _check_ready(self) -> None:
        if self.needs_data_init and self.training:
            raise RuntimeError(
                f"{type(self).__name__}(init='activations') has not been "
                f'initialised from activations: mmpetl.TunerInitHook does '
                f'it before the first training step (it is in '
                f'configs/_base_/petl_runtime.py); outside a Runner call '
                f'mmpetl.models.init_prefixes_from_activations(model, '
                f'batches) first.')

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        # a checkpoint that holds the prefixes (tuner checkpoint, resume)
        # replaces any data-dependent init
        if prefix + 'prefix_k' in state_dict:
            self.needs_data_init = False
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    # -- init='activations' -------------------------------------------------
    def start_collecting(self) -> None:
        """Record what the frozen host computes (prefix branch off)."""
        self._collected = []

    def collect(self, keys: torch.Tensor, values: Optional[torch.Tensor],
                valid: Optional[torch.Tensor]) -> None:
        """Keep tokens for the activation init.

        Args:
            keys: ``(B, H, S, d_h)`` projected keys (or queries, MSDA).
            values: ``(B, H, S, d_h)`` projected values, or None.
            valid: ``(B, S)`` bool, False at padded positions; None: all.
        """
        def tokens(t):  # (B, H, S, d_h) -> (B*S, H*d_h)
            return t.detach().transpose(1, 2).flatten(2).flatten(0, 1)

        keep = None if valid is None else valid.reshape(-1)
        k = tokens(keys)
        v = None if values is None else tokens(values)
        if keep is not None:
            k = k[keep]
            v = None if v is None else v[keep]
        self._collected.append((k.float().cpu(),
                                None if v is None else v.float().cpu()))

    @torch.no_grad()
    def finish_collecting(self, generator: torch.Generator) -> None:
        """Draw ``l`` distinct collected tokens as the prefixes."""
        collected, self._collected = self._collected, None
        if not collected:
            raise RuntimeError(
                f'{type(self).__name__}: no activations reached this '
                f'attention during the init batches (is it on the path of '
                f'the forward?)')
        keys = torch.cat([k for k, _ in collected])
        if keys.shape[0] < self.num_prefix:
            raise RuntimeError(
                f"{type(self).__name__}(init='activations') needs "
                f'{self.num_prefix} tokens, the init batches gave '
                f'{keys.shape[0]}: use more init batches or fewer prefixes')
        pick = torch.randperm(keys.shape[0], generator=generator)[
            :self.num_prefix]
        self.prefix_k.copy_(keys[pick])
        if self.form == 'joint' and collected[0][1] is not None:
            values = torch.cat([v for _, v in collected])
            self.prefix_v.copy_(values[pick] / float(self.scale))
        self.needs_data_init = False

    # -- health statistics --------------------------------------------------
    @torch.no_grad()
    def record_share(self, frozen: torch.Tensor, change: torch.Tensor,
                     share: Optional[torch.Tensor] = None) -> None:
        """Health stats: contribution, ``s`` and the prefix share ``lam``
        (given: the joint form's softmax mass; else the parallel form's
        ||branch|| / (||frozen|| + ||branch||))."""
        if share is None:
            frozen_norm = frozen.detach().float().norm()
            change_norm = change.detach().float().norm()
            share = change_norm / (frozen_norm + change_norm).clamp_min(
                1e-12)
        self.record_change(frozen, change, share=share)

    def num_deploy_params(self) -> int:
        return self.num_prefix * (self.key_dims + self.dims) + int(
            isinstance(self.scale, nn.Parameter))

    def describe(self) -> Dict[str, object]:
        out = dict(num_prefix=self.num_prefix, form=self.form,
                   init=self.init)
        if self.key_dims != self.dims:  # conditional cross-attention
            out['key_dims'] = self.key_dims
        return out


@TUNERS.register_module()
class ScaledPrefix(PrefixBase):
    """Scaled prefix tuning for multi-head attention (see the module doc).

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
            from .deformable_prefix import DeformablePrefix
            if kwargs.get('reparam_hidden') is not None:
                raise TunerHostError(
                    f'{cls.__name__}: reparam_hidden does not apply to '
                    f'MultiScaleDeformableAttention hosts (their prefix '
                    f'branch learns P_k, P_v directly)')
            kwargs.pop('reparam_hidden', None)
            return DeformablePrefix.from_host(host, **kwargs)
        cls.check_options(kwargs.get('form', 'parallel'),
                          kwargs.get('init', 'scaled'), host)
        weight = key_weight_of(host)
        kwargs.setdefault('key_std', float(
            weight.detach().float().norm() / math.sqrt(weight.shape[0])))
        return cls(dims, num_heads, key_dims=prefix_widths(host)[0],
                   **kwargs)

    def _install(self, host: nn.Module) -> None:
        if getattr(host, 'v_shortcut', False):
            raise TunerHostError('prefix tuning does not support '
                                 'MultiheadAttention with v_shortcut=True')
        from .attention import install_tuned_forward
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
        if self._collected is not None:  # activation init: frozen host
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
