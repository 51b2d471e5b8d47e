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
