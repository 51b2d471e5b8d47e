"""Scaled prefix tuning (ETTA's attention tuner; Li & Liang's at s = 1).

``l`` learned prefixes ``P_k, P_v`` (each ``l x d``, split over the heads
like projected keys/values) extend every head's attention in one of these
forms (``form``; an attention with keys takes these four, deformable
attention its own, below):

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
  takes this form, or steers its sampling with the prefixes (below).
* ``'reweight'``: the prefixes move the queries, so they change *which
  frozen keys* a query attends (the forms above only add values). A
  third tensor ``P_q`` (``l x d_k``, split like ``P_k``) and, per head::

      a   = softmax(Q P_k^T / sqrt(d_h))            over the l prefixes
      Q'  = Q + s * a P_q
      h   = Attn(Q', K, V)

  ``Attn`` is the host's frozen attention (same keys, values, masks,
  position biases, scaling), so the logits become
  ``Q K^T + s (a P_q) K^T``: a query-conditioned change of the logits
  over the real keys. No ``P_v``.
* ``'reweight+parallel'``: both, sharing ``P_k``, with a scale each
  (``s`` on the query shift, ``s_v`` on the values; see
  :mod:`.scaled`)::

      h = Attn(Q', K, V) + s_v * Attn(Q, P_k, P_v)

  Merge rule of the re-weighting forms: none; ``s * a P_q`` is a
  non-linear function of the query, so it folds into no ``W_q``.

Initialisations (``init``; None: ``'balanced'`` for the re-weighting
forms, ``'scaled'`` otherwise, ``'random'`` for :class:`PrefixTuning`):

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
* ``'balanced'``: ``P_k = 0``; ``P_v`` (and ``P_q``) ``N(0, init_std^2)``
  centred over the prefixes: the uniform softmax makes ``a P_v = a P_q =
  0`` (exact at init up to rounding) while ``P_k``, ``P_v``, ``P_q`` all
  get a gradient at step 0. The re-weighting forms take ``'balanced'``,
  ``'scaled'`` and ``'activations'`` (both with ``P_q = P_v = 0``), not
  ``'random'`` (its ``P_q`` would shift the queries at init).

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

Deformable attention (MMCV's ``MultiScaleDeformableAttention``, MSDA;
:class:`~mmpetl.tuners.DeformablePrefix`, :mod:`.deformable`) has no keys
and takes ``form='parallel'`` (default: the branch above, projected by
``output_proj``'s tuned weight), ``'steer'`` or ``'steer+parallel'``. With
``q`` the query plus its position (what MSDA's ``sampling_offsets`` and
``attention_weights`` Linears see) and ``a_h = softmax(q_h P_k,h^T /
sqrt(d_h))`` over the prefixes, the steering adds ``s_steer * a_h S_h`` to
those Linears' outputs: ``S`` (``prefix_steer``, ``l x H x 3*L*P`` for
``L`` levels, ``P`` points) holds per prefix and head ``2*L*P`` offsets (in
``sampling_offsets``' units, before MSDA normalises them) and ``L*P``
attention logits (before MSDA's softmax), so the prefixes move where MSDA
samples and how much each sample weighs, per query. ``'steer+parallel'``
adds the value branch too, sharing ``P_k`` (``a_h``), with its own ``s``.
The steer forms default to ``init='balanced'`` (``P_k = 0``, ``S`` and
``P_v`` drawn then centred over the prefixes: no change at init, a
gradient on every non-scale tensor at step 0; ``'scaled'`` and
``'activations'`` start from ``S = 0``; ``'random'`` is refused). The
steering is query-conditioned, so it folds into no weight; a LoRA on the
same Linears merges exactly beside it. Parameters: ``'steer'`` ``l*d +
3*l*H*L*P`` (+1), ``'steer+parallel'`` ``2*l*d + 3*l*H*L*P`` (+2).

Parameters, direct: ``2*l*d`` (+1 for a learnable ``s``; conditional
cross-attention ``3*l*d``); ``'reweight'`` ``2*l*d_k`` (+1),
``'reweight+parallel'`` ``l*(2*d_k + d)`` (+2), ``d_k = d`` (``2d`` in
conditional cross-attention, where ``P_q`` shifts both the content and
the positional half of a query). With the MLP re-parametrisation
(``reparam_hidden=h``, ``init='random'`` only) training holds an embedding
and an MLP, ``l*d + d*h + h + 2*d*h + 2*d`` (+1; its output layer is
``d_k + d`` wide), and deployment only the resulting ``2*l*d`` (+1); the
re-weighting forms refuse it.

Modules: :mod:`.hosts` (which module a prefix tunes, its widths and key
projection), :mod:`.inits` (the three inits and the activation-collection
protocol), :mod:`.base` (:class:`PrefixBase`: the prefixes, forms, ``s``,
health statistics), :mod:`.scaled` (:class:`ScaledPrefix`,
:class:`PrefixTuning`: the forms on attentions with keys, the
re-parametrisation) and :mod:`.deformable` (:class:`DeformablePrefix`).
Imports run one way: ``scaled -> deformable -> base -> inits -> hosts``.
"""
from .base import PREFIX_FORMS, PrefixBase
from .deformable import DeformablePrefix
from .hosts import (PREFIX_HOSTS, attention_hosts, embed_dims_of,
                    key_weight_of, prefix_widths)
from .inits import PREFIX_INITS, ActivationInit
from .scaled import PrefixTuning, ScaledPrefix

__all__ = ['ScaledPrefix', 'PrefixTuning', 'PrefixBase', 'DeformablePrefix',
           'ActivationInit', 'attention_hosts', 'PREFIX_FORMS',
           'PREFIX_INITS', 'prefix_widths', 'PREFIX_HOSTS', 'embed_dims_of',
           'key_weight_of']
