"""DeformablePrefix's steer forms: the prefixes move where MSDA samples and
how much each sample weighs (``form='steer'``, ``'steer+parallel'``).

Every comparison is made with the tuner tensors moved off their init
(scales in [0.5, 1], the rest ``N(0, 0.2^2)``, :func:`move_off_init`), and
each test also shows the steering changes the output, so that no check
compares 0 with 0. The reference is computed by hand in float64 with
MMCV's own ``multi_scale_deformable_attn_pytorch``.
"""
import copy

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from mmcv.ops import MultiScaleDeformableAttention
from mmcv.ops import multi_scale_deform_attn as mmcv_msda

from mmpetl.injection import inject
from mmpetl.models import PETLModel
from mmpetl.models.health import TunerProbe
from mmpetl.tuners import (DeformablePrefix, PrefixTuning, ScaledPrefix,
                           TaskGroups, TunerHostError)
from tests.conftest import det_batch, small_deformable_cfg, tensor_outputs
from tests.test_tuners.matrix_hosts import move_off_init

D, HEADS, LEVELS, POINTS, L = 32, 4, 2, 3, 5
SHAPES = [[4, 4], [2, 2]]
STEER_FORMS = ['steer', 'steer+parallel']


def inputs(bs=2, num_query=6, seed=0):
    gen = torch.Generator().manual_seed(seed)
    return dict(
        query=torch.randn(bs, num_query, D, generator=gen),
        value=torch.randn(bs, 20, D, generator=gen),
        query_pos=torch.randn(bs, num_query, D, generator=gen),
        reference_points=torch.rand(bs, num_query, LEVELS, 2, generator=gen),
        spatial_shapes=torch.tensor(SHAPES),
        level_start_index=torch.tensor([0, 16]))


class Holder(nn.Module):
    """``attn`` is the MSDA; tuners are found as PETLModel finds them."""

    def __init__(self, batch_first=True):
        super().__init__()
        torch.manual_seed(0)
        self.attn = MultiScaleDeformableAttention(
            D, HEADS, num_levels=LEVELS, num_points=POINTS,
            batch_first=batch_first)
        with torch.no_grad():  # MSDA's init: a fixed pattern, zero bias
            for name, param in self.attn.named_parameters():
                param.add_(torch.randn(param.shape) * 0.1)

    def forward(self, kwargs):
        return self.attn(**kwargs)

    def tuner_modules(self):
        from mmpetl.tuners import BaseTuner
        return [(n, m) for n, m in self.named_modules()
                if isinstance(m, BaseTuner)]


def build(form='steer', lora=None, seed=3, **prefix):
    """A holder with a steering prefix (and a LoRA on the MSDA Linears
    ``lora``), the tuners off their init (``seed``; None: at init)."""
    holder = Holder().eval()
    configs = [dict(type='ScaledPrefix', targets=['attn'], num_prefix=L,
                    form=form, **prefix)]
    if lora:
        configs.append(dict(type='LoRA', targets=['attn'], rank=2,
                            msda_linears=lora))
    inject(holder, configs, arch='detr')
    for param in holder.parameters():
        param.requires_grad_(False)
    for _, tuner in holder.tuner_modules():
        for param in tuner.parameters():
            param.requires_grad_(True)
    if seed is not None:
        move_off_init(holder, seed)
    return holder


def mmcv_reference():
    """MMCV's own PyTorch fallback (not mmpetl's replacement)."""
    fn = mmcv_msda.multi_scale_deformable_attn_pytorch
    return getattr(fn, 'original', fn)


def reference(msda, tuner, kwargs, steer_offsets=True, steer_logits=True,
              linear=None):
    """MSDA's output with the steering, in float64, by hand: the prefix
    attention per head, its change added to the Linears' outputs (offsets
    in their units, logits before the softmax), MMCV's sampling.
    ``linear(name, x)`` gives a Linear's output (default: its weight)."""
    f64 = {k: v.double() if v.is_floating_point() else v
           for k, v in kwargs.items()}
    if linear is None:
        def linear(name, x):
            mod = getattr(msda, name)
            return F.linear(x, mod.weight.double(), mod.bias.double())
    query = f64['query'] + f64['query_pos']
    bs, nq, _ = query.shape
    d_h = D // HEADS
    p_k = tuner.prefix_k.double()
    steer = tuner.prefix_steer.double()  # (l, H, 3LP)
    points = LEVELS * POINTS
    d_off, d_logit, heads = [], [], []
    for h in range(HEADS):
        cols = slice(h * d_h, (h + 1) * d_h)
        a = (query[..., cols] @ p_k[:, cols].T / d_h**0.5).softmax(-1)
        s_steer = tuner.steer_scale.double()
        change = s_steer * a @ steer[:, h]  # (B, N, 3LP)
        d_off.append(change[..., :2 * points])
        d_logit.append(change[..., 2 * points:])
        if tuner.form == 'steer+parallel':
            p_v = tuner.prefix_v.double()[:, cols]
            heads.append(tuner.scale.double() * a @ p_v)
    offsets = linear('sampling_offsets', query).view(
        bs, nq, HEADS, LEVELS, POINTS, 2)
    logits = linear('attention_weights', query).view(bs, nq, HEADS, points)
    if steer_offsets:
        offsets = offsets + torch.stack(d_off, 2).view(offsets.shape)
    if steer_logits:
        logits = logits + torch.stack(d_logit, 2)
    weights = logits.softmax(-1).view(bs, nq, HEADS, LEVELS, POINTS)
    shapes = f64['spatial_shapes']
    norm = torch.stack([shapes[..., 1], shapes[..., 0]], -1).double()
    locations = f64['reference_points'][:, :, None, :, None, :] + \
        offsets / norm[None, None, None, :, None, :]
    value = linear('value_proj', f64['value']).view(bs, -1, HEADS, d_h)
    sampled = mmcv_reference()(value, shapes, locations, weights)
    if heads:
        sampled = sampled + torch.cat(heads, -1)
    return linear('output_proj', sampled) + f64['query']


def close(a, b):
    torch.testing.assert_close(a.double(), b.double(), rtol=1e-5,
                               atol=1e-5 * float(b.abs().max()))


# -- the computation ------------------------------------------------------
@pytest.mark.parametrize('form', STEER_FORMS)
def test_steering_moves_the_sampling_as_the_float64_reference(form):
    holder = build(form)
    msda, tuner = holder.attn, holder.attn.prefix
    assert isinstance(tuner, DeformablePrefix) and tuner.form == form
    kwargs = inputs()
    with torch.no_grad():
        out = msda(**kwargs)
    want = reference(msda, tuner, kwargs)
    close(out, want)
    # both parts of the steering matter (sampling places and weights)
    for part in (dict(steer_offsets=False), dict(steer_logits=False)):
        other = reference(msda, tuner, kwargs, **part)
        assert (other - want).abs().max() > 1e-3 * want.abs().max(), part
    # and the change is query-conditioned: other queries, other change
    kwargs2 = dict(kwargs, query_pos=kwargs['query_pos'].flip(1))
    with torch.no_grad():
        out2 = msda(**kwargs2)
    close(out2, reference(msda, tuner, kwargs2))


@pytest.mark.parametrize('form', STEER_FORMS)
def test_gradients_match_the_float64_reference(form):
    """Every tuner tensor (scales included) gets the gradient autograd
    gives through the hand-made float64 reference: through the offsets
    (sampling locations), the logits, and the value branch."""
    holder = build(form)
    msda, tuner = holder.attn, holder.attn.prefix
    kwargs = inputs()
    out = msda(**kwargs)
    weight = torch.randn(out.shape, generator=torch.Generator().manual_seed(1))
    got = torch.autograd.grad((out * weight).sum(), list(tuner.parameters()))
    want = torch.autograd.grad((reference(msda, tuner, kwargs) *
                                weight.double()).sum(),
                               list(tuner.parameters()))
    for (name, _), g, w in zip(tuner.named_parameters(), got, want):
        assert w.abs().max() > 1e-4, name
        torch.testing.assert_close(g, w, rtol=1e-4,  # w: float32 too
                                   atol=1e-5 * float(w.abs().max()),
                                   msg=lambda m: f'{name}: {m}')


def test_seq_first_host_is_steered_like_a_batch_first_one():
    """MSDA with batch_first=False: the Linears see the batch-first query,
    the steering is the same."""
    holder = build('steer+parallel')
    seq = Holder(batch_first=False).eval()
    seq.load_state_dict(holder.state_dict(), strict=False)
    inject(seq, [dict(type='ScaledPrefix', targets=['attn'], num_prefix=L,
                      form='steer+parallel')], arch='detr')
    seq.attn.prefix.load_state_dict(holder.attn.prefix.state_dict())
    kwargs = inputs()
    seq_kwargs = {k: v.transpose(0, 1) if k in ('query', 'query_pos',
                                                 'value') else v
                  for k, v in kwargs.items()}
    with torch.no_grad():
        close(seq.attn(**seq_kwargs).transpose(0, 1),
              reference(holder.attn, holder.attn.prefix, kwargs))


@pytest.mark.parametrize('form', STEER_FORMS)
def test_lora_on_the_steered_linears_adds_and_merges_exactly(form):
    """LoRA on sampling_offsets / attention_weights / output_proj beside the
    steering: the output is the reference with the LoRA-tuned Linears, and
    merging the LoRAs changes no output."""
    holder = build(form, lora=('sampling_offsets', 'attention_weights',
                               'output_proj'))
    msda, tuner = holder.attn, holder.attn.prefix
    loras = {n: m.lora for n, m in msda.named_children()
             if hasattr(m, 'lora')}
    assert sorted(loras) == ['attention_weights', 'output_proj',
                             'sampling_offsets']

    def tuned(name, x):
        mod = getattr(msda, name)
        weight = mod.weight.double()
        if name in loras:
            weight = weight + loras[name].delta_weight().double()
        return F.linear(x, weight, mod.bias.double())

    kwargs = inputs()
    with torch.no_grad():
        out = msda(**kwargs)
        close(out, reference(msda, tuner, kwargs, linear=tuned))
        assert (out - reference(msda, tuner, kwargs)).abs().max() > 1e-3
        report = PETLModel.merge_for_deploy(holder)
        merged = msda(**kwargs)
        PETLModel.unmerge(holder)
        unmerged = msda(**kwargs)
    assert sorted(report['merged']) == sorted(
        f'attn.{n}.lora' for n in loras)
    assert report['unmerged'] == ['attn.prefix']  # the steering: no fold
    close(merged, out)
    close(unmerged, out)


# -- init -----------------------------------------------------------------
@pytest.mark.parametrize('form', STEER_FORMS)
def test_balanced_init_is_exact_and_every_tensor_learns_at_step_0(form):
    holder = build(form, seed=None)
    msda, tuner = holder.attn, holder.attn.prefix
    assert tuner.init == 'balanced' and not tuner.prefix_k.any()
    assert tuner.prefix_steer.abs().min() > 0  # drawn, then centred
    assert tuner.prefix_steer.mean(0).abs().max() < 1e-8
    assert float(tuner.steer_scale.detach()) == 1.0
    kwargs = inputs()
    out = msda(**kwargs)
    with torch.no_grad():
        base = Holder().eval().attn(**kwargs)  # same weights, no tuner
    close(out, base)  # 0 change at init (up to rounding)
    weight = torch.randn(out.shape, generator=torch.Generator().manual_seed(1))
    (out * weight).sum().backward()
    for name, param in tuner.named_parameters():
        if param.ndim:  # every non-scale tensor
            assert param.grad is not None, name
            assert param.grad.abs().max() > 1e-6, name
    names = sorted(n for n, p in tuner.named_parameters() if p.ndim)
    want = ['prefix_k', 'prefix_steer'] + (['prefix_v'] if form ==
                                           'steer+parallel' else [])
    assert names == sorted(want)


def test_steer_inits_and_refusals():
    msda = MultiScaleDeformableAttention(D, HEADS, num_levels=LEVELS,
                                         num_points=POINTS, batch_first=True)
    for init in ('scaled', 'activations'):  # exact through S = 0
        tuner = ScaledPrefix.from_host(msda, num_prefix=L, form='steer',
                                       init=init)
        assert not tuner.prefix_steer.any() and tuner.prefix_k.any()
    with pytest.raises(ValueError, match=r"init='random' makes no sense for "
                       r"form='steer'.*Valid inits for the steer forms: "
                       r"\['balanced', 'scaled', 'activations'\]"):
        ScaledPrefix.from_host(msda, num_prefix=L, form='steer',
                               init='random')
    # the parallel form keeps its default and takes any init
    assert ScaledPrefix.from_host(msda, num_prefix=L).init == 'scaled'
    ScaledPrefix.from_host(msda, num_prefix=L, init='random')
    # attentions with keys have no sampling to steer
    mha = nn.MultiheadAttention(D, HEADS)
    with pytest.raises(TunerHostError, match=r"form='steer' does not apply "
                       r".*MultiheadAttention"):
        ScaledPrefix.from_host(mha, num_prefix=L, form='steer')
    # PrefixTuning: s = 1, fixed
    tuner = PrefixTuning.from_host(msda, num_prefix=L, form='steer')
    assert 'steer_scale' in dict(tuner.named_buffers())
    assert float(tuner.steer_scale.detach()) == 1.0


@pytest.mark.parametrize('form', ['parallel'] + STEER_FORMS)
def test_parameter_counts(form):
    msda = MultiScaleDeformableAttention(D, HEADS, num_levels=LEVELS,
                                         num_points=POINTS, batch_first=True)
    tuner = ScaledPrefix.from_host(msda, num_prefix=L, form=form)
    steer = 3 * L * HEADS * LEVELS * POINTS
    want = {'parallel': 2 * L * D + 1, 'steer': L * D + steer + 1,
            'steer+parallel': 2 * L * D + steer + 2}[form]
    assert tuner.num_deploy_params() == tuner.num_train_params() == want
    info = tuner.describe()
    assert info['form'] == form
    assert ('num_points' in info) == (form != 'parallel')
    assert hasattr(tuner, 'prefix_v') == (form != 'steer')
    assert hasattr(tuner, 'scale') == (form != 'steer')


# -- activation init --------------------------------------------------------
def test_activation_init_collects_queries_with_the_steering_off():
    holder = build('steer', init='activations', seed=None)
    msda, tuner = holder.attn, holder.attn.prefix
    with torch.no_grad():
        tuner.prefix_steer.normal_()  # would steer, were it on
    kwargs = inputs(bs=2, num_query=6)
    plain = Holder().eval()
    with torch.no_grad():
        base = plain.attn(**kwargs)
        tuner.start_collecting()
        try:
            collecting = msda(**kwargs)
        finally:
            tuner.finish_collecting(torch.Generator().manual_seed(0))
    torch.testing.assert_close(collecting, base, rtol=0, atol=0)
    assert not tuner.needs_data_init and not tuner.is_collecting
    queries = (kwargs['query'] + kwargs['query_pos']).reshape(-1, D)
    for row in tuner.prefix_k:  # real queries
        assert (queries - row).abs().sum(-1).min() < 1e-6
    with torch.no_grad():  # on again
        assert (msda(**kwargs) - base).abs().max() > 1e-3


# -- mixed-task batches -------------------------------------------------------
@pytest.mark.parametrize('form', STEER_FORMS)
def test_routed_batch_steers_each_sample_with_its_task(form):
    holder = build(form, lora=('sampling_offsets', 'attention_weights',
                               'output_proj'))
    tuners = dict(holder.tuner_modules())
    gen = torch.Generator().manual_seed(7)
    tasks = [{n: {k: torch.randn(v.shape, generator=gen) * 0.3 + (
        0.7 if v.ndim == 0 else 0) for k, v in t.state_dict().items()}
        for n, t in tuners.items()} for _ in range(2)]
    samples = [torch.tensor([0, 2, 3]), torch.tensor([1])]
    kwargs = inputs(bs=4)
    for name, tuner in tuners.items():
        tuner.routing = TaskGroups(4, [(samples[i], tasks[i][name], str(i))
                                       for i in range(2)])
    try:
        with torch.no_grad():
            routed = holder.attn(**kwargs)
    finally:
        for tuner in tuners.values():
            tuner.routing = None
    alone = []
    for i in range(2):
        for name, tuner in tuners.items():
            tuner.load_state_dict(tasks[i][name])
        with torch.no_grad():
            alone.append(holder.attn(**kwargs))
        close(routed[samples[i]], alone[i][samples[i]])
    assert (alone[0] - alone[1]).abs().max() > 1e-2  # the tasks differ


# -- health statistics --------------------------------------------------------
@pytest.mark.parametrize('form', STEER_FORMS)
def test_health_stats_of_the_steering(form):
    holder = build(form)
    msda, tuner = holder.attn, holder.attn.prefix
    kwargs = inputs()
    probe = TunerProbe(holder)
    probe.start()
    with torch.no_grad():
        msda(**kwargs)
    stats = probe.finish()[0]['attn.prefix']
    with torch.no_grad():  # by hand
        query = kwargs['query'] + kwargs['query_pos']
        d_off, d_logit, _ = tuner.steer(query)
        offsets = msda.sampling_offsets(query) - d_off  # frozen
        logits = msda.attention_weights(query) - d_logit
    shape = logits.shape[:-1] + (HEADS, -1)
    tv = 0.5 * ((logits + d_logit).view(shape).softmax(-1) -
                logits.view(shape).softmax(-1)).abs().sum(-1).mean()
    change = torch.cat([d_off, d_logit], -1).norm()
    base = torch.cat([offsets, logits], -1).norm()
    assert stats['steer_offset_rms'] == pytest.approx(
        float(d_off.square().mean().sqrt()), rel=1e-4)
    assert stats['steer_weight_tv'] == pytest.approx(float(tv), rel=1e-4)
    assert stats['steer_contribution'] == pytest.approx(
        float(change / base), rel=1e-4)
    assert stats['steer_scale'] == pytest.approx(
        float(tuner.steer_scale.detach()))
    assert 0.01 < stats['steer_weight_tv'] < 1
    if form == 'steer':
        assert stats['scale'] == stats['steer_scale']
        assert stats['contribution'] == stats['steer_contribution']
    else:  # the parallel branch's own
        assert stats['scale'] == pytest.approx(float(tuner.scale.detach()))
        assert 0 < stats['share'] < 1


# -- dtype, checkpoints -------------------------------------------------------
@pytest.mark.parametrize('form', STEER_FORMS)
def test_bf16_host_is_steered_in_bf16(form):
    holder = build(form)
    kwargs = inputs()
    with torch.no_grad():
        want = holder.attn(**kwargs)
        holder.to(torch.bfloat16)
        got = holder.attn(**{k: v.to(torch.bfloat16) if v.is_floating_point()
                             else v for k, v in kwargs.items()})
    assert got.dtype == torch.bfloat16
    torch.testing.assert_close(got.float(), want, rtol=0.05, atol=0.1)


@pytest.mark.parametrize('form', STEER_FORMS)
def test_state_dict_round_trip(form):
    holder, fresh = build(form, seed=3), build(form, seed=4)
    kwargs = inputs()
    with torch.no_grad():
        want = holder.attn(**kwargs)
        assert not torch.allclose(fresh.attn(**kwargs), want)
        state = holder.attn.prefix.state_dict()
        assert sorted(state) == sorted(
            ['prefix_k', 'prefix_steer', 'steer_scale'] + (
                ['prefix_v', 'scale'] if form == 'steer+parallel' else []))
        fresh.attn.prefix.load_state_dict(state)
        assert torch.equal(fresh.attn(**kwargs), want)


# -- a small Deformable DETR: exact at init, checkpointed gradients --------
STEER_TUNERS = [dict(type='ScaledPrefix', num_prefix=4, form='steer',
                     presets=['encoder_self_attn', 'decoder_cross_attn']),
                dict(type='ScaledPrefix', num_prefix=4, presets=[
                    'decoder_self_attn'])]


def detector(ckpt=None, form='steer', state=None):
    torch.manual_seed(0)
    tuners = copy.deepcopy(STEER_TUNERS)
    tuners[0]['form'] = form
    model = PETLModel(model=small_deformable_cfg(), tuners=tuners,
                      trainable=['bbox_head'],
                      activation_checkpointing=ckpt)
    if state is not None:
        model.load_state_dict(state)
    return model


def test_deformable_detr_exact_at_init_then_steered():
    model = detector().eval()
    steering = [m for _, m in model.tuner_modules()
                if isinstance(m, DeformablePrefix)]
    assert len(steering) == 4 and all(t.form == 'steer' for t in steering)
    torch.manual_seed(0)
    plain = PETLModel(model=small_deformable_cfg(), tuners=copy.deepcopy(
        STEER_TUNERS[1:]), trainable=['bbox_head']).eval()
    plain.load_state_dict(model.state_dict(), strict=False)
    with torch.no_grad():
        want = tensor_outputs(plain, 'deformable_detr')
        got = tensor_outputs(model, 'deformable_detr')
        assert len(got) == len(want) > 1
        for a, b in zip(got, want):
            torch.testing.assert_close(a, b, rtol=1e-5,
                                       atol=1e-6 * float(b.abs().max()))
        for tuner in steering:
            tuner.prefix_k.normal_()
        moved = tensor_outputs(model, 'deformable_detr')
    assert max((a - b).abs().max() for a, b in zip(moved, want)) > 1e-3


def _grads(model):
    model.zero_grad(set_to_none=True)
    inputs_, samples = det_batch()
    torch.manual_seed(1)  # dropout masks
    loss = model.parse_losses(model(inputs_, samples, mode='loss'))[0]
    loss.backward()
    return {n: p.grad for n, p in model.named_parameters()
            if p.requires_grad and ('prefix' in n)}


@pytest.mark.parametrize('form', STEER_FORMS)
def test_checkpointed_steering_gradients_equal_plain_ones(form,
                                                          monkeypatch):
    """The deformable attention's output is replayed in the recomputation
    (default keep): the steered sampling locations and weights are
    recomputed and their gradients reach the steering as without
    checkpointing."""
    import mmpetl.ops.msda as op_module
    plain = detector(form=form).train()
    move_off_init(plain, 0)
    ckpt = detector(['encoder_layers', 'decoder_layers'], form=form,
                    state=plain.state_dict()).train()
    assert ckpt.checkpointed_layers
    want = _grads(plain)
    sampled = []
    op = op_module.ms_deform_attn
    monkeypatch.setattr(op_module, 'ms_deform_attn',
                        lambda *a: sampled.append(1) or op(*a))
    got = _grads(ckpt)
    assert len(sampled) == 4  # forward only: the backward replayed
    assert len([n for n in want if n.endswith('prefix_steer')]) == 4
    for name, grad in want.items():
        assert grad is not None and grad.abs().sum() > 0, name
        torch.testing.assert_close(got[name], grad, rtol=1e-5, atol=1e-6,
                                   msg=name)
