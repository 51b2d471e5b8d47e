# UniPT on deformable-detr_r50_coco: see configs/_base_/tuners/unipt.py
_base_ = ['../_base_/archs/deformable-detr_r50_coco.py', '../_base_/tuners/unipt.py']
model = dict(tuners=_base_.tuners, parallel=_base_.parallel,
             trainable=_base_.heads + _base_.extra_trainable)
