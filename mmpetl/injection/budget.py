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

ETTA's allocation keeps the prefixes a small part of the tuners: on
ViT-B (d = 768) its b = 400 adapters and l = 50 prefixes give the prefixes
l*2d = 76,800 of every block's 692,368 tuner parameters, 11.1 %
(:data:`ETTA_PREFIX_SHARE`). ``plan()`` and :func:`plan_method` keep that
share on any model: the largest prefix length of ``prefix_choices`` that
leaves the adapters at least ``min_bottleneck`` and whose prefixes are at
most ``prefix_share`` of the tuner parameters at the ``b`` that fills the
budget; when none is, the smallest that fits (the fewest prefixes that
work). ``prefix_share=None`` is the first rule: the largest ``l`` that
fits, which on a narrow model (d = 128, 2 + 2 layers) gave the prefixes
half of the budget. Counts are exact: they use the real module widths of
the model.
"""
from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence

import torch.nn as nn

from mmpetl.tuners import ParallelAdapter, ScaledPrefix
from mmpetl.tuners.common import host_width
from mmpetl.tuners.prefix import prefix_widths
from .matching import name_matches
from .presets import detect_arch, preset_regex

__all__ = ['Allocation', 'budget_terms', 'plan', 'KNOBS', 'KnobPlan',
           'ETTA_PREFIX_SHARE', 'PLANNER_RULE',
           'PlanError', 'method_specs', 'spec_knobs', 'fill_spec',
           'size_label', 'count_petl', 'plan_method', 'without_pretrained']


def _etta_share(d: int = 768, b: int = 400, l: int = 50) -> float:
    """Prefix share of ETTA's tuner parameters in one ViT block (one
    attention: ``l*2d + 1``, one FFN adapter: ``2*d*b + b + d``)."""
    prefixes = l * 2 * d + 1
    return prefixes / (prefixes + 2 * d * b + b + d)


#: the prefixes' share of ETTA's tuner parameters in the paper's ViT-B
#: allocation (b = 400, l = 50, d = 768): 0.111
ETTA_PREFIX_SHARE = _etta_share()

#: names the rules :func:`plan_method` sizes by; it changes whenever they
#: would choose differently, so that caches of plans (the accuracy
#: benchmark's ``plans.json``) key on it and never serve a plan of an
#: older rule
PLANNER_RULE = f'etta-prefix-share<={ETTA_PREFIX_SHARE:.4f}'


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
         attn_presets: Sequence[str] = ('attn', ),
         prefix_share: Optional[float] = ETTA_PREFIX_SHARE
         ) -> List[Allocation]:
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
            chosen = (lo, l)  # the smallest l that fits, if none is lean
            adapters, prefixes = _count(ffn_dims, attn_dims, lo, l)
            if prefix_share is None or \
                    prefixes <= prefix_share * (adapters + prefixes):
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


# ---------------------------------------------------------------------------
# Every method at one budget: one integer knob, sized by exact counting
# ---------------------------------------------------------------------------
#: the knobs a method spec may leave open, as the string placeholders
#: written in its tuner configs: ``'{r}'`` LoRA's rank, ``'{b}'`` an
#: adapter's / U-Tuner's / UniPT's bottleneck, ``'{l}'`` a prefix count,
#: ``'{p}'`` VPT's prompts. ETTA's specs hold ``'{b}'`` and ``'{l}'``.
KNOBS = {'r': 'rank', 'b': 'bottleneck', 'l': 'prefixes', 'p': 'prompts'}


def _prefix(presets, form, **kwargs):
    return dict(type='ScaledPrefix', presets=list(presets), num_prefix='{l}',
                form=form, init='scaled', **kwargs)


def _etta(*prefixes):
    return dict(tuners=[dict(type='ParallelAdapter', presets=['ffn'],
                             bottleneck='{b}'), *prefixes])


def method_specs(arch: str) -> Dict[str, Optional[dict]]:
    """The methods of the budget-matched comparison for an architecture
    (``'deformable_detr'``, ``'detr'`` or ``'vit'``, see
    :func:`~mmpetl.injection.presets.detect_arch`): name -> spec, ``None``
    for full fine-tuning. A spec holds ``tuners`` (and ``parallel``) with
    knob placeholders (:data:`KNOBS`) and ``extra_trainable`` (base parts
    that train beyond the heads). Forms that need a kind of attention the
    architecture lacks are left out (``etta-steer``: deformable attention,
    ``vpt-*``: a ViT)."""
    if arch not in ('deformable_detr', 'detr', 'vit'):
        raise ValueError(f"method_specs: unknown arch {arch!r}; use "
                         f"'deformable_detr', 'detr' or 'vit'")
    specs = {
        'full-ft': None,
        'heads-only': dict(tuners=[]),
        'bitfit': dict(tuners=[], extra_trainable=['bias']),
        'lora': dict(tuners=[dict(type='LoRA', presets=['attn', 'ffn'],
                                  rank='{r}', alpha='{r}')]),
        'serial-adapter': dict(tuners=[dict(type='SerialAdapter',
                                            presets=['ffn'],
                                            bottleneck='{b}')]),
        'adapter': dict(tuners=[dict(type='ParallelAdapter', presets=['ffn'],
                                     bottleneck='{b}')]),
        'prefix': dict(tuners=[dict(type='PrefixTuning', presets=['attn'],
                                    num_prefix='{l}')]),
        'etta': _etta(_prefix(['attn'], 'parallel')),
    }
    if arch == 'deformable_detr':
        # deformable attention (encoder self, decoder cross) has no keys:
        # the joint and reweight forms go to the decoder's MHA only
        msda = ['encoder_self_attn', 'decoder_cross_attn']
        mha = ['decoder_self_attn']
        specs.update({
            'etta-joint': _etta(_prefix(msda, 'parallel'),
                                _prefix(mha, 'joint')),
            'etta-steer': _etta(_prefix(msda, 'steer+parallel'),
                                _prefix(mha, 'reweight+parallel')),
            'etta-reweight': _etta(_prefix(msda, 'parallel'),
                                   _prefix(mha, 'reweight+parallel')),
        })
    else:
        specs.update({
            'etta-joint': _etta(_prefix(['attn'], 'joint')),
            'etta-reweight': _etta(_prefix(['attn'], 'reweight+parallel')),
        })
    specs.update({
        'utuning': dict(tuners=[
            dict(type='UTuner', presets=['attn'], bottleneck='{b}'),
            dict(type='UTuner', presets=['ffn'], bottleneck='{b}')]),
        # UniPT's own design (variant='official'), its width the knob
        'unipt': dict(tuners=[], parallel=dict(type='UniPT',
                                               bottleneck='{b}')),
    })
    if arch == 'deformable_detr':  # mmpetl's variant: reads where MSDA looks
        specs['unipt-local'] = dict(tuners=[], parallel=dict(
            type='UniPT', bottleneck='{b}', local_read=True))
    if arch == 'vit':
        specs.update({
            f'vpt-{depth}': dict(tuners=[dict(
                type='VPT', presets=['backbone'], num_prompts='{p}',
                deep=depth == 'deep')]) for depth in ('shallow', 'deep')})
    return specs


def spec_knobs(spec: Optional[dict]) -> List[str]:
    """The knob placeholders a spec leaves open, sorted (``[]``: fixed)."""
    found = set()

    def walk(obj):
        if isinstance(obj, dict):
            for value in obj.values():
                walk(value)
        elif isinstance(obj, (list, tuple)):
            for value in obj:
                walk(value)
        elif isinstance(obj, str) and obj[:1] == '{' and obj[-1:] == '}':
            name = obj[1:-1]
            if name not in KNOBS:
                raise ValueError(
                    f'unknown knob placeholder {obj!r} in a method spec; '
                    f'knobs: {[f"{{{k}}}" for k in KNOBS]}')
            found.add(name)

    walk(spec)
    return sorted(found)


def fill_spec(spec: Optional[dict], knobs: Dict[str, int],
              heads: Sequence[str] = ('bbox_head', )) -> Optional[dict]:
    """PETLModel arguments (``tuners``, ``trainable``, ``parallel`` if any)
    of ``spec`` with its placeholders set to ``knobs``; ``None`` (full
    fine-tuning) stays ``None``."""
    if spec is None:
        return None
    missing = set(spec_knobs(spec)) - set(knobs)
    if missing:
        raise ValueError(f'fill_spec: no value for the knobs '
                         f'{sorted(missing)} of the spec')

    def fill(obj):
        if isinstance(obj, dict):
            return {k: fill(v) for k, v in obj.items()}
        if isinstance(obj, (list, tuple)):
            return [fill(v) for v in obj]
        if isinstance(obj, str) and obj[1:-1] in knobs and \
                obj == '{' + obj[1:-1] + '}':
            return int(knobs[obj[1:-1]])
        return obj

    args = dict(tuners=fill(list(spec.get('tuners', []))),
                trainable=list(heads) + list(spec.get('extra_trainable',
                                                      [])))
    if spec.get('parallel') is not None:
        args['parallel'] = fill(spec['parallel'])
    return args


def size_label(knobs: Dict[str, int]) -> str:
    """``'r=18'``, ``'b=150, l=16'``; ``'–'`` for a method without a
    knob."""
    order = [k for k in ('r', 'b', 'l', 'p') if k in knobs]
    return ', '.join(f'{k}={knobs[k]}' for k in order) or '–'


class PlanError(RuntimeError):
    """A method could not be sized: its build failed (the message names the
    method, the knob values and the build's error) or the target is out of
    its reach."""


@dataclass
class KnobPlan:
    """A method sized for a target % of trainable parameters.

    ``knobs``: the chosen values (``{}`` for a fixed method);
    ``trainable``/``total``: the exact counts of the built PETLModel;
    ``bracket``: ``(knob below, its %, knob above, its %)`` for the
    searched knob (``None`` for a fixed method, or when the smallest
    value already exceeds the target); ``args``: the PETLModel arguments
    (``None`` for full fine-tuning); ``builds``: models built."""
    method: str
    target_pct: float
    knobs: Dict[str, int]
    trainable: int
    total: int
    args: Optional[dict]
    bracket: Optional[tuple] = None
    builds: int = 0
    note: str = ''

    @property
    def pct(self) -> float:
        return 100.0 * self.trainable / self.total

    @property
    def size(self) -> str:
        return size_label(self.knobs)

    def to_dict(self) -> dict:
        return dict(method=self.method, target_pct=self.target_pct,
                    knobs=dict(self.knobs), size=self.size,
                    trainable=self.trainable, total=self.total,
                    pct=self.pct, args=self.args,
                    bracket=list(self.bracket) if self.bracket else None,
                    builds=self.builds, note=self.note)

    @classmethod
    def from_dict(cls, d: dict) -> 'KnobPlan':
        return cls(d['method'], d['target_pct'], dict(d['knobs']),
                   d['trainable'], d['total'], d['args'],
                   tuple(d['bracket']) if d.get('bracket') else None,
                   d.get('builds', 0), d.get('note', ''))


def without_pretrained(cfg):
    """A copy of a model config without pretrained-weight loading
    (``init_cfg`` of type ``Pretrained``, ``pretrained='...'``): counting
    parameters needs no download."""
    if isinstance(cfg, dict):
        out = {}
        for key, value in cfg.items():
            if key == 'init_cfg' and _is_pretrained(value):
                value = None
            elif key == 'pretrained' and isinstance(value, str):
                value = None
            out[key] = without_pretrained(value)
        return out
    if isinstance(cfg, (list, tuple)):
        return [without_pretrained(v) for v in cfg]
    return cfg


def _is_pretrained(init_cfg) -> bool:
    items = init_cfg if isinstance(init_cfg, (list, tuple)) else [init_cfg]
    return any(isinstance(i, dict) and i.get('type') == 'Pretrained'
               for i in items)


def count_petl(model_cfg: dict, args: Optional[dict]) -> tuple:
    """``(trainable, total)`` parameters of ``PETLModel(model=model_cfg,
    **args)`` as built (``args=None``: the plain model, all trainable as in
    full fine-tuning)."""
    import logging

    from mmengine.logging import MMLogger

    from mmpetl.models import PETLModel, build_inner_model
    logger = MMLogger.get_current_instance()
    level = logger.level
    logger.setLevel(logging.WARNING)  # one "tuners injected" line a build
    try:
        if args is None:
            model = build_inner_model(model_cfg)
        else:
            model = PETLModel(model=model_cfg, **args)
    finally:
        logger.setLevel(level)
    total = sum(p.numel() for p in model.parameters())
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return trainable, total


class _Counter:
    """Exact counts of ``spec`` built with knob values, each built once."""

    def __init__(self, method, model_cfg, spec, heads):
        self.method, self.model_cfg, self.spec = method, model_cfg, spec
        self.heads, self.cache = list(heads), {}
        self.extra = {}  # other counts of the same model (heads only)

    def __call__(self, **knobs) -> tuple:
        key = tuple(sorted(knobs.items()))
        if key not in self.cache:
            args = fill_spec(self.spec, knobs, self.heads)
            try:
                self.cache[key] = count_petl(self.model_cfg, args)
            except Exception as err:  # noqa: BLE001 (re-raised, named)
                raise PlanError(
                    f'{self.method}: building it with '
                    f'{size_label(knobs)} failed: {type(err).__name__}: '
                    f'{err}') from err
        return self.cache[key]

    def pct(self, **knobs) -> float:
        trainable, total = self(**knobs)
        return 100.0 * trainable / total


def _prefix_share(counter: '_Counter', model_cfg: dict,
                  heads: Sequence[str], b: int, l: int) -> float:
    """The prefixes' share of the tuner parameters of ``counter``'s ETTA
    spec at ``(b, l)``, by counting built models (affine in ``l``)."""
    trainable = counter(b=b, l=l)[0]
    per_prefix = counter(b=b, l=l + 1)[0] - trainable
    if 'heads' not in counter.extra:
        counter.extra['heads'] = count_petl(
            without_pretrained(model_cfg),
            fill_spec(dict(tuners=[], extra_trainable=list(
                counter.spec.get('extra_trainable', []))), {}, heads))[0]
    tuners = trainable - counter.extra['heads']
    return per_prefix * l / tuners


def _closest(pct, target: float, lo: int, hi_limit: int) -> tuple:
    """The knob value in ``[lo, hi_limit]`` whose ``pct(k)`` (monotone
    increasing) is closest to ``target``: ``(k, bracket)``, the bracket
    ``(k0, pct(k0), k0 + 1, pct(k0 + 1))`` with ``pct(k0) < target <=
    pct(k0 + 1)`` (``None`` when ``pct(lo) >= target``).

    Interpolation search guarded by bisection: counts are affine in every
    knob here (the interpolated guess is then exact, ~4 builds), but only
    monotonicity is assumed."""
    p_lo = pct(lo)
    if p_lo >= target:
        return lo, None
    points = [(lo, p_lo)]  # below the target, ascending
    hi, p_hi = None, None
    probe = min(2 * lo, hi_limit) if lo < hi_limit else None
    bisect_next = False
    while probe is not None:
        p = pct(probe)
        if p >= target:
            hi, p_hi = probe, p
        else:
            points.append((probe, p))
        lo, p_lo = points[-1]
        if hi is not None and hi - lo <= 1:
            break
        if hi is None and lo >= hi_limit:
            raise PlanError(
                f'the target {target}% is out of reach: {p_lo:.3f}% at the '
                f'largest knob value tried ({lo})')
        # the next probe: interpolate between the last two points that
        # straddle the target (or extrapolate from the last two below)
        (k0, q0), (k1, q1) = (points[-1], (hi, p_hi)) if hi is not None \
            else points[-2:]
        if q1 <= q0:
            raise PlanError(f'the knob does not change the trainable % '
                            f'({q0:.4f}% at {k0} and {k1})')
        guess = k0 + (target - q0) * (k1 - k0) / (q1 - q0)
        if hi is None:
            probe = min(max(int(guess) + 1, lo + 1), 4 * lo + 4, hi_limit)
        elif bisect_next:
            probe = (lo + hi) // 2
        else:
            # one below the interpolated crossing when it rounds up to hi
            probe = min(max(int(-(-guess // 1)), lo + 1), hi - 1)
        bisect_next = hi is not None and not bisect_next
    k = lo if target - p_lo <= p_hi - target else hi
    return k, (lo, p_lo, hi, p_hi)


def plan_method(model_cfg: dict, spec: Optional[dict], target_pct: float,
                heads: Sequence[str] = ('bbox_head', ), method: str = '',
                prefix_choices: Sequence[int] = (50, 32, 16, 8),
                min_bottleneck: int = 8, max_value: int = 1 << 14,
                prefix_share: Optional[float] = ETTA_PREFIX_SHARE
                ) -> KnobPlan:
    """Size ``spec`` (see :func:`method_specs`) so that its trainable %
    on ``model_cfg`` (an inner model config) is closest to
    ``target_pct``, by building ``PETLModel`` for candidate knob values
    and counting its parameters (exact for every tuner and form).

    * one knob: the value closest to the target (searched from 1; the
      % is monotone in the knob);
    * ETTA (``'{b}'`` and ``'{l}'``): ETTA's rule, as :func:`plan`: the
      largest ``l`` of ``prefix_choices`` that leaves the adapters
      ``min_bottleneck`` within the target and, at the ``b`` closest to
      it, gives the prefixes at most ``prefix_share`` of the tuner
      parameters (the smallest ``l`` that fits when none does;
      ``prefix_share=None``: the largest that fits). The prefixes' count
      is measured: ``(T(b, l + 1) - T(b, l)) * l`` with ``T`` the built
      model's trainable count, the tuners' ``T(b, l) - T(heads only)``;
    * no knob (full fine-tuning, heads only, BitFit): the % as it is.

    ``heads``: the base parts that train in every method (the config's
    ``trainable``). Raises :class:`PlanError` when a build fails (e.g. a
    prefix form not implemented yet) or the target is out of reach.
    """
    if not 0 < target_pct < 100:
        raise ValueError(f'target_pct must be a % in (0, 100), got '
                         f'{target_pct!r}')
    method = method or 'method'
    counter = _Counter(method, without_pretrained(model_cfg), spec, heads)
    knobs = spec_knobs(spec)
    bracket, note = None, ''
    try:
        if not knobs:
            chosen = {}
        elif knobs == ['b', 'l']:
            chosen = None
            for l in sorted(prefix_choices, reverse=True):
                if counter.pct(b=min_bottleneck, l=l) > target_pct:
                    continue
                b, bracket = _closest(lambda v, l=l: counter.pct(b=v, l=l),
                                      target_pct, min_bottleneck, max_value)
                chosen = dict(b=b, l=l)  # the smallest l that fits
                if prefix_share is None or _prefix_share(
                        counter, model_cfg, heads, b, l) <= prefix_share:
                    break
            if chosen is None:
                l = min(prefix_choices)
                raise PlanError(
                    f'a {target_pct}% budget is below the smallest ETTA '
                    f'allocation (b={min_bottleneck}, l={l}): '
                    f'{counter.pct(b=min_bottleneck, l=l):.2f}%. Ask for '
                    f'more, or train fewer base parts.')
        elif len(knobs) == 1:
            name = knobs[0]
            value, bracket = _closest(lambda v: counter.pct(**{name: v}),
                                      target_pct, 1, max_value)
            chosen = {name: value}
        else:
            raise ValueError(
                f'{method}: a spec has one knob, or ETTA\'s b and l; this '
                f'one has {knobs}')
    except PlanError as err:
        if str(err).startswith(f'{method}:'):
            raise
        raise PlanError(f'{method}: {err}') from err
    if knobs and bracket is None:
        note = (f'the smallest {KNOBS[knobs[0]]} already exceeds the '
                f'target')
    trainable, total = counter(**chosen)
    return KnobPlan(method, target_pct, chosen, trainable, total,
                    fill_spec(spec, chosen, heads), bracket,
                    len(counter.cache), note)
