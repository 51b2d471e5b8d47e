# UniPT-local (mmpetl's variant) on deformable-detr_r50_coco: the authors'
# UniPT (configs/_base_/tuners/unipt.py) whose decoder-side tokens also read
# the frozen encoder memory sampled at each query's reference points
# (local_read=True; mmpetl/tuners/unipt.py). Deformable DETR only.
_base_ = ['../_base_/archs/deformable-detr_r50_coco.py', '../_base_/tuners/unipt.py']
model = dict(tuners=_base_.tuners,
             parallel=dict(_base_.parallel, local_read=True),
             trainable=_base_.heads + _base_.extra_trainable)
