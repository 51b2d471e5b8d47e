# UniPT on vit-b16_cifar100: see configs/_base_/tuners/unipt.py
_base_ = ['../_base_/archs/vit-b16_cifar100.py', '../_base_/tuners/unipt.py']
# the arch gives tuners the heads' lr: 10x for UniPT, as its authors.
# features='recompute': the frozen ViT runs again (same random draws) to
# give the side network each block's tokens in its forward and backward,
# instead of autograd keeping all 13 for the backward: the same outputs
# and gradients, training memory at the heads-only floor, ~3x the frozen
# forward's compute (benchmarks/results/cpu/unipt_memory_vit.md).
# features='keep' is the authors' way (1.94x heads-only on an H200).
model = dict(tuners=_base_.tuners,
             parallel=dict(_base_.parallel, lr_mult=10.0,
                           features='recompute'),
             trainable=_base_.heads + _base_.extra_trainable)
