"""The official UniPT design (variant='official'): the network on plain
tensors and beside small DETR, Deformable DETR and ViT models."""
import pytest
import torch

from mmpetl.checkpoints import load_tuner_checkpoint, save_tuner_checkpoint
from mmpetl.models import PETLModel, build_inner_model
from mmpetl.tuners import TunerHostError, UniPT
from mmpetl.tuners.unipt import UniPTDetr, UniPTViT, mix, read_layers
from tests.conftest import (SMALL_CFGS, cls_batch, det_batch,
                            small_deformable_cfg, tensor_outputs)

D, B, N, Q = 32, 2, 12, 5


def enc_dec(seed=0, layers=6, tokens=N):
    gen = torch.Generator().manual_seed(seed)
    enc = [torch.randn(B, tokens, D, generator=gen) for _ in range(layers)]
    dec = torch.randn(layers, B, Q, D, generator=gen)
    mask = torch.zeros(B, tokens, dtype=torch.bool)
    mask[1, 8:] = True  # image 1: its last 4 tokens are padding
    return enc, mask, dec


def perturbed(net, std=0.3):
    with torch.no_grad():
        for p in net.parameters():
            p.normal_(0, std)
    return net


def test_layers_read_generalise_the_official_choice():
    assert read_layers(6) == [0, 2, 4]  # the authors' {1, 3, 5}, 1-based
    assert read_layers(2) == [0]
    assert read_layers(12) == [0, 2, 4, 6, 8, 10]
    assert read_layers(4, 'all') == [0, 1, 2]
    net = UniPT(D, 6)
    assert isinstance(net, UniPTDetr) and net.outputs == [0, 2, 4, 5]
    assert net.bottleneck == D // 2  # width d/2
    assert isinstance(UniPT(D, 13, form='vit'), UniPTViT)


def test_mix_formula():
    gen = torch.Generator().manual_seed(0)
    q, c = torch.randn(B, 3, 4, generator=gen), torch.randn(B, 6, 4,
                                                             generator=gen)
    keep = torch.ones(B, 6, dtype=torch.bool)
    keep[0, 4:] = False
    w = torch.relu(q @ c.transpose(1, 2)) * keep[:, None]
    expected = (w / (w.sum(-1, keepdim=True) + 1e-7)) @ c
    torch.testing.assert_close(mix(q, c, keep, identity=False), expected)
    same = mix(c, c, keep)  # identity: + c
    w = torch.relu(c @ c.transpose(1, 2)) * keep[:, None]
    torch.testing.assert_close(same, (w / (w.sum(-1, keepdim=True) + 1e-7))
                               @ c + c)


@pytest.mark.parametrize('output', ['residual', 'replace'])
def test_detr_network_shapes_init_and_gradients(output):
    enc, mask, dec = enc_dec()
    net = UniPT(D, 6, output=output)
    out = net(enc, mask, dec)
    assert out.shape == dec.shape
    # the surgery keeps only the encoder layers read (None for the others)
    kept = [h if i in (0, 2, 4, 5) else None for i, h in enumerate(enc)]
    torch.testing.assert_close(net(kept, mask, dec), out, atol=0, rtol=0)
    for layer in (1, 3):  # not read: the frozen states as they are
        torch.testing.assert_close(out[layer], dec[layer], atol=0, rtol=0)
    if output == 'residual':  # exact at init
        torch.testing.assert_close(out, dec, atol=0, rtol=0)
    else:
        assert not torch.allclose(out[5], dec[5], atol=1e-2)
        out.square().sum().backward()  # every parameter learns at step 0
        dead = [n for n, p in net.named_parameters()
                if p.grad is None or p.grad.abs().max() < 1e-6]
        # the gate's bias is common to every layer's score: the softmax
        # over the layers cancels it (so in the authors' code too)
        assert dead == ['enc_agg.gate.bias', 'dec_agg.gate.bias']


@pytest.mark.parametrize('encoder_mix', [False, True])
def test_padded_encoder_tokens_are_never_read(encoder_mix):
    enc, mask, dec = enc_dec()
    net = perturbed(UniPT(D, 6, output='replace', encoder_mix=encoder_mix))
    moved = [h.clone() for h in enc]
    for h in moved:
        h[1, 8:] = 100.0 * torch.randn(4, D)
    a, b = net(enc, mask, dec), net(moved, mask, dec)
    torch.testing.assert_close(a, b)
    moved[0][1, 2] += 5.0  # a real token does count
    assert not torch.allclose(net(moved, mask, dec)[:, 1], a[:, 1])


def test_queries_read_the_image_through_the_side_memory():
    enc, mask, dec = enc_dec()
    net = perturbed(UniPT(D, 6, output='replace'))
    moved = [h + 0.5 for h in enc]
    assert not torch.allclose(net(moved, mask, dec), net(enc, mask, dec))
    blind = perturbed(UniPT(D, 6, output='replace', cross_attention=False))
    torch.testing.assert_close(blind(moved, mask, dec), blind(enc, mask,
                                                              dec))


def test_checkpointing_changes_nothing_but_memory():
    enc, mask, dec = enc_dec()
    net = perturbed(UniPT(D, 6, output='replace'))
    grads = []
    for flag in (True, False):
        net.use_checkpoint = flag
        net.zero_grad()
        out = net(enc, mask, dec)
        out.square().sum().backward()
        grads.append([p.grad.clone() for p in net.parameters()])
    for a, b in zip(*grads):
        torch.testing.assert_close(a, b)


def saved_bytes(fn):
    """Bytes of the distinct storages autograd saves while ``fn`` runs
    (parameters excluded) and their data pointers."""
    storages = {}

    def pack(t):
        if not isinstance(t, torch.nn.Parameter):
            s = t.untyped_storage()
            storages[s.data_ptr()] = s.nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        result = fn()
    return result, storages


@pytest.mark.parametrize('use_checkpoint', [True, False])
def test_what_autograd_keeps_stays_bounded(use_checkpoint):
    """Beside the frozen features it reads, the checkpointed network keeps
    only its input mask and output for backward, nothing of the size of
    its internal activations (several per encoder token)."""
    enc, mask, dec = enc_dec(tokens=256)
    net = UniPT(D, 6, output='replace', checkpoint=use_checkpoint)
    net.train()
    out, storages = saved_bytes(lambda: net(enc, mask, dec))
    feats = {h.untyped_storage().data_ptr() for h in enc}
    feats.add(dec.untyped_storage().data_ptr())
    extra = sum(v for k, v in storages.items() if k not in feats)
    bound = mask.numel() + 4 * dec.numel() * 4  # mask + a few outputs
    if use_checkpoint:
        assert extra <= bound, (extra, bound)
    else:  # the test can tell: without checkpointing it keeps far more
        assert extra > 4 * bound
    out.sum().backward()


def build(arch, parallel, **kwargs):
    cfg = SMALL_CFGS[arch]() if isinstance(arch, str) and \
        arch in SMALL_CFGS else arch
    torch.manual_seed(0)
    vanilla = build_inner_model(cfg)
    vanilla.init_weights()
    kwargs.setdefault('trainable', ['head' if 'vit' in str(arch)
                                    else 'bbox_head'])
    petl = PETLModel(model=cfg, parallel=parallel, **kwargs)
    petl.load_state_dict(vanilla.state_dict(), strict=False)
    return petl.eval()


def _deformable_reads(min_stride, img_shape):
    parallel = dict(type='UniPT', output='replace')
    if min_stride != 'default':
        parallel['enc_min_stride'] = min_stride
    petl = build('deformable_detr', parallel)
    seen = {}
    forward = petl.unipt.forward

    def spy(enc, mask, dec):
        seen.update(enc=enc, mask=mask, dec=dec)
        return forward(enc, mask, dec)

    petl.unipt.forward = spy
    inputs, samples = det_batch()
    samples[1].set_metainfo(dict(img_shape=img_shape))  # bottom rows padded
    with torch.no_grad():
        petl(inputs, samples, mode='tensor')
    return seen


def test_deformable_reads_every_encoder_layer_and_its_multiscale_mask():
    seen = _deformable_reads(None, (40, 64))
    assert len(seen['enc']) == 2 and seen['dec'].shape[0] == 2
    tokens = seen['enc'][0].shape[1]
    # 64x64 input, strides 8..64: the four levels flattened
    assert tokens == 8 * 8 + 4 * 4 + 2 * 2 + 1 * 1
    assert seen['mask'].shape == (2, tokens)
    assert not seen['mask'][0].any() and seen['mask'][1].any()
    assert all(h.grad_fn is None and not h.requires_grad
               for h in seen['enc'])


@pytest.mark.parametrize('min_stride', ['default', 32, 16])
def test_deformable_reads_the_coarse_levels_only(min_stride):
    """By default (enc_min_stride=32, MDETR's C5) the side network reads
    the stride-32 and -64 levels: the last 2x2 + 1x1 tokens of the
    flattened four, with their padding mask, as copies (the full encoder
    outputs are not kept)."""
    full = _deformable_reads(None, (24, 64))
    seen = _deformable_reads(min_stride, (24, 64))
    first = {'default': 8 * 8 + 4 * 4, 32: 8 * 8 + 4 * 4, 16: 8 * 8}[
        min_stride]
    for h, ref in zip(seen['enc'], full['enc']):
        assert h.shape[1] == 80 + 5 - first
        torch.testing.assert_close(h, ref[:, first:], atol=0, rtol=0)
        assert h.untyped_storage().nbytes() == h.numel() * h.element_size()
    assert torch.equal(seen['mask'], full['mask'][:, first:])
    assert seen['mask'][1].any()  # image 1's padded rows still masked
    torch.testing.assert_close(seen['dec'], full['dec'])


def test_deformable_level_choice_and_refusals():
    from mmengine.structures import BaseDataElement

    from mmpetl.models.parallel import _encoder_tokens
    net = UniPT(D, 6)
    # 800x1333 padded to 800x1344: levels of stride 8, 16, 32, 64
    shapes = torch.tensor([[100, 168], [50, 84], [25, 42], [13, 21]])
    kwargs = dict(spatial_shapes=shapes)
    samples = [BaseDataElement(metainfo=dict(batch_input_shape=(800, 1344)))]
    index = _encoder_tokens(net, kwargs, samples)
    start = 100 * 168 + 50 * 84
    assert torch.equal(index, torch.arange(start, start + 25 * 42 + 13 * 21))
    net.enc_min_stride = 8  # every level: no selection
    assert _encoder_tokens(net, kwargs, samples) is None
    net.enc_min_stride = 128
    with pytest.raises(TunerHostError, match='selects no encoder level'):
        _encoder_tokens(net, kwargs, samples)
    net.enc_min_stride = 32
    with pytest.raises(TunerHostError, match='batch_input_shape'):
        _encoder_tokens(net, kwargs, [BaseDataElement()])
    with pytest.raises(ValueError, match='enc_min_stride'):
        UniPT(D, 6, enc_min_stride=0)


def test_vit_reads_embeddings_and_every_block():
    petl = build('vit', dict(type='UniPT'))
    assert petl.unipt.num_layers == 3  # embeddings + 2 blocks
    assert petl.unipt.bottleneck == 32  # d / 2
    seen = {}
    forward = petl.unipt.forward

    def spy(feats, anchor, align):
        seen.update(feats=feats, anchor=anchor)
        return forward(feats, anchor, align)

    petl.unipt.forward = spy
    inputs, _ = cls_batch()
    with torch.no_grad():
        petl.extract_feat(inputs)
    assert len(seen['feats']) == 3
    assert seen['anchor'].shape == (4, 1, 64)  # the class token
    embeddings = seen['feats'][0]
    block0 = petl.backbone.layers[0]
    with torch.no_grad():
        torch.testing.assert_close(block0(embeddings), seen['feats'][1])


@pytest.mark.parametrize('arch', ['detr', 'vit'])
def test_tuner_checkpoint_round_trip(arch, tmp_path):
    parallel = dict(type='UniPT', output='replace', lr_mult=2.0)
    petl = build(arch, parallel)
    perturbed(petl.unipt, 0.1)
    path = str(tmp_path / 'tuner.pth')
    save_tuner_checkpoint(petl, path)
    ckpt = load_tuner_checkpoint(path)
    assert any(k.startswith('unipt.') for k in ckpt['state_dict'])
    fresh = build(arch, parallel)
    fresh.load_state_dict(ckpt['state_dict'], strict=False)
    with torch.no_grad():
        for a, b in zip(tensor_outputs(fresh, arch),
                        tensor_outputs(petl, arch)):
            torch.testing.assert_close(a, b, atol=0, rtol=0)
        other = tensor_outputs(build(arch, parallel), arch)
    assert not torch.allclose(other[0], tensor_outputs(petl, arch)[0])


def test_refusals():
    with pytest.raises(ValueError, match="variant='v1'"):
        UniPT(D, 6, all_layers=True)
    with pytest.raises(ValueError, match='num_layers >= 2'):
        UniPT(D, 1)
    with pytest.raises(ValueError, match="output must be 'replace' or"):
        UniPT(D, 6, output='add')
    with pytest.raises(ValueError, match='variant must be one of'):
        UniPT(D, 6, variant='v2')
    # an argument of the other form names itself, not a TypeError
    with pytest.raises(ValueError, match=r"\['features'\] are not"):
        UniPT(D, 6, features='recompute')
    with pytest.raises(ValueError, match=r"\['enc_min_stride'\] are not"):
        UniPT(D, 13, form='vit', enc_min_stride=32)
    with pytest.raises(ValueError, match="features='recompute' is the ViT"):
        PETLModel(model=small_deformable_cfg(),
                  parallel=dict(type='UniPT', features='recompute'))
    with pytest.raises(TunerHostError, match='two-stage'):
        PETLModel(model=small_deformable_cfg(with_box_refine=True,
                                             as_two_stage=True),
                  parallel=dict(type='UniPT'))
    cfg = SMALL_CFGS['vit']()
    cfg['neck'] = dict(type='GlobalAveragePooling')
    with pytest.raises(TunerHostError, match='with a neck'):
        PETLModel(model=cfg, parallel=dict(type='UniPT'), trainable=['head'])


def _vit_step(features, seed=3):
    """Loss, gradients and the random state after one training forward +
    backward of a UniPT ViT moved off its init, its backbone stochastic
    (drop path 0.1 in train mode, the frozen part in train mode too)."""
    cfg = SMALL_CFGS['vit']()
    cfg['backbone']['drop_path_rate'] = 0.1
    petl = build(cfg, dict(type='UniPT', features=features),
                 trainable=['head'])
    torch.manual_seed(1)
    perturbed(petl.unipt, 0.2)
    perturbed(petl.head, 0.2)
    petl.train()
    inputs, samples = cls_batch()
    torch.manual_seed(seed)
    loss = petl(inputs, samples, mode='loss')['loss']
    loss.backward()
    state = torch.get_rng_state()
    grads = {n: p.grad.clone() for n, p in petl.named_parameters()
             if p.requires_grad}
    return loss.detach(), grads, state


def test_vit_recompute_gives_the_same_loss_gradients_and_random_state():
    keep_loss, keep_grads, keep_state = _vit_step('keep')
    loss, grads, state = _vit_step('recompute')
    # the frozen backbone draws drop path: the replayed state matters
    assert not torch.equal(_vit_step('keep', seed=4)[0], keep_loss)
    torch.testing.assert_close(loss, keep_loss, rtol=1e-6, atol=0)
    assert grads.keys() == keep_grads.keys() and any(
        k.startswith('unipt.downs.') for k in grads)
    for name, grad in grads.items():
        assert grad.abs().sum() > 0, name
        torch.testing.assert_close(grad, keep_grads[name], rtol=1e-5,
                                   atol=1e-7, msg=name)
    assert torch.equal(state, keep_state)


def test_vit_recompute_keeps_no_frozen_feature():
    """features='recompute': autograd keeps no tensor of a frozen
    feature's shape (B, N, d) through the step; 'keep' keeps all L of
    them (the embeddings and the 2 blocks' outputs)."""
    feature = (4, (32 // 8) ** 2 + 1, 64)  # B, patches + class token, d
    kept = {}
    for features in ('keep', 'recompute'):
        petl = build('vit', dict(type='UniPT', features=features))
        petl.train()
        inputs, samples = cls_batch()
        shapes = {}

        def pack(t):
            shapes[t.untyped_storage().data_ptr()] = tuple(t.shape)
            return t

        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            loss = petl(inputs, samples, mode='loss')['loss']
        loss.backward()
        kept[features] = list(shapes.values()).count(feature)
    assert kept == dict(keep=3, recompute=0)
    with pytest.raises(ValueError, match='features must be one of'):
        UniPT(D, 13, form='vit', features='offload')


@pytest.mark.parametrize('features', ['keep', 'recompute'])
def test_vit_anchor_holds_no_view_of_the_frozen_tokens(features,
                                                       monkeypatch):
    """The class token the side network holds through its frozen passes is
    a copy: ``x[:, 0]`` would keep the last layer's (B, N, d) tokens
    alive at those passes' peak (74 MiB at batch 128 on ViT-B)."""
    petl = build('vit', dict(type='UniPT', features=features))
    petl.train()
    method = 'forward_streamed' if features == 'recompute' else 'forward'
    original = getattr(UniPTViT, method)
    anchors = []

    def spy(self, *args, **kwargs):
        anchor = args[0] if features == 'recompute' else args[1]
        anchors.append(anchor)
        return original(self, *args, **kwargs)

    monkeypatch.setattr(UniPTViT, method, spy)
    inputs, samples = cls_batch()
    petl(inputs, samples, mode='loss')['loss'].backward()
    assert len(anchors) == 1
    anchor = anchors[0]
    assert anchor.shape == (4, 1, 64)
    assert anchor.untyped_storage().nbytes() == \
        anchor.numel() * anchor.element_size()


def test_sample_at_references_is_msda_sampling_with_one_point():
    """local_read's samples: per level, bilinear samples where MSDA
    places its grid (the reference point scaled by the level's valid
    ratio, align_corners=False), averaged over the levels."""
    import torch.nn.functional as F

    from mmpetl.models.parallel import sample_at_references
    gen = torch.Generator().manual_seed(0)
    shapes = torch.tensor([[6, 8], [3, 4], [2, 2]])
    tokens = int(shapes.prod(1).sum())
    memory = torch.randn(B, tokens, D, generator=gen, dtype=torch.float64)
    ratios = torch.tensor([[[1.0, 1.0]] * 3, [[0.75, 0.5]] * 3],
                          dtype=torch.float64)
    refs = [torch.rand(B, Q, 2, generator=gen, dtype=torch.float64)
            for _ in range(2)]
    got = sample_at_references(
        dict(value=memory, spatial_shapes=shapes, valid_ratios=ratios), refs)
    assert got.shape == (2, B, Q, D)
    maps = [m.transpose(1, 2).reshape(B, D, h, w) for m, (h, w) in zip(
        memory.split(shapes.prod(1).tolist(), dim=1), shapes.tolist())]
    for ref, out in zip(refs, got):
        expected = sum(F.grid_sample(
            m, (ref * ratios[:, None, i] * 2 - 1)[:, :, None],
            align_corners=False)[..., 0] for i, m in enumerate(maps))
        torch.testing.assert_close(out, expected.transpose(1, 2) / len(maps),
                                   rtol=1e-12, atol=1e-12)
    # boxes (cx, cy, w, h): their centres are read
    boxes = [torch.cat([r, torch.rand(B, Q, 2, generator=gen,
                                      dtype=torch.float64)], -1)
             for r in refs]
    torch.testing.assert_close(sample_at_references(
        dict(value=memory, spatial_shapes=shapes, valid_ratios=ratios),
        boxes), got, rtol=0, atol=0)


def test_local_read_on_deformable_detr():
    """local_read: exact at init; each decoder layer's samples reach the
    network without autograd, and once the output layer has moved off
    its zero init, they change the outputs and the new projections
    learn."""
    vanilla = build('deformable_detr', None)
    petl = build('deformable_detr', dict(type='UniPT', local_read=True))
    for a, b in zip(tensor_outputs(petl, 'deformable_detr'),
                    tensor_outputs(vanilla, 'deformable_detr')):
        torch.testing.assert_close(a, b, atol=0, rtol=0)
    seen = {}
    forward = petl.unipt.forward

    def spy(enc, mask, dec, local=None):
        seen.update(dec=dec, local=local)
        return forward(enc, mask, dec, local=local)

    petl.unipt.forward = spy
    torch.manual_seed(2)
    perturbed(petl.unipt, 0.2)
    petl.train()
    inputs, samples = det_batch()
    loss = sum(v for k, v in petl(inputs, samples, mode='loss').items()
               if 'loss' in k)
    loss.backward()
    assert seen['local'].shape == seen['dec'].shape
    assert seen['local'].grad_fn is None and not seen['local'].requires_grad
    for name, p in petl.unipt.local_downs.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name
    net = petl.unipt
    net.forward = forward
    dec, local = seen['dec'], seen['local']
    enc = [torch.randn(B, 5, dec.shape[-1])] * net.num_encoder_layers
    with torch.no_grad():  # the samples do change the output
        assert not torch.allclose(net(enc, None, dec, local),
                                  net(enc, None, dec, local + 1.0))
    assert 'memory at the reference points' in net.describe()['reads']


def test_local_read_refusals():
    with pytest.raises(TunerHostError, match='drop local_read'):
        build('detr', dict(type='UniPT', local_read=True))
    enc, mask, dec = enc_dec()
    with pytest.raises(ValueError, match='local_read=True'):
        UniPT(D, 6, local_read=True)(enc, mask, dec)
    with pytest.raises(ValueError, match='local_read=False'):
        UniPT(D, 6)(enc, mask, dec, torch.zeros_like(dec))
