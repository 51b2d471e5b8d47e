# utuning-sequential on vit-b16_cifar100: see configs/_base_/tuners/utuning-sequential.py
_base_ = ['../_base_/archs/vit-b16_cifar100.py', '../_base_/tuners/utuning-sequential.py']
model = dict(tuners=_base_.tuners,
             trainable=_base_.heads + _base_.extra_trainable)
