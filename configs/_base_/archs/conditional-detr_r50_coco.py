# Conditional DETR R50 (MMDetection 3.x) wrapped in mmpetl.PETLModel,
# frozen: a method config adds `tuners`. Its decoder attention is
# MMDetection's ConditionalAttention (prefixes, LoRA and the presets reach
# it). Start from MMDetection's checkpoint at `load_from` (40.9 AP).
_base_ = [
    'mmdet::conditional_detr/conditional-detr_r50_8xb2-50e_coco.py',
    '../petl_runtime.py',
]

detector = _base_.model
detector.backbone.init_cfg = None
heads = ['bbox_head']

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
load_from = 'https://download.openmmlab.com/mmdetection/v3.0/conditional_detr/conditional-detr_r50_8xb2-50e_coco/conditional-detr_r50_8xb2-50e_coco_20221121_180202-c83a1dc0.pth'  # noqa
