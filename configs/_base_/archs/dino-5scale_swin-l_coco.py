# DINO 5-scale Swin-L (MMDetection 3.x, the zoo's strongest DETR) wrapped in
# mmpetl.PETLModel, frozen: a method config adds `tuners`; the presets
# `backbone_attn`/`backbone_ffn` reach the Swin blocks. Start from
# MMDetection's DINO Swin-L checkpoint at `load_from`: the 36-epoch one
# (58.4 AP; the 12-epoch dino-5scale_swin-l_8xb2-12e_coco_20230228_072924-
# a654145f.pth, 57.2 AP, is the same model and loads too).
_base_ = [
    'mmdet::dino/dino-5scale_swin-l_8xb2-12e_coco.py',
    '../petl_runtime.py',
]

detector = _base_.model
# the base checkpoint provides every base weight: no Swin download
detector.backbone.init_cfg = None
# see dino-4scale_r50_coco.py: the label embedding trains with the heads
heads = ['bbox_head', 'dn_query_generator.label_embedding']

model = dict(
    _delete_=True,
    type='mmpetl.PETLModel',
    model=detector,
    tuners=[],
    trainable=heads)

optim_wrapper = dict(
    constructor='mmpetl.PETLOptimWrapperConstructor',
    optimizer=dict(type='AdamW', lr=1e-4, weight_decay=1e-4),
    paramwise_cfg=dict(tuner_lr_mult=5.0))

# load_from: the model-zoo URL the OpenMMLab metafile lists (MMEngine
# downloads it once into ~/.cache/torch/hub/checkpoints). Offline, point it
# at a local copy: --cfg-options load_from=checkpoints/<file>.pth; the tuner
# checkpoint pins the base by tensor content, so URL or file pin alike.
load_from = 'https://github.com/RistoranteRist/mmlab-weights/releases/download/dino-swinl/dino-5scale_swin-l_8xb2-36e_coco-5486e051.pth'  # noqa: E501
