"""The re-weighting prefix forms (``reweight``, ``reweight+parallel``) of
:class:`~mmpetl.tuners.ScaledPrefix` on every attention-with-keys host
(torch/mmcv ``MultiheadAttention``, MMPretrain's ViT attention, mmdet
``ConditionalAttention`` self and cross, Swin ``ShiftWindowMSA``):

* exact at init (``'balanced'``: ``P_k = 0``, ``P_q``/``P_v`` centred);
* every non-scale tensor has a gradient at step 0;
* with the tensors off their init, the host's output equals a float64
  reference written here head by head (``q' = q + s softmax(q P_k^T /
  sqrt(d_h)) P_q``, the frozen attention with ``q'``, plus ``s_v
  softmax(q P_k^T / sqrt(d_h)) P_v``), masks, Swin's position bias and
  window mask included;
* the attention over the frozen keys moves (not only the values): the
  health statistics measure it, and equal the reference's;
* mixed-task routing, tuner checkpoints, the activation init, refusals.

The property matrix (``test_property_matrix.py``, rows
``prefix_reweight``, ``prefix_reweight_parallel``) adds merge,
activation checkpointing and bf16 on the same hosts.
"""
import math

import pytest
import torch
import torch.nn.functional as F

from mmpetl.checkpoints import (load_tuner_checkpoint, load_tuner_state,
                                tuner_checkpoint, write_tuner_checkpoint)
from mmpetl.injection import inject
from mmpetl.tuners import (PrefixTuning, ScaledPrefix, TaskGroups,
                           TunerHostError)
from tests.test_tuners.matrix_hosts import (one_thread, BATCH, HEADS, HOSTS, SIDE,
                                            Holder, host_inputs)

P = 3  # prefixes
FORMS = ['reweight', 'reweight+parallel']
KEY_HOSTS = ['torch_mha', 'mmcv_mha', 'vit_attn', 'cond_self', 'cond_cross',
             'swin']


def build(host: str, form: str, dtype=torch.float32, **kwargs) -> Holder:
    """The host in a holder with one re-weighting prefix (base frozen)."""
    spec = HOSTS[host]
    model = Holder(spec.build(), spec.call)
    inject(model, [dict(type='ScaledPrefix', num_prefix=P, form=form,
                        targets=['layer.attn'], **kwargs)], arch='detr')
    for name, param in model.named_parameters():
        param.requires_grad_('prefix' in name)
    return model.to(dtype).eval()


def tuner_of(model) -> ScaledPrefix:
    (_, tuner), = model.tuner_modules()
    return tuner


@torch.no_grad()
def move_off(tuner, seed: int) -> None:
    """Prefixes N(0, 0.5^2) (prefix logits and shifts of order 1 for these
    tiny hosts), scales in [0.5, 1]."""
    gen = torch.Generator().manual_seed(seed)
    for _, tensor in list(tuner.named_parameters()) + list(
            tuner.named_buffers()):
        if tensor.dim() == 0:
            tensor.fill_(0.5 + 0.5 * float(torch.rand((), generator=gen)))
        else:
            tensor.copy_(torch.randn(tensor.shape, generator=gen) * 0.5)


def run(model, host, dtype=torch.float32, seed=2):
    return model(host_inputs(host, dtype, seed))


# -- the reference ------------------------------------------------------------
def prefix_attention(q, k, v, mask, tuner, heads):
    """float64, head by head: ``(B, L, H*dk)`` queries, ``(B, S, H*dk)``
    keys, ``(B, S, H*dv)`` values, ``mask`` additive ``(B|1, H|1, L, S)``
    or None; returns ``(B, L, H*dv)`` and the (frozen, re-weighted)
    attention weights ``(B, H, L, S)``."""
    pk = tuner.prefix_k.double()
    pq = tuner.prefix_q.double()
    pv = getattr(tuner, 'prefix_v', None)
    s = tuner.scale.item()
    dk, dv = q.shape[-1] // heads, v.shape[-1] // heads
    outs, before, after = [], [], []
    for h in range(heads):
        ks, vs = slice(h * dk, (h + 1) * dk), slice(h * dv, (h + 1) * dv)
        qh, kh, vh = q[..., ks], k[..., ks], v[..., vs]
        a = torch.softmax(qh @ pk[:, ks].T / math.sqrt(dk), -1)  # (B,L,l)
        q2 = qh + s * a @ pq[:, ks]
        bias = 0.0 if mask is None else mask[:, min(h, mask.shape[1] - 1)]
        w0 = torch.softmax(qh @ kh.transpose(1, 2) / math.sqrt(dk) + bias,
                           -1)
        w1 = torch.softmax(q2 @ kh.transpose(1, 2) / math.sqrt(dk) + bias,
                           -1)
        out = w1 @ vh
        if pv is not None:
            out = out + tuner.scale_v.item() * a @ pv.double()[:, vs]
        outs.append(out)
        before.append(w0)
        after.append(w1)
    return torch.cat(outs, -1), torch.stack(before, 1), torch.stack(after, 1)


def padding(pad):  # (B, S) bool -> additive (B, 1, 1, S)
    return torch.zeros(pad.shape, dtype=torch.float64).masked_fill(
        pad, float('-inf'))[:, None, None]


def reference(host: str, model, t):
    """The tuned host's output, by hand in float64 (the host's frozen
    weights read directly; Swin: mmdet's window partition and shift with
    the per-window attention by hand); also the attention weights."""
    attn = model.layer.attn
    tuner = tuner_of(model)
    weights = {}

    def attention(q, k, v, mask):
        out, weights['before'], weights['after'] = prefix_attention(
            q, k, v, mask, tuner, HEADS)
        return out

    if host in ('torch_mha', 'mmcv_mha'):
        mha = attn.attn if host == 'mmcv_mha' else attn
        w_q, w_k, w_v = mha.in_proj_weight.chunk(3)
        b_q, b_k, b_v = mha.in_proj_bias.chunk(3)
        if host == 'torch_mha':  # (L, B, d)
            x = t['x'].transpose(0, 1)
            qin = kin = vin = x
        else:  # mmcv: q = k = x + pos, v = x, residual x
            x = t['x']
            qin = kin = x + t['pos']
            vin = x
        out = attention(F.linear(qin, w_q, b_q), F.linear(kin, w_k, b_k),
                        F.linear(vin, w_v, b_v), padding(t['pad']))
        out = mha.out_proj(out)
        return (out.transpose(0, 1) if host == 'torch_mha' else x + out,
                weights)
    if host == 'vit_attn':
        q, k, v = attn.qkv(t['x']).chunk(3, dim=-1)
        return attn.proj(attention(q, k, v, None)), weights
    if host == 'cond_self':
        x, pos = t['x'], t['pos']
        q = attn.qcontent_proj(x) + attn.qpos_proj(pos)
        k = attn.kcontent_proj(x) + attn.kpos_proj(pos)
        return x + attn.out_proj(attention(q, k, attn.v_proj(x), None)), \
            weights
    if host == 'cond_cross':  # is_first: positions in the content half
        x, mem = t['x'], t['mem']
        d = x.shape[-1] // HEADS
        q_c = attn.qcontent_proj(x) + attn.qpos_proj(t['pos'])
        k_p = attn.kpos_proj(t['key_pos'])
        k_c = attn.kcontent_proj(mem) + k_p
        q_s = attn.qpos_sine_proj(t['sine'])

        def per_head(a, b):  # [a_h ; b_h] for every head
            return torch.cat([torch.cat([a[..., h * d:(h + 1) * d],
                                         b[..., h * d:(h + 1) * d]], -1)
                              for h in range(HEADS)], -1)

        out = attention(per_head(q_c, q_s), per_head(k_c, k_p),
                        attn.v_proj(mem), padding(t['pad']))
        return x + attn.out_proj(out), weights
    assert host == 'swin'
    w_msa = attn.w_msa
    n = w_msa.window_size[0] * w_msa.window_size[1]
    bias = w_msa.relative_position_bias_table[
        w_msa.relative_position_index.view(-1)].view(n, n, -1).permute(
            2, 0, 1)
    original = w_msa.forward

    def by_hand(x, mask=None):  # (B*nW, N, C), mask (nW, N, N)
        q, k, v = w_msa.qkv(x).chunk(3, dim=-1)
        add = bias.unsqueeze(0)
        if mask is not None:
            add = (add + mask.unsqueeze(1)).repeat(
                x.shape[0] // mask.shape[0], 1, 1, 1)
        return w_msa.proj(attention(q, k, v, add))

    w_msa.forward = by_hand
    try:
        return attn(t['x'], (SIDE, SIDE)), weights
    finally:
        w_msa.forward = original


# -- exact at init, gradients at step 0 -------------------------------------
@pytest.mark.parametrize('form', FORMS)
@pytest.mark.parametrize('host', KEY_HOSTS)
def test_exact_at_init(host, form):
    spec = HOSTS[host]
    plain = spec.build().eval()
    with torch.no_grad():
        want = spec.call(plain, host_inputs(host))
        model = build(host, form)
        got = run(model, host)
    tuner = tuner_of(model)
    assert tuner.init == 'balanced'
    assert torch.equal(tuner.prefix_k, torch.zeros_like(tuner.prefix_k))
    assert tuner.prefix_q.abs().min() > 0  # centred, not zero
    assert tuner.scale.item() == 1.0 and tuner.scale.requires_grad
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize('form', FORMS)
@pytest.mark.parametrize('host', KEY_HOSTS)
def test_every_non_scale_tensor_learns_at_step_0(host, form):
    model = build(host, form).train()
    out = run(model, host)
    weight = torch.randn(out.shape, generator=torch.Generator().manual_seed(6))
    (out * weight).sum().backward()
    tuner = tuner_of(model)
    names = {n for n, _ in tuner.named_parameters()}
    want = {'prefix_k', 'prefix_q', 'scale'} | (
        {'prefix_v', 'scale_v'} if form == 'reweight+parallel' else set())
    assert names == want
    for name, param in tuner.named_parameters():
        if param.dim():  # P_k through the softmax, P_q, P_v through 1/l
            assert param.grad.abs().min() > 1e-7, name
            assert param.grad.abs().max() > 1e-5, name


# -- the float64 reference ---------------------------------------------------
@pytest.mark.parametrize('form', FORMS)
@pytest.mark.parametrize('host', KEY_HOSTS)
def test_host_equals_reference_off_init(host, form):
    model = build(host, form, torch.float64)
    tuner = tuner_of(model)
    move_off(tuner, seed=7)
    t = host_inputs(host, torch.float64)
    with torch.no_grad():
        got = model(t)
        want, weights = reference(host, model, t)
        frozen = HOSTS[host].call(HOSTS[host].build().double().eval(), t)
    torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-10)
    assert (got - frozen).abs().max() > 1e-2  # the tuner changes it
    # the attention over the frozen keys moves, not only the values
    moved = 0.5 * (weights['after'] - weights['before']).abs().sum(-1)
    assert moved.nan_to_num().mean() > 0.02


@pytest.mark.parametrize('host', ['torch_mha', 'cond_cross', 'swin'])
def test_the_change_is_in_where_queries_look(host):
    """reweight+parallel with P_v = 0: no value is added, and the output
    still changes: the frozen keys' attention moved. The health statistics
    record that change (share = mean total variation, logit_change) and
    equal the reference's."""
    model = build(host, 'reweight+parallel', torch.float64)
    tuner = tuner_of(model)
    move_off(tuner, seed=8)
    with torch.no_grad():
        tuner.prefix_v.zero_()
        t = host_inputs(host, torch.float64)
        frozen = HOSTS[host].call(HOSTS[host].build().double().eval(), t)
        tuner.recording = True
        got = model(t)
        tuner.recording = False
        want, weights = reference(host, model, t)
    torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-10)
    assert (got - frozen).abs().max() > 1e-2
    stats = tuner.last_stats
    moved = 0.5 * (weights['after'] - weights['before']).abs().sum(-1)
    assert stats['share'] == pytest.approx(  # recorded in float32
        float(moved.nan_to_num().mean()), rel=1e-5)
    assert stats['share'] > 0.02
    assert stats['logit_change'] > 0.01
    assert stats['scale'] == pytest.approx(tuner.scale.item())
    assert stats['scale_v'] == pytest.approx(tuner.scale_v.item())
    assert stats['contribution'] > 0


def test_health_statistics_at_init_are_zero():
    model = build('torch_mha', 'reweight')
    tuner = tuner_of(model)
    tuner.recording = True
    with torch.no_grad():
        run(model, 'torch_mha')
    stats = tuner.last_stats
    assert set(stats) == {'contribution', 'share', 'logit_change', 'scale'}
    assert stats['share'] < 1e-6 and stats['logit_change'] < 1e-6


# -- routing, checkpoints, activation init ----------------------------------
OWNER = [0, 1, 0, 2]


@pytest.mark.parametrize('form', FORMS)
@pytest.mark.parametrize('host', ['torch_mha', 'cond_cross', 'swin'])
def test_routed_batch_equals_each_task_alone(host, form):
    model = build(host, form)
    tuner = tuner_of(model)
    tasks = []
    for seed in range(3):
        move_off(tuner, 10 + seed)
        tasks.append({k: v.clone() for k, v in tuner.state_dict().items()})
    samples = [torch.tensor([i for i, o in enumerate(OWNER) if o == t])
               for t in range(3)]
    tuner.routing = TaskGroups(BATCH, [(samples[t], tasks[t], f'task{t}')
                                       for t in range(3)])
    try:
        with torch.no_grad():
            routed = run(model, host)
    finally:
        tuner.routing = None
    dim = HOSTS[host].out_dim
    outs = []
    for t in range(3):
        tuner.load_state_dict(tasks[t])
        with torch.no_grad():
            outs.append(run(model, host))
        assert torch.equal(routed.index_select(dim, samples[t]),
                           outs[t].index_select(dim, samples[t])), t
    assert not torch.allclose(outs[0], outs[1])


@pytest.mark.parametrize('form', FORMS)
def test_tuner_checkpoint_round_trip(form, tmp_path):
    model = build('cond_cross', form)
    move_off(tuner_of(model), 3)
    fresh = build('cond_cross', form)
    move_off(tuner_of(fresh), 4)
    path = str(tmp_path / 'tuner.safetensors')
    write_tuner_checkpoint(tuner_checkpoint(model), path)
    ckpt = load_tuner_checkpoint(path)
    keys = {k.rsplit('.', 1)[-1] for k in ckpt['state_dict']}
    assert {'prefix_k', 'prefix_q', 'scale'} <= keys
    assert ('scale_v' in keys) == (form == 'reweight+parallel')
    with torch.no_grad():
        want = run(model, 'cond_cross')
        assert not torch.allclose(run(fresh, 'cond_cross'), want)
        load_tuner_state(fresh, ckpt, path)
        assert torch.equal(run(fresh, 'cond_cross'), want)


@pytest.mark.parametrize('form', FORMS)
def test_activation_init_is_exact_and_keeps_the_keys(form):
    """init='activations': P_k = keys the frozen host projects, P_q (and
    P_v) = 0: exact at init; P_q then moves the attention."""
    model = build('vit_attn', form, init='activations')
    tuner = tuner_of(model)
    assert tuner.needs_data_init
    with torch.no_grad():
        frozen = run(model, 'vit_attn')  # eval: no readiness check
        tuner.start_collecting()
        run(model, 'vit_attn')
        tuner.finish_collecting(torch.Generator().manual_seed(0))
        attn = model.layer.attn
        keys = attn.qkv(host_inputs('vit_attn')['x']).chunk(3, -1)[1]
        keys = keys.reshape(-1, keys.shape[-1])
        for row in tuner.prefix_k:  # each prefix is one of the keys
            assert (keys - row).abs().amax(-1).min() < 1e-6
        assert not tuner.needs_data_init
        assert torch.equal(tuner.prefix_q, torch.zeros_like(tuner.prefix_q))
        torch.testing.assert_close(run(model, 'vit_attn'), frozen)
        tuner.prefix_q.normal_(std=0.5)
        assert (run(model, 'vit_attn') - frozen).abs().max() > 1e-2


# -- construction -------------------------------------------------------------
def test_parameters_deploy_count_and_description():
    model = build('cond_cross', 'reweight+parallel')
    tuner = tuner_of(model)
    d, l = 16, P
    assert tuner.prefix_k.shape == tuner.prefix_q.shape == (l, 2 * d)
    assert tuner.prefix_v.shape == (l, d)
    assert tuner.num_deploy_params() == l * (2 * 2 * d + d) + 2
    assert tuner.describe() == dict(num_prefix=l, form='reweight+parallel',
                                    init='balanced', key_dims=2 * d)
    assert tuner.merge() is False and tuner.fold_reparam() is False
    only = tuner_of(build('vit_attn', 'reweight'))
    assert not hasattr(only, 'prefix_v')
    assert only.num_deploy_params() == 2 * l * d + 1
    fixed = PrefixTuning(d, HEADS, l, form='reweight+parallel')
    assert fixed.init == 'balanced' and fixed.num_deploy_params() == 3 * l * d
    assert not fixed.scale.requires_grad and float(fixed.scale_v) == 1.0
    assert PrefixTuning(d, HEADS, l).init == 'random'  # Li & Liang's
    assert ScaledPrefix(d, HEADS, l).init == 'scaled'


def test_bad_options_are_refused_by_name():
    with pytest.raises(TunerHostError, match=r"form='reweight' does not "
                       r"apply to DeformablePrefix on .*MultiScale"
                       r"DeformableAttention; valid forms there: "):
        build('msda', 'reweight')
    with pytest.raises(ValueError, match=r"init='random' does not apply to "
                       r"form='reweight\+parallel'.*valid inits for it: "
                       r"\['balanced', 'scaled', 'activations'\]"):
        build('torch_mha', 'reweight+parallel', init='random')
    with pytest.raises(ValueError, match=r"reparam_hidden does not apply to "
                       r"form='reweight'.*reparam_hidden=None"):
        build('torch_mha', 'reweight', reparam_hidden=4)
    with pytest.raises(TunerHostError, match=r"form='steer' does not apply "
                       r"to ScaledPrefix.*valid forms there: \['joint', "
                       r"'parallel', 'reweight', 'reweight\+parallel'\]"):
        build('torch_mha', 'steer')
    with pytest.raises(ValueError, match=r"unknown form='reweigh'; valid "
                       r"forms: \['joint', 'parallel', 'reweight', "
                       r"'reweight\+parallel'\]"):
        ScaledPrefix(16, HEADS, P, form='reweigh')
