"""PETLModel(activation_checkpointing=...): the layers chosen are recomputed
in backward, and every trainable tensor gets the gradient it gets without.

Tolerance for "equal": fp32 ``atol=1e-6, rtol=1e-5`` (measured on these
models: a max difference of 0, the recomputation redoes the same ops in
the same order); bf16 autocast ``atol=1e-6, rtol=1e-5`` too (measured 0).
Dropout stays on (0.1 in the MMDetection configs the small models come
from) in every comparison. Every trainable tensor is moved off its init
first (:func:`move_off_init`) and every compared gradient must be non-zero:
with the default inits most of them are exactly 0 (zero ``up``, ``P_v``
and last box layers), and 0 equals 0 whatever the recomputation does.
"""
import contextlib
import copy
import functools
import os

import pytest
import torch
import torch.multiprocessing as mp
import torch.nn as nn
import torch.utils.checkpoint as torch_checkpoint

import mmpetl.models.checkpointing as ckpt_module
from mmpetl.models import (PETLModel, apply_activation_checkpointing,
                           observe_checkpoint_inputs,
                           resolve_checkpoint_targets)
from tests.conftest import (cls_batch, det_batch, small_deformable_cfg,
                            small_detr_cfg, small_vit_cfg)
from tests.test_tuners.matrix_hosts import \
    move_off_init as move_tuners_off_init

ETTA = [dict(type='ParallelAdapter', presets=['ffn'], bottleneck=8),
        dict(type='ScaledPrefix', presets=['attn'], num_prefix=4)]
LAYERS = ['encoder_layers', 'decoder_layers']
TOL = dict(atol=1e-6, rtol=1e-5)
CFGS = dict(deformable_detr=small_deformable_cfg, detr=small_detr_cfg,
            vit=small_vit_cfg)


def build(arch, ckpt, tuners=ETTA, trainable=('bbox_head', ), state=None,
          **kwargs):
    torch.manual_seed(0)
    model = PETLModel(model=CFGS[arch](), tuners=tuners,
                      trainable=list(trainable),
                      activation_checkpointing=ckpt, **kwargs)
    if state is not None:
        model.load_state_dict(state)
    else:
        move_off_init(model)
    return model.train()


@torch.no_grad()
def move_off_init(model, seed=0):
    """Every tuner tensor to a random value (``matrix_hosts.move_off_init``)
    and every other trainable tensor (the heads: Deformable DETR zero-inits
    its last box layers) moved by ``N(0, 0.05^2)``: with default inits the
    zero ``up``/``P_v``/last layers leave many gradients exactly 0, and a
    comparison of zeros proves nothing."""
    move_tuners_off_init(model, seed)
    tuner_ids = model.tuner_parameter_ids()
    gen = torch.Generator().manual_seed(seed + 1)
    for param in model.parameters():
        if param.requires_grad and id(param) not in tuner_ids:
            param.add_(torch.randn(param.shape, generator=gen) * 0.05)


def loss_of(model, seed=1, batch=None):
    inputs, samples = batch or det_batch()
    torch.manual_seed(seed)  # the dropout masks
    losses = model(inputs, samples, mode='loss')
    return model.parse_losses(losses)[0]


def grads(model, seed=1, batch=None, context=contextlib.nullcontext):
    """The gradient of every trainable tensor (the loss in ``['loss']``)."""
    model.zero_grad(set_to_none=True)
    with context():
        loss = loss_of(model, seed, batch)
    loss.backward()
    out = {n: p.grad.clone() for n, p in model.named_parameters()
           if p.requires_grad}
    assert all(g is not None for g in out.values())
    out['loss'] = loss.detach()
    return out


def assert_all_close(a, b):
    """Same names, every tensor non-zero and within TOL; returns the max
    difference."""
    assert a.keys() == b.keys() and len(a) > 5
    zero = [k for k in a if not a[k].abs().sum() > 0]
    assert not zero, f'gradients exactly 0 (compared 0 with 0): {zero}'
    diff = max((a[k] - b[k]).abs().max().item() for k in a)
    for key in a:
        torch.testing.assert_close(a[key], b[key], **TOL)
    return diff


@pytest.fixture(scope='module')
def pairs():
    """``pairs(arch)``: (plain, checkpointed) ETTA models with the same
    weights and the plain model's fp32 :func:`grads`, once per module."""
    cache = {}

    def get(arch):
        if arch not in cache:
            plain = build(arch, None)
            ckpt = build(arch, LAYERS, state=plain.state_dict())
            cache[arch] = plain, ckpt, grads(plain)
        return cache[arch]

    return get


@pytest.mark.parametrize('arch', ['deformable_detr', 'detr'])
def test_gradients_equal_with_and_without_checkpointing(pairs, arch):
    plain, ckpt, ref = pairs(arch)
    assert plain.checkpointed_layers == []
    assert ckpt.checkpointed_layers == [
        'encoder.layers.0', 'encoder.layers.1', 'decoder.layers.0',
        'decoder.layers.1']
    # dropout is live: another seed gives another loss
    assert loss_of(plain, seed=2).item() != ref['loss'].item()
    calls = []
    handle = ckpt.encoder.layers[0].ffn.register_forward_hook(
        lambda *_: calls.append(1))
    try:
        diff = assert_all_close(ref, grads(ckpt))
    finally:
        handle.remove()
    assert diff == 0.0  # measured: the same ops in the same order
    assert len(calls) == 2  # the layer ran again in backward


def test_without_the_stashed_rng_dropout_would_differ(pairs, monkeypatch):
    """The check above catches a recomputation with other dropout masks."""
    _, ckpt, ref = pairs('deformable_detr')

    def no_rng(fn, *args, **kwargs):
        kwargs['preserve_rng_state'] = False
        return torch_checkpoint.checkpoint(fn, *args, **kwargs)

    monkeypatch.setattr(ckpt_module, 'checkpoint', no_rng)
    with pytest.raises(AssertionError):
        assert_all_close(ref, grads(ckpt))


def test_every_argument_reaches_the_checkpoint_positionally(monkeypatch):
    """torch stashes the RNG state of the devices of positional tensors only
    (a GPU's dropout masks): keyword arguments must not stay keywords."""
    seen = []

    def spy(fn, *args, **kwargs):
        seen.append((args, kwargs))
        return torch_checkpoint.checkpoint(fn, *args, **kwargs)

    monkeypatch.setattr(ckpt_module, 'checkpoint', spy)

    class Layer(nn.Module):

        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(4, 4)

        def forward(self, query, query_pos=None, key_padding_mask=None):
            return self.fc(query + query_pos) * ~key_padding_mask[..., None]

    layer = Layer()
    ckpt_module.apply_activation_checkpointing(
        nn.Sequential(layer), ['0'])
    query, pos = torch.randn(2, 4), torch.randn(2, 4)
    mask = torch.tensor([False, True])
    out = layer(query, query_pos=pos, key_padding_mask=mask)
    (args, kwargs), = seen
    assert len(args) == 3 and all(
        a is b for a, b in zip(args, (query, pos, mask)))
    assert kwargs == dict(use_reentrant=False, preserve_rng_state=True)
    torch.testing.assert_close(out, layer.fc(query + pos) * ~mask[..., None])


def test_bf16_autocast_gives_the_same_gradients(pairs):
    """Deformable DETR: its attention op runs in fp32 inside autocast."""
    plain, ckpt, _ = pairs('deformable_detr')
    bf16 = functools.partial(torch.autocast, 'cpu', dtype=torch.bfloat16)
    dtypes = []
    handle = ckpt.decoder.layers[1].ffn.layers[1].register_forward_hook(
        lambda m, args, out: dtypes.append(out.dtype))
    try:
        a, b = grads(plain, context=bf16), grads(ckpt, context=bf16)
    finally:
        handle.remove()
    assert assert_all_close(a, b) == 0.0
    assert dtypes == [torch.bfloat16] * 2  # forward and recomputation


def test_nothing_to_recompute_runs_as_is(pairs, monkeypatch):
    """Under torch.no_grad (inference), and with the tuners frozen (heads
    only: no layer holds a trainable parameter or gets an input with a
    gradient), no layer is checkpointed: autograd keeps nothing there.
    Training says so once per layer."""
    _, model, _ = pairs('deformable_detr')
    tuner_params = [p for _, t in model.tuner_modules()
                    for p in t.parameters()]
    for module in model.modules():
        module.__dict__.pop('_mmpetl_ckpt_told', None)
    logged = []
    monkeypatch.setattr(ckpt_module, 'print_log',
                        lambda msg, **kw: logged.append(msg))
    taken = []
    with observe_checkpoint_inputs(lambda name, t: taken.append(name)):
        with torch.no_grad():
            loss_of(model)
        assert taken == []
        try:
            for p in tuner_params:
                p.requires_grad_(False)
            loss_of(model).backward()
            loss_of(model).backward()
        finally:
            for p in tuner_params:
                p.requires_grad_(True)
        assert taken == []
        loss_of(model).backward()
    assert taken == model.checkpointed_layers
    assert [m.split('`')[1] for m in logged] == model.checkpointed_layers
    assert all('runs without activation checkpointing: no parameter in it '
               'trains and no input carries a gradient' in m for m in logged)


@pytest.fixture(scope='module')
def stages():
    """A trainable conv and BatchNorm affine parameters in stage 3 (their
    statistics frozen: ResNet's norm_eval), without and with
    ``backbone_stages`` checkpointed (the same weights). ResNet zero-inits
    each block's last BatchNorm, so the shortcut conv is the one that gets
    a gradient at init."""
    trainable = ('bbox_head', 'backbone.layer3.0.downsample.0',
                 'backbone.layer3.1.bn2')
    plain = build('deformable_detr', None, tuners=[], trainable=trainable)
    return plain, build('deformable_detr', ['backbone_stages'], tuners=[],
                        trainable=trainable, state=plain.state_dict())


def test_backbone_stages_with_frozen_batchnorm_in_eval(stages):
    """Stages 3 and 4 are recomputed (stages 1-2 get no gradient); their
    BatchNorms are frozen (eval), so the recomputation is exact and the
    running statistics are not touched."""
    plain, ckpt = stages
    assert ckpt.checkpointed_layers == [f'backbone.layer{i}'
                                        for i in range(1, 5)]
    bns = [m for m in ckpt.backbone.modules()
           if isinstance(m, nn.BatchNorm2d)]
    assert bns and not any(m.training for m in bns)
    stats = [m.running_mean.clone() for m in bns]
    taken = []
    with observe_checkpoint_inputs(lambda name, t: taken.append(name)):
        ours = grads(ckpt)
    assert assert_all_close(grads(plain), ours) == 0.0
    assert all(g.abs().sum() > 0 for k, g in ours.items()
               if k.startswith('backbone'))
    assert taken == ['backbone.layer3', 'backbone.layer4']  # grad inside
    for before, m in zip(stats, bns):
        assert torch.equal(before, m.running_mean)


def test_batchnorm_in_training_mode_is_refused(stages):
    _, model = stages
    bn = model.backbone.layer3[1].bn2
    bn.train()  # as with norm_eval=False
    try:
        with pytest.raises(RuntimeError, match=r'BatchNorm `backbone\.layer3'
                           r'\.1\.bn2` is in training mode.*norm_eval=True'):
            loss_of(model)
    finally:
        bn.eval()


def test_vit_layers_with_etta():
    """MMPretrain's ViT: ``encoder_layers`` are ``backbone.layers.N``."""
    trainable = ('head', )
    plain = build('vit', None, trainable=trainable)
    ckpt = build('vit', ['encoder_layers'], trainable=trainable,
                 state=plain.state_dict())
    assert ckpt.checkpointed_layers == ['backbone.layers.0',
                                        'backbone.layers.1']
    batch = cls_batch()
    assert assert_all_close(grads(plain, batch=batch),
                            grads(ckpt, batch=batch)) == 0.0


# -- what the forward keeps for the recomputation (keep) ---------------------
@pytest.mark.parametrize('keep', [[], ['dropout_masks'], ['ms_deform_attn']])
def test_gradients_equal_whatever_the_layers_keep(pairs, keep):
    """The default (both kept) is checked above; each alone and nothing."""
    plain, _, ref = pairs('deformable_detr')
    model = build('deformable_detr', dict(layers=LAYERS, keep=keep),
                  state=plain.state_dict())
    assert assert_all_close(ref, grads(model)) == 0.0


def test_kept_masks_and_outputs_are_not_drawn_or_sampled_again(
        pairs, monkeypatch):
    """Default keep: the recomputation in backward draws no dropout mask and
    runs no deformable attention; with keep=[] it does both again."""
    import mmpetl.ops.msda as op_module
    plain, ckpt, _ = pairs('deformable_detr')
    nothing = build('deformable_detr', dict(layers=LAYERS, keep=[]),
                    state=plain.state_dict())
    sampled, drawn = [], []
    op = op_module.ms_deform_attn
    monkeypatch.setattr(op_module, 'ms_deform_attn',
                        lambda *a: sampled.append(1) or op(*a))
    bernoulli = torch.Tensor.bernoulli_
    monkeypatch.setattr(torch.Tensor, 'bernoulli_',
                        lambda t, *a: drawn.append(1) or bernoulli(t, *a))
    counts = {}
    for name, model in (('kept', ckpt), ('nothing', nothing)):
        sampled.clear(), drawn.clear()
        loss = loss_of(model)
        forward = len(sampled), len(drawn)
        loss.backward()
        counts[name] = forward, (len(sampled), len(drawn))
    # 2 encoder self + 2 decoder cross attentions; mmpetl draws the masks
    # of the layers' nn.Dropout (p > 0) itself when it keeps them
    (fwd_sampled, fwd_drawn), after = counts['kept']
    assert fwd_sampled == 4 and fwd_drawn > 0
    assert after == (fwd_sampled, fwd_drawn)
    (fwd_sampled, fwd_drawn), after = counts['nothing']
    assert (fwd_sampled, fwd_drawn) == (4, 0)  # F.dropout draws in C++
    assert after == (8, 0)  # every attention sampled again


class RandomAfterDropout(nn.Module):
    """A layer that draws random numbers after its dropout draws."""

    def __init__(self, other_random=True):
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(16, 16), nn.Linear(16, 16)
        self.drop = nn.Dropout(0.3)
        self.other_random = other_random

    def forward(self, x):
        x = self.drop(self.fc1(x))
        if self.other_random:
            x = x * (torch.rand_like(x) > 0.5)
        return self.fc2(x)


def _toy_grads(keep, other_random=True, seed=3):
    torch.manual_seed(0)
    model = nn.Sequential(RandomAfterDropout(other_random),
                          RandomAfterDropout(other_random)).train()
    if keep is not None:
        apply_activation_checkpointing(model, dict(layers=['0', '1'],
                                                   keep=keep))
    held = []
    torch.manual_seed(seed)
    x = torch.randn(8, 16, requires_grad=True)
    with observe_checkpoint_inputs(lambda name, t: held.extend(t)):
        model(x).square().sum().backward()
    return [p.grad for p in model.parameters()] + [x.grad], held


@pytest.mark.parametrize('other_random', [True, False])
def test_replayed_masks_leave_later_random_draws_as_they_were(other_random):
    """The forward keeps the RNG state after each mask only where another
    random op follows it in the layer; either way the gradients are those
    without checkpointing, bit for bit."""
    ref, _ = _toy_grads(None, other_random)
    got, held = _toy_grads(['dropout_masks'], other_random)
    for a, b in zip(ref, got):
        torch.testing.assert_close(a, b, atol=0, rtol=0)
    masks = [t for t in held if t.dtype == torch.bool]
    states = [t for t in held if t.dtype == torch.uint8]
    assert len(masks) == 2 and masks[0].shape == (8, 16)
    assert len(states) == (2 if other_random else 0)


def test_without_the_kept_rng_states_later_draws_would_differ(monkeypatch):
    """The control for the test above."""
    from mmpetl.ops.replay import ReplayRecord
    ref, _ = _toy_grads(None)
    monkeypatch.setattr(ReplayRecord, '_drop_unneeded_states',
                        lambda self: setattr(self, 'masks', [
                            (m, None) for m, _ in self.masks]))
    got, _ = _toy_grads(['dropout_masks'])
    assert any(not torch.equal(a, b) for a, b in zip(ref, got))


@pytest.mark.parametrize('spec, message', [
    (dict(layer=['encoder_layers']), r"takes `layers`.*got keys \['layer'\]"),
    (dict(layers=['encoder_layers'], keep=['dropout']),
     r"\['dropout'\] is nothing mmpetl can keep; choose from "
     r"\['ms_deform_attn', 'dropout_masks'\], or \[\]"),
])
def test_a_bad_keep_spec_is_refused_with_the_choices(spec, message):
    with pytest.raises(ValueError, match=message):
        apply_activation_checkpointing(toy(), spec, arch='detr')


# -- which modules: presets, names, regexes, errors ------------------------
def toy():
    """Module names of a DETR-like tree, without building a detector."""
    def layers(n):
        return nn.ModuleDict(dict(layers=nn.ModuleList(
            nn.ModuleDict(dict(ffn=nn.Linear(2, 2))) for _ in range(n))))
    return nn.ModuleDict(dict(encoder=layers(2), decoder=layers(1)))


@pytest.mark.parametrize('spec, names', [
    (['encoder_layers'], ['encoder.layers.0', 'encoder.layers.1']),
    ('decoder_layers', ['decoder.layers.0']),
    (['layers.1', 'decoder.layers.0'], ['encoder.layers.1',
                                        'decoder.layers.0']),
    (r'encoder\.layers\.[01]', ['encoder.layers.0', 'encoder.layers.1']),
    (['encoder', 'encoder.layers.0.ffn'], ['encoder']),  # outermost only
    (None, []),
])
def test_targets_resolve_like_tuner_targets(spec, names):
    assert resolve_checkpoint_targets(toy(), spec, arch='detr') == names


@pytest.mark.parametrize('spec, message', [
    (['encoder_layer'], r"'encoder_layer' is no preset.*Did you mean the "
     r"preset \['encoder_layers'\].*nearest module names"),
    (['encoder.layers.7'], r"matches no module\. Presets: \['backbone_stages'"
     r", 'decoder_layers', 'encoder_layers'\].*'encoder\.layers\.1'"),
    (['backbone_stages'], r"preset 'backbone_stages' matches no module.*"
     r"top-level modules: \['encoder', 'decoder'\]"),
])
def test_a_target_matching_nothing_is_refused_with_the_fix(spec, message):
    with pytest.raises(ValueError, match=message):
        resolve_checkpoint_targets(toy(), spec, arch='detr')


def test_apply_logs_frozen_layers_and_refuses_twice(monkeypatch):
    logged = []
    monkeypatch.setattr(ckpt_module, 'print_log',
                        lambda msg, **kw: logged.append(msg))
    model = toy()
    model.encoder.layers[1].requires_grad_(False)
    model.decoder.requires_grad_(False)
    names = ckpt_module.apply_activation_checkpointing(
        model, ['encoder_layers', 'decoder_layers'], arch='detr')
    assert names == ['encoder.layers.0', 'encoder.layers.1',
                     'decoder.layers.0']
    assert logged[0].startswith('mmpetl: activation checkpointing on 3 '
                                'modules (encoder.layers.0, ')
    assert logged[1].startswith('mmpetl: 2 checkpointed modules hold no '
                                'trainable parameter (encoder.layers.1, '
                                'decoder.layers.0)')
    with pytest.raises(ValueError, match='checkpointed already: apply '
                       'activation checkpointing once'):
        ckpt_module.apply_activation_checkpointing(model, ['layers.0'])
    with pytest.raises(TypeError, match='preset or module names'):
        resolve_checkpoint_targets(model, [0])


def test_checkpointed_model_deepcopies_with_its_own_layers(pairs):
    _, model, ref = pairs('detr')
    twin = copy.deepcopy(model)
    layer, forward = twin.encoder.layers[0], twin.encoder.layers[0].forward
    assert forward.args[0] is layer and forward.args[1].__self__ is layer
    assert_all_close(ref, grads(twin))


# -- distributed: 2 processes, gloo ----------------------------------------
def _ddp_worker(rank, port, out):
    import torch.distributed as dist
    from mmengine.model import MMDistributedDataParallel
    from mmengine.optim import OptimWrapper

    from mmpetl.analysis import synthetic_batch
    os.environ.update(MASTER_ADDR='127.0.0.1', MASTER_PORT=str(port))
    dist.init_process_group('gloo', rank=rank, world_size=2)
    torch.set_num_threads(1)
    data = synthetic_batch('detection', 1, (64, 64), 3, seed=rank)
    plain = build('deformable_detr', None)
    twin = copy.deepcopy(plain)
    apply_activation_checkpointing(twin.inner, LAYERS)
    out[(rank, 'start')] = {n: p.detach().numpy().copy()
                            for n, p in plain.named_parameters()
                            if p.requires_grad}
    for ckpt, model in ((None, plain), (LAYERS, twin)):
        ddp = MMDistributedDataParallel(module=model)
        params = [p for p in model.parameters() if p.requires_grad]
        optim = OptimWrapper(torch.optim.SGD(params, lr=0.05))
        torch.manual_seed(rank)  # dropout differs between ranks
        for _ in range(2):
            ddp.train_step(data, optim)
        out[(rank, str(ckpt))] = {
            n: p.detach().numpy().copy()
            for n, p in model.named_parameters() if p.requires_grad}
    dist.destroy_process_group()


def test_ddp_steps_equal_with_and_without_checkpointing():
    manager = mp.Manager()
    out = manager.dict()
    mp.spawn(_ddp_worker, args=(29547, out), nprocs=2)
    ref = {n: torch.from_numpy(v) for n, v in out[(0, 'None')].items()}
    start = out[(0, 'start')]
    assert any(not torch.equal(ref[n], torch.from_numpy(start[n]))
               for n in ref)  # the steps moved the weights
    for key in [(0, str(LAYERS)), (1, 'None'), (1, str(LAYERS))]:
        got = {n: torch.from_numpy(v) for n, v in out[key].items()}
        assert_all_close(ref, got)
