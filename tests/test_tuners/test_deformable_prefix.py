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
    tuner = ScaledPrefix.from_host(msda, num_prefix=P, init_std=1.0)
    assert isinstance(tuner, DeformablePrefix)
    tuner.attach(msda)
    assert torch.equal(msda(**kwargs), base)  # s starts at 0
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


def test_count_and_gradient_of_scale():
    msda = MultiScaleDeformableAttention(embed_dims=D, num_heads=HEADS,
                                         num_levels=2, num_points=2,
                                         batch_first=True)
    tuner = ScaledPrefix.from_host(msda, num_prefix=P)
    tuner.attach(msda)
    assert tuner.num_train_params() == 2 * P * D + 1
    msda(**msda_inputs()).square().sum().backward()
    assert tuner.scale.grad.abs() > 0  # s learns first; P_k/P_v follow


def test_seq_first_layout():
    msda = MultiScaleDeformableAttention(embed_dims=D, num_heads=HEADS,
                                         num_levels=2, num_points=2,
                                         batch_first=False).eval()
    kwargs = msda_inputs()
    seq_first = {k: (v.transpose(0, 1) if k in ('query', 'query_pos',
                                                 'value') else v)
                 for k, v in kwargs.items()}
    tuner = ScaledPrefix.from_host(msda, num_prefix=P)
    tuner.attach(msda)
    with torch.no_grad():
        tuner.scale.fill_(1.0)
    out = msda(**seq_first)
    branch = tuner(kwargs['query'] + kwargs['query_pos'],
                   msda.output_proj.weight)
    msda._forward_hooks.clear()
    torch.testing.assert_close(out, msda(**seq_first) +
                               branch.transpose(0, 1), atol=1e-5, rtol=1e-5)
    assert isinstance(msda.output_proj, nn.Linear)
