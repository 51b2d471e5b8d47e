# Full fine-tuning of Deformable DETR R50 from a full checkpoint: the
# reference every PETL method is compared with (a whole model per task).
_base_ = 'mmdet::deformable_detr/deformable-detr_r50_16xb2-50e_coco.py'
model = dict(backbone=dict(init_cfg=None))
# load_from: the model-zoo URL the OpenMMLab metafile lists (MMEngine
# downloads it once into ~/.cache/torch/hub/checkpoints). Offline, point it
# at a local copy: --cfg-options load_from=checkpoints/<file>.pth; the tuner
# checkpoint pins the base by tensor content, so URL or file pin alike.
load_from = 'https://download.openmmlab.com/mmdetection/v3.0/deformable_detr/deformable-detr_r50_16xb2-50e_coco/deformable-detr_r50_16xb2-50e_coco_20221029_210934-6bc7d21b.pth'  # noqa
