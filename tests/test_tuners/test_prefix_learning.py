"""Prefix forms and inits: exact where the form allows it, and learning from
step 0 on every host (torch/mmcv MHA, MMPretrain ViT attention, MSDA,
MMDetection's ConditionalAttention in self- and cross-attention, Swin's
shifted-window WindowMSA).

The two failure modes the prefix issue measured: a branch whose every path
runs through a zero scale gives its prefixes a zero gradient; a joint
softmax over l prefixes and N keys moves ~l/(l+N) of the mass off the
pretrained keys at step 0.
"""
import pytest
import torch
import torch.nn as nn
from mmcv.cnn.bricks.transformer import MultiheadAttention as MMCVMHA
from mmcv.ops import MultiScaleDeformableAttention

from mmpetl.tuners import DeformablePrefix, PrefixTuning, ScaledPrefix
from mmpetl.tuners.attention import vit_attention_type
from mmpetl.tuners.base import TunerHostError

D, HEADS, P, N = 32, 4, 6, 10
MEMORY = 14  # cross-attention keys
WINDOW, SIDE = 4, 8  # Swin: 8x8 tokens, 4 windows of 4x4


def msda_inputs(bs=2, num_query=6):
    torch.manual_seed(1)
    return dict(query=torch.randn(bs, num_query, D),
                value=torch.randn(bs, 20, D),
                query_pos=torch.randn(bs, num_query, D),
                reference_points=torch.rand(bs, num_query, 2, 2),
                spatial_shapes=torch.tensor([[4, 4], [2, 2]]),
                level_start_index=torch.tensor([0, 16]))


def host_and_call(kind):
    """(host module to tune, the module to call, a call returning a tensor)"""
    torch.manual_seed(0)
    x = torch.randn(2, N, D)
    if kind == 'torch_mha':
        host = nn.MultiheadAttention(D, HEADS, batch_first=True)
        return host, host, lambda: host(x, x, x)[0]
    if kind == 'mmcv_mha':
        block = MMCVMHA(D, HEADS, batch_first=True)
        return block.attn, block, lambda: block(x, query_pos=x)
    if kind == 'vit':
        host = vit_attention_type()(D, HEADS)
        return host, host, lambda: host(x)
    if kind in ('cond_self', 'cond_cross'):
        from mmdet.models.layers.transformer.utils import \
            ConditionalAttention
        cross = kind == 'cond_cross'
        host = ConditionalAttention(D, HEADS, cross_attn=cross)
        pos = torch.randn(2, N, D)
        if not cross:
            return host, host, lambda: host(query=x, key=x, query_pos=pos,
                                            key_pos=pos)
        memory, key_pos = torch.randn(2, MEMORY, D), torch.randn(
            2, MEMORY, D)
        sine = torch.randn(2, N, D)
        return host, host, lambda: host(
            query=x, key=memory, query_pos=pos, key_pos=key_pos,
            ref_sine_embed=sine, is_first=True)
    if kind == 'window':
        from mmdet.models.backbones.swin import ShiftWindowMSA
        block = ShiftWindowMSA(D, HEADS, WINDOW, shift_size=WINDOW // 2)
        nn.init.normal_(block.w_msa.relative_position_bias_table)
        tokens = torch.randn(2, SIDE * SIDE, D)
        return block.w_msa, block, lambda: block(tokens, (SIDE, SIDE))
    host = MultiScaleDeformableAttention(embed_dims=D, num_heads=HEADS,
                                         num_levels=2, num_points=2,
                                         batch_first=True)
    kwargs = msda_inputs()
    return host, host, lambda: host(**kwargs)


HOSTS = ['torch_mha', 'mmcv_mha', 'vit', 'msda', 'cond_self', 'cond_cross',
         'window']
# (tokens the host projects per init batch, key width): cross-attention
# keys are the memory's, [content; position] per head (2D); Swin's are
# every window's tokens
TOKENS = dict(msda=(2 * 6, D), cond_cross=(2 * MEMORY, 2 * D),
              window=(2 * SIDE * SIDE, D))
# (form, init) pairs that are exact at init
EXACT = [('parallel', 'scaled'), ('parallel', 'activations')]


def attach(kind, **kwargs):
    host, module, call = host_and_call(kind)
    module.eval()
    base = call().detach()
    tuner = ScaledPrefix.from_host(host, num_prefix=P, **kwargs)
    tuner.attach(host)
    tuner.needs_data_init = False  # activations: tested separately
    return host, module, call, base, tuner


@pytest.mark.parametrize('kind', HOSTS)
@pytest.mark.parametrize('form,init', EXACT)
def test_exact_at_init(kind, form, init):
    _, _, call, base, _ = attach(kind, form=form, init=init)
    torch.testing.assert_close(call(), base, atol=1e-6, rtol=1e-6)


@pytest.mark.parametrize('kind', HOSTS)
@pytest.mark.parametrize('form,init', [('parallel', 'scaled'),
                                       ('joint', 'scaled'),
                                       ('joint', 'random'),
                                       ('parallel', 'random')])
def test_a_prefix_tensor_gets_gradient_at_step_0(kind, form, init):
    if kind == 'msda' and form == 'joint':
        pytest.skip('no joint form on deformable attention (tested below)')
    _, module, call, _, tuner = attach(kind, form=form, init=init)
    module.train()
    call().square().sum().backward()
    prefix_grads = [tuner.prefix_k.grad, tuner.prefix_v.grad]
    assert any(g is not None and g.abs().max() > 0 for g in prefix_grads)


def test_the_first_msda_default_is_inert_the_new_one_is_not():
    """init='random' with s = 0 (mmpetl's first default): only s moves at
    step 0. init='scaled' (s = 1, P_v = 0): P_v gets a gradient."""
    _, module, call, _, old = attach('msda', init='random', scale=0.0)
    call().square().sum().backward()
    assert old.prefix_k.grad.abs().max() == 0
    assert old.prefix_v.grad.abs().max() == 0 and old.scale.grad != 0
    _, module, call, _, new = attach('msda', init='scaled')
    call().square().sum().backward()
    assert new.prefix_v.grad.abs().max() > 0


def test_joint_form_shifts_attention_mass_at_init():
    """The paper's form is not exact: with l prefixes against N keys of
    similar logits about l/(l+N) of the mass moves to the prefixes."""
    _, _, call, base, tuner = attach('torch_mha', form='joint',
                                     init='scaled')
    tuner.recording = True
    call()
    share = tuner.last_stats['share']
    assert 0.1 < share < 0.7  # l/(l+N) = 6/16 for equal logits
    assert not torch.allclose(call(), base, atol=1e-3)


def test_scaled_init_spreads_prefix_logits_like_real_keys():
    host, _, _, _, tuner = attach('torch_mha', init='scaled')
    w_k = host.in_proj_weight.chunk(3)[1]
    assert tuner.prefix_k.std().item() == pytest.approx(
        (w_k.norm() / D**0.5).item(), rel=0.3)
    assert torch.count_nonzero(tuner.prefix_v) == 0


def test_bad_options_name_option_host_and_choices():
    host, _, _ = host_and_call('msda')
    with pytest.raises(TunerHostError, match=r"form='joint'.*"
                       r"MultiScaleDeformableAttention.*\['parallel'"):
        ScaledPrefix.from_host(host, num_prefix=P, form='joint')
    mha = nn.MultiheadAttention(D, HEADS)
    with pytest.raises(ValueError, match=r"unknown form='sideways'.*"
                       r"\['joint', 'parallel', 'reweight', "
                       r"'reweight\+parallel'\]"):
        ScaledPrefix.from_host(mha, form='sideways')
    with pytest.raises(ValueError, match=r"unknown init='zeros'.*"
                       r"\['random', 'scaled', 'activations', "
                       r"'balanced'\]"):
        ScaledPrefix.from_host(mha, init='zeros')
    with pytest.raises(ValueError, match="reparam_hidden needs "
                       "init='random'"):
        ScaledPrefix.from_host(mha, reparam_hidden=8, init='scaled')


def test_training_before_the_activation_init_is_refused():
    host, module, call = host_and_call('torch_mha')
    tuner = ScaledPrefix.from_host(host, num_prefix=P, init='activations')
    tuner.attach(host)
    module.train()
    with pytest.raises(RuntimeError, match="init='activations'.*"
                       "TunerInitHook"):
        call()


@pytest.mark.parametrize('kind', HOSTS)
def test_activation_init_takes_tokens_the_host_computes(kind):
    """P_k are keys the frozen host projects (MSDA: its query + pos);
    joint form: P_v the values of the same tokens; parallel: P_v = 0."""
    host, module, call = host_and_call(kind)
    module.eval()
    form = 'parallel' if kind == 'msda' else 'joint'
    tuner = ScaledPrefix.from_host(host, num_prefix=P, init='activations',
                                   form=form, scale=2.0)
    tuner.attach(host)
    tuner.start_collecting()
    with torch.no_grad():
        base = call()
    collected = list(tuner._collected)
    tuner.finish_collecting(torch.Generator().manual_seed(0))
    assert not tuner.needs_data_init
    keys = torch.cat([k for k, _ in collected])
    assert keys.shape == TOKENS.get(kind, (2 * N, D))
    if kind == 'msda':
        inputs = msda_inputs()
        q = (inputs['query'] + inputs['query_pos']).reshape(-1, D)
        torch.testing.assert_close(keys, q)  # what the branch attends with
        assert torch.count_nonzero(tuner.prefix_v) == 0
        pairs, mine = keys, tuner.prefix_k.detach()
    else:
        values = torch.cat([v for _, v in collected])
        pairs = torch.cat([keys, values], 1)
        mine = torch.cat([tuner.prefix_k, tuner.scale * tuner.prefix_v],
                         1).detach()
    # every prefix is one collected token (key and value of the same one)
    assert torch.cdist(mine, pairs, compute_mode='donot_use_mm_for_euclid_dist'
                       ).min(dim=1).values.max() < 1e-4
    # collecting ran the frozen host: outputs were the base model's
    tuner.eval()
    with torch.no_grad():
        assert base.shape == call().shape


def test_prefix_tuning_defaults_and_msda():
    mha = nn.MultiheadAttention(D, HEADS)
    tuner = PrefixTuning.from_host(mha, num_prefix=P)
    assert (tuner.form, tuner.init) == ('joint', 'random')
    assert not isinstance(tuner.scale, nn.Parameter)
    host, _, _ = host_and_call('msda')
    branch = PrefixTuning.from_host(host, num_prefix=P)
    assert isinstance(branch, DeformablePrefix)
    assert branch.form == 'parallel' and float(branch.scale) == 1.0
    assert not isinstance(branch.scale, nn.Parameter)
