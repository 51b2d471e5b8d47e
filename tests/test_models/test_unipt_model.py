"""UniPT beside small DETR, Deformable DETR (+ box refinement) and ViT."""
import copy

import pytest
import torch

from mmpetl.engine.optimizers import PETLOptimWrapperConstructor
from mmpetl.injection import injection_table
from mmpetl.models import PETLModel, build_inner_model
from mmpetl.tuners import TunerHostError
from tests.conftest import (SMALL_CFGS, batch_for, cls_batch,
                            small_deformable_cfg, tensor_outputs)

UNIPT = dict(type='UniPT', variant='v1', bottleneck=16)
#: the official design: residual (default, exact at init) and replace
OFFICIAL = dict(type='UniPT', bottleneck=16)
REPLACE = dict(type='UniPT', bottleneck=16, output='replace')
CFGS = dict(SMALL_CFGS,
            deformable_refine=lambda: small_deformable_cfg(
                with_box_refine=True))
ARCHS = ['detr', 'deformable_detr', 'deformable_refine', 'vit']


def base_arch(arch):
    return 'deformable_detr' if arch == 'deformable_refine' else arch


def head_of(arch):
    return 'head' if arch == 'vit' else 'bbox_head'


def build_pair(arch, parallel=UNIPT, **kwargs):
    """A vanilla model and a UniPT model holding the same base weights."""
    cfg = CFGS[arch]()
    torch.manual_seed(0)
    vanilla = build_inner_model(cfg)
    vanilla.init_weights()
    kwargs.setdefault('trainable', [head_of(arch)])
    petl = PETLModel(model=cfg, parallel=parallel, **kwargs)
    result = petl.load_state_dict(vanilla.state_dict(), strict=False)
    assert result.missing_keys == [] and result.unexpected_keys == []
    return vanilla.eval(), petl.eval()


def perturb(unipt):
    with torch.no_grad():
        for p in unipt.parameters():
            p.normal_(0, 0.5)


def train_losses(model, arch):
    inputs, samples = batch_for(base_arch(arch))
    losses = model(inputs, samples, mode='loss')
    loss, _ = model.parse_losses(losses)
    return loss


@pytest.mark.parametrize('parallel', [UNIPT, OFFICIAL], ids=['v1', 'official'])
@pytest.mark.parametrize('arch', ARCHS)
def test_exact_at_init_keys_and_unipt_in_forward_path(arch, parallel):
    vanilla, petl = build_pair(arch, parallel)
    (name, unipt), = petl.tuner_modules()
    assert name == 'unipt'
    base_keys = [k for k in petl.state_dict() if not k.startswith('unipt.')]
    assert base_keys == list(vanilla.state_dict())
    with torch.no_grad():
        expected = tensor_outputs(vanilla, base_arch(arch))
        got = tensor_outputs(petl, base_arch(arch))
        assert len(got) == len(expected) > 0
        for a, b in zip(got, expected):
            torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)
        perturb(unipt)
        moved = tensor_outputs(petl, base_arch(arch))
    assert any(not torch.allclose(a, b, atol=1e-4)
               for a, b in zip(moved, expected))


def test_official_replace_feeds_the_side_output_to_the_heads():
    """output='replace': the heads read UniPT's states, not the frozen
    ones (the rewritten decoder layers differ, the others do not)."""
    vanilla, petl = build_pair('detr', REPLACE)
    assert petl.unipt.outputs == [0, 1]  # 2 decoder layers: first + last
    with torch.no_grad():
        base = tensor_outputs(vanilla, 'detr')[0]  # (L, B, Q, C)
        got = tensor_outputs(petl, 'detr')[0]
    for layer in range(2):
        assert not torch.allclose(got[layer], base[layer], atol=1e-3)


def frozen_modules(model, arch):
    """The frozen network: everything that runs before the heads."""
    if arch == 'vit':
        names = ['backbone'] + [f'backbone.layers.{i}' for i in range(2)]
    else:
        names = ['backbone', 'neck', 'encoder', 'decoder']
        names += [f'{part}.layers.{i}' for part in ('encoder', 'decoder')
                  for i in range(2)]
    modules = dict(model.named_modules())
    return {n: modules[n] for n in names}


def tensors_in(obj):
    if isinstance(obj, torch.Tensor):
        return [obj]
    if isinstance(obj, (list, tuple)):
        return [t for item in obj for t in tensors_in(item)]
    return []


@pytest.mark.parametrize('parallel', [UNIPT, REPLACE, OFFICIAL],
                         ids=['v1', 'replace', 'residual'])
@pytest.mark.parametrize('arch', ARCHS)
def test_frozen_part_runs_without_autograd_grads_reach_unipt_and_head(
        arch, parallel):
    _, petl = build_pair(arch, parallel)
    petl.train()
    if arch == 'vit':  # a zero head passes no gradient to the features
        torch.nn.init.normal_(petl.head.layers.head.weight, std=0.1)
    calls, handles = [], []

    def pre_hook(name):
        return lambda m, args: calls.append((name, torch.is_grad_enabled()))

    frozen_outs = []  # held, so their memory is not reused

    def out_hook(name):
        def hook(m, args, out):
            calls.extend((name, t.requires_grad or t.grad_fn is not None)
                         for t in tensors_in(out))
            # UniPT's input: the decoder's stacked states, the encoder
            # layers' and ViT layers' outputs, read as they are (kept for
            # its first layers' backward)
            # (and the official ViT form its anchor: the backbone output)
            read = ('decoder', 'encoder') if parallel is UNIPT or \
                arch != 'vit' else ('backbone', )
            if name not in read and not name.startswith(
                    ('backbone.layers', 'encoder.layers')):
                frozen_outs.extend(tensors_in(out))
        return hook

    for name, module in frozen_modules(petl, arch).items():
        handles.append(module.register_forward_pre_hook(pre_hook(name)))
        handles.append(module.register_forward_hook(out_hook(name)))
    refine = []
    if arch == 'deformable_refine':  # reg_branches run in the decoder too
        for branch in petl.bbox_head.reg_branches:
            handles.append(branch.register_forward_hook(
                lambda m, a, out: refine.append(out.grad_fn is not None)))
    saved = []

    def pack(t):
        saved.append(t.untyped_storage().data_ptr())
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        loss = train_losses(petl, arch)
    for handle in handles:
        handle.remove()
    assert len(calls) >= 2 * len(frozen_modules(petl, arch))
    assert not any(flag for _, flag in calls), [n for n, f in calls if f]
    # autograd saved none of the frozen network's activations for backward
    assert saved and not set(saved) & {
        t.untyped_storage().data_ptr() for t in frozen_outs}
    if arch == 'deformable_refine':
        # 2 calls inside the decoder (no autograd), 2 by the head (autograd)
        assert refine == [False, False, True, True]

    loss.backward()
    unipt_ids = {id(p) for p in petl.unipt.parameters()}
    head_ids = {id(p) for p in getattr(petl, head_of(arch)).parameters()}
    for name, p in petl.named_parameters():
        if id(p) in unipt_ids:
            assert p.grad is not None, name
        elif id(p) not in head_ids:
            assert p.grad is None, name
    moved = {n for n, p in petl.unipt.named_parameters()
             if torch.count_nonzero(p.grad) > 0}
    names = {n for n, _ in petl.unipt.named_parameters()}
    if parallel is UNIPT:  # U = 0 blocks the rest at step 0
        assert 'up.weight' in moved
    elif parallel is REPLACE:  # every UniPT parameter learns at step 0
        # but a softmax over layers cancels the gate's common bias, and is
        # constant over the one layer a 2-layer DETR decoder has read
        names -= {n for n in names if '.gate.bias' in n or (
            '.gate.' in n and arch != 'vit')}
        assert names <= moved, names - moved
    else:  # residual: the zero final scale blocks the rest at step 0
        last = 'up.1' if arch == 'vit' else 'up.2'
        assert moved == {f'{last}.weight', f'{last}.bias'}, moved
    assert any(p.grad is not None and torch.count_nonzero(p.grad) > 0
               for p in getattr(petl, head_of(arch)).parameters())


@pytest.mark.parametrize('parallel', [UNIPT, OFFICIAL], ids=['v1', 'official'])
@pytest.mark.parametrize('arch', ['detr', 'deformable_detr', 'vit'])
def test_adamw_steps_lower_the_loss(arch, parallel):
    _, petl = build_pair(arch, parallel=dict(parallel, lr_mult=2.0))
    petl.train()
    optim = PETLOptimWrapperConstructor(
        dict(optimizer=dict(type='AdamW', lr=2e-3, weight_decay=1e-4)),
        paramwise_cfg=dict(tuner_lr_mult=1.5))(petl)
    lr_of = {id(p): g['lr'] for g in optim.optimizer.param_groups
             for p in g['params']}
    for p in petl.unipt.parameters():  # picked up as tuner parameters
        assert lr_of[id(p)] == pytest.approx(2e-3 * 2.0 * 1.5)
    trainable = {id(p) for p in petl.parameters() if p.requires_grad}
    assert set(lr_of) == trainable
    unipt = petl.unipt
    first = unipt.downs[0] if parallel is UNIPT else (
        unipt.downs[0][1] if arch == 'vit' else unipt.dec_downs[0][0])
    down = first.weight.detach().clone()
    losses = []
    for _ in range(6):
        loss = train_losses(petl, arch)
        optim.update_params(loss)
        losses.append(loss.item())
    assert losses[-1] < losses[0], losses
    # once U moved, the gradient reaches the rest of UniPT
    assert not torch.equal(first.weight, down)


def test_parameter_count_and_report():
    _, petl = build_pair('detr')
    d, num_layers, r = 256, 2, 16  # small DETR: width 256, 2 decoder layers
    closed = ((num_layers + 1) * d * r + (num_layers + 1) * r +
              2 * num_layers * d + d + num_layers)
    assert petl.unipt.num_train_params() == closed
    head = sum(p.numel() for p in petl.bbox_head.parameters())
    assert sum(p.numel() for p in petl.parameters()
               if p.requires_grad) == closed + head
    assert petl.tuner_cfgs == [UNIPT]
    table = injection_table(petl.injected, petl)
    assert 'UniPT' in table and f'{closed:,}' in table


def test_last_layer_only():
    vanilla, petl = build_pair('detr', parallel=dict(UNIPT,
                                                     all_layers=False))
    perturb(petl.unipt)
    with torch.no_grad():
        cls_base = tensor_outputs(vanilla, 'detr')[0]  # (L, B, Q, C)
        cls_got = tensor_outputs(petl, 'detr')[0]
    torch.testing.assert_close(cls_got[0], cls_base[0], atol=1e-5, rtol=0)
    assert not torch.allclose(cls_got[-1], cls_base[-1], atol=1e-4)


def test_vit_out_types_get_the_same_token_correction():
    """raw tokens, class token, feature map and token mean all receive the
    correction of the same tokens, laid out as the backbone lays them."""
    inputs, _ = cls_batch()
    deltas = {}
    for out_type in ('raw', 'cls_token', 'featmap', 'avg_featmap'):
        cfg = SMALL_CFGS['vit']()
        cfg['backbone']['out_type'] = out_type
        torch.manual_seed(0)
        petl = PETLModel(model=cfg, parallel=UNIPT, trainable=['head'])
        torch.manual_seed(1)
        perturb(petl.unipt)
        with torch.no_grad():
            base = type(petl.inner).extract_feat(petl.inner, inputs,
                                                 stage='backbone')[-1]
            deltas[out_type] = petl.extract_feat(
                inputs, stage='backbone')[-1] - base
    raw = deltas['raw']  # (B, 1 + h*w, d)
    assert torch.count_nonzero(raw) > 0
    torch.testing.assert_close(deltas['cls_token'], raw[:, 0])
    torch.testing.assert_close(deltas['avg_featmap'], raw[:, 1:].mean(1))
    featmap = raw[:, 1:].reshape(raw.shape[0], 4, 4, -1).permute(0, 3, 1, 2)
    torch.testing.assert_close(deltas['featmap'], featmap)


def test_deepcopy_calls_its_own_unipt():
    """An EMA copy must run its own UniPT, not the original's."""
    _, petl = build_pair('vit')
    twin = copy.deepcopy(petl)
    perturb(twin.unipt)
    with torch.no_grad():
        torch.testing.assert_close(
            tensor_outputs(petl, 'vit')[0],
            tensor_outputs(build_pair('vit')[0], 'vit')[0])
        assert not torch.allclose(tensor_outputs(twin, 'vit')[0],
                                  tensor_outputs(petl, 'vit')[0])


def test_refusals():
    cfg = SMALL_CFGS['detr']()
    with pytest.raises(ValueError, match='never get a gradient.*neck'):
        PETLModel(model=cfg, parallel=UNIPT, trainable=['bbox_head', 'neck'])
    with pytest.raises(ValueError, match='never get a gradient.*adapter'):
        PETLModel(model=cfg, parallel=UNIPT, trainable=['bbox_head'],
                  tuners=[dict(type='ParallelAdapter', presets=['ffn'],
                               bottleneck=8)])
    with pytest.raises(TunerHostError, match='parallel=dict'):
        PETLModel(model=cfg, tuners=[dict(UNIPT, presets=['ffn'])])
    with pytest.raises(TypeError, match='list it in `tuners`'):
        PETLModel(model=cfg, parallel=dict(type='ParallelAdapter'))
    with pytest.raises(TunerHostError, match='two-stage'):
        PETLModel(model=small_deformable_cfg(with_box_refine=True,
                                             as_two_stage=True),
                  parallel=UNIPT)
    from mmpetl.models.parallel import attach_parallel
    with pytest.raises(TunerHostError, match='cannot tune a Linear'):
        attach_parallel(torch.nn.Linear(8, 8), UNIPT)
