# Full fine-tuning of DAB-DETR R50 from a full checkpoint (the reference).
_base_ = 'mmdet::dab_detr/dab-detr_r50_8xb2-50e_coco.py'
model = dict(backbone=dict(init_cfg=None))
load_from = 'checkpoints/dab-detr_r50_8xb2-50e_coco_20221122_120837-c1035c8c.pth'  # noqa
