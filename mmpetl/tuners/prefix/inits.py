"""The four initialisations of the prefixes ``P_k, P_v`` (``init``).

* ``'random'``: ``P_k, P_v ~ N(0, init_std^2)``.
* ``'scaled'``: ``P_v = 0``; ``P_k ~ N(0, key_std^2)``, where a host's
  ``from_host`` sets ``key_std`` to :func:`scaled_key_std` (the rms of the
  host's projected keys for unit-variance inputs).
* ``'activations'``: ``'scaled'``'s draw as a placeholder, then ``l``
  tokens the frozen host computes on a few batches (:class:`ActivationInit`).
* ``'balanced'``: ``P_k = 0``; values ``N(0, init_std^2)`` minus their mean
  over the prefixes (:func:`balanced_`): the branch is 0 at init and every
  non-scale tensor gets a gradient at step 0.

:class:`ActivationInit` is the public protocol of the activation init:
:func:`mmpetl.models.init_prefixes_from_activations` calls
:meth:`~ActivationInit.start_collecting`, runs the frozen model (each tuner
hands what its host computes to :meth:`~ActivationInit.collect` while
:attr:`~ActivationInit.is_collecting`), then
:meth:`~ActivationInit.finish_collecting` and, whatever happened,
:meth:`~ActivationInit.stop_collecting`. The collected tokens are this
module's state; nothing else reads or writes them.
"""
import math
from typing import List, Optional, Tuple

import torch
import torch.nn as nn

from .hosts import key_weight_of

__all__ = ['PREFIX_INITS', 'init_prefixes', 'balanced_', 'scaled_key_std',
           'ActivationInit']

PREFIX_INITS = ('random', 'scaled', 'activations', 'balanced')


def init_prefixes(prefix_k: torch.Tensor, prefix_v: torch.Tensor,
                  init: str, init_std: float, key_std: float) -> None:
    """Draw the prefixes in place for ``init`` (``'activations'`` gets
    ``'scaled'``'s draw until its data arrives).

    Args:
        prefix_k: ``(l, key_dims)`` key prefixes.
        prefix_v: ``(l, d)`` value prefixes.
        init: one of :data:`PREFIX_INITS`.
        init_std: std of ``'random'``'s normal draw.
        key_std: std of ``P_k`` otherwise.
    """
    if init == 'random':
        nn.init.normal_(prefix_k, std=init_std)
        nn.init.normal_(prefix_v, std=init_std)
    elif init == 'balanced':
        nn.init.zeros_(prefix_k)
        balanced_(prefix_v, init_std)
    else:  # 'scaled', and the placeholder until activations arrive
        nn.init.normal_(prefix_k, std=key_std)
        nn.init.zeros_(prefix_v)


@torch.no_grad()
def balanced_(values: torch.Tensor, std: float, dim: int = -2) -> None:
    """``'balanced'``'s value draw, in place: ``N(0, std^2)`` minus its
    mean over the prefixes (``dim``, the ``l`` axis).

    With ``P_k = 0`` every query's softmax over the prefixes is uniform, so
    the branch ``sum_p a_p V_p = mean_p V_p`` is 0 (up to rounding) at init,
    while every tensor gets a gradient at step 0: ``V`` through ``a_p =
    1/l``, ``P_k`` through the softmax's derivative ``a_p (V_p - mean V)``
    (no longer multiplied by a zero tensor, as ``P_k`` is under
    ``'scaled'``'s ``P_v = 0``).
    """
    nn.init.normal_(values, std=std)
    values.sub_(values.mean(dim=dim, keepdim=True))


def scaled_key_std(host: nn.Module) -> float:
    """``'scaled'``'s ``key_std``: ``||W_k||_F / sqrt(rows of W_k)``, the
    rms of the host's projected keys for unit-variance inputs (prefix
    logits then spread like the real keys' ones).

    Args:
        host: an attention with a key projection
            (:func:`~mmpetl.tuners.prefix.hosts.key_weight_of`).
    """
    weight = key_weight_of(host)
    return float(weight.detach().float().norm() / math.sqrt(weight.shape[0]))


class ActivationInit:
    """``init='activations'``: collect what the frozen host computes, then
    draw ``l`` distinct tokens as the prefixes.

    A mixin of :class:`~mmpetl.tuners.prefix.PrefixBase`; it uses the
    tuner's ``num_prefix``, ``form``, ``scale``, ``prefix_k``, ``prefix_v``
    and clears its ``needs_data_init``.
    """

    def __init__(self) -> None:
        super().__init__()
        self._collected: Optional[List[Tuple[torch.Tensor, ...]]] = None

    @property
    def is_collecting(self) -> bool:
        """True between :meth:`start_collecting` and the end of the
        collection: the tuner's branch is off and its host's forward hands
        its tokens to :meth:`collect`."""
        return self._collected is not None

    def start_collecting(self) -> None:
        """Record what the frozen host computes (prefix branch off)."""
        self._collected = []

    def stop_collecting(self) -> None:
        """End the collection without touching the prefixes (what was
        collected is dropped; the branch is on again)."""
        self._collected = None

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
        """Draw ``l`` distinct collected tokens as the prefixes.

        Args:
            generator: the generator of the draw.

        Raises:
            RuntimeError: no token reached the host, or fewer than ``l``.
        """
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
