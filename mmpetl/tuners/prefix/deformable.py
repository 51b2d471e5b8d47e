"""Prefixes for multi-scale deformable attention (MMCV's
``MultiScaleDeformableAttention``, "MSDA").

MSDA samples values at learned offsets; it has no keys to prepend prefixes
to. Its prefix tuner, :class:`DeformablePrefix`, takes three forms
(``form``). In all of them ``q`` is the query plus its positional
embedding, batch first (what MSDA's ``sampling_offsets`` and
``attention_weights`` Linears see), split over the ``H`` heads like MSDA's
values, and the prefix attention of head ``h`` is::

    a_h = softmax(q_h P_k,h^T / sqrt(d_h))      (over the l prefixes)

* ``'parallel'`` (default; ETTA's unified additive form): a branch beside
  MSDA::

      out = MSDA(q) + W_o' (s * concat_h(a_h P_v,h))

  ``W_o'`` is the weight MSDA's ``output_proj`` applies: its frozen
  weight ``W_o`` plus, when a LoRA sits on ``output_proj``, that LoRA's
  ``(a/r) B A``, merged into ``W_o`` or not (the bias is already in
  ``MSDA(q)``). The branch is what the parallel prefix of a
  ``MultiheadAttention`` is: an attention over the prefixes added to the
  heads' output before the output projection, the tuned projection
  included (up to MSDA's output dropout, which acts on ``MSDA(q)`` only).
  So :meth:`~mmpetl.tuners.LoRALinear.merge` of that LoRA changes no
  output, and in a mixed-task batch each sample's branch is projected
  with its own task's LoRA (the LoRA routes its term itself). The branch
  can change neither where MSDA samples nor how much.
* ``'steer'``: the prefixes steer MSDA's own sampling. ``S`` =
  ``prefix_steer`` holds per prefix and head ``3*L*P`` numbers (``L``
  levels, ``P`` points): ``2*L*P`` offsets and ``L*P`` attention logits.
  Per query and head::

      [D_off,h ; D_logit,h] = s_steer * a_h S_h
      offsets_h = sampling_offsets(q)_h + D_off,h      (MSDA's units,
                                                        before it normalises)
      weights_h = softmax(attention_weights(q)_h + D_logit,h)

  i.e. the change is added to the two Linears' outputs (forward hooks on
  them), the logits before MSDA's softmax over ``L*P``. It is
  query-conditioned (``a_h`` depends on ``q``), not a fixed bias. The
  prefix attention is computed once per host forward (in the
  ``sampling_offsets`` hook) and reused by the ``attention_weights`` hook.
* ``'steer+parallel'``: both, sharing ``P_k`` and so ``a_h``: the steering
  with its own scale ``s_steer`` and the parallel branch with ``s``.

  Two scales, not one: the two changes live in different units (offsets
  in feature-map pixels, logits, features that ``W_o`` projects), so one
  ``s`` would tie them: its gradient sums two unrelated signals, and
  shrinking one branch (say the value branch hurts) would shrink the
  other. Each scale can turn its branch off alone and the health
  statistics report each; it costs one parameter.

A LoRA on ``sampling_offsets`` / ``attention_weights`` (LoRA's
``msda_linears``) adds its own term to the same outputs; the two sum in
either hook order, and merging the LoRA into the weight leaves the
steering as it was (exact, tested in the property matrix).

Initialisations (``init``):

* ``'scaled'`` (default of ``'parallel'``): ``s`` learnable from ``scale``
  (1), ``P_v = 0`` (exact at init, ``P_v`` gets a first-order gradient at
  step 0), ``P_k ~ N(0, key_std^2)`` with ``key_std = 1``: for queries of
  unit rms (they leave a LayerNorm) the prefix logits spread at order 1,
  so the branch starts query-dependent rather than as a constant bias.
  In the steer forms likewise ``S = 0``.
* ``'balanced'`` (default of the steer forms): ``P_k = 0``; ``S`` (and
  ``P_v``) drawn ``N(0, init_std^2)`` then centred over the prefixes
  (:func:`~mmpetl.tuners.prefix.inits.balanced_`). Every ``a_h`` is then
  uniform, so the change is ``mean_p S_p = 0`` (up to rounding) at init,
  and every non-scale tensor gets a gradient at step 0: ``S`` (and
  ``P_v``) through ``a = 1/l``, ``P_k`` through the softmax's derivative
  ``a_p (S_p - mean S)``. ``s``, ``s_steer`` start at ``scale`` (1),
  learnable.
* ``'activations'``: ``P_k`` are query tokens the frozen model computes on
  a few training batches, ``P_v = 0``, ``S = 0``.
* ``'random'``: ``P_k, P_v ~ N(0, init_std^2)``; with ``scale=0`` this is
  mmpetl's first default, under which every prefix gets a zero gradient at
  step 0 (each path runs through ``s = 0``) and the branch barely moves.
  Refused by the steer forms: it would move every sampling location and
  weight by a random amount at init.

Parameters (``d`` wide, ``H`` heads, ``L`` levels, ``P`` points, ``l``
prefixes; +1 per learnable scale):

* ``'parallel'``: ``2*l*d`` (+1);
* ``'steer'``: ``l*d + 3*l*H*L*P`` (+1);
* ``'steer+parallel'``: ``2*l*d + 3*l*H*L*P`` (+2).

Merge/fold rule: nothing of a prefix folds into MSDA's weights. The
parallel branch is an attention over the prefixes; the steering is
query-conditioned (``a_h`` depends on ``q``), so it is no fixed change of
``sampling_offsets`` / ``attention_weights`` (neither of their weights nor
of their biases) and stays a computation at inference. A LoRA beside it
merges exactly.

Health statistics (while ``recording``): the parallel branch records
``contribution``, ``share``, ``scale`` as before; the steering records
``steer_offset_rms`` (rms of ``D_off``, in ``sampling_offsets`` units),
``steer_weight_tv`` (mean over queries and heads of the total variation
``0.5 * sum |w_steered - w_frozen|`` between MSDA's attention weights
with and without the steering), ``steer_contribution`` (``||[D_off;
D_logit]|| / ||[offsets; logits]||``, the relative change of what the two
Linears give MSDA) and ``steer_scale``; under ``'steer'`` also
``contribution`` = ``steer_contribution`` and ``scale`` = ``s_steer`` (so
:class:`~mmpetl.engine.hooks.TunerHealthHook`'s summary and inert warning
cover it).
"""
from typing import Dict, Optional, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..common import check_positive_int
from .base import PrefixBase
from .inits import balanced_

__all__ = ['DeformablePrefix', 'STEER_FORMS', 'STEER_INITS']

#: the forms that steer MSDA's sampling
STEER_FORMS = ('steer', 'steer+parallel')
#: the inits that make sense for steering (exact at init)
STEER_INITS = ('balanced', 'scaled', 'activations')


class DeformablePrefix(PrefixBase):
    """Prefixes of an MSDA module: a parallel branch, steering of its
    sampling, or both (see :mod:`mmpetl.tuners.prefix.deformable`).

    Built by :class:`~mmpetl.tuners.ScaledPrefix` (and ``PrefixTuning``)
    for ``MultiScaleDeformableAttention`` hosts; same arguments as
    :class:`~mmpetl.tuners.prefix.PrefixBase`, plus:

    Args:
        form (str): ``'parallel'`` (default), ``'steer'`` or
            ``'steer+parallel'``.
        init (str, optional): None: ``'balanced'`` for the steer forms,
            ``'scaled'`` for ``'parallel'``.
        num_levels (int, optional): MSDA's levels ``L`` (steer forms).
        num_points (int, optional): MSDA's points per level ``P`` (steer
            forms).
    """

    forms = ('parallel', ) + STEER_FORMS

    def __init__(self, dims: int, num_heads: int, num_prefix: int = 50,
                 form: str = 'parallel', init: Optional[str] = None,
                 scale: float = 1.0, learnable_scale: bool = True,
                 init_std: float = 0.02, key_std: float = 1.0,
                 key_dims: Optional[int] = None,
                 num_levels: Optional[int] = None,
                 num_points: Optional[int] = None) -> None:
        init = self.default_init(form) if init is None else init
        super().__init__(dims, num_heads, num_prefix, form, init, scale,
                         learnable_scale, init_std, key_std, key_dims)
        self.num_levels, self.num_points = num_levels, num_points
        self._cache = None  # (linear input, steer()) of this host forward
        self._steer_stats: Dict[str, torch.Tensor] = {}
        if not self.steers:
            return
        name = type(self).__name__
        check_positive_int('num_levels', num_levels, name)
        check_positive_int('num_points', num_points, name)
        self.prefix_steer = nn.Parameter(torch.empty(
            num_prefix, num_heads, 3 * num_levels * num_points))
        if init == 'balanced':
            balanced_(self.prefix_steer, init_std, dim=0)
        else:  # 'scaled', 'activations': exact through S = 0
            nn.init.zeros_(self.prefix_steer)
        steer_scale = torch.tensor(float(scale))
        if form == 'steer':  # no value branch: no P_v, no s
            del self.prefix_v, self.scale
        if learnable_scale:
            self.steer_scale = nn.Parameter(steer_scale)
        else:
            self.register_buffer('steer_scale', steer_scale)

    @classmethod
    def default_init(cls, form: str) -> str:
        """``'balanced'`` for the steer forms, ``'scaled'`` otherwise."""
        return 'balanced' if form in STEER_FORMS else 'scaled'

    @property
    def steers(self) -> bool:
        """True for the forms that steer MSDA's sampling."""
        return self.form in STEER_FORMS

    @property
    def has_branch(self) -> bool:
        """True for the forms with the parallel value branch."""
        return self.form != 'steer'

    @classmethod
    def check_options(cls, form: str, init: Optional[str],
                      host: Optional[nn.Module] = None) -> None:
        init = cls.default_init(form) if init is None else init
        super().check_options(form, init, host)
        if form in STEER_FORMS and init not in STEER_INITS:
            where = cls.__name__ if host is None else (
                f'{cls.__name__} on {type(host).__module__}.'
                f'{type(host).__name__}')
            raise ValueError(
                f'{where}: init={init!r} makes no sense for form={form!r}: '
                f'it would move every sampling location and attention '
                f'weight of the pretrained deformable attention by a random '
                f'amount at init. Valid inits for the steer forms: '
                f'{list(STEER_INITS)} (default {cls.default_init(form)!r}).')

    @classmethod
    def from_host(cls, host: nn.Module, **kwargs) -> 'DeformablePrefix':
        form = kwargs.get('form', 'parallel')
        if kwargs.get('init') is None:
            kwargs['init'] = cls.default_init(form)
        cls.check_options(form, kwargs['init'], host)
        return cls(host.embed_dims, host.num_heads,
                   num_levels=host.num_levels, num_points=host.num_points,
                   **kwargs)

    def _install(self, host: nn.Module) -> None:
        # not routed_hook: the prefix part routes itself (forward, steer)
        # and a LoRA on output_proj routes its own term (project)
        if self.steers:
            host.register_forward_pre_hook(self._start)
            host.sampling_offsets.register_forward_hook(self._steer_offsets)
            host.attention_weights.register_forward_hook(
                self._steer_logits)
        host.register_forward_hook(self._hook, with_kwargs=True)

    # -- hooks ------------------------------------------------------------
    def _start(self, host, args):
        """A host forward starts: nothing computed for it yet."""
        self._cache, self._steer_stats = None, {}

    def _steering(self, query: torch.Tensor):
        """:meth:`steer` of the Linears' input, once per host forward."""
        if self._cache is None or self._cache[0] is not query:
            self._cache = (query, self.steer(query))
        return self._cache[1]

    def _steer_offsets(self, linear, args, output):
        if self.is_collecting:  # activation init: frozen host
            return output
        delta = self._steering(args[0])[0].to(output.dtype)
        if self.recording:
            self._record_steer('offsets', output, delta)
        return output + delta

    def _steer_logits(self, linear, args, output):
        if self.is_collecting:
            return output
        delta = self._steering(args[0])[1].to(output.dtype)
        if self.recording:
            self._record_steer('logits', output, delta)
        return output + delta

    def _hook(self, host, args, kwargs, output):
        cache, self._cache = self._cache, None
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
        if not self.has_branch:  # 'steer'
            if self.recording:
                self._finish_stats()
            return output
        if self.steers:  # 'steer+parallel': a_h shared with the steering
            heads = (cache[1] if cache is not None else
                     self.steer(query))[2]
        else:
            heads = self.forward(query)
        branch = self.project(host, heads)
        if not host.batch_first:
            branch = branch.transpose(0, 1)
        if self.recording:
            self.record_share(output, branch)
            if self.steers:
                self._finish_stats()
        return output + branch

    # -- computation ------------------------------------------------------
    def split(self, query: torch.Tensor) -> torch.Tensor:
        """``(B, N, d)`` -> ``(B, heads, N, d_h)``."""
        bsz, length, _ = query.shape
        return query.view(bsz, length, self.num_heads, -1).transpose(1, 2)

    def forward(self, query: torch.Tensor) -> torch.Tensor:
        """The parallel branch ``s * concat_h(Attn(q_h, P_k,h, P_v,h))``,
        before the output projection, per task group while routing.

        Args:
            query: ``(B, N, d)`` queries (positions added).

        Returns:
            Tensor: ``(B, N, d)``.
        """
        if not self.has_branch:
            raise RuntimeError(
                f"{type(self).__name__}(form='steer') has no parallel "
                f'branch; steer(query) gives its change of the sampling')
        if self.steers:
            return self.steer(query)[2]
        if self.routing is not None:  # a batch of several tasks
            return self.route(self.forward, (query, ), 0, in_dims=0)
        self._check_ready()
        bsz, length, dims = query.shape
        q = self.split(query)
        attn = F.scaled_dot_product_attention(
            q, self.heads(self.prefix_k, bsz, q.dtype),
            self.heads(self.prefix_v, bsz, q.dtype))
        return self.scale * attn.transpose(1, 2).reshape(bsz, length, dims)

    def steer(self, query: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor,
                                                  Optional[torch.Tensor]]:
        """What the steer forms add, per task group while routing.

        Args:
            query: ``(B, N, d)`` queries (positions added), batch first:
                the input of MSDA's ``sampling_offsets``.

        Returns:
            tuple: ``D_off`` ``(B, N, H*L*P*2)`` and ``D_logit``
            ``(B, N, H*L*P)`` in the layouts of ``sampling_offsets`` and
            ``attention_weights``' outputs; under ``'steer+parallel'``
            also the parallel branch ``s * concat_h(a_h P_v,h)``
            ``(B, N, d)`` before the output projection (else None).
        """
        if self.routing is not None:  # a batch of several tasks
            return self.route(self.steer, (query, ), 0, in_dims=0)
        self._check_ready()
        bsz, length, dims = query.shape
        q = self.split(query)  # (B, H, N, d_h)
        logits = q @ self.heads(self.prefix_k, bsz, q.dtype).transpose(
            -1, -2) * q.shape[-1]**-0.5
        attn = logits.softmax(-1)  # (B, H, N, l)
        # (B, H, N, l) @ (H, l, 3LP) -> (B, N, H, 3LP)
        change = (attn @ self.prefix_steer.to(q.dtype).transpose(0, 1)
                  ).transpose(1, 2) * self.steer_scale.to(q.dtype)
        points = self.num_levels * self.num_points
        offsets = change[..., :2 * points].reshape(bsz, length, -1)
        weights = change[..., 2 * points:].reshape(bsz, length, -1)
        heads = None
        if self.has_branch:
            values = attn @ self.heads(self.prefix_v, bsz, q.dtype)
            heads = self.scale.to(q.dtype) * values.transpose(1, 2).reshape(
                bsz, length, dims)
        return offsets, weights, heads

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

    # -- health statistics --------------------------------------------------
    @torch.no_grad()
    def _record_steer(self, which: str, frozen: torch.Tensor,
                      delta: torch.Tensor) -> None:
        frozen, delta = frozen.detach().float(), delta.detach().float()
        stats = self._steer_stats
        stats[f'{which}_norm2'] = frozen.square().sum()
        stats[f'{which}_delta2'] = delta.square().sum()
        if which == 'offsets':
            stats['steer_offset_rms'] = delta.square().mean().sqrt()
        else:  # MSDA's softmax over the L*P points of each head
            shape = frozen.shape[:-1] + (self.num_heads, -1)
            before = frozen.view(shape).softmax(-1)
            after = (frozen + delta).view(shape).softmax(-1)
            stats['steer_weight_tv'] = 0.5 * (after - before).abs().sum(
                -1).mean()

    @torch.no_grad()
    def _finish_stats(self) -> None:
        """Add the steering's statistics to ``last_stats``."""
        stats, self._steer_stats = self._steer_stats, {}
        if 'offsets_norm2' not in stats or 'logits_norm2' not in stats:
            return
        change = (stats['offsets_delta2'] + stats['logits_delta2']).sqrt()
        base = (stats['offsets_norm2'] + stats['logits_norm2']).sqrt()
        out = dict(steer_offset_rms=stats['steer_offset_rms'],
                   steer_weight_tv=stats['steer_weight_tv'],
                   steer_contribution=change / base.clamp_min(1e-12),
                   steer_scale=self.steer_scale.detach().float())
        if not self.has_branch:  # 'steer': the form's only change and s
            out.update(contribution=out['steer_contribution'],
                       scale=out['steer_scale'])
            self.last_stats = {}
        self.last_stats.update({k: float(v) for k, v in out.items()})

    # -- reporting --------------------------------------------------------
    def num_deploy_params(self) -> int:
        """``2*l*d`` (``'parallel'``), ``l*d + 3*l*H*L*P`` (``'steer'``),
        ``2*l*d + 3*l*H*L*P`` (``'steer+parallel'``), +1 per learnable
        scale."""
        count = self.num_prefix * self.key_dims
        if self.has_branch:
            count += self.num_prefix * self.dims + int(
                isinstance(self.scale, nn.Parameter))
        if self.steers:
            count += 3 * self.num_prefix * self.num_heads * \
                self.num_levels * self.num_points + int(
                    isinstance(self.steer_scale, nn.Parameter))
        return count

    def describe(self) -> Dict[str, object]:
        out = super().describe()
        if self.steers:
            out.update(num_levels=self.num_levels,
                       num_points=self.num_points)
        return out
