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
                   backbone.stages.N.blocks.M.attn (Swin)
backbone_ffn       backbone.layers.N.ffn (ViT backbone)   --
                   backbone.stages.N.blocks.M.ffn (Swin)
================== ====================================== ==================

``backbone_*`` serve DETR-family detectors whose backbone is a transformer:
MMPretrain's ``VisionTransformer`` (``type='mmpretrain.VisionTransformer'``,
``out_type='featmap'``) or MMDetection's ``SwinTransformer`` (DINO Swin-L):
ETTA then also goes into the backbone. In Swin, ``attn`` is the
``ShiftWindowMSA`` of a block (tuners reach its ``WindowMSA``) and ``ffn``
its MMCV ``FFN``.

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
                   backbone.features.N (MobileNetV2),
                   backbone.stages.N (Swin)
================== ====================================== ==================

The DETR family shares two layouts (checked on the built models):

* ``'detr'``: DETR, Conditional DETR and DAB-DETR (subclasses of
  ``DETR``). The encoder's attention is MMCV ``MultiheadAttention``
  wrapping torch's; Conditional DETR's and DAB-DETR's decoder attentions
  are MMDetection ``ConditionalAttention`` (``decoder.layers.N.self_attn``
  and ``.cross_attn`` all the same).
* ``'deformable_detr'``: Deformable DETR and its subclasses DINO and
  DDQ-DETR. The encoder self-attention and decoder cross-attention are
  MMCV ``MultiScaleDeformableAttention``; the decoder self-attention is
  MMCV ``MultiheadAttention``.

A preset that matches no module of the model is an error that lists the
model's attention and FFN types and the presets that do match.
"""
import re
from collections import OrderedDict
from typing import Dict, List, Optional, Sequence

import torch.nn as nn

from mmpetl.utils import class_names

__all__ = ['PRESETS', 'CHECKPOINT_PRESETS', 'detect_arch', 'preset_regex',
           'block_types', 'matching_presets', 'unmatched_preset_message']

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
# a transformer backbone inside a DETR-family model: a ViT
# (mmpretrain.VisionTransformer) or a Swin (mmdet.SwinTransformer)
_DETR['backbone_attn'] = (r'backbone\.layers\.\d+\.attn|'
                          r'backbone\.stages\.\d+\.blocks\.\d+\.attn')
_DETR['backbone_ffn'] = (r'backbone\.layers\.\d+\.ffn|'
                         r'backbone\.stages\.\d+\.blocks\.\d+\.ffn')

PRESETS: Dict[str, Dict[str, str]] = {
    'detr': dict(_DETR),
    'deformable_detr': dict(_DETR),
    'vit': _VIT,
}

_DETR_LAYERS = {
    'encoder_layers': r'encoder\.layers\.\d+',
    'decoder_layers': r'decoder\.layers\.\d+',
    'backbone_stages':
    r'backbone\.(?:layer\d+|layers\.\d+|features\.\d+|stages\.\d+)',
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
    """``'detr'``, ``'deformable_detr'`` or ``'vit'`` for a built model
    (the layout of its modules, see the module doc: Conditional DETR and
    DAB-DETR are ``'detr'``, DINO and DDQ-DETR ``'deformable_detr'``).

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
        f'DETR-family detectors (DETR, Conditional DETR, DAB-DETR, '
        f'Deformable DETR, DINO, DDQ-DETR) and ViT classifiers. Use '
        f'`targets=` (a regex or list of module names) in the tuner config '
        f'instead of `presets`.')


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


def block_types(model: nn.Module) -> Dict[str, Dict[str, List[str]]]:
    """The attention and FFN module types of a model, for messages.

    Attention: classes whose name contains ``Attention`` or ends in
    ``MSA`` (Swin), outermost only (not torch's MHA inside MMCV's, not a
    ``WindowMSA`` inside its ``ShiftWindowMSA``); FFN: classes whose name
    contains ``FFN``.

    Returns:
        dict: ``{'attention': {type: [names]}, 'ffn': {...}}``, each name
        with its layer indices written ``N`` (``encoder.layers.N.ffn``).
    """
    found = dict(attention=OrderedDict(), ffn=OrderedDict())
    outer: List[str] = []
    for name, module in model.named_modules():
        cls = type(module)
        kind = ('attention' if 'Attention' in cls.__name__ or
                cls.__name__.endswith('MSA') else
                'ffn' if 'FFN' in cls.__name__ else None)
        if kind is None or not name or any(
                name.startswith(o + '.') for o in outer):
            continue
        outer.append(name)
        key = f'{cls.__module__.split(".")[0]}.{cls.__name__}'
        pattern = re.sub(r'\.\d+(?=\.|$)', '.N', name)
        names = found[kind].setdefault(key, [])
        if pattern not in names:
            names.append(pattern)
    return found


def matching_presets(names: Sequence[str], arch: str) -> List[str]:
    """The presets of ``arch`` that match at least one of ``names``."""
    return [p for p, regex in PRESETS[arch].items()
            if any(re.fullmatch(regex, n) for n in names)]


def unmatched_preset_message(model: nn.Module, arch: str,
                             preset: str) -> str:
    """Why ``preset`` found nothing in ``model``, and what would."""
    names = [n for n, _ in model.named_modules() if n]
    types = block_types(model)

    def listing(kind):
        items = [f'{t} ({", ".join(ns[:3])})'
                 for t, ns in types[kind].items()]
        return '; '.join(items) or 'none'

    return (f'preset {preset!r} matches no module of this '
            f'{type(model).__name__} (arch {arch!r}). Presets that match '
            f'here: {matching_presets(names, arch)}: drop {preset!r}, use '
            f'one of those or name modules with `targets=`. Its attention '
            f'types: {listing("attention")}. Its FFN types: '
            f'{listing("ffn")}.')
