"""Every method x every architecture it applies to, with one set of checks.

Small models from the real configs (tests/conftest.py). For each pair: it
builds; it is exact at init where the method claims so; its parameter count
equals the method's closed form, computed here from the model's widths;
after optimizer steps only the method's parameters (and the heads) moved;
a few steps lower the loss on a fixed batch (measured with dropout off, so
its noise cannot fake it).
"""
import pytest
import torch
import torch.nn as nn
from mmcv.cnn.bricks.transformer import FFN
from mmcv.cnn.bricks.transformer import MultiheadAttention as MMCVAttention
from mmcv.ops import MultiScaleDeformableAttention

from mmpetl.engine.optimizers import PETLOptimWrapperConstructor
from mmpetl.models import PETLModel, build_inner_model
from tests.conftest import SMALL_CFGS, batch_for, tensor_outputs

B, L, R, P = 8, 4, 2, 3  # bottleneck, prefix length, rank, prompts


def blocks(model, kind, first_only=False):
    """(name, module) of the FFN or attention blocks the presets target."""
    types = (FFN, ) if kind == 'ffn' else (MMCVAttention,
                                           MultiScaleDeformableAttention)
    found = []
    for name, module in model.named_modules():
        if first_only and '.layers.0.' not in name + '.':
            continue
        if isinstance(module, types) and ('.layers.' in name):
            found.append((name, module))
        elif kind == 'attn' and type(module).__name__ == \
                'MultiheadAttention' and name.endswith('.attn') and \
                hasattr(module, 'qkv'):
            found.append((name, module))  # mmpretrain ViT attention
    return found


def width(module):
    return module.embed_dims


def lora_count(model):
    total = 0
    for _, m in blocks(model, 'attn') + blocks(model, 'ffn'):
        if isinstance(m, MultiScaleDeformableAttention):
            linears = [m.value_proj, m.output_proj, m.sampling_offsets]
        elif isinstance(m, FFN):
            linears = [x for x in m.layers.modules()
                       if isinstance(x, nn.Linear)]
        elif hasattr(m, 'qkv'):
            linears = [m.qkv, m.proj]
        else:  # torch MHA inside mmcv's: fused in_proj (4dr) + out_proj
            d = m.embed_dims
            total += R * 4 * d
            linears = [m.attn.out_proj]
        total += sum(R * (x.in_features + x.out_features) for x in linears)
    return total


def adapter_count(model, kind, first_only=False):
    return sum(2 * width(m) * B + B + width(m)
               for _, m in blocks(model, kind, first_only))


def prefix_count(model, scaled):
    """2ld per attention, + 1 for a learnable s (ScaledPrefix)."""
    return sum(2 * L * width(m) + int(scaled)
               for _, m in blocks(model, 'attn'))


def new_forms_count(model):
    """ETTA's variants' prefixes, per attention: deformable attention
    'steer+parallel' 2ld + 3lHLP + 2 (P_k, P_v, steering values, two
    scales); attention with keys 'reweight+parallel' l(2d + d) + 2 (P_k,
    P_q, P_v, two scales)."""
    total = 0
    for _, m in blocks(model, 'attn'):
        d = width(m)
        if isinstance(m, MultiScaleDeformableAttention):
            total += 2 * L * d + 3 * L * m.num_heads * m.num_levels * \
                m.num_points + 2
        else:
            total += 3 * L * d + 2
    return total


def bias_count(model, head):
    head_ids = {id(p) for p in getattr(model, head).parameters()}
    return sum(p.numel() for n, p in model.named_parameters()
               if n.endswith('.bias') and id(p) not in head_ids)


def vpt_count(model, deep):
    vit = model.backbone
    return (len(vit.layers) if deep else 1) * P * vit.embed_dims


def unipt_count(model, arch):
    """The official design (width r = 16 here, d/2 by default)."""
    r = 16
    if arch == 'vit':  # embeddings + every block, ReLU -> Linear each
        layers, d = len(model.backbone.layers) + 1, model.backbone.embed_dims
        return (layers + 1) * (d * r + r) + (r + 1) + (r * d + d)
    d = model.decoder.embed_dims
    # layers read beside the last: every other one from the first
    dec = len(range(0, len(model.decoder.layers) - 1, 2))
    enc = len(range(0, len(model.encoder.layers) - 1, 2))
    proj = d * r + r + 2 * r  # Linear + LN
    agg = (r + 1) + (r * d + d) + (d * r + r) + 2 * r  # gate + P
    cross = r * r + r + 2 * r  # Linear + LN per decoder layer read
    up = r * d + d + 2 * d  # Linear + LN
    return (enc + 1 + dec + 1) * proj + 2 * agg + dec * cross + up


def unipt_v1_count(model, arch):
    if arch == 'vit':
        layers, d = len(model.backbone.layers), model.backbone.embed_dims
    else:
        layers, d = len(model.decoder.layers), model.decoder.embed_dims
    r = 16
    return (layers + 1) * d * r + (layers + 1) * r + 2 * layers * d + d + \
        layers


# name: (tuners, parallel, extra trainable, exact at init, closed form)
METHODS = {
    'heads_only': ([], None, [], True, lambda m, a: 0),
    'bitfit': ([], None, ['bias'], True,
               lambda m, a: bias_count(m, 'head' if a == 'vit' else
                                       'bbox_head')),
    'adapter': ([dict(type='ParallelAdapter', presets=['ffn'],
                      bottleneck=B)], None, [], True,
                lambda m, a: adapter_count(m, 'ffn')),
    'serial_adapter': ([dict(type='SerialAdapter', presets=['ffn'],
                             bottleneck=B)], None, [], True,
                       lambda m, a: adapter_count(m, 'ffn')),
    'lora': ([dict(type='LoRA', presets=['attn', 'ffn'], rank=R)], None, [],
             True, lambda m, a: lora_count(m)),
    'prefix': ([dict(type='PrefixTuning', presets=['attn'], num_prefix=L)],
               None, [], False, lambda m, a: prefix_count(m, False)),
    'etta': ([dict(type='ParallelAdapter', presets=['ffn'], bottleneck=B),
              dict(type='ScaledPrefix', presets=['attn'], num_prefix=L)],
             None, [], True,  # parallel form, P_v = 0: exact
             lambda m, a: adapter_count(m, 'ffn') + prefix_count(m, True)),
    # ETTA's variants: steering prefixes on deformable attention, the
    # re-weighting form on attentions with keys ('attn' covers both kinds
    # on Deformable DETR: the steer entry goes to MSDA, reweight to MHA)
    'etta_steer': ([dict(type='ParallelAdapter', presets=['ffn'],
                         bottleneck=B),
                    dict(type='ScaledPrefix', presets=[
                        'encoder_self_attn', 'decoder_cross_attn'],
                        num_prefix=L, form='steer+parallel'),
                    dict(type='ScaledPrefix', presets=['decoder_self_attn'],
                         num_prefix=L, form='reweight+parallel')],
                   None, [], True,  # balanced init: exact up to rounding
                   lambda m, a: adapter_count(m, 'ffn') + new_forms_count(m)),
    'etta_reweight': ([dict(type='ParallelAdapter', presets=['ffn'],
                            bottleneck=B),
                       dict(type='ScaledPrefix', presets=['attn'],
                            num_prefix=L, form='reweight+parallel')],
                      None, [], True,
                      lambda m, a: adapter_count(m, 'ffn') +
                      new_forms_count(m)),
    'utuning_dual': ([dict(type='UTuner', presets=['attn', 'ffn'],
                           bottleneck=B)], None, [], True,
                     lambda m, a: adapter_count(m, 'attn') +
                     adapter_count(m, 'ffn')),
    'utuning_sequential': ([dict(type='UTuner', presets=['attn', 'ffn'],
                                 bottleneck=B, form='sequential')], None, [],
                           True, lambda m, a: adapter_count(m, 'attn') +
                           adapter_count(m, 'ffn')),
    'utuning_first_layer': ([dict(type='UTuner', presets=[
        'first_layer_attn', 'first_layer_ffn'], bottleneck=B)], None, [],
                            True, lambda m, a: adapter_count(
                                m, 'attn', True) + adapter_count(
                                    m, 'ffn', True)),
    'unipt': ([], dict(type='UniPT', bottleneck=16), [], True,
              unipt_count),
    'unipt_v1': ([], dict(type='UniPT', variant='v1', bottleneck=16), [],
                 True, unipt_v1_count),
    'vpt_shallow': ([dict(type='VPT', presets=['backbone'], num_prompts=P,
                          deep=False)], None, [], False,
                    lambda m, a: vpt_count(m, False)),
    'vpt_deep': ([dict(type='VPT', presets=['backbone'], num_prompts=P,
                       deep=True)], None, [], False,
                 lambda m, a: vpt_count(m, True)),
}
ARCHS = ['detr', 'deformable_detr', 'vit']
CASES = [(m, a) for m in METHODS for a in ARCHS
         if not (m.startswith('vpt') and a != 'vit')
         and not (m == 'etta_steer' and a != 'deformable_detr')
         and not (m == 'etta_reweight' and a == 'deformable_detr')]


def build(method, arch):
    tuners, parallel, extra, _, _ = METHODS[method]
    head = 'head' if arch == 'vit' else 'bbox_head'
    cfg = SMALL_CFGS[arch]()
    torch.manual_seed(0)
    vanilla = build_inner_model(cfg)
    vanilla.init_weights()
    model = PETLModel(model=cfg, tuners=tuners, parallel=parallel,
                      trainable=[head] + extra)
    model.load_state_dict(vanilla.state_dict(), strict=False)
    return vanilla.eval(), model, head


def no_dropout_train(model):
    """Training mode (DETR heads compute losses only then), dropout off."""
    model.train()
    for module in model.modules():
        if isinstance(module, nn.Dropout):
            module.eval()
    return model


def loss_of(model, batch):
    inputs, samples = batch
    loss, _ = model.parse_losses(model(inputs, samples, mode='loss'))
    return loss


@pytest.mark.parametrize('method,arch', CASES,
                         ids=[f'{m}-{a}' for m, a in CASES])
def test_method_on_architecture(method, arch):
    vanilla, model, head = build(method, arch)
    exact, closed_form = METHODS[method][3], METHODS[method][4]
    # parameter count: method params (+ the heads) and nothing else
    head_params = sum(p.numel() for p in getattr(model, head).parameters())
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    assert trainable == head_params + closed_form(vanilla, arch)
    model.eval()
    with torch.no_grad():
        outs = tensor_outputs(model, arch)
        base = tensor_outputs(vanilla, arch)
    if exact:
        for a, b in zip(outs, base):
            torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)
    # steps: only trainable parameters move, and the loss goes down
    optim = PETLOptimWrapperConstructor(
        dict(optimizer=dict(type='AdamW', lr=2e-3),
             clip_grad=dict(max_norm=1.0)))(model)
    batch = batch_for(arch)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    no_dropout_train(model)
    with torch.no_grad():
        start = loss_of(model, batch).item()
    for _ in range(5):
        optim.update_params(loss_of(model, batch))
    with torch.no_grad():
        end = loss_of(model, batch).item()
    assert end < start, (start, end)
    moved = {n for n, p in model.named_parameters()
             if not torch.equal(p, before[n])}
    allowed = {n for n, p in model.named_parameters() if p.requires_grad}
    assert moved and moved <= allowed
    if method not in ('heads_only', 'bitfit'):
        tuner_ids = model.tuner_parameter_ids()
        assert any(id(p) in tuner_ids for n, p in model.named_parameters()
                   if n in moved)
