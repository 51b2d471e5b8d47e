# UniPT on vit-b16_cifar100: see configs/_base_/tuners/unipt.py
_base_ = ['../_base_/archs/vit-b16_cifar100.py', '../_base_/tuners/unipt.py']
model = dict(tuners=_base_.tuners, parallel=_base_.parallel,
             trainable=_base_.heads + _base_.extra_trainable)
