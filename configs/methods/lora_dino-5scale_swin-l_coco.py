# lora on DINO 5-scale Swin-L: configs/_base_/tuners/lora.py's LoRA (r=16)
# on every attention and FFN, the Swin backbone's included (its qkv/proj
# and FFN Linears).
_base_ = ['../_base_/archs/dino-5scale_swin-l_coco.py',
          '../_base_/tuners/lora.py']
model = dict(
    tuners=[
        dict(type='LoRA', rank=16, alpha=16, presets=[
            'backbone_attn', 'backbone_ffn', 'attn', 'ffn']),
    ],
    trainable=_base_.heads + _base_.extra_trainable)
