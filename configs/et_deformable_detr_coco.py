# ET-Deformable-DETR on COCO: Deformable DETR R50 (MMDetection 3.x) frozen,
# ETTA tuners trained. Start from a full Deformable DETR checkpoint: put
# MMDetection's model-zoo file at `load_from` (or pass --cfg-options
# load_from=...). Tuner keys are reported as missing; that is expected.
_base_ = [
    'mmdet::deformable_detr/deformable-detr_r50_16xb2-50e_coco.py',
    './_base_/tuners/etta.py',
    './_base_/petl_runtime.py',
]

detector = _base_.model
# the base checkpoint provides every base weight: no ImageNet download
detector.backbone.init_cfg = None

model = dict(
    _delete_=True,
    type='mmpetl.PETLModel',
    model=detector,
    tuners=_base_.tuners,
    trainable=_base_.trainable)

# PETL wants a higher learning rate than full fine-tuning: the tuners train
# at 5x the base lr, the heads at the base lr.
optim_wrapper = dict(
    constructor='mmpetl.PETLOptimWrapperConstructor',
    optimizer=dict(type='AdamW', lr=2e-4, weight_decay=1e-4),
    paramwise_cfg=dict(tuner_lr_mult=5.0))

load_from = 'checkpoints/deformable_detr_r50_16x2_50e_coco_20210419_220030-a12b9512.pth'  # noqa
