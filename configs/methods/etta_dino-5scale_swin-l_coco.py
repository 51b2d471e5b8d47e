# etta on DINO 5-scale Swin-L (ET-DINO Swin-L): ETTA's tuners
# (configs/_base_/tuners/etta.py: adapters b=256, prefixes l=50) in every
# FFN and attention of the transformer *and* of the Swin backbone (its
# window attention: prefixes attended per window), the heads and DINO's
# label embedding trained. Start from MMDetection's DINO Swin-L checkpoint
# at `load_from`.
_base_ = [
    '../_base_/archs/dino-5scale_swin-l_coco.py',
    '../_base_/tuners/etta.py',
]
model = dict(
    tuners=[
        dict(type='ParallelAdapter', presets=['backbone_ffn', 'ffn'],
             bottleneck=256, scale=1.0),
        dict(type='ScaledPrefix', presets=['backbone_attn', 'attn'],
             num_prefix=50, form='parallel', init='scaled'),
    ],
    trainable=_base_.heads + _base_.extra_trainable)
