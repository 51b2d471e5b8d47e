# UniPT (Diao et al.): a parallel network beside the whole frozen model. It
# reads the decoder's per-layer hidden states (DETR family) or the ViT
# layers' outputs, computed without autograd, and adds a zero-initialised
# correction to what the heads consume. It is not a per-module tuner: pass
# it as `parallel`, next to an empty `tuners` list:
#
#   _base_ = ['../_base_/archs/detr_r50_coco.py', '../_base_/tuners/unipt.py']
#   model = dict(tuners=_base_.tuners, parallel=_base_.parallel,
#                trainable=_base_.heads + _base_.extra_trainable)
#
# Only UniPT and the heads can train: everything before the heads runs in
# torch.no_grad, so PETLModel refuses any other trainable part (keep
# `extra_trainable` empty) and other tuners.
# bottleneck r = d / 4 (64 for DETR's d = 256): 118,470 parameters for 6
# decoder layers, (L+1)*d*r + (L+1)*r + 2*L*d + d + L.
tuners = []
parallel = dict(type='UniPT', bottleneck=64, all_layers=True)
extra_trainable = []
