# Full fine-tuning of DETR R50 from a full checkpoint (the reference).
_base_ = 'mmdet::detr/detr_r50_8xb2-150e_coco.py'
model = dict(backbone=dict(init_cfg=None))
load_from = 'checkpoints/detr_r50_8xb2-150e_coco_20221023_153551-436d03e8.pth'  # noqa
