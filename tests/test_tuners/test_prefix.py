"""Scaled prefix tuning against float64 references written from the formulas
(the joint form: one softmax over [P_k; K]; the parallel form: its own)."""
import pytest
import torch
import torch.nn as nn

from mmpetl.tuners import PrefixTuning, ScaledPrefix
from mmpetl.tuners.attention import install_tuned_forward

E, H, L, S, N, P = 16, 4, 5, 7, 3, 6


def reference(mha, prefix, query, key, value, key_padding_mask=None,
              attn_mask=None, batch_first=False):
    """softmax(q [P_k; K]^T / sqrt(d)) [s P_v; V], heads by hand, float64."""
    d = E // H
    w = mha.in_proj_weight.double()
    b = mha.in_proj_bias.double()
    if batch_first:
        query, key, value = (t.transpose(0, 1) for t in (query, key, value))
    q = query.double() @ w[:E].T + b[:E]
    k = key.double() @ w[E:2 * E].T + b[E:2 * E]
    v = value.double() @ w[2 * E:].T + b[2 * E:]
    outs = []
    for n in range(query.shape[1]):
        heads = []
        for h in range(H):
            sl = slice(h * d, (h + 1) * d)
            qh, kh, vh = q[:, n, sl], k[:, n, sl], v[:, n, sl]
            logits = qh @ kh.T / d**0.5
            if attn_mask is not None:
                logits = logits.masked_fill(attn_mask, float('-inf'))
            if key_padding_mask is not None:
                logits = logits.masked_fill(key_padding_mask[n][None],
                                            float('-inf'))
            if prefix is not None:
                pk = prefix.prefix_k.double()[:, sl]
                pv = prefix.scale.double() * prefix.prefix_v.double()[:, sl]
                logits = torch.cat([qh @ pk.T / d**0.5, logits], dim=1)
                vh = torch.cat([pv, vh], dim=0)
            heads.append(logits.softmax(-1) @ vh)
        outs.append(torch.cat(heads, dim=-1))
    out = torch.stack(outs, dim=1)
    out = out @ mha.out_proj.weight.double().T + mha.out_proj.bias.double()
    return out.transpose(0, 1) if batch_first else out


def make(batch_first=False, scale=1.0):
    mha = nn.MultiheadAttention(E, H, batch_first=batch_first).eval()
    nn.init.normal_(mha.in_proj_bias)
    nn.init.normal_(mha.out_proj.bias)
    prefix = ScaledPrefix.from_host(mha, num_prefix=P, scale=scale,
                                    init_std=1.0, form='joint',
                                    init='random')
    prefix.attach(mha)
    return mha, prefix


def inputs(batch_first=False):
    shape_q = (N, L, E) if batch_first else (L, N, E)
    shape_k = (N, S, E) if batch_first else (S, N, E)
    return torch.randn(shape_q), torch.randn(shape_k), torch.randn(shape_k)


@pytest.mark.parametrize('batch_first', [False, True])
def test_s1_equals_attention_over_concatenated_prefix(batch_first):
    mha, prefix = make(batch_first)
    q, k, v = inputs(batch_first)
    pad = torch.zeros(N, S, dtype=torch.bool)
    pad[0, -3:] = True  # padded keys of image 0
    pad[2, :S - 1] = True  # all but one key of image 2
    out, weights = mha(q, k, v, key_padding_mask=pad)
    assert weights is None
    ref = reference(mha, prefix, q, k, v, key_padding_mask=pad,
                    batch_first=batch_first)
    torch.testing.assert_close(out.double(), ref, atol=1e-5, rtol=1e-5)


def test_fully_padded_keys_still_attend_to_prefixes():
    """Prefix slots are never masked: a row whose keys are all padding is
    finite (pure prefix attention) instead of NaN."""
    mha, prefix = make()
    q, k, v = inputs()
    pad = torch.zeros(N, S, dtype=torch.bool)
    pad[1] = True
    out, _ = mha(q, k, v, key_padding_mask=pad)
    assert torch.isfinite(out).all()
    ref = reference(mha, prefix, q, k, v, key_padding_mask=pad)
    torch.testing.assert_close(out.double(), ref, atol=1e-5, rtol=1e-5)


def test_attn_mask_bool_and_float_agree():
    mha, prefix = make()
    q, k, v = inputs()
    mask = torch.rand(L, S) > 0.6
    mask[:, 0] = False
    out_bool, _ = mha(q, k, v, attn_mask=mask)
    float_mask = torch.zeros(L, S).masked_fill(mask, float('-inf'))
    out_float, _ = mha(q, k, v, attn_mask=float_mask)
    ref = reference(mha, prefix, q, k, v, attn_mask=mask)
    torch.testing.assert_close(out_bool.double(), ref, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(out_float, out_bool)


def test_scaled_prefix_decomposition():
    """h = (1 - lam) Attn(Q,K,V) + s lam Attn(Q,P_k,P_v), single head."""
    mha = nn.MultiheadAttention(E, 1).eval()
    prefix = ScaledPrefix.from_host(mha, num_prefix=P, scale=2.5,
                                    init_std=1.0, form='joint',
                                    init='random')
    prefix.attach(mha)
    x = torch.randn(L, 1, E)
    w, b = mha.in_proj_weight.double(), mha.in_proj_bias.double()
    q = x[:, 0].double() @ w[:E].T + b[:E]
    k = x[:, 0].double() @ w[E:2 * E].T + b[E:2 * E]
    v = x[:, 0].double() @ w[2 * E:].T + b[2 * E:]
    pk, pv = prefix.prefix_k.double(), prefix.prefix_v.double()
    real = (q @ k.T / E**0.5).exp()
    pref = (q @ pk.T / E**0.5).exp()
    lam = pref.sum(1, keepdim=True) / (pref.sum(1, keepdim=True) +
                                       real.sum(1, keepdim=True))
    attn = (real / real.sum(1, keepdim=True)) @ v
    attn_p = (pref / pref.sum(1, keepdim=True)) @ pv
    h = (1 - lam) * attn + 2.5 * lam * attn_p
    expected = h @ mha.out_proj.weight.double().T + mha.out_proj.bias.double()
    out, _ = mha(x, x, x)
    torch.testing.assert_close(out[:, 0].double(), expected, atol=1e-5,
                               rtol=1e-5)


@pytest.mark.parametrize('batch_first', [False, True])
def test_tuned_forward_without_tuners_matches_torch(batch_first):
    mha = nn.MultiheadAttention(E, H, batch_first=batch_first).eval()
    q, k, v = inputs(batch_first)
    pad = torch.zeros(N, S, dtype=torch.bool)
    pad[0, -2:] = True
    mask = torch.rand(L, S) > 0.7
    mask[:, 0] = False
    expected, _ = mha(q, k, v, key_padding_mask=pad, attn_mask=mask)
    install_tuned_forward(mha)
    out, _ = mha(q, k, v, key_padding_mask=pad, attn_mask=mask)
    torch.testing.assert_close(out, expected, atol=1e-6, rtol=1e-5)


def test_gradients_reach_prefix_and_scale():
    mha, prefix = make()
    for p in mha.parameters():
        p.requires_grad_(False)
    for p in prefix.parameters():
        p.requires_grad_(True)
    q, k, v = inputs()
    mha(q, k, v)[0].square().sum().backward()
    assert prefix.prefix_k.grad.abs().sum() > 0
    assert prefix.prefix_v.grad.abs().sum() > 0
    assert prefix.scale.grad.abs() > 0


def test_parameter_counts_closed_form():
    mha = nn.MultiheadAttention(E, H)
    direct = ScaledPrefix.from_host(mha, num_prefix=P)
    assert direct.num_train_params() == 2 * P * E + 1
    assert direct.num_deploy_params() == 2 * P * E + 1
    hidden = 32
    mlp = ScaledPrefix.from_host(mha, num_prefix=P, reparam_hidden=hidden,
                                 init='random')
    assert mlp.num_train_params() == (P * E + E * hidden + hidden +
                                      hidden * 2 * E + 2 * E + 1)
    assert mlp.num_deploy_params() == 2 * P * E + 1
    standard = PrefixTuning.from_host(mha, num_prefix=P)
    assert standard.num_train_params() == 2 * P * E  # s = 1 is a buffer
    assert float(standard.scale) == 1.0


def test_reparametrised_prefix_feeds_attention():
    mha = nn.MultiheadAttention(E, H).eval()
    prefix = ScaledPrefix.from_host(mha, num_prefix=P, reparam_hidden=8,
                                    init='random')
    prefix.attach(mha)
    p_k, p_v = prefix.key_values()
    assert p_k.shape == p_v.shape == (P, E)
    q, k, v = inputs()
    out, _ = mha(q, k, v)
    out.sum().backward()
    assert prefix.reparam[0].weight.grad.abs().sum() > 0
    prefix.fold_reparam()  # deployment: direct prefixes, same outputs
    assert prefix.num_train_params() == prefix.num_deploy_params() == \
        2 * P * E + 1
    torch.testing.assert_close(mha(q, k, v)[0], out)


@pytest.mark.parametrize('batch_first', [False, True])
def test_parallel_form_adds_its_own_prefix_attention(batch_first):
    """h = Attn(Q, K, V) + s Attn(Q, P_k, P_v): the frozen attention (with
    its masks) plus a separately normalised prefix attention."""
    mha = nn.MultiheadAttention(E, H, batch_first=batch_first).eval()
    nn.init.normal_(mha.in_proj_bias)
    q, k, v = inputs(batch_first)
    pad = torch.zeros(N, S, dtype=torch.bool)
    pad[0, -3:] = True
    frozen = reference(mha, None, q, k, v, key_padding_mask=pad,
                       batch_first=batch_first)
    prefix = ScaledPrefix.from_host(mha, num_prefix=P, scale=0.6,
                                    init='random', init_std=1.0,
                                    form='parallel')
    prefix.attach(mha)
    out, _ = mha(q, k, v, key_padding_mask=pad)
    # the prefix branch alone: a query attends over P_k only
    query = q.transpose(0, 1) if batch_first else q
    w = mha.in_proj_weight.double()
    b = mha.in_proj_bias.double()
    qp = query.double() @ w[:E].T + b[:E]
    d = E // H
    heads = []
    for h in range(H):
        sl = slice(h * d, (h + 1) * d)
        att = (qp[..., sl] @ prefix.prefix_k.double()[:, sl].T /
               d**0.5).softmax(-1)
        heads.append(att @ prefix.prefix_v.double()[:, sl])
    branch = 0.6 * torch.cat(heads, -1) @ mha.out_proj.weight.double().T
    if batch_first:
        branch = branch.transpose(0, 1)
    torch.testing.assert_close(out.double(), frozen + branch, atol=1e-5,
                               rtol=1e-5)


@pytest.mark.parametrize('bad', [0, -3, 2.5, True, None])
def test_bad_prefix_length(bad):
    mha = nn.MultiheadAttention(E, H)
    with pytest.raises(ValueError, match='num_prefix'):
        ScaledPrefix.from_host(mha, num_prefix=bad)
