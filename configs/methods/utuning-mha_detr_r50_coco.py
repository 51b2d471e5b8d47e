# utuning-mha on detr_r50_coco: see configs/_base_/tuners/utuning-mha.py
_base_ = ['../_base_/archs/detr_r50_coco.py', '../_base_/tuners/utuning-mha.py']
model = dict(tuners=_base_.tuners,
             trainable=_base_.heads + _base_.extra_trainable)
