# Full fine-tuning of DINO 4-scale R50 from a full checkpoint (the
# reference every PETL method is compared with: a whole model per task).
_base_ = 'mmdet::dino/dino-4scale_r50_8xb2-12e_coco.py'
model = dict(backbone=dict(init_cfg=None))
# load_from: the model-zoo URL the OpenMMLab metafile lists (MMEngine
# downloads it once into ~/.cache/torch/hub/checkpoints). Offline, point it
# at a local copy: --cfg-options load_from=checkpoints/<file>.pth; the tuner
# checkpoint pins the base by tensor content, so URL or file pin alike.
load_from = 'https://download.openmmlab.com/mmdetection/v3.0/dino/dino-4scale_r50_8xb2-12e_coco/dino-4scale_r50_8xb2-12e_coco_20221202_182705-55b2bba2.pth'  # noqa
