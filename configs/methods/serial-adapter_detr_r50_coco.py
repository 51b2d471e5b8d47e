# serial-adapter on DETR R50: see configs/_base_/tuners/serial-adapter.py
_base_ = ['../_base_/archs/detr_r50_coco.py', '../_base_/tuners/serial-adapter.py']
model = dict(tuners=_base_.tuners,
             trainable=_base_.heads + _base_.extra_trainable)
