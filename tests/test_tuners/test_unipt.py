"""UniPT's parallel network on plain tensors: formula, init, causality."""
import math

import pytest
import torch
import torch.nn as nn

from mmpetl.tuners import TunerHostError, UniPT

L, B, N, D, R = 3, 2, 5, 32, 8


def feats(seed=0):
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(L, B, N, D, generator=gen)


def perturbed(unipt):
    with torch.no_grad():
        for p in unipt.parameters():
            p.normal_(0, 0.3)
    return unipt


def manual(unipt, h, k):
    """The docstring formula, one layer pair at a time."""
    z = [unipt.downs[i](unipt.norms[i](h[i])) for i in range(L)]
    mixed, scores = [], []
    for i in range(k + 1):
        attn = torch.softmax(z[k] @ z[i].transpose(-1, -2) / math.sqrt(R),
                             dim=-1)
        m = z[i] + attn @ z[i]
        mixed.append(m)
        scores.append(m @ unipt.confidence.weight[0] + unipt.layer_logits[i])
    weight = torch.softmax(torch.stack(scores), dim=0)  # over l <= k
    agg = sum(w.unsqueeze(-1) * m for w, m in zip(weight, mixed))
    return unipt.up(unipt.act(agg))


def test_zero_at_init_and_shapes():
    unipt = UniPT(D, L, variant='v1', bottleneck=R)
    h = feats()
    out = unipt(h)
    assert out.shape == (L, B, N, D)
    assert torch.count_nonzero(out) == 0  # U = 0: exact at init
    assert unipt(h, [L - 1]).shape == (1, B, N, D)


@pytest.mark.parametrize('layer_norm', [True, False])
def test_formula(layer_norm):
    unipt = perturbed(UniPT(D, L, variant='v1', bottleneck=R,
                            layer_norm=layer_norm))
    h = feats()
    out = unipt(h)
    for k in range(L):
        torch.testing.assert_close(out[k], manual(unipt, h, k))
    torch.testing.assert_close(unipt(h, [1])[0], manual(unipt, h, 1))


def test_output_k_reads_only_layers_up_to_k():
    unipt = perturbed(UniPT(D, L, variant='v1', bottleneck=R))
    h = feats()
    moved = h.clone()
    moved[2] = feats(seed=1)[2]
    a, b = unipt(h), unipt(moved)
    torch.testing.assert_close(a[:2], b[:2])  # layers 0, 1 ignore layer 2
    assert not torch.allclose(a[2], b[2])


@pytest.mark.parametrize('layer_norm', [True, False])
def test_parameter_count_closed_form(layer_norm):
    unipt = UniPT(D, L, variant='v1', bottleneck=R, layer_norm=layer_norm)
    expected = (L + 1) * D * R + (L + 1) * R + D + L
    expected += 2 * L * D if layer_norm else 0
    assert unipt.num_train_params() == expected


def test_gradients_at_init_reach_up_only_and_never_the_features():
    unipt = UniPT(D, L, variant='v1', bottleneck=R)
    h = feats()  # detached, as the frozen model's outputs are
    unipt(h).square().add(unipt(h)).sum().backward()
    assert h.grad is None
    assert torch.count_nonzero(unipt.up.weight.grad) > 0
    for name, p in unipt.named_parameters():
        assert p.grad is not None, name
        if not name.startswith('up.'):  # U = 0 blocks the rest at step 0
            assert torch.count_nonzero(p.grad) == 0, name


def test_bad_arguments():
    with pytest.raises(ValueError, match='bottleneck'):
        UniPT(D, L, variant='v1', bottleneck=0)
    with pytest.raises(ValueError, match='act'):
        UniPT(D, L, variant='v1', act='tanh')
    with pytest.raises(ValueError, match='built for 3 layers'):
        UniPT(D, L, variant='v1')(torch.zeros(2, B, N, D))
    with pytest.raises(TunerHostError, match='parallel=dict'):
        UniPT.resolve_hosts('encoder', nn.Linear(D, D))
    with pytest.raises(TunerHostError, match='routes the frozen'):
        UniPT(D, L, variant='v1').attach(nn.Linear(D, D))


def test_keeps_no_token_by_token_attention_for_backward():
    """The interaction runs as scaled_dot_product_attention: nothing of
    size N x N (per layer pair) is saved for backward, and the result is
    the formula's (test_formula)."""
    n, layers = 64, 3
    unipt = perturbed(UniPT(D, layers, variant='v1', bottleneck=R))
    h = torch.randn(layers, 1, n, D)
    sizes = []

    def pack(t):
        sizes.append(t.numel())
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = unipt(h)
    out.sum().backward()
    assert sizes and max(sizes) < n * n
    assert all(p.grad is not None for p in unipt.parameters())


def test_a_list_of_layer_outputs_is_read_like_the_stacked_tensor():
    """The ViT surgery passes the captured layer outputs as they are (a
    stacked copy would double the frozen features kept for backward)."""
    unipt = perturbed(UniPT(D, L, variant='v1', bottleneck=R))
    h = feats()
    torch.testing.assert_close(unipt(list(h), [L - 1]), unipt(h, [L - 1]),
                               atol=0, rtol=0)
