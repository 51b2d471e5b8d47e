# heads_only on Deformable DETR R50: see configs/_base_/tuners/heads_only.py
_base_ = ['../_base_/archs/deformable_detr_r50_coco.py', '../_base_/tuners/heads_only.py']
model = dict(tuners=_base_.tuners,
             trainable=_base_.heads + _base_.extra_trainable)
