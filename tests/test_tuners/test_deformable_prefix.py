import pytest
import torch
import torch.nn as nn
from mmcv.ops import MultiScaleDeformableAttention

from mmpetl.tuners import DeformablePrefix, ScaledPrefix

D, HEADS, P = 32, 4, 5


def msda_inputs(bs=2, num_query=6):
    shapes = torch.tensor([[4, 4], [2, 2]])
    start = torch.tensor([0, 16])
    value = torch.randn(bs, 20, D)
    query = torch.randn(bs, num_query, D)
    pos = torch.randn(bs, num_query, D)
    ref = torch.rand(bs, num_query, 2, 2)
    return dict(query=query, value=value, query_pos=pos,
                reference_points=ref, spatial_shapes=shapes,
                level_start_index=start)


def test_exact_at_init_then_additive_branch():
    msda = MultiScaleDeformableAttention(embed_dims=D, num_heads=HEADS,
                                         num_levels=2, num_points=2,
                                         batch_first=True).eval()
    kwargs = msda_inputs()
    base = msda(**kwargs)
    # mmpetl's first default: random prefixes, s = 0 (exact at init)
    tuner = ScaledPrefix.from_host(msda, num_prefix=P, init_std=1.0,
                                   init='random', scale=0.0)
    assert isinstance(tuner, DeformablePrefix)
    tuner.attach(msda)
    assert torch.equal(msda(**kwargs), base)
    with torch.no_grad():
        tuner.scale.fill_(0.7)
    q = kwargs['query'] + kwargs['query_pos']
    d = D // HEADS
    heads = []
    for h in range(HEADS):
        sl = slice(h * d, (h + 1) * d)
        w = (q[..., sl] @ tuner.prefix_k[:, sl].T / d**0.5).softmax(-1)
        heads.append(w @ tuner.prefix_v[:, sl])
    expected = base + 0.7 * torch.cat(heads, -1) @ msda.output_proj.weight.T
    torch.testing.assert_close(msda(**kwargs), expected, atol=1e-5,
                               rtol=1e-5)


def test_count_and_default_init_learns_at_step_0():
    """Default init='scaled': s = 1, P_v = 0 (exact), P_k ~ N(0, 1): P_v
    gets a gradient at once (s and P_k follow once P_v moved)."""
    msda = MultiScaleDeformableAttention(embed_dims=D, num_heads=HEADS,
                                         num_levels=2, num_points=2,
                                         batch_first=True)
    tuner = ScaledPrefix.from_host(msda, num_prefix=P)
    tuner.attach(msda)
    assert tuner.num_train_params() == 2 * P * D + 1
    assert tuner.scale.item() == 1.0 and not tuner.prefix_v.any()
    assert tuner.prefix_k.std().item() == pytest.approx(1.0, rel=0.2)
    msda(**msda_inputs()).square().sum().backward()
    assert tuner.prefix_v.grad.abs().max() > 0


def test_seq_first_layout():
    msda = MultiScaleDeformableAttention(embed_dims=D, num_heads=HEADS,
                                         num_levels=2, num_points=2,
                                         batch_first=False).eval()
    kwargs = msda_inputs()
    seq_first = {k: (v.transpose(0, 1) if k in ('query', 'query_pos',
                                                 'value') else v)
                 for k, v in kwargs.items()}
    tuner = ScaledPrefix.from_host(msda, num_prefix=P, init='random')
    tuner.attach(msda)
    out = msda(**seq_first)
    branch = tuner(kwargs['query'] + kwargs['query_pos'],
                   msda.output_proj.weight)
    msda._forward_hooks.clear()
    torch.testing.assert_close(out, msda(**seq_first) +
                               branch.transpose(0, 1), atol=1e-5, rtol=1e-5)
    assert isinstance(msda.output_proj, nn.Linear)
