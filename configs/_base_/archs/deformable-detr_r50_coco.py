# Deformable DETR R50 (MMDetection 3.x) wrapped in mmpetl.PETLModel, frozen:
# a method config adds `tuners` (and what else it trains) on top. Start
# from a full Deformable DETR checkpoint at `load_from`.
_base_ = [
    'mmdet::deformable_detr/deformable-detr_r50_16xb2-50e_coco.py',
    '../petl_runtime.py',
]

detector = _base_.model
# the base checkpoint provides every base weight: no ImageNet download
detector.backbone.init_cfg = None
heads = ['bbox_head']  # new classes need new classifiers

model = dict(
    _delete_=True,
    type='mmpetl.PETLModel',
    model=detector,
    tuners=[],
    trainable=heads)

# PETL wants a higher learning rate than full fine-tuning: the tuners train
# at 5x the base lr, the heads at the base lr.
optim_wrapper = dict(
    constructor='mmpetl.PETLOptimWrapperConstructor',
    optimizer=dict(type='AdamW', lr=2e-4, weight_decay=1e-4),
    paramwise_cfg=dict(tuner_lr_mult=5.0))

# load_from: the model-zoo URL the OpenMMLab metafile lists (MMEngine
# downloads it once into ~/.cache/torch/hub/checkpoints). Offline, point it
# at a local copy: --cfg-options load_from=checkpoints/<file>.pth; the tuner
# checkpoint pins the base by tensor content, so URL or file pin alike.
load_from = 'https://download.openmmlab.com/mmdetection/v3.0/deformable_detr/deformable-detr_r50_16xb2-50e_coco/deformable-detr_r50_16xb2-50e_coco_20221029_210934-6bc7d21b.pth'  # noqa
