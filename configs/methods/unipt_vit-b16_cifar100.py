# UniPT on vit-b16_cifar100: see configs/_base_/tuners/unipt.py
_base_ = ['../_base_/archs/vit-b16_cifar100.py', '../_base_/tuners/unipt.py']
# the arch gives tuners the heads' lr: 10x for UniPT, as its authors
model = dict(tuners=_base_.tuners,
             parallel=dict(_base_.parallel, lr_mult=10.0),
             trainable=_base_.heads + _base_.extra_trainable)
