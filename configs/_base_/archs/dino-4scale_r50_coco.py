# DINO 4-scale R50 (MMDetection 3.x) wrapped in mmpetl.PETLModel, frozen:
# a method config adds `tuners` (and what else it trains) on top. Start
# from MMDetection's DINO checkpoint at `load_from` (49.0 AP, 12 epochs).
_base_ = [
    'mmdet::dino/dino-4scale_r50_8xb2-12e_coco.py',
    '../petl_runtime.py',
]

detector = _base_.model
# the base checkpoint provides every base weight: no ImageNet download
detector.backbone.init_cfg = None
# New classes need new classifiers. DINO's denoising queries embed the
# ground-truth labels with `dn_query_generator.label_embedding` (one row per
# class, num_classes x 256, sized from bbox_head.num_classes): with other
# classes its checkpoint rows do not load (or mean other classes), so it is
# new too and trains with the heads.
heads = ['bbox_head', 'dn_query_generator.label_embedding']

model = dict(
    _delete_=True,
    type='mmpetl.PETLModel',
    model=detector,
    tuners=[],
    trainable=heads)

# MMDetection's DINO lr (1e-4) for the heads, 5x for the tuners; DINO's
# clip_grad and custom_keys (backbone 0.1x) stay as in its config.
optim_wrapper = dict(
    constructor='mmpetl.PETLOptimWrapperConstructor',
    optimizer=dict(type='AdamW', lr=1e-4, weight_decay=1e-4),
    paramwise_cfg=dict(tuner_lr_mult=5.0))

# load_from: the model-zoo URL the OpenMMLab metafile lists (MMEngine
# downloads it once into ~/.cache/torch/hub/checkpoints). Offline, point it
# at a local copy: --cfg-options load_from=checkpoints/<file>.pth; the tuner
# checkpoint pins the base by tensor content, so URL or file pin alike.
load_from = 'https://download.openmmlab.com/mmdetection/v3.0/dino/dino-4scale_r50_8xb2-12e_coco/dino-4scale_r50_8xb2-12e_coco_20221202_182705-55b2bba2.pth'  # noqa
