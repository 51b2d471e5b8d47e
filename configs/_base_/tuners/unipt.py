# UniPT (Diao et al.), the authors' design (mmpetl.tuners.unipt): a network
# beside the whole frozen model, width d/2. DETR family: it reads every other
# encoder and decoder layer plus the last ({1, 3, 5} + 6 of 6 layers),
# computed without autograd, builds a side memory from the encoder tokens
# (padding masked out; of a multi-scale encoder the levels of stride >= 32,
# `enc_min_stride`, as MDETR's one C5 map), lets each decoder layer's side
# features read it, and rewrites those decoder layers' hidden states. ViT:
# it reads the embeddings and every block; the final class token attends
# over them (the ViT method config sets features='recompute': the frozen
# ViT runs again instead of autograd keeping every block's tokens).
# It is not a per-module tuner: pass it as `parallel`, next to an empty
# `tuners` list:
#
#   _base_ = ['../_base_/archs/detr_r50_coco.py', '../_base_/tuners/unipt.py']
#   model = dict(tuners=_base_.tuners, parallel=_base_.parallel,
#                trainable=_base_.heads + _base_.extra_trainable)
#
# Only UniPT and the heads can train: everything before the heads runs in
# torch.no_grad, so PETLModel refuses any other trainable part (keep
# `extra_trainable` empty) and other tuners.
#
# output='residual' feeds the heads h + out with out = 0 at init (the
# pretrained heads see the frozen model's states at step 0); the authors'
# output='replace' feeds out alone. variant='v1' is mmpetl's first design
# (decoder states only, bottleneck r): dict(type='UniPT', variant='v1',
# bottleneck=64, all_layers=True).
#
# Learning rate: the authors train the side network at 10x the heads' lr
# (5e-4 vs 5e-5). The DETR-family archs give tuners 5x (tuner_lr_mult=5.0),
# so lr_mult=2.0 makes 10x; the ViT config sets its own (lr_mult=10.0).
tuners = []
parallel = dict(type='UniPT', output='residual', lr_mult=2.0)
extra_trainable = []
