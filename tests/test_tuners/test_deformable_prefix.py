import pytest
import torch
import torch.nn as nn
from mmcv.ops import MultiScaleDeformableAttention

from mmpetl.injection import inject
from mmpetl.tuners import DeformablePrefix, ScaledPrefix, TaskGroups

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
    branch = tuner.project(msda, tuner(kwargs['query'] +
                                       kwargs['query_pos']))
    msda._forward_hooks.clear()
    torch.testing.assert_close(out, msda(**seq_first) +
                               branch.transpose(0, 1), atol=1e-5, rtol=1e-5)
    assert isinstance(msda.output_proj, nn.Linear)


def _msda_with_prefix_and_lora():
    """An MSDA (in a holder) with a prefix and LoRA on its Linears, every
    tuner tensor off its init."""
    torch.manual_seed(0)
    holder = nn.Module()
    holder.attn = MultiScaleDeformableAttention(
        embed_dims=D, num_heads=HEADS, num_levels=2, num_points=2,
        batch_first=True).eval()
    records = inject(holder, [
        dict(type='ScaledPrefix', targets=['attn'], num_prefix=P),
        dict(type='LoRA', targets=['attn'], rank=2)], arch='detr')
    with torch.no_grad():
        for record in records:
            for tensor in record.tuner.parameters():
                tensor.copy_(torch.randn(tensor.shape) * 0.5)
    return holder.attn, {r.name: r.tuner for r in records}


def test_branch_goes_through_the_lora_tuned_output_proj():
    """out = MSDA(q) + (W_o + dW) (s Attn(q, P_k, P_v)): the branch is
    projected by output_proj's tuned weight, so merging its LoRA (W_o
    then holds W_o + dW) changes no output."""
    msda, tuners = _msda_with_prefix_and_lora()
    prefix, lora = tuners['attn'], tuners['attn.output_proj']
    kwargs = msda_inputs()
    with torch.no_grad():
        out = msda(**kwargs)
        heads = prefix(kwargs['query'] + kwargs['query_pos'])
        tuned = msda.output_proj.weight + lora.delta_weight()
        prefix.scale.zero_()
        without = msda(**kwargs)  # MSDA(q) with its LoRAs, no branch
    torch.testing.assert_close(out, without + heads @ tuned.T, atol=1e-5,
                               rtol=1e-5)
    with torch.no_grad():
        prefix.scale.fill_(0.8)
        unmerged = msda(**kwargs)
        for tuner in tuners.values():
            tuner.merge()
        merged = msda(**kwargs)
    assert lora.merged
    torch.testing.assert_close(merged, unmerged, atol=1e-5, rtol=1e-5)


def test_routed_branch_projects_each_sample_with_its_task_lora():
    """A batch of two tasks: each sample's branch goes through its own
    task's output_proj LoRA (the LoRA routes its term itself)."""
    msda, tuners = _msda_with_prefix_and_lora()
    kwargs = msda_inputs(bs=4)
    gen = torch.Generator().manual_seed(3)
    tasks = [{n: {k: torch.randn(v.shape, generator=gen) * 0.5
                  for k, v in t.state_dict().items()}
              for n, t in tuners.items()} for _ in range(2)]
    samples = [torch.tensor([0, 2, 3]), torch.tensor([1])]
    for name, tuner in tuners.items():
        tuner.routing = TaskGroups(4, [(samples[i], tasks[i][name], str(i))
                                       for i in range(2)])
    try:
        with torch.no_grad():
            routed = msda(**kwargs)
    finally:
        for tuner in tuners.values():
            tuner.routing = None
    for i in range(2):
        for name, tuner in tuners.items():
            tuner.load_state_dict(tasks[i][name])
        with torch.no_grad():
            alone = msda(**kwargs)
        torch.testing.assert_close(routed[samples[i]], alone[samples[i]],
                                   atol=1e-5, rtol=1e-5)
