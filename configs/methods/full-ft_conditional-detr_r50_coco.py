# Full fine-tuning of Conditional DETR R50 from a full checkpoint (the
# reference).
_base_ = 'mmdet::conditional_detr/conditional-detr_r50_8xb2-50e_coco.py'
model = dict(backbone=dict(init_cfg=None))
load_from = 'checkpoints/conditional-detr_r50_8xb2-50e_coco_20221121_180202-c83a1dc0.pth'  # noqa
