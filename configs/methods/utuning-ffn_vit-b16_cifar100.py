# utuning-ffn on vit-b16_cifar100: see configs/_base_/tuners/utuning-ffn.py
_base_ = ['../_base_/archs/vit-b16_cifar100.py', '../_base_/tuners/utuning-ffn.py']
model = dict(tuners=_base_.tuners,
             trainable=_base_.heads + _base_.extra_trainable)
