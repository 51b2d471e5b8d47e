# Full fine-tuning of Conditional DETR R50 from a full checkpoint (the
# reference).
_base_ = 'mmdet::conditional_detr/conditional-detr_r50_8xb2-50e_coco.py'
model = dict(backbone=dict(init_cfg=None))
# load_from: the model-zoo URL the OpenMMLab metafile lists (MMEngine
# downloads it once into ~/.cache/torch/hub/checkpoints). Offline, point it
# at a local copy: --cfg-options load_from=checkpoints/<file>.pth; the tuner
# checkpoint pins the base by tensor content, so URL or file pin alike.
load_from = 'https://download.openmmlab.com/mmdetection/v3.0/conditional_detr/conditional-detr_r50_8xb2-50e_coco/conditional-detr_r50_8xb2-50e_coco_20221121_180202-c83a1dc0.pth'  # noqa
