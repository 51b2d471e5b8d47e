# Full fine-tuning of DETR R50 from a full checkpoint (the reference).
_base_ = 'mmdet::detr/detr_r50_8xb2-150e_coco.py'
model = dict(backbone=dict(init_cfg=None))
# load_from: the model-zoo URL the OpenMMLab metafile lists (MMEngine
# downloads it once into ~/.cache/torch/hub/checkpoints). Offline, point it
# at a local copy: --cfg-options load_from=checkpoints/<file>.pth; the tuner
# checkpoint pins the base by tensor content, so URL or file pin alike.
load_from = 'https://download.openmmlab.com/mmdetection/v3.0/detr/detr_r50_8xb2-150e_coco/detr_r50_8xb2-150e_coco_20221023_153551-436d03e8.pth'  # noqa
