# ET-DETR on COCO: DETR R50 (MMDetection 3.x) frozen, ETTA tuners trained.
# Start from a full DETR checkpoint (MMDetection's model zoo) at `load_from`.
_base_ = [
    'mmdet::detr/detr_r50_8xb2-150e_coco.py',
    './_base_/tuners/etta.py',
    './_base_/petl_runtime.py',
]

detector = _base_.model
detector.backbone.init_cfg = None

model = dict(
    _delete_=True,
    type='mmpetl.PETLModel',
    model=detector,
    tuners=_base_.tuners,
    trainable=_base_.trainable)

optim_wrapper = dict(
    constructor='mmpetl.PETLOptimWrapperConstructor',
    optimizer=dict(type='AdamW', lr=1e-4, weight_decay=1e-4),
    paramwise_cfg=dict(tuner_lr_mult=5.0))

load_from = 'checkpoints/detr_r50_8xb2-150e_coco_20221023_153551-436d03e8.pth'  # noqa
