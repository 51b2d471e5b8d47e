"""PETLModel on small DETR, Deformable DETR and ViT from the real configs."""
import pytest
import torch
from torch.nn.modules.batchnorm import _BatchNorm

from mmpetl.models import PETLModel, build_inner_model
from mmpetl.tuners import DeformablePrefix, ScaledPrefix
from tests.conftest import SMALL_CFGS, tensor_outputs

ADAPTER = dict(type='ParallelAdapter', presets=['ffn'], bottleneck=16)
LORA = dict(type='LoRA', presets=['attn', 'ffn'], rank=4)
MSDA_PREFIX = dict(type='ScaledPrefix',
                   presets=['encoder_self_attn', 'decoder_cross_attn'],
                   num_prefix=8)
ETTA = [ADAPTER, dict(type='ScaledPrefix', presets=['attn'], num_prefix=8)]
SERIAL = dict(type='SerialAdapter', presets=['ffn'], bottleneck=16)
DUAL_U = [dict(type='UTuner', presets=['attn', 'ffn'], bottleneck=16)]
DUAL_U_SEQ = [dict(type='UTuner', presets=['attn', 'ffn'], bottleneck=16,
                   form='sequential')]
FIRST_U = [dict(type='UTuner', presets=['first_layer_attn',
                                        'first_layer_ffn'], bottleneck=16)]

# (arch, tuners) pairs whose tuners are exact at init
EXACT = [
    ('detr', [ADAPTER]),
    ('detr', [LORA]),
    ('deformable_detr', [ADAPTER]),
    ('deformable_detr', [LORA]),
    ('deformable_detr', [MSDA_PREFIX]),
    ('deformable_detr', [ADAPTER, LORA, MSDA_PREFIX]),
    ('vit', [ADAPTER]),
    ('vit', [LORA]),
    ('detr', [SERIAL]),
    ('deformable_detr', [SERIAL]),
    ('vit', [SERIAL]),
    ('detr', DUAL_U),
    ('deformable_detr', DUAL_U),
    ('vit', DUAL_U),
    ('detr', DUAL_U_SEQ),
    ('deformable_detr', FIRST_U),
    ('vit', DUAL_U_SEQ),
    # ETTA's default prefix (parallel form, P_v = 0) on every host
    ('detr', ETTA),
    ('deformable_detr', ETTA),
    ('vit', ETTA),
]


def build_pair(arch, tuners, trainable=()):
    """A vanilla model and a PETL model holding the same base weights."""
    cfg = SMALL_CFGS[arch]()
    torch.manual_seed(0)
    vanilla = build_inner_model(cfg)
    vanilla.init_weights()
    petl = PETLModel(model=cfg, tuners=tuners, trainable=list(trainable))
    result = petl.load_state_dict(vanilla.state_dict(), strict=False)
    # the post-load hook takes the (expected) tuner keys out of `missing`
    assert result.missing_keys == [] and result.unexpected_keys == []
    return vanilla.eval(), petl.eval()


@pytest.mark.parametrize('arch,tuners', EXACT,
                         ids=[f'{a}-{"+".join(t["type"] for t in ts)}'
                              for a, ts in EXACT])
def test_exact_at_init_and_tuners_in_forward_path(arch, tuners):
    vanilla, petl = build_pair(arch, tuners)
    with torch.no_grad():
        expected = tensor_outputs(vanilla, arch)
        got = tensor_outputs(petl, arch)
        assert len(got) == len(expected) > 0
        for a, b in zip(got, expected):
            torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)
        # moving the tuners' parameters must move the outputs
        for _, tuner in petl.tuner_modules():
            for p in tuner.parameters():
                p.normal_(0, 0.5)
        moved = tensor_outputs(petl, arch)
    assert any(not torch.allclose(a, b, atol=1e-4)
               for a, b in zip(moved, expected))


@pytest.mark.parametrize('arch', ['detr', 'deformable_detr', 'vit'])
def test_state_dict_keys_are_vanilla_plus_tuners(arch):
    vanilla, petl = build_pair(arch, ETTA if arch != 'vit' else ETTA[:1])
    tuner_prefixes = tuple(n + '.' for n, _ in petl.tuner_modules())
    base_keys = [k for k in petl.state_dict() if not k.startswith(
        tuner_prefixes)]
    assert base_keys == list(vanilla.state_dict())
    assert all('.adapter.' in k or '.prefix.' in k
               for k in petl.state_dict() if k.startswith(tuner_prefixes))


def test_etta_places_tuners_everywhere_in_deformable_detr():
    _, petl = build_pair('deformable_detr', ETTA)
    kinds = {name: type(t).__name__ for name, t in petl.tuner_modules()}
    for i in range(2):
        assert kinds[f'encoder.layers.{i}.ffn.adapter'] == 'ParallelAdapter'
        assert kinds[f'decoder.layers.{i}.ffn.adapter'] == 'ParallelAdapter'
        assert kinds[f'encoder.layers.{i}.self_attn.prefix'] == \
            'DeformablePrefix'
        assert kinds[f'decoder.layers.{i}.cross_attn.prefix'] == \
            'DeformablePrefix'
        assert kinds[f'decoder.layers.{i}.self_attn.attn.prefix'] == \
            'ScaledPrefix'


def test_freezing_trainable_patterns_and_frozen_bn():
    _, petl = build_pair('deformable_detr', ETTA, trainable=['bbox_head'])
    tuner_ids = petl.tuner_parameter_ids()
    head_ids = {id(p) for p in petl.bbox_head.parameters()}
    for name, p in petl.named_parameters():
        assert p.requires_grad == (id(p) in tuner_ids or id(p) in head_ids), \
            name
    petl.train()
    bns = [m for m in petl.modules() if isinstance(m, _BatchNorm)]
    assert bns and all(not m.training for m in bns)
    assert petl.encoder.layers[0].ffn.training  # dropout still trains
    assert petl.inner.training


def test_init_weights_after_injection_keeps_tuners():
    """The Runner calls model.init_weights(): it must not wipe tuner init
    (DETR's xavier-inits every encoder/decoder matrix)."""
    _, petl = build_pair('detr', [ADAPTER])
    petl.init_weights()
    for _, tuner in petl.tuner_modules():
        assert torch.count_nonzero(tuner.branch.up.weight) == 0


def test_attribute_lookup_falls_back_to_inner_model():
    _, petl = build_pair('deformable_detr', [ADAPTER])
    assert petl.with_box_refine is False
    assert petl.num_queries == 10
    assert petl.level_embed is petl.inner.level_embed


def test_tuner_state_dict_holds_only_trainable():
    _, petl = build_pair('detr', ETTA, trainable=['bbox_head'])
    slim = petl.tuner_state_dict()
    assert slim and all(k.startswith('bbox_head.') or '.adapter.' in k or
                        '.prefix.' in k for k in slim)
    trainable = sum(p.numel() for p in petl.parameters() if p.requires_grad)
    assert sum(v.numel() for k, v in slim.items()
               if v.requires_grad) == trainable


def test_scaled_prefix_on_mha_and_deformable_types():
    _, petl = build_pair('deformable_detr', ETTA)
    types = {type(t) for _, t in petl.tuner_modules()}
    assert ScaledPrefix in types and DeformablePrefix in types


def test_first_layer_utuner_is_10x_smaller_than_dual():
    _, first = build_pair('deformable_detr', FIRST_U)
    _, dual = build_pair('deformable_detr', DUAL_U)
    names = [n for n, _ in first.tuner_modules()]
    assert all('.layers.0.' in n for n in names)
    count = sum(t.num_train_params() for _, t in first.tuner_modules())
    assert count * 2 == sum(t.num_train_params()
                            for _, t in dual.tuner_modules())  # 1 of 2 layers


def test_bitfit_trains_exactly_the_biases_and_heads():
    cfg = SMALL_CFGS['detr']()
    petl = PETLModel(model=cfg, tuners=[],
                     trainable=['bbox_head', 'bias'])
    head = {id(p) for p in petl.bbox_head.parameters()}
    for name, p in petl.named_parameters():
        assert p.requires_grad == (name.endswith('.bias') or id(p) in head)


def test_vpt_on_vit_and_its_refusal_on_detr():
    vanilla, petl = build_pair('vit', [dict(type='VPT', presets=['backbone'],
                                            num_prompts=3, deep=True)])
    (name, vpt), = petl.tuner_modules()
    assert name == 'backbone.vpt'
    assert vpt.num_train_params() == 2 * 3 * 64  # L * P * d
    with torch.no_grad():
        feats = tensor_outputs(petl, 'vit')
        base = tensor_outputs(vanilla, 'vit')
    assert feats[0].shape == base[0].shape
    assert not torch.allclose(feats[0], base[0])  # prompts join attention
    with pytest.raises(TypeError, match='VPT cannot tune `backbone`.*'
                       'ScaledPrefix'):
        build_pair('detr', [dict(type='VPT', presets=['backbone'])])


def test_train_keeps_a_trainable_set_that_frozen_stages_would_undo():
    """ResNet's `frozen_stages` re-freezes its stem and first stage in
    every train() call; BitFit's biases there must stay trainable (else the
    report states more than the optimizer steps and DDP waits for their
    gradients)."""
    cfg = SMALL_CFGS['deformable_detr']()
    assert cfg['backbone']['frozen_stages'] == 1
    petl = PETLModel(model=cfg, trainable=['bbox_head', 'bias'])
    built = {n for n, p in petl.named_parameters() if p.requires_grad}
    stem_bn = 'backbone.bn1.bias'
    assert stem_bn in built and 'backbone.layer1.0.bn1.bias' in built
    for _ in range(2):
        petl.train()
        assert {n for n, p in petl.named_parameters()
                if p.requires_grad} == built
        petl.eval()
    # frozen-stage BatchNorms stay in eval mode (running stats kept)
    petl.train()
    assert not petl.backbone.bn1.training


def test_trainable_follows_the_matching_rule():
    """A string is a full-name regex, a list holds exact names or dotted
    suffixes (injection.matching); each must select something."""
    cfg = SMALL_CFGS['detr']()
    by_list = PETLModel(model=cfg, trainable=['bbox_head', 'bias'])
    by_regex = PETLModel(model=cfg, trainable=r'bbox_head|.*\.bias')
    assert by_list.trainable_names == by_regex.trainable_names
    assert 'encoder.layers.0.ffn.layers.1.bias' in by_list.trainable_names
    assert 'bbox_head.fc_cls.weight' in by_list.trainable_names
    # a list item is a name, not a regex: '.*bias' matches nothing
    with pytest.raises(ValueError, match=r"trainable name.*'\.\*bias'"):
        PETLModel(model=cfg, trainable=['bbox_head', '.*bias'])
    with pytest.raises(ValueError, match='trainable regex'):
        PETLModel(model=cfg, trainable='bbox_heads')
