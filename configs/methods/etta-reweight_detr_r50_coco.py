# etta-reweight on DETR R50: see configs/_base_/tuners/etta-reweight.py
_base_ = ['../_base_/archs/detr_r50_coco.py',
          '../_base_/tuners/etta-reweight.py']
model = dict(tuners=_base_.tuners,
             trainable=_base_.heads + _base_.extra_trainable)
