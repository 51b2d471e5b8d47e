"""Tuners on MMDetection's own attentions: ConditionalAttention (Conditional
DETR, DAB-DETR) and Swin's WindowMSA, against MMDetection's forwards and
against float64 references written from the formulas."""
import copy
import math

import pytest
import torch
import torch.nn as nn
from mmdet.models.backbones.swin import ShiftWindowMSA
from mmdet.models.layers.transformer.utils import ConditionalAttention

from mmpetl.injection import inject
from mmpetl.injection.budget import budget_terms
from mmpetl.tuners import (LoRA, LoRAConditionalAttention, ScaledPrefix,
                           UTuner)
from mmpetl.tuners.attention import install_tuned_forward

D, H, L, S, B, P = 32, 4, 5, 9, 2, 3
DH = D // H
WINDOW = 4


def conditional(cross, keep_query_pos=False, later=False):
    """A ConditionalAttention with non-zero biases and its call kwargs
    (cross-attention: keys padded in image 0; ``later``: a decoder layer
    after the first, whose ``qpos_proj`` mmdet deletes)."""
    torch.manual_seed(0)
    host = ConditionalAttention(D, H, cross_attn=cross,
                                keep_query_pos=keep_query_pos).eval()
    for module in host.modules():
        if isinstance(module, nn.Linear):
            nn.init.normal_(module.bias)
    query, pos = torch.randn(B, L, D), torch.randn(B, L, D)
    if not cross:
        return host, dict(query=query, key=query, query_pos=pos,
                          key_pos=pos)
    if later:  # DAB-DETR keeps it when keep_query_pos
        host.qpos_proj = None
    pad = torch.zeros(B, S, dtype=torch.bool)
    pad[0, -3:] = True
    return host, dict(query=query, key=torch.randn(B, S, D),
                      query_pos=pos, key_pos=torch.randn(B, S, D),
                      ref_sine_embed=torch.randn(B, L, D),
                      key_padding_mask=pad,
                      is_first=not (later or keep_query_pos))


CONDITIONAL = {
    'self': dict(cross=False),
    'cross-first': dict(cross=True),
    'cross-later': dict(cross=True, later=True),
    'cross-keep-pos': dict(cross=True, keep_query_pos=True),
}


def window(shift=True, qk_scale=None):
    torch.manual_seed(0)
    block = ShiftWindowMSA(D, H, WINDOW, shift_size=WINDOW // 2 if shift
                           else 0, qk_scale=qk_scale).eval()
    nn.init.normal_(block.w_msa.relative_position_bias_table)
    nn.init.normal_(block.w_msa.qkv.bias)
    return block


@pytest.mark.parametrize('case', list(CONDITIONAL))
def test_conditional_tuned_forward_equals_mmdet(case):
    """No tuner attached: mmpetl's re-implementation computes mmdet's
    output (measured max |diff| 2.4e-7 in float32)."""
    host, kwargs = conditional(**CONDITIONAL[case])
    expected = host(**kwargs)
    install_tuned_forward(host)
    torch.testing.assert_close(host(**kwargs), expected, atol=1e-6,
                               rtol=1e-6)


@pytest.mark.parametrize('shift,qk_scale,side', [
    (False, None, 8), (True, None, 8), (True, None, 6), (True, 0.2, 8)])
def test_window_tuned_forward_equals_mmdet(shift, qk_scale, side):
    """Plain and shifted windows, a padded map (6x6 -> 8x8) and a custom
    qk_scale (measured max |diff| 9e-8)."""
    block = window(shift, qk_scale)
    x = torch.randn(B, side * side, D)
    expected = block(x, (side, side))
    install_tuned_forward(block.w_msa)
    torch.testing.assert_close(block(x, (side, side)), expected,
                               atol=1e-6, rtol=1e-6)


def conditional_reference(host, prefix, kwargs, form):
    """Both forms in float64, heads by hand, from the module doc."""
    def lin(layer, x):
        return x.double() @ layer.weight.double().T + layer.bias.double()

    query, pos = kwargs['query'], kwargs['query_pos']
    if host.cross_attn:
        key, key_pos = kwargs['key'], kwargs['key_pos']
        q, k = lin(host.qcontent_proj, query), lin(host.kcontent_proj, key)
        v, k_pos = lin(host.v_proj, key), lin(host.kpos_proj, key_pos)
        if kwargs['is_first'] or host.keep_query_pos:
            q, k = q + lin(host.qpos_proj, pos), k + k_pos
        sine = lin(host.qpos_sine_proj, kwargs['ref_sine_embed'])
        pad = kwargs['key_padding_mask']
    else:
        q = lin(host.qcontent_proj, query) + lin(host.qpos_proj, pos)
        k = lin(host.kcontent_proj, query) + lin(host.kpos_proj, pos)
        v, pad = lin(host.v_proj, query), None
    width = 2 * DH if host.cross_attn else DH
    scale = float(prefix.scale)
    out = torch.zeros(B, L, D, dtype=torch.float64)
    for b in range(B):
        for h in range(H):
            sl = slice(h * DH, (h + 1) * DH)
            qh, kh, vh = q[b, :, sl], k[b, :, sl], v[b, :, sl]
            if host.cross_attn:  # [content; position] per head
                qh = torch.cat([qh, sine[b, :, sl]], 1)
                kh = torch.cat([kh, k_pos[b, :, sl]], 1)
            logits = qh @ kh.T / math.sqrt(width)
            if pad is not None:
                logits = logits.masked_fill(pad[b][None], float('-inf'))
            pk = prefix.prefix_k.double()[:, h * width:(h + 1) * width]
            pv = prefix.prefix_v.double()[:, sl]
            plogits = qh @ pk.T / math.sqrt(width)
            if form == 'joint':
                weights = torch.cat([plogits, logits], 1).softmax(-1)
                out[b, :, sl] = weights @ torch.cat([scale * pv, vh])
            else:
                out[b, :, sl] = logits.softmax(-1) @ vh + \
                    scale * plogits.softmax(-1) @ pv
    out = lin(host.out_proj, out.float())
    return query.double() + out


@pytest.mark.parametrize('case', list(CONDITIONAL))
@pytest.mark.parametrize('form', ['joint', 'parallel'])
def test_conditional_prefix_matches_float64_reference(case, form):
    """Joint: softmax over [P_k; K] with values [s P_v; V]; parallel: the
    frozen attention plus s Attn(Q, P_k, P_v). In cross-attention P_k is
    2d wide ([content; position] per head) and logits scale by
    1/sqrt(2 d_h), as mmdet's do."""
    host, kwargs = conditional(**CONDITIONAL[case])
    prefix = ScaledPrefix.from_host(host, num_prefix=P, form=form,
                                    init='random', init_std=1.0, scale=1.7)
    prefix.attach(host)
    width = 2 * D if host.cross_attn else D
    assert prefix.prefix_k.shape == (P, width)
    assert prefix.prefix_v.shape == (P, D)
    assert prefix.num_train_params() == P * (width + D) + 1
    assert prefix.describe().get('key_dims', D) == width  # in the table
    expected = conditional_reference(host, prefix, kwargs, form)
    torch.testing.assert_close(host(**kwargs).double(), expected,
                               atol=1e-5, rtol=1e-5)


def window_reference(msa, prefix, x, mask, form):
    """Per window: q k^T * scale + bias (+ mask) over the real keys, the
    prefixes with neither, in float64."""
    w = msa.qkv.weight.double()
    bias_qkv = msa.qkv.bias.double()
    qkv = x.double() @ w.T + bias_qkv
    q, k, v = qkv.chunk(3, dim=-1)
    num = x.shape[1]
    rel = msa.relative_position_bias_table.double()[
        msa.relative_position_index.view(-1)].view(num, num, H)
    scale = float(prefix.scale)
    out = torch.zeros_like(q)
    for b in range(x.shape[0]):
        for h in range(H):
            sl = slice(h * DH, (h + 1) * DH)
            qh = q[b, :, sl] * msa.scale
            logits = qh @ k[b, :, sl].T + rel[:, :, h]
            if mask is not None:
                logits = logits + mask[b % mask.shape[0]].double()
            plogits = qh @ prefix.prefix_k.double()[:, sl].T
            pv = prefix.prefix_v.double()[:, sl]
            if form == 'joint':
                weights = torch.cat([plogits, logits], 1).softmax(-1)
                out[b, :, sl] = weights @ torch.cat([scale * pv,
                                                     v[b, :, sl]])
            else:
                out[b, :, sl] = logits.softmax(-1) @ v[b, :, sl] + \
                    scale * plogits.softmax(-1) @ pv
    return out @ msa.proj.weight.double().T + msa.proj.bias.double()


@pytest.mark.parametrize('form', ['joint', 'parallel'])
@pytest.mark.parametrize('shifted', [False, True])
def test_window_prefix_matches_float64_reference(form, shifted):
    """Every window's queries see the same prefixes; the relative position
    bias and the shifted-window mask touch the real keys only."""
    msa = window().w_msa
    prefix = ScaledPrefix.from_host(msa, num_prefix=P, form=form,
                                    init='random', init_std=1.0, scale=0.8)
    prefix.attach(msa)
    windows, num = 4, WINDOW * WINDOW
    x = torch.randn(B * windows, num, D)
    mask = None
    if shifted:  # two regions per window, -100 across them (as mmdet)
        region = (torch.arange(num) % 2)[None].repeat(windows, 1)
        region[0] = 0
        mask = (region[:, None] != region[:, :, None]).float() * -100.0
    expected = window_reference(msa, prefix, x, mask, form)
    torch.testing.assert_close(msa(x, mask=mask).double(), expected,
                               atol=1e-5, rtol=1e-5)


def test_scaled_init_reads_the_keys_of_the_logits():
    """'scaled': P_k's std is the rms of the key projections the logits
    use: [W_kc; W_kp] in conditional cross-attention, W_kc in its
    self-attention, qkv's key rows in Swin."""
    for host, weight in [
            (conditional(cross=True)[0], lambda h: torch.cat(
                [h.kcontent_proj.weight, h.kpos_proj.weight])),
            (conditional(cross=False)[0], lambda h: h.kcontent_proj.weight),
            (window().w_msa, lambda h: h.qkv.weight.chunk(3)[1])]:
        tuner = ScaledPrefix.from_host(host, num_prefix=400)
        w_k = weight(host)
        assert tuner.prefix_k.std().item() == pytest.approx(
            (w_k.norm() / math.sqrt(w_k.shape[0])).item(), rel=0.1)
        assert torch.count_nonzero(tuner.prefix_v) == 0


def test_reparametrised_prefix_on_cross_attention():
    host, kwargs = conditional(cross=True)
    prefix = ScaledPrefix.from_host(host, num_prefix=P, reparam_hidden=8,
                                    init='random')
    prefix.attach(host)
    p_k, p_v = prefix.key_values()
    assert p_k.shape == (P, 2 * D) and p_v.shape == (P, D)
    out = host(**kwargs)
    out.sum().backward()
    assert prefix.reparam[0].weight.grad.abs().sum() > 0
    prefix.fold_reparam()
    assert prefix.num_deploy_params() == P * 3 * D + 1
    torch.testing.assert_close(host(**kwargs), out)


@pytest.mark.parametrize('case', list(CONDITIONAL))
def test_lora_on_conditional_attention(case):
    """Exact at init; 4dr on q/k/v + 2dr on out_proj (torch MHA's count);
    merging gives the unmerged outputs; in self-attention the delta acts
    on content + position, so it moves q even where the content is 0 (the
    first decoder layer)."""
    host, kwargs = conditional(**CONDITIONAL[case])
    base = host(**kwargs).detach()
    holder = nn.Module()
    holder.attn = host
    records = inject(holder, [dict(type='LoRA', targets=['attn'], rank=2)],
                     arch='detr')
    assert [(r.name, type(r.tuner)) for r in records] == [
        ('attn', LoRAConditionalAttention), ('attn.out_proj',
                                             type(records[1].tuner))]
    assert sum(r.num_params for r in records) == 2 * 4 * D + 2 * 2 * D
    torch.testing.assert_close(host(**kwargs), base, atol=1e-6, rtol=1e-6)
    for r in records:
        nn.init.normal_(r.tuner.lora_B)
    tuned = host(**kwargs).detach()
    assert not torch.allclose(tuned, base, atol=1e-3)
    for r in records:
        r.tuner.merge()
    torch.testing.assert_close(host(**kwargs), tuned, atol=1e-4, rtol=1e-4)
    for r in records:
        r.tuner.unmerge()
    torch.testing.assert_close(host(**kwargs), tuned, atol=1e-4, rtol=1e-4)
    if case == 'self':
        lora = records[0].tuner
        zero = dict(kwargs, query=torch.zeros_like(kwargs['query']))
        q_in = zero['query'] + zero['query_pos']
        d_q, _, _ = lora.in_proj_deltas(q_in, q_in, zero['query'])
        assert d_q.abs().max() > 0  # LoRA on W_qc alone would give 0


def test_lora_and_utuner_on_swin_attention():
    block = window()
    x = torch.randn(B, 64, D)
    base = block(x, (8, 8)).detach()
    holder = nn.Module()
    holder.attn = block
    records = inject(holder, [dict(type='LoRA', targets=['attn'], rank=2),
                              dict(type='UTuner', targets=['attn'],
                                   bottleneck=4)], arch='detr')
    assert [r.name for r in records] == ['attn.w_msa.qkv',
                                         'attn.w_msa.proj', 'attn']
    torch.testing.assert_close(block(x, (8, 8)), base, atol=1e-6,
                               rtol=1e-6)
    assert LoRA.resolve_hosts('a', block.w_msa)[0][0] == 'a.qkv'


def test_utuner_on_conditional_attention_is_exact_and_learns():
    host, kwargs = conditional(cross=True)
    base = host(**kwargs).detach()
    tuner = UTuner.from_host(host, bottleneck=4)
    tuner.attach(host)
    out = host(**kwargs)
    torch.testing.assert_close(out, base)
    out.square().sum().backward()
    assert tuner.branch.up.weight.grad.abs().max() > 0


def test_budget_counts_conditional_cross_attention_prefixes():
    """ETTA's planner counts l*(2d + d) + 1 for a cross-attention."""
    holder = nn.Module()
    holder.decoder = nn.Module()
    holder.decoder.layers = nn.ModuleList([nn.Module()])
    layer = holder.decoder.layers[0]
    layer.self_attn = copy.deepcopy(conditional(cross=False)[0])
    layer.cross_attn = copy.deepcopy(conditional(cross=True)[0])
    _, widths, _, _ = budget_terms(holder, trainable=(), arch='detr',
                                   ffn_presets=(), attn_presets=('attn', ))
    assert widths == [2 * D, 3 * D]
