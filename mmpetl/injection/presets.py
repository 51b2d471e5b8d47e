"""Named target groups per architecture.

A tuner config may say ``presets=['ffn', 'attn']`` instead of regexes; the
names resolve against the architecture of the inner model:

================== ====================================== ==================
preset             DETR / Deformable DETR (mmdet 3.x)     ViT (mmpretrain)
================== ====================================== ==================
encoder_self_attn  encoder.layers.N.self_attn             backbone.layers.N.attn
decoder_self_attn  decoder.layers.N.self_attn             --
decoder_cross_attn decoder.layers.N.cross_attn            --
encoder_ffn        encoder.layers.N.ffn                   backbone.layers.N.ffn
decoder_ffn        decoder.layers.N.ffn                   --
attn               all attention above                    backbone.layers.N.attn
ffn                encoder_ffn + decoder_ffn              backbone.layers.N.ffn
first_layer_attn   attention of encoder/decoder layer 0   backbone.layers.0.attn
first_layer_ffn    FFN of encoder/decoder layer 0         backbone.layers.0.ffn
backbone           --                                     backbone (VPT)
backbone_attn      backbone.layers.N.attn (ViT backbone)  --
backbone_ffn       backbone.layers.N.ffn (ViT backbone)   --
================== ====================================== ==================

Activation checkpointing (``PETLModel(activation_checkpointing=[...])``)
has presets of its own, in :data:`CHECKPOINT_PRESETS`: whole layers are
recomputed, so they name layers rather than the blocks tuners attach to:

================== ====================================== ==================
preset             DETR / Deformable DETR                 ViT (mmpretrain)
================== ====================================== ==================
encoder_layers     encoder.layers.N                       backbone.layers.N
decoder_layers     decoder.layers.N                       --
backbone_stages    backbone.layerN (ResNet stages),       backbone.layers.N
                   backbone.layers.N (ViT),
                   backbone.features.N (MobileNetV2)
================== ====================================== ==================

``backbone_*`` serve DETR-family detectors whose backbone is MMPretrain's
``VisionTransformer`` (``type='mmpretrain.VisionTransformer'``,
``out_type='featmap'``): ETTA then also goes into the backbone.

In Deformable DETR the encoder self-attention and decoder cross-attention
are MMCV ``MultiScaleDeformableAttention``; the rest are MMCV
``MultiheadAttention`` wrapping torch's.
"""
from typing import Dict, Optional, Sequence

import torch.nn as nn

from mmpetl.utils import class_names

__all__ = ['PRESETS', 'CHECKPOINT_PRESETS', 'detect_arch', 'preset_regex']

_DETR = {
    'encoder_self_attn': r'encoder\.layers\.\d+\.self_attn',
    'decoder_self_attn': r'decoder\.layers\.\d+\.self_attn',
    'decoder_cross_attn': r'decoder\.layers\.\d+\.cross_attn',
    'encoder_ffn': r'encoder\.layers\.\d+\.ffn',
    'decoder_ffn': r'decoder\.layers\.\d+\.ffn',
}
_DETR['attn'] = '|'.join(_DETR[k] for k in ('encoder_self_attn',
                                            'decoder_self_attn',
                                            'decoder_cross_attn'))
_DETR['ffn'] = '|'.join(_DETR[k] for k in ('encoder_ffn', 'decoder_ffn'))

_VIT = {
    'encoder_self_attn': r'backbone\.layers\.\d+\.attn',
    'encoder_ffn': r'backbone\.layers\.\d+\.ffn',
}
_VIT['attn'] = _VIT['encoder_self_attn']
_VIT['ffn'] = _VIT['encoder_ffn']
_VIT['backbone'] = r'backbone'  # the VisionTransformer itself (VPT)
_VIT['first_layer_attn'] = r'backbone\.layers\.0\.attn'
_VIT['first_layer_ffn'] = r'backbone\.layers\.0\.ffn'
_DETR['first_layer_attn'] = (r'(encoder|decoder)\.layers\.0\.'
                             r'(self_attn|cross_attn)')
_DETR['first_layer_ffn'] = r'(encoder|decoder)\.layers\.0\.ffn'
_DETR['backbone'] = r'backbone'
# a ViT backbone (mmpretrain.VisionTransformer) inside a DETR-family model
_DETR['backbone_attn'] = r'backbone\.layers\.\d+\.attn'
_DETR['backbone_ffn'] = r'backbone\.layers\.\d+\.ffn'

PRESETS: Dict[str, Dict[str, str]] = {
    'detr': dict(_DETR),
    'deformable_detr': dict(_DETR),
    'vit': _VIT,
}

_DETR_LAYERS = {
    'encoder_layers': r'encoder\.layers\.\d+',
    'decoder_layers': r'decoder\.layers\.\d+',
    'backbone_stages': r'backbone\.(?:layer\d+|layers\.\d+|features\.\d+)',
}
_VIT_LAYERS = {
    'encoder_layers': r'backbone\.layers\.\d+',
    'backbone_stages': r'backbone\.layers\.\d+',
}
#: the layer groups ``PETLModel(activation_checkpointing=...)`` names
CHECKPOINT_PRESETS: Dict[str, Dict[str, str]] = {
    'detr': dict(_DETR_LAYERS),
    'deformable_detr': dict(_DETR_LAYERS),
    'vit': _VIT_LAYERS,
}


def detect_arch(model: nn.Module) -> str:
    """``'detr'``, ``'deformable_detr'`` or ``'vit'`` for a built model.

    Raises:
        ValueError: for other models (then use explicit ``targets``).
    """
    names = class_names(model)
    if 'DeformableDETR' in names:
        return 'deformable_detr'
    if 'DETR' in names or 'ConditionalDETR' in names or \
            'DABDETR' in names:
        return 'detr'
    backbone = getattr(model, 'backbone', None)
    if backbone is not None and 'VisionTransformer' in class_names(
            backbone):
        return 'vit'
    raise ValueError(
        f'no presets for {type(model).__name__}: mmpetl has presets for '
        f'DETR, Deformable DETR and ViT classifiers. Use `targets=` (a regex '
        f'or list of module names) in the tuner config instead of `presets`.')


def preset_regex(arch: str, presets: Sequence[str],
                 table: Optional[Dict[str, Dict[str, str]]] = None) -> str:
    """One regex that matches the union of the named presets.

    Args:
        arch (str): a key of ``table`` (see :func:`detect_arch`).
        presets (Sequence[str]): preset names.
        table (dict, optional): presets per architecture; the tuner
            :data:`PRESETS` when None (:data:`CHECKPOINT_PRESETS` for
            activation checkpointing).

    Returns:
        str: a regex that must match a whole module name.
    """
    table = (PRESETS if table is None else table)[arch]
    unknown = [p for p in presets if p not in table]
    if unknown:
        raise ValueError(
            f'unknown preset(s) {unknown} for {arch}; available: '
            f'{sorted(table)}')
    return '|'.join(f'(?:{table[p]})' for p in presets)
