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
