"""ETTA's parameter-budget rule: b and l for a target % of trainable params.

ETTA gives the FFN adapters as much of the budget as possible and the
prefixes the least that works. For a built base model:

    adapters(b) = sum over FFNs  (2*d*b + b + d)
    prefixes(l) = sum over attns (l*(d_k + d) + 1)    (ScaledPrefix / MSDA)
    trainable   = heads + adapters(b) + prefixes(l)
    fraction    = trainable / (base + adapters(b) + prefixes(l))

``d_k = d`` except in conditional cross-attention (``2d``, see
:mod:`mmpetl.tuners.prefix`). The FFNs and attentions are those of the
``ffn_presets`` and ``attn_presets`` (default ``['ffn']``, ``['attn']``;
a config that also tunes a Swin/ViT backbone adds ``backbone_ffn`` and
``backbone_attn``).

``plan()`` takes the largest prefix length from ``prefix_choices`` that
still leaves the adapters ``min_bottleneck``, then the largest ``b`` that
fits. Counts are exact: they use the real module widths of the model.
"""
from dataclasses import dataclass
from typing import List, Sequence

import torch.nn as nn

from mmpetl.tuners import ParallelAdapter, ScaledPrefix
from mmpetl.tuners.common import host_width
from mmpetl.tuners.prefix import prefix_widths
from .matching import name_matches
from .presets import detect_arch, preset_regex

__all__ = ['Allocation', 'budget_terms', 'plan']


@dataclass
class Allocation:
    target_pct: float
    bottleneck: int
    num_prefix: int
    adapter_params: int
    prefix_params: int
    head_params: int
    trainable: int
    total: int

    @property
    def pct(self) -> float:
        return 100.0 * self.trainable / self.total


def budget_terms(model: nn.Module, trainable: Sequence[str] = ('bbox_head',),
                 arch: str = None, ffn_presets: Sequence[str] = ('ffn', ),
                 attn_presets: Sequence[str] = ('attn', )):
    """FFN widths ``d``, prefix widths ``d_k + d`` per attention host, head
    and base counts."""
    arch = arch or detect_arch(model)
    modules = dict(model.named_modules())
    ffn = preset_regex(arch, list(ffn_presets))
    attn = preset_regex(arch, list(attn_presets))
    ffn_dims, attn_dims = [], []
    for name, module in modules.items():
        if name and name_matches(name, ffn):
            for _, host in ParallelAdapter.resolve_hosts(name, module):
                ffn_dims.append(host_width(host))
        if name and name_matches(name, attn):
            for _, host in ScaledPrefix.resolve_hosts(name, module):
                attn_dims.append(sum(prefix_widths(host)))
    head_ids = set()
    for pattern in trainable:
        for name, module in modules.items():
            if name and name_matches(name, [pattern]):
                head_ids |= {id(p) for p in module.parameters()}
    heads = sum(p.numel() for p in model.parameters() if id(p) in head_ids)
    base = sum(p.numel() for p in model.parameters())
    return ffn_dims, attn_dims, heads, base


def _count(ffn_dims, attn_dims, b, l):
    adapters = sum(2 * d * b + b + d for d in ffn_dims)
    prefixes = sum(l * w + 1 for w in attn_dims)
    return adapters, prefixes


def plan(model: nn.Module, target_pcts: Sequence[float],
         trainable: Sequence[str] = ('bbox_head',),
         prefix_choices: Sequence[int] = (50, 32, 16, 8),
         min_bottleneck: int = 8, arch: str = None,
         ffn_presets: Sequence[str] = ('ffn', ),
         attn_presets: Sequence[str] = ('attn', )) -> List[Allocation]:
    """ETTA allocations for each target % (see the module doc)."""
    ffn_dims, attn_dims, heads, base = budget_terms(
        model, trainable, arch, ffn_presets, attn_presets)
    if not ffn_dims:
        raise ValueError('the model has no FFN for adapters')
    result = []
    for target in target_pcts:
        frac = target / 100.0
        chosen = None
        for l in sorted(prefix_choices, reverse=True):
            if not _fits(ffn_dims, attn_dims, heads, base, min_bottleneck, l,
                         frac):
                continue
            lo, hi = min_bottleneck, min_bottleneck
            while _fits(ffn_dims, attn_dims, heads, base, hi * 2, l, frac):
                hi *= 2
            lo, hi = hi, hi * 2
            while hi - lo > 1:  # largest b that fits
                mid = (lo + hi) // 2
                if _fits(ffn_dims, attn_dims, heads, base, mid, l, frac):
                    lo = mid
                else:
                    hi = mid
            chosen = (lo, l)
            break
        if chosen is None:
            smallest = _count(ffn_dims, attn_dims, min_bottleneck,
                              min(prefix_choices))
            floor = 100.0 * (heads + sum(smallest)) / (base + sum(smallest))
            raise ValueError(
                f'a {target}% budget is below the smallest ETTA allocation '
                f'(b={min_bottleneck}, l={min(prefix_choices)}, heads '
                f'trainable): {floor:.2f}%. Ask for more, or train fewer '
                f'base parts.')
        b, l = chosen
        adapters, prefixes = _count(ffn_dims, attn_dims, b, l)
        result.append(
            Allocation(target, b, l, adapters, prefixes, heads,
                       heads + adapters + prefixes,
                       base + adapters + prefixes))
    return result


def _fits(ffn_dims, attn_dims, heads, base, b, l, frac) -> bool:
    adapters, prefixes = _count(ffn_dims, attn_dims, b, l)
    return heads + adapters + prefixes <= frac * (base + adapters + prefixes)
