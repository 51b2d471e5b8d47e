# utuning-ffn on detr_r50_coco: see configs/_base_/tuners/utuning-ffn.py
_base_ = ['../_base_/archs/detr_r50_coco.py', '../_base_/tuners/utuning-ffn.py']
model = dict(tuners=_base_.tuners,
             trainable=_base_.heads + _base_.extra_trainable)
