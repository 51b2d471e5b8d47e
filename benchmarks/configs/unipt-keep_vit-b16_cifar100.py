# UniPT on ViT-B/16 with features='keep' (autograd keeps the 13 frozen
# features for the side network's backward, as the authors' code does),
# measured beside the shipped configs/methods/unipt_vit-b16_cifar100.py
# (features='recompute') in benchmarks/results/cpu/unipt_memory_vit.md.
_base_ = ['../../configs/methods/unipt_vit-b16_cifar100.py']
model = dict(parallel=dict(features='keep'))
