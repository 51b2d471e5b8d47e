# adapter on DINO 5-scale Swin-L: configs/_base_/tuners/adapter.py's
# parallel adapters (b=256) beside every FFN, the Swin backbone's included.
_base_ = ['../_base_/archs/dino-5scale_swin-l_coco.py',
          '../_base_/tuners/adapter.py']
model = dict(
    tuners=[
        dict(type='ParallelAdapter', presets=['backbone_ffn', 'ffn'],
             bottleneck=256, scale=1.0),
    ],
    trainable=_base_.heads + _base_.extra_trainable)
