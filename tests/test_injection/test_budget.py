"""The budget planners: ETTA's (b, l) by formula, and every method's knob
by exact counting of built models; the plan_budget CLI."""
import subprocess
import sys
from pathlib import Path

import pytest

from mmpetl.injection.budget import (ETTA_PREFIX_SHARE, PlanError,
                                     fill_spec, method_specs, plan,
                                     plan_method)
from mmpetl.models import PETLModel, build_inner_model
from tests.conftest import small_deformable_cfg, small_family_cfg

ROOT = Path(__file__).resolve().parents[2]


def test_plan_counts_equal_built_models():
    cfg = small_deformable_cfg()
    allocations = plan(build_inner_model(cfg), [3, 10, 25])
    assert [a.num_prefix for a in allocations][-1] == 50  # l stays small
    bottlenecks = [a.bottleneck for a in allocations]
    assert bottlenecks == sorted(bottlenecks)  # more budget -> adapters
    for a in allocations:
        assert a.pct <= a.target_pct
        petl = PETLModel(model=cfg, trainable=['bbox_head'], tuners=[
            dict(type='ParallelAdapter', presets=['ffn'],
                 bottleneck=a.bottleneck),
            dict(type='ScaledPrefix', presets=['attn'],
                 num_prefix=a.num_prefix)])
        trainable = sum(p.numel() for p in petl.parameters()
                        if p.requires_grad)
        total = sum(p.numel() for p in petl.parameters())
        assert (trainable, total) == (a.trainable, a.total)
        # one more bottleneck unit would exceed the target
        step = sum(2 * d + 1 for d in [256] * 4)
        assert 100.0 * (a.trainable + step) / (a.total + step) > a.target_pct


def test_too_small_budget_explains_the_floor():
    with pytest.raises(ValueError, match=r'below the smallest ETTA '
                       r'allocation.*%'):
        plan(build_inner_model(small_deformable_cfg()), [0.1])


@pytest.mark.parametrize('config,ffn,attn', [
    ('mmdet::conditional_detr/conditional-detr_r50_8xb2-50e_coco.py',
     ['ffn'], ['attn']),
    ('mmdet::dino/dino-5scale_swin-l_8xb2-12e_coco.py',
     ['backbone_ffn', 'ffn'], ['backbone_attn', 'attn']),
])
def test_plan_counts_the_detr_family_exactly(config, ffn, attn):
    """Conditional cross-attention prefixes (l*(2d + d)) and a Swin
    backbone's blocks (presets as ET-DINO Swin-L's) are counted as built."""
    cfg = small_family_cfg(config)
    heads = ['bbox_head'] + (['dn_query_generator.label_embedding']
                             if 'dn_cfg' in cfg else [])
    (a, ) = plan(build_inner_model(cfg), [30], heads, ffn_presets=ffn,
                 attn_presets=attn)
    petl = PETLModel(model=cfg, trainable=heads, tuners=[
        dict(type='ParallelAdapter', presets=ffn, bottleneck=a.bottleneck),
        dict(type='ScaledPrefix', presets=attn, num_prefix=a.num_prefix)])
    trainable = sum(p.numel() for p in petl.parameters() if p.requires_grad)
    total = sum(p.numel() for p in petl.parameters())
    assert (trainable, total) == (a.trainable, a.total)
    assert a.pct <= 30


# -- the general planner: every method at one budget, by exact counting -----
DEMO_ET = ROOT / 'configs/demo/et-deformable-detr_mnv2_demo-target.py'


def _demo():
    """The accuracy benchmark's detector (d = 128) and its heads."""
    from mmengine.config import Config
    cfg = Config.fromfile(DEMO_ET)
    return cfg.model.model.to_dict(), list(cfg.model.trainable)


def _vit():
    """The ViT benchmark's model (d = 96, 4 layers)."""
    sys.path.insert(0, str(ROOT / 'tools' / 'analysis_tools'))
    import vit_accuracy_benchmark as vit
    return vit.vit_cfg(), list(vit.HEADS)


def _fresh(model_cfg, args):
    """(trainable, total) of a model built here, not by the planner."""
    if args is None:
        model = build_inner_model(model_cfg)
    else:
        model = PETLModel(model=model_cfg, **args)
    return (sum(p.numel() for p in model.parameters() if p.requires_grad),
            sum(p.numel() for p in model.parameters()))


def _pct(counts):
    return 100.0 * counts[0] / counts[1]


@pytest.mark.parametrize('arch,method,target', [
    ('deformable_detr', 'lora', 5), ('deformable_detr', 'prefix', 5),
    ('deformable_detr', 'etta', 5), ('deformable_detr', 'etta-steer', 5),
    ('deformable_detr', 'unipt', 5), ('vit', 'vpt-deep', 5),
    ('vit', 'etta-reweight', 5), ('vit', 'adapter', 3)])
def test_planned_knob_is_closest_and_neighbours_bracket_the_target(
        arch, method, target):
    """The chosen knob value's % is the closest to the target of its
    neighbours, which straddle the target; every count is the one of a
    model built here from the plan's own PETLModel arguments."""
    model_cfg, heads = _demo() if arch != 'vit' else _vit()
    spec = method_specs(arch)[method]
    p = plan_method(model_cfg, spec, target, heads, method)
    assert _fresh(model_cfg, p.args) == (p.trainable, p.total)
    assert p.args['trainable'] == heads + list(spec.get('extra_trainable',
                                                        []))
    name = 'b' if set(p.knobs) == {'b', 'l'} else next(iter(p.knobs))
    k = p.knobs[name]
    below = _pct(_fresh(model_cfg, fill_spec(
        spec, dict(p.knobs, **{name: k - 1}), heads)))
    above = _pct(_fresh(model_cfg, fill_spec(
        spec, dict(p.knobs, **{name: k + 1}), heads)))
    assert below < p.pct < above  # monotone
    assert below <= target <= above
    assert abs(p.pct - target) <= min(target - below, above - target)
    lo, p_lo, hi, p_hi = p.bracket
    assert hi == lo + 1 and p_lo < target <= p_hi and k in (lo, hi)
    # interpolation, not a walk over the knob (ETTA: one search of b per
    # prefix choice tried, and two counts for the prefixes' share)
    assert p.builds <= (10 if len(p.knobs) == 1 else 4 * 8)


def _tuner_share(model_cfg, heads, arch, b, l):
    """The prefixes' share of ETTA's tuner parameters at (b, l), from
    models built here: one prefix more, and heads only."""
    spec = method_specs(arch)['etta']
    at = _fresh(model_cfg, fill_spec(spec, dict(b=b, l=l), heads))[0]
    more = _fresh(model_cfg, fill_spec(spec, dict(b=b, l=l + 1), heads))[0]
    only_heads = _fresh(model_cfg, dict(tuners=[], trainable=heads))[0]
    return (more - at) * l / (at - only_heads)


def test_etta_share_is_the_papers_allocation():
    """b = 400, l = 50 on ViT-B (d = 768): prefixes 76,801 of 692,369."""
    assert ETTA_PREFIX_SHARE == pytest.approx(76801 / (76801 + 615568))
    assert 0.11 < ETTA_PREFIX_SHARE < 0.112


def test_etta_rule_keeps_the_prefixes_share():
    """ETTA's l: the largest of the choices whose prefixes are at most
    ETTA's share of the tuner parameters at the b that fills the budget
    (l = 8 at 5% on the d = 128 demo detector, where l = 16 would take
    13 %), or the smallest choice when even it takes more (the d = 96 ViT:
    26 % at l = 8); the first rule (``prefix_share=None``) took the
    largest l that fits (50 and 16), which gave the prefixes half of the
    demo's budget."""
    for (model_cfg, heads), arch in ((_demo(), 'deformable_detr'),
                                     (_vit(), 'vit')):
        spec = method_specs(arch)['etta']
        p = plan_method(model_cfg, spec, 5, heads, 'etta')
        assert p.knobs['l'] == 8, (arch, p.knobs)
        share = _tuner_share(model_cfg, heads, arch, **p.knobs)
        if arch == 'vit':  # none is lean enough: the fewest prefixes
            assert share > ETTA_PREFIX_SHARE
        else:
            assert 0 < share <= ETTA_PREFIX_SHARE, (arch, share)
        # the next choice up, at the b that fills the budget with it, is
        # over the share: the rule did not stop early
        up = plan_method(model_cfg, spec, 5, heads, 'etta',
                         prefix_choices=(16, ))
        assert up.knobs['l'] == 16 and up.knobs['b'] < p.knobs['b']
        assert _tuner_share(model_cfg, heads, arch, **up.knobs) > \
            ETTA_PREFIX_SHARE
        first = plan_method(model_cfg, spec, 5, heads, 'etta',
                            prefix_share=None)
        assert first.knobs['l'] == {'deformable_detr': 50, 'vit': 16}[arch]
    # a generous share keeps the largest l that fits
    model_cfg, heads = _demo()
    p = plan_method(model_cfg, method_specs('deformable_detr')['etta'], 5,
                    heads, 'etta', prefix_share=0.9)
    assert p.knobs['l'] == 50


def test_plan_formula_keeps_the_prefixes_share():
    """plan() (formula counts) follows the same rule as plan_method."""
    model = build_inner_model(small_deformable_cfg())
    (lean, ) = plan(model, [5])
    share = lean.prefix_params / (lean.prefix_params + lean.adapter_params)
    assert lean.num_prefix == 16 and share <= ETTA_PREFIX_SHARE
    (up, ) = plan(model, [5], prefix_choices=(32, ))  # the next choice up
    assert up.prefix_params / (up.prefix_params + up.adapter_params) > \
        ETTA_PREFIX_SHARE
    (first, ) = plan(model, [5], prefix_share=None)
    assert first.num_prefix == 50 and first.num_prefix > lean.num_prefix
    assert first.prefix_params / (first.prefix_params +
                                  first.adapter_params) > ETTA_PREFIX_SHARE


def test_methods_without_knob_report_their_share():
    model_cfg, heads = _vit()
    specs = method_specs('vit')
    full = plan_method(model_cfg, specs['full-ft'], 5, heads, 'full-ft')
    assert full.knobs == {} and full.pct == 100.0 and full.args is None
    bitfit = plan_method(model_cfg, specs['bitfit'], 5, heads, 'bitfit')
    heads_only = plan_method(model_cfg, specs['heads-only'], 5, heads)
    assert bitfit.size == '–' and bitfit.bracket is None
    assert 0 < heads_only.trainable < bitfit.trainable
    assert _fresh(model_cfg, bitfit.args) == (bitfit.trainable, bitfit.total)


def test_closest_search_on_a_curved_monotone_count():
    """The interpolation search assumes only monotonicity: on a concave
    curve it still returns the brute-force closest value."""
    from mmpetl.injection.budget import _closest
    calls = []

    def pct(k):
        calls.append(k)
        return 100 * (k / 4000) ** 0.5

    for target in (2.0, 3.3, 10.0, 31.6, 49.99, 100.0):
        calls.clear()
        k, bracket = _closest(pct, target, 1, 4000)
        assert len(set(calls)) <= 30  # not a walk over the 4000 values
        best = min(range(1, 4001), key=lambda v: (abs(pct(v) - target), v))
        assert k == best, target
        lo, _, hi, _ = bracket
        assert pct(lo) < target <= pct(hi) and hi == lo + 1


def test_plan_errors_name_the_method_and_the_problem():
    model_cfg, heads = _vit()
    bad = dict(tuners=[dict(type='ScaledPrefix', presets=['attn'],
                            num_prefix='{l}', form='no-such-form')])
    with pytest.raises(PlanError, match=r"^odd: building it with l=1 "
                       r"failed: .*unknown form='no-such-form'"):
        plan_method(model_cfg, bad, 5, heads, 'odd')
    vpt = method_specs('vit')['vpt-shallow']
    with pytest.raises(PlanError, match=r'vpt: .*out of reach'):
        plan_method(model_cfg, vpt, 99.5, heads, 'vpt', max_value=64)
    with pytest.raises(ValueError, match='unknown knob placeholder'):
        plan_method(model_cfg, dict(tuners=[dict(type='LoRA', rank='{x}')]),
                    5, heads)
    with pytest.raises(ValueError, match=r'a % in \(0, 100\)'):
        plan_method(model_cfg, vpt, 0, heads)
    # a budget below the smallest value: that value, said so
    p = plan_method(model_cfg, vpt, 0.11, heads, 'vpt')
    assert p.knobs == {'p': 1} and p.bracket is None
    assert 'exceeds the target' in p.note


def test_plan_budget_cli_sizes_methods(tmp_path):
    tool = ROOT / 'tools' / 'misc' / 'plan_budget.py'
    proc = subprocess.run(
        [sys.executable, str(tool), str(DEMO_ET), '--methods', 'lora',
         'etta', 'bitfit', '--targets', '5'],
        capture_output=True, text=True, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = {line.split()[0]: line.split() for line in proc.stdout.splitlines()
            if line.split() and line.split()[0] in ('lora', 'etta',
                                                      'bitfit')}
    # the printed rank and % are those of a model built here
    model_cfg, heads = _demo()
    rank = int(rows['lora'][2].split('=')[1])
    built = _fresh(model_cfg, fill_spec(
        method_specs('deformable_detr')['lora'], dict(r=rank), heads))
    assert rows['lora'][3:5] == [f'{built[0]:,}', f'{_pct(built):.3f}%']
    assert abs(_pct(built) - 5) < 0.2
    assert rows['etta'][2:4] == ['b=166,', 'l=8']
    assert rows['bitfit'][2] == '–'
    bad = subprocess.run([sys.executable, str(tool), str(DEMO_ET),
                          '--methods', 'vpt-deep'], capture_output=True,
                         text=True, cwd=ROOT)
    assert bad.returncode != 0
    assert "unknown methods ['vpt-deep'] for a 'deformable_detr'" in \
        bad.stderr
