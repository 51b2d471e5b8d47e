# ViT as a detection backbone: DETR (MMDetection 3.x) on MMPretrain's
# ViT-B/16, with ETTA's tuners in the frozen ViT (adapters in its FFNs,
# scaled prefixes in its attention) and in DETR's transformer.
# MMDetection has no DETR-ViT model-zoo checkpoint, so the ViT comes from an
# ImageNet checkpoint (frozen, tuned by ETTA) and DETR's neck, transformer
# and heads train from scratch; with a full DETR-ViT checkpoint of your own,
# set `load_from` and keep only `bbox_head` in `trainable`.
_base_ = [
    './_base_/archs/detr_r50_coco.py',
    './_base_/tuners/etta.py',
]

detector = _base_.model.model
detector.backbone = dict(
    _delete_=True,
    type='mmpretrain.VisionTransformer',
    arch='b',
    img_size=(800, 1333),
    patch_size=16,
    out_type='featmap',  # patch tokens as a stride-16 feature map
    drop_path_rate=0.1,
    init_cfg=dict(
        type='Pretrained',
        checkpoint='https://download.openmmlab.com/mmclassification/v0/vit/finetune/vit-base-p16_in21k-pre-3rdparty_ft-64xb64_in1k-384_20210928-98e8652b.pth',  # noqa: E501 (offline: a local copy)
        prefix='backbone.'))
detector.neck.in_channels = [768]
detector.data_preprocessor.pad_size_divisor = 16

model = dict(
    model=detector,
    tuners=[
        dict(type='ParallelAdapter', presets=['backbone_ffn', 'ffn'],
             bottleneck=256),
        dict(type='ScaledPrefix', presets=['backbone_attn', 'attn'],
             num_prefix=50),
    ],
    trainable=['bbox_head', 'neck', 'encoder', 'decoder', 'query_embedding'])
load_from = None
