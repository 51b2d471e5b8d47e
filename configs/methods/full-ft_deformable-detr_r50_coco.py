# Full fine-tuning of Deformable DETR R50 from a full checkpoint: the
# reference every PETL method is compared with (a whole model per task).
_base_ = 'mmdet::deformable_detr/deformable-detr_r50_16xb2-50e_coco.py'
model = dict(backbone=dict(init_cfg=None))
load_from = 'checkpoints/deformable_detr_r50_16x2_50e_coco_20210419_220030-a12b9512.pth'  # noqa
