"""Target matching on plain strings: no model is built."""
import pytest

from mmpetl.injection import (PRESETS, name_matches, nearest_names,
                              preset_regex, select_names)

NAMES = [
    'backbone.layer1.0.conv1', 'encoder.layers.0.self_attn',
    'encoder.layers.0.self_attn.attn', 'encoder.layers.0.ffn',
    'encoder.layers.11.ffn', 'encoder.layers.0.my_ffn',
    'decoder.layers.0.self_attn', 'decoder.layers.0.cross_attn',
    'decoder.layers.0.ffn', 'bbox_head.fc_cls'
]


@pytest.mark.parametrize('targets,expected', [
    (r'encoder\.layers\.\d+\.ffn',
     ['encoder.layers.0.ffn', 'encoder.layers.11.ffn']),
    # a string must match the whole name: no accidental prefixes
    (r'encoder\.layers\.\d+\.self_attn', ['encoder.layers.0.self_attn']),
    (['ffn'], ['encoder.layers.0.ffn', 'encoder.layers.11.ffn',
               'decoder.layers.0.ffn']),  # dotted suffix, not endswith
    (['0.cross_attn'], ['decoder.layers.0.cross_attn']),
    (['bbox_head.fc_cls'], ['bbox_head.fc_cls']),
    (['conv'], []),
])
def test_select(targets, expected):
    assert select_names(NAMES, targets) == expected


def test_exclude():
    assert select_names(NAMES, ['ffn'], exclude=r'decoder\..*') == [
        'encoder.layers.0.ffn', 'encoder.layers.11.ffn'
    ]


def test_suffix_is_not_substring():
    assert not name_matches('encoder.layers.0.my_ffn', ['ffn'])
    assert name_matches('encoder.layers.0.my_ffn', ['my_ffn'])


def test_nearest_names_for_typos():
    assert 'encoder.layers.0.ffn' in nearest_names(['fnn'], NAMES) or \
        'decoder.layers.0.ffn' in nearest_names(['fnn'], NAMES)
    assert any('cross_attn' in n for n in nearest_names(['cros_attn'], NAMES))


@pytest.mark.parametrize('arch', ['detr', 'deformable_detr'])
def test_detr_presets(arch):
    attn = preset_regex(arch, ['attn'])
    assert select_names(NAMES, attn) == [
        'encoder.layers.0.self_attn', 'decoder.layers.0.self_attn',
        'decoder.layers.0.cross_attn'
    ]
    assert select_names(NAMES, preset_regex(arch, ['ffn'])) == [
        'encoder.layers.0.ffn', 'encoder.layers.11.ffn',
        'decoder.layers.0.ffn'
    ]


def test_vit_presets_and_unknown():
    names = ['backbone.layers.0.attn', 'backbone.layers.0.ffn', 'head.fc']
    assert select_names(names, preset_regex('vit', ['attn', 'ffn'])) == \
        names[:2]
    with pytest.raises(ValueError, match='decoder_cross_attn'):
        preset_regex('vit', ['decoder_cross_attn'])
    assert set(PRESETS['detr']) >= {'encoder_self_attn', 'decoder_self_attn',
                                    'decoder_cross_attn', 'ffn'}


SWIN = ['backbone.stages.0.blocks.0.attn', 'backbone.stages.0.blocks.0.attn'
        '.w_msa', 'backbone.stages.0.blocks.1.ffn',
        'backbone.stages.2.blocks.17.attn', 'backbone.stages.0.downsample',
        'encoder.layers.0.self_attn', 'encoder.layers.0.ffn']


def test_backbone_presets_reach_swin_blocks():
    """backbone_attn is each Swin block's ShiftWindowMSA (the tuners go
    down to its WindowMSA), backbone_ffn its FFN; the transformer's presets
    stay apart."""
    for arch in ('detr', 'deformable_detr'):
        assert select_names(SWIN, preset_regex(arch, ['backbone_attn'])) == [
            'backbone.stages.0.blocks.0.attn',
            'backbone.stages.2.blocks.17.attn']
        assert select_names(SWIN, preset_regex(arch, ['backbone_ffn'])) == [
            'backbone.stages.0.blocks.1.ffn']
        assert select_names(SWIN, preset_regex(arch, ['attn', 'ffn'])) == [
            'encoder.layers.0.self_attn', 'encoder.layers.0.ffn']
        # the ViT form still matches
        assert name_matches('backbone.layers.3.attn',
                            preset_regex(arch, ['backbone_attn']))


def test_matching_presets_and_block_types_of_a_model():
    from mmpetl.injection.presets import block_types, matching_presets
    from mmpetl.models import build_inner_model
    from tests.conftest import small_deformable_cfg
    model = build_inner_model(small_deformable_cfg())
    names = [n for n, _ in model.named_modules() if n]
    here = matching_presets(names, 'deformable_detr')
    assert 'attn' in here and 'ffn' in here
    assert 'backbone_attn' not in here and 'backbone_ffn' not in here
    types = block_types(model)
    assert types['attention'] == {
        'mmcv.MultiScaleDeformableAttention': [
            'encoder.layers.N.self_attn', 'decoder.layers.N.cross_attn'],
        'mmcv.MultiheadAttention': ['decoder.layers.N.self_attn']}
    assert types['ffn'] == {'mmcv.FFN': ['encoder.layers.N.ffn',
                                         'decoder.layers.N.ffn']}
