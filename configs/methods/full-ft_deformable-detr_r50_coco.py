# Full fine-tuning of Deformable DETR R50 from a full checkpoint: the
# reference every PETL method is compared with (a whole model per task).
_base_ = 'mmdet::deformable_detr/deformable-detr_r50_16xb2-50e_coco.py'
model = dict(backbone=dict(init_cfg=None))
load_from = 'checkpoints/deformable-detr_r50_16xb2-50e_coco_20221029_210934-6bc7d21b.pth'  # noqa
