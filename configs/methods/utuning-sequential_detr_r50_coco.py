# utuning-sequential on detr_r50_coco: see configs/_base_/tuners/utuning-sequential.py
_base_ = ['../_base_/archs/detr_r50_coco.py', '../_base_/tuners/utuning-sequential.py']
model = dict(tuners=_base_.tuners,
             trainable=_base_.heads + _base_.extra_trainable)
