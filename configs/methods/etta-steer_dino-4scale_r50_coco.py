# etta-steer on DINO 4-scale R50: see configs/_base_/tuners/etta-steer.py
_base_ = ['../_base_/archs/dino-4scale_r50_coco.py',
          '../_base_/tuners/etta-steer.py']
model = dict(tuners=_base_.tuners,
             trainable=_base_.heads + _base_.extra_trainable)
