# Full fine-tuning of DINO 5-scale Swin-L from a full checkpoint (the
# reference every PETL method is compared with: a whole model per task).
_base_ = 'mmdet::dino/dino-5scale_swin-l_8xb2-12e_coco.py'
model = dict(backbone=dict(init_cfg=None))
# load_from: the model-zoo URL the OpenMMLab metafile lists (MMEngine
# downloads it once into ~/.cache/torch/hub/checkpoints). Offline, point it
# at a local copy: --cfg-options load_from=checkpoints/<file>.pth; the tuner
# checkpoint pins the base by tensor content, so URL or file pin alike.
load_from = 'https://github.com/RistoranteRist/mmlab-weights/releases/download/dino-swinl/dino-5scale_swin-l_8xb2-36e_coco-5486e051.pth'  # noqa: E501
