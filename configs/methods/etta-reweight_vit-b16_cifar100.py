# etta-reweight on ViT-B/16: see configs/_base_/tuners/etta-reweight.py
_base_ = ['../_base_/archs/vit-b16_cifar100.py',
          '../_base_/tuners/etta-reweight.py']
model = dict(tuners=_base_.tuners,
             trainable=_base_.heads + _base_.extra_trainable)
