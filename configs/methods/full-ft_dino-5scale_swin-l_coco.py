# Full fine-tuning of DINO 5-scale Swin-L from a full checkpoint (the
# reference every PETL method is compared with: a whole model per task).
_base_ = 'mmdet::dino/dino-5scale_swin-l_8xb2-12e_coco.py'
model = dict(backbone=dict(init_cfg=None))
load_from = 'checkpoints/dino-5scale_swin-l_8xb2-36e_coco-5486e051.pth'
