"""The ETTA budget planner's counts are exact and follow ETTA's rule."""
import pytest

from mmpetl.injection.budget import plan
from mmpetl.models import PETLModel, build_inner_model
from tests.conftest import small_deformable_cfg, small_family_cfg


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
